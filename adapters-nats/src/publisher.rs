//! [`NatsPublisher`]: acknowledged, deduplicated, per-stream-ordered, pipelined publishing.

use crate::config::NatsConfig;
use crate::wire::{Outgoing, outgoing, stream_subjects};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::context::{PublishError as JsPublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, ErrorCode};
use async_trait::async_trait;
use edupulse_domain::StreamId;
use edupulse_ports::{EventPublisher, PublishAck, PublishError, PublishResult, RecordedEvent};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::{HashMap, VecDeque};
use std::error::Error as _;

/// Builds the JetStream context the adapter uses: acknowledgement (and API) timeout from
/// [`NatsConfig::ack_timeout`], at most [`NatsConfig::max_in_flight`] unacknowledged publishes
/// (waiting, not failing, when reached).
pub fn jetstream_context(client: async_nats::Client, config: &NatsConfig) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(config.ack_timeout)
        .max_ack_inflight(config.max_in_flight.max(1))
        .backpressure_on_inflight(true)
        .build(client)
}

/// Publishes events to JetStream (see the crate documentation for the guarantees).
#[derive(Clone, Debug)]
pub struct NatsPublisher {
    js: jetstream::Context,
    stream_name: String,
    subject_prefix: String,
    max_message_bytes: usize,
    max_in_flight: usize,
}

impl NatsPublisher {
    /// A publisher over `client`, with the limits and subject prefix of `config`.
    ///
    /// It does not provision the stream: run [`crate::provision`] first (publishing to a missing
    /// stream fails with [`PublishError::Misconfigured`]).
    pub fn new(client: async_nats::Client, config: &NatsConfig) -> Self {
        Self {
            js: jetstream_context(client, config),
            stream_name: config.stream_name.clone(),
            subject_prefix: config.subject_prefix.clone(),
            max_message_bytes: config.max_message_bytes,
            max_in_flight: config.max_in_flight.max(1),
        }
    }

    /// The JetStream context used (for reading back, provisioning, tests).
    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    /// "No responders" means either that no stream captures the subject (a deployment problem)
    /// or that the stream exists but has no leader for the moment (an election in a cluster, a
    /// server still recovering its streams after a restart). One stream look-up tells them
    /// apart; the second is reported as [`PublishError::Unavailable`], the first stays
    /// [`PublishError::Misconfigured`].
    async fn recheck_no_responders(&self, results: &mut [PublishResult]) {
        if !results.iter().any(is_no_responders) {
            return;
        }
        let required = stream_subjects(&self.subject_prefix);
        let transient = match self.js.get_stream(&self.stream_name).await {
            Ok(stream) => {
                let subjects = &stream.cached_info().config.subjects;
                required.iter().all(|s| subjects.contains(s))
            }
            Err(e) => !matches!(
                e.kind(),
                GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND
            ),
        };
        if transient {
            for result in results.iter_mut().filter(|r| is_no_responders(r)) {
                *result = Err(PublishError::Unavailable(Box::new(StreamNotReady {
                    stream: self.stream_name.clone(),
                })));
            }
        }
    }

    /// Sends one message; returns the acknowledgement future.
    async fn send(
        &self,
        out: Outgoing,
        limit: usize,
    ) -> Result<jetstream::context::PublishAckFuture, PublishError> {
        let size = out.size;
        let message = PublishMessage::build()
            .headers(out.headers)
            .payload(out.payload);
        self.js
            .send_publish(out.subject, message)
            .await
            .map_err(|e| classify(e, size, limit))
    }
}

/// Per-batch bookkeeping: each stream's pending events and which streams may send next.
struct Schedule {
    /// The events of each stream not yet sent, in order.
    pending: HashMap<StreamId, VecDeque<usize>>,
    /// Streams with nothing in flight and something pending, in turn.
    ready: VecDeque<StreamId>,
}

impl Schedule {
    fn new(events: &[RecordedEvent]) -> Self {
        let mut pending: HashMap<StreamId, VecDeque<usize>> = HashMap::new();
        let mut ready = VecDeque::new();
        for (i, event) in events.iter().enumerate() {
            pending
                .entry(event.stream_id)
                .or_insert_with(|| {
                    ready.push_back(event.stream_id);
                    VecDeque::new()
                })
                .push_back(i);
        }
        Self { pending, ready }
    }

    /// The next event to send, from the next ready stream.
    fn next(&mut self) -> Option<(StreamId, usize)> {
        while let Some(stream) = self.ready.pop_front() {
            if let Some(index) = self.pending.get_mut(&stream).and_then(VecDeque::pop_front) {
                return Some((stream, index));
            }
        }
        None
    }

    /// The stream's event was acknowledged: its next event may go.
    fn succeeded(&mut self, stream: StreamId) {
        if self.pending.get(&stream).is_some_and(|q| !q.is_empty()) {
            self.ready.push_back(stream);
        }
    }

    /// The stream's event failed: the rest of the stream is not attempted.
    fn failed(&mut self, stream: StreamId) -> VecDeque<usize> {
        self.pending.remove(&stream).unwrap_or_default()
    }
}

#[async_trait]
impl EventPublisher for NatsPublisher {
    /// Publishes with up to `max_in_flight` messages awaiting acknowledgement, but at most one per
    /// stream; every acknowledgement is awaited. See the crate documentation.
    #[tracing::instrument(name = "publish", skip_all, fields(events = events.len()))]
    async fn publish(&self, events: &[RecordedEvent]) -> Vec<PublishResult> {
        let mut results: Vec<Option<PublishResult>> = events.iter().map(|_| None).collect();
        let mut schedule = Schedule::new(events);
        let mut in_flight = FuturesUnordered::new();
        let fail = |results: &mut Vec<Option<PublishResult>>,
                    schedule: &mut Schedule,
                    stream,
                    index: usize,
                    error| {
            results[index] = Some(Err(error));
            for later in schedule.failed(stream) {
                results[later] = Some(Err(PublishError::NotAttempted));
            }
        };

        // The smaller of our limit and the server's `max_payload` (known once connected).
        let limit = self.max_message_bytes.min(self.js.client().max_payload());
        loop {
            while in_flight.len() < self.max_in_flight {
                let Some((stream, index)) = schedule.next() else {
                    break;
                };
                match outgoing(&self.subject_prefix, limit, &events[index]) {
                    // Sending and acknowledging are one future: while a send waits for an
                    // in-flight permit (shared with concurrent calls), the acknowledgements of
                    // this batch keep being polled, so permits are always released.
                    Ok(out) => in_flight.push(async move {
                        let acked = match self.send(out, limit).await {
                            Ok(ack) => ack.await.map_err(|e| classify(e, 0, limit)),
                            Err(e) => Err(e),
                        };
                        (stream, index, acked)
                    }),
                    Err(e) => fail(&mut results, &mut schedule, stream, index, e),
                }
            }
            let Some((stream, index, acked)) = in_flight.next().await else {
                break;
            };
            match acked {
                Ok(ack) => {
                    results[index] = Some(Ok(PublishAck {
                        duplicate: ack.duplicate,
                        sequence: ack.sequence,
                    }));
                    schedule.succeeded(stream);
                }
                Err(error) => {
                    tracing::debug!(event = %events[index].envelope.id, %error, "publish failed");
                    fail(&mut results, &mut schedule, stream, index, error);
                }
            }
        }

        let mut results: Vec<PublishResult> = results
            .into_iter()
            // Every index was either sent (and settled), failed, or marked not attempted; should
            // that ever not hold, report the event as not attempted rather than panic.
            .map(|r| r.unwrap_or(Err(PublishError::NotAttempted)))
            .collect();
        self.recheck_no_responders(&mut results).await;
        results
    }
}

/// The reason of a "no responders" answer, before [`NatsPublisher::recheck_no_responders`].
const NO_RESPONDERS: &str = "no JetStream stream captures the subject (no responders)";

/// "No responders" while the stream exists: a transient state of the cluster.
#[derive(Debug, thiserror::Error)]
#[error(
    "no responders for the subject although stream {stream} exists: a stream leader election \
     or recovery is in progress"
)]
struct StreamNotReady {
    stream: String,
}

fn is_no_responders(result: &PublishResult) -> bool {
    matches!(result, Err(PublishError::Misconfigured { reason }) if reason == NO_RESPONDERS)
}

/// The JetStream error code carried by a client error, if the server answered with one.
fn jetstream_code(error: &JsPublishError) -> Option<ErrorCode> {
    error
        .source()?
        .downcast_ref::<jetstream::Error>()
        .map(jetstream::Error::error_code)
}

/// Whether the server's refusal is final for this message.
fn is_permanent_code(code: ErrorCode) -> bool {
    [
        ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM,
        ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM,
        ErrorCode::STREAM_SEALED,
        ErrorCode::BAD_REQUEST,
        ErrorCode::STREAM_WRONG_LAST_SEQUENCE,
        ErrorCode::STREAM_WRONG_LAST_MESSAGE_ID,
    ]
    .contains(&code)
}

/// Classifies a client publish error by its kind (and the server's error code), never by text.
///
/// `size` is the message's size when known (for [`PublishError::TooLarge`]).
pub(crate) fn classify(error: JsPublishError, size: usize, max: usize) -> PublishError {
    match error.kind() {
        // No ack in time: the message may or may not be stored. Ambiguous, retry with the same id.
        PublishErrorKind::TimedOut => PublishError::Timeout,
        // The server answered "no responders": no stream captures the subject (or JetStream is
        // not enabled).
        PublishErrorKind::StreamNotFound => PublishError::Misconfigured {
            reason: NO_RESPONDERS.into(),
        },
        PublishErrorKind::MaxPayloadExceeded => PublishError::TooLarge { size, max },
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            PublishError::Rejected {
                reason: error.to_string(),
            }
        }
        PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending => {
            PublishError::Unavailable(Box::new(error))
        }
        PublishErrorKind::Other => match jetstream_code(&error) {
            Some(ErrorCode::STREAM_NOT_FOUND) => PublishError::Misconfigured {
                reason: error.to_string(),
            },
            Some(code) if is_permanent_code(code) => PublishError::Rejected {
                reason: error.to_string(),
            },
            // Storage or cluster trouble (no leader, store failed, resources exceeded), or a
            // client-side failure (closed connection): try again later.
            _ => PublishError::Unavailable(Box::new(error)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn js_error(code: u64) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 400, "err_code": code, "description": "refused"
        }))
        .unwrap()
    }

    fn kind(k: PublishErrorKind) -> PublishError {
        classify(JsPublishError::new(k), 10, 5)
    }

    #[test]
    fn classification_by_kind() {
        assert!(matches!(
            kind(PublishErrorKind::TimedOut),
            PublishError::Timeout
        ));
        assert!(matches!(
            kind(PublishErrorKind::StreamNotFound),
            PublishError::Misconfigured { .. }
        ));
        assert!(matches!(
            kind(PublishErrorKind::BrokenPipe),
            PublishError::Unavailable(_)
        ));
        assert!(matches!(
            kind(PublishErrorKind::MaxPayloadExceeded),
            PublishError::TooLarge { size: 10, max: 5 }
        ));
        assert!(matches!(
            kind(PublishErrorKind::Other),
            PublishError::Unavailable(_)
        ));
    }

    #[test]
    fn classification_by_server_code() {
        let with = |code| {
            classify(
                JsPublishError::with_source(PublishErrorKind::Other, js_error(code)),
                0,
                0,
            )
        };
        let too_big = with(10054);
        assert!(matches!(too_big, PublishError::Rejected { .. }));
        assert!(too_big.is_permanent());
        assert!(matches!(with(10059), PublishError::Misconfigured { .. }));
        // Store failed, cluster not available: transient.
        assert!(matches!(with(10077), PublishError::Unavailable(_)));
        assert!(matches!(with(10008), PublishError::Unavailable(_)));
    }

    fn event(stream: StreamId) -> RecordedEvent {
        use edupulse_domain::{BadgeAwarded, EventEnvelope};
        RecordedEvent {
            envelope: EventEnvelope::new(BadgeAwarded {
                badge_id: *stream.as_uuid(),
                recipient_id: *stream.as_uuid(),
            })
            .with_stream(stream),
            stream_id: stream,
            stream_version: 1,
            cursor: edupulse_ports::Cursor {
                commit: 1,
                position: 1,
            },
            recorded_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn schedule_keeps_one_per_stream_and_stops_a_failed_stream() {
        let (a, b) = (StreamId::new(), StreamId::new());
        let events = vec![event(a), event(b), event(a), event(a), event(b)];
        let mut s = Schedule::new(&events);
        assert_eq!(s.next(), Some((a, 0)));
        assert_eq!(s.next(), Some((b, 1)));
        // Both streams have one in flight: nothing else may go.
        assert_eq!(s.next(), None);
        s.succeeded(a);
        assert_eq!(s.next(), Some((a, 2)));
        assert_eq!(s.failed(a), VecDeque::from([3]));
        s.succeeded(b);
        assert_eq!(s.next(), Some((b, 4)));
        s.succeeded(b);
        assert_eq!(s.next(), None);
    }
}
