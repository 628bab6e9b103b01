//! [`NatsPublisher`]: acknowledged, deduplicated, per-stream-ordered, pipelined publishing.

use crate::config::NatsConfig;
use crate::ledger::{Expectation, Ledger};
use crate::wire::{Outgoing, headers, outgoing, stream_subjects};
use async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::context::{PublishError as JsPublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, ErrorCode};
use async_trait::async_trait;
use edupulse_domain::StreamId;
use edupulse_ports::{
    EventPublisher, PublishAck, PublishError, PublishResult, RecordedEvent, Settled,
};
use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use futures::stream::{BoxStream, FuturesUnordered};
use std::collections::{HashMap, VecDeque};
use std::error::Error as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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
    /// What the broker holds of each aggregate (the per-subject fence, see [`crate::ledger`]),
    /// shared by the clones of this publisher.
    ledger: Arc<Mutex<Ledger>>,
}

/// How many times one event is sent with a new expectation before the publish is reported as
/// failed (and retried by the caller later): the subject moved under it each time, so another
/// publisher is writing the same aggregate right now.
const FENCE_ROUNDS: usize = 4;

/// A subject sequence no stream reaches (JetStream parses the header as a signed 64-bit number).
const UNMEETABLE_SEQUENCE: u64 = i64::MAX as u64;

/// What a look-up of an event's subject found.
enum Found {
    /// The event, or a later version of its aggregate on the same subject, is already stored.
    AlreadyStored(PublishAck),
    /// The subject's last message precedes the event: publish expecting this sequence.
    Before(u64),
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
            ledger: Arc::default(),
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // The ledger is a cache the broker double-checks: one left half-updated by a panicking
        // thread is still safe to use.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// Sends one message expecting `expected` as its subject's last sequence; returns the
    /// acknowledgement future.
    async fn send(
        &self,
        mut out: Outgoing,
        expected: u64,
        limit: usize,
    ) -> Result<jetstream::context::PublishAckFuture, PublishError> {
        let size = out.size;
        out.headers
            .insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string());
        let message = PublishMessage::build()
            .headers(out.headers)
            .payload(out.payload);
        self.js
            .send_publish(out.subject, message)
            .await
            .map_err(|e| classify(e, size, limit))
    }

    /// Publishes one event behind the per-subject fence (see [`crate::ledger`]): stored only if
    /// its subject's last message is still the one it was expected after; a refusal means the
    /// subject moved, so its last message is looked up and the event is either found stored
    /// already (a duplicate) or sent again with the new expectation.
    async fn publish_fenced(
        &self,
        event: &RecordedEvent,
        first: Outgoing,
        limit: usize,
    ) -> PublishResult {
        let event_type = event.envelope.event_type();
        let (stream, version) = (event.stream_id, event.stream_version);
        let mut expectation = self.ledger().expectation(stream, event_type, version);
        let mut message = Some(first);
        for _ in 0..FENCE_ROUNDS {
            let mut known_stored = None;
            let expected = match expectation {
                // Sent with an expectation no subject can meet: within the duplicate window the
                // broker answers with the original's sequence, after it the message is refused;
                // it is never stored again.
                Expectation::AlreadyStored(sequence) => {
                    known_stored = Some(sequence);
                    UNMEETABLE_SEQUENCE
                }
                Expectation::LastSubjectSequence(seq) => seq,
                Expectation::Unknown => match self.look_up(event).await? {
                    Found::AlreadyStored(ack) => return Ok(ack),
                    Found::Before(seq) => seq,
                },
            };
            let out = match message.take() {
                Some(out) => out,
                None => outgoing(&self.subject_prefix, limit, event)?,
            };
            let acked = match self.send(out, expected, limit).await {
                Ok(ack) => ack.await,
                Err(e) => return Err(e),
            };
            match acked {
                Ok(ack) => {
                    self.ledger()
                        .stored(stream, event_type, version, ack.sequence);
                    return Ok(PublishAck {
                        duplicate: ack.duplicate,
                        sequence: ack.sequence,
                    });
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    if let Some(sequence) = known_stored {
                        return Ok(PublishAck {
                            duplicate: true,
                            sequence,
                        });
                    }
                    expectation = Expectation::Unknown;
                }
                Err(e) => return Err(classify(e, 0, limit)),
            }
        }
        Err(PublishError::Unavailable(Box::new(SubjectContended {
            event_id: event.envelope.id.to_string(),
        })))
    }

    /// The last message stored on `subject` (wildcards allowed), read from the stream's leader:
    /// a replica could be behind.
    async fn last_message(
        &self,
        subject: &str,
    ) -> Result<Option<jetstream::message::StreamMessage>, PublishError> {
        let stream = self
            .js
            .get_stream_no_info(&self.stream_name)
            .await
            .map_err(|e| PublishError::Unavailable(Box::new(e)))?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some(message)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(PublishError::Unavailable(Box::new(e))),
        }
    }

    /// Reads the last message of `event`'s subject (see [`Self::last_message`]).
    async fn look_up(&self, event: &RecordedEvent) -> Result<Found, PublishError> {
        let subject = crate::wire::event_subject(&self.subject_prefix, event)?;
        let event_type = event.envelope.event_type();
        let Some(last) = self.last_message(&subject).await? else {
            self.ledger().subject_empty(event.stream_id, event_type);
            return Ok(Found::Before(0));
        };
        let header = |name: &str| last.headers.get(name).map(|v| v.as_str().to_owned());
        // A message without our headers on our subject is not one of our events; it precedes.
        let version = header(headers::STREAM_VERSION)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        self.ledger()
            .stored(event.stream_id, event_type, version, last.sequence);
        let same_event =
            header(headers::MSG_ID).as_deref() == Some(&*event.envelope.id.to_string());
        if same_event || version >= event.stream_version {
            // Either the event itself, or a later event of its aggregate on the same subject,
            // which the broker stored only after this one (each aggregate is published in
            // order): the event is there.
            return Ok(Found::AlreadyStored(PublishAck {
                duplicate: true,
                sequence: last.sequence,
            }));
        }
        Ok(Found::Before(last.sequence))
    }
}

/// The subject of an event kept moving while it was being published.
#[derive(Debug, thiserror::Error)]
#[error(
    "event {event_id}: its subject kept moving while it was published (another publisher is \
     writing the same aggregate); retry"
)]
struct SubjectContended {
    event_id: String,
}

/// The schedule of a streaming publish: events arrive over time; each stream has at most one in
/// flight, the rest wait in order; a failed stream takes no more events.
#[derive(Default)]
struct Streams {
    /// Per stream, the events waiting for the one in flight, in order.
    waiting: HashMap<StreamId, VecDeque<RecordedEvent>>,
    /// Events whose stream has nothing in flight, in arrival order.
    ready: VecDeque<RecordedEvent>,
    /// Streams with an event in flight or ready.
    busy: std::collections::HashSet<StreamId>,
    /// Streams with a failed event in this call.
    failed: std::collections::HashSet<StreamId>,
}

impl Streams {
    /// Takes `event` in; gives it back when its stream failed already (not to be sent).
    fn arrive(&mut self, event: RecordedEvent) -> Option<RecordedEvent> {
        let stream = event.stream_id;
        if self.failed.contains(&stream) {
            return Some(event);
        }
        if self.busy.insert(stream) {
            self.ready.push_back(event);
        } else {
            self.waiting.entry(stream).or_default().push_back(event);
        }
        None
    }

    /// The next event to send.
    fn next(&mut self) -> Option<RecordedEvent> {
        self.ready.pop_front()
    }

    /// `stream`'s event was acknowledged: its next one may go.
    fn succeeded(&mut self, stream: StreamId) {
        match self.waiting.get_mut(&stream).and_then(VecDeque::pop_front) {
            Some(next) => self.ready.push_back(next),
            None => {
                self.waiting.remove(&stream);
                self.busy.remove(&stream);
            }
        }
    }

    /// `stream`'s event failed: its waiting events are given back, not to be sent, and later
    /// ones will be too.
    fn failed(&mut self, stream: StreamId) -> VecDeque<RecordedEvent> {
        self.failed.insert(stream);
        self.busy.remove(&stream);
        self.waiting.remove(&stream).unwrap_or_default()
    }

    fn is_empty(&self) -> bool {
        self.busy.is_empty()
    }
}

#[async_trait]
impl EventPublisher for NatsPublisher {
    /// The batch as a stream ([`EventPublisher::publish_stream`]): up to `max_in_flight`
    /// messages awaiting acknowledgement, at most one per stream; every acknowledgement is
    /// awaited, and the results are put back in the batch's order.
    #[tracing::instrument(name = "publish", skip_all, fields(events = events.len()))]
    async fn publish(&self, events: &[RecordedEvent]) -> Vec<PublishResult> {
        let (settled_tx, settled) = futures::channel::mpsc::unbounded();
        let batch = futures::stream::iter(events.to_vec()).boxed();
        self.publish_stream(batch, settled_tx).await;
        let index: HashMap<_, _> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.envelope.id, i))
            .collect();
        let mut results: Vec<Option<PublishResult>> = events.iter().map(|_| None).collect();
        for Settled { event, result } in settled.collect::<Vec<_>>().await {
            if let Some(&i) = index.get(&event.envelope.id) {
                results[i] = Some(result);
            }
        }
        results
            .into_iter()
            // Every event is settled by `publish_stream`; should that ever not hold, report it
            // as not attempted rather than panic.
            .map(|r| r.unwrap_or(Err(PublishError::NotAttempted)))
            .collect()
    }

    /// Keeps up to `max_in_flight` messages awaiting acknowledgement as events arrive, at most
    /// one per stream, and hands each event back as soon as its own acknowledgement arrives.
    #[tracing::instrument(name = "publish_stream", skip_all)]
    async fn publish_stream(
        &self,
        mut events: BoxStream<'static, RecordedEvent>,
        settled: UnboundedSender<Settled>,
    ) {
        let limit = self.max_message_bytes.min(self.js.client().max_payload());
        let mut streams = Streams::default();
        let mut in_flight = FuturesUnordered::new();
        let mut open = true;
        let settle = |event: RecordedEvent, result: PublishResult| {
            settled.unbounded_send(Settled { event, result }).is_ok()
        };
        loop {
            while in_flight.len() < self.max_in_flight {
                let Some(event) = streams.next() else { break };
                match outgoing(&self.subject_prefix, limit, &event) {
                    Ok(out) => in_flight.push(async move {
                        let result = self.publish_fenced(&event, out, limit).await;
                        (event, result)
                    }),
                    Err(e) => {
                        let held = streams.failed(event.stream_id);
                        if !settle(event, Err(e)) {
                            return;
                        }
                        for later in held {
                            if !settle(later, Err(PublishError::NotAttempted)) {
                                return;
                            }
                        }
                    }
                }
            }
            if !open && in_flight.is_empty() && streams.is_empty() {
                return;
            }
            tokio::select! {
                arrived = events.next(), if open => match arrived {
                    Some(event) => {
                        if let Some(refused) = streams.arrive(event)
                            && !settle(refused, Err(PublishError::NotAttempted))
                        {
                            return;
                        }
                    }
                    None => open = false,
                },
                Some((event, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    let mut result = [result];
                    self.recheck_no_responders(&mut result).await;
                    let [result] = result;
                    let held = match &result {
                        Ok(_) => {
                            streams.succeeded(event.stream_id);
                            VecDeque::new()
                        }
                        Err(error) => {
                            tracing::debug!(event = %event.envelope.id, %error, "publish failed");
                            streams.failed(event.stream_id)
                        }
                    };
                    if !settle(event, result) {
                        return;
                    }
                    for later in held {
                        if !settle(later, Err(PublishError::NotAttempted)) {
                            return;
                        }
                    }
                }
                // Input ended and nothing in flight: every busy stream has an event ready, which
                // the loop above sends, so this is not reached; ending beats a panic.
                else => return,
            }
        }
    }

    async fn last_version(&self, stream: StreamId) -> Result<Option<u64>, PublishError> {
        let subject = crate::wire::stream_filter(&self.subject_prefix, stream);
        let last = match self.last_message(&subject).await? {
            Some(message) => message,
            None => return Ok(None),
        };
        Ok(last
            .headers
            .get(headers::STREAM_VERSION)
            .and_then(|v| v.as_str().parse::<u64>().ok()))
    }

    async fn republish(&self, event: &RecordedEvent) -> PublishResult {
        let limit = self.max_message_bytes.min(self.js.client().max_payload());
        let subject = crate::wire::event_subject(&self.subject_prefix, event)?;
        let expected = self
            .last_message(&subject)
            .await?
            .map_or(0, |message| message.sequence);
        let out = outgoing(&self.subject_prefix, limit, event)?;
        let ack = self
            .send(out, expected, limit)
            .await?
            .await
            .map_err(|e| classify(e, 0, limit))?;
        Ok(PublishAck {
            duplicate: ack.duplicate,
            sequence: ack.sequence,
        })
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
            // The stream as a whole refuses writes: no event is at fault, so none may be parked
            // or dead-lettered for it; the publisher waits for an operator.
            Some(ErrorCode::STREAM_NOT_FOUND | ErrorCode::STREAM_SEALED) => {
                PublishError::Misconfigured {
                    reason: error.to_string(),
                }
            }
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
            body: None,
        }
    }

    #[test]
    fn schedule_keeps_one_per_stream_and_stops_a_failed_stream() {
        let (a, b) = (StreamId::new(), StreamId::new());
        let events = vec![event(a), event(b), event(a), event(a), event(b)];
        let ids: Vec<_> = events.iter().map(|e| e.envelope.id).collect();
        let mut s = Streams::default();
        for e in events {
            assert!(s.arrive(e).is_none());
        }
        let mut next = || s.next().map(|e| e.envelope.id);
        assert_eq!(next(), Some(ids[0]));
        assert_eq!(next(), Some(ids[1]));
        // Both streams have one in flight: nothing else may go.
        assert_eq!(next(), None);
        s.succeeded(a);
        assert_eq!(s.next().map(|e| e.envelope.id), Some(ids[2]));
        let held: Vec<_> = s.failed(a).into_iter().map(|e| e.envelope.id).collect();
        assert_eq!(held, vec![ids[3]]);
        s.succeeded(b);
        assert_eq!(s.next().map(|e| e.envelope.id), Some(ids[4]));
        s.succeeded(b);
        assert_eq!(s.next().map(|e| e.envelope.id), None);
    }
}
