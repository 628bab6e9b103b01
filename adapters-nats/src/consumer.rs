//! [`NatsConsumer`]: a durable pull consumer yielding decoded events, with explicit ack, nak with
//! delay, and dead-lettering that never loses a message.

use crate::config::NatsConfig;
use crate::publisher::{classify, jetstream_context};
use crate::wire::{header_text, headers, is_valid_name, wire_size};
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind};
use async_nats::jetstream::{self, AckKind, ErrorCode};
use async_trait::async_trait;
use bytes::Bytes;
use edupulse_domain::{DecodeLimits, EventEnvelope};
use edupulse_ports::{
    ConsumeError, Delivery, DeliveryToken, EventConsumer, PublishError, Settlement,
};
use futures::StreamExt;
use std::collections::HashMap;
use std::time::Duration;

/// The longest dead-letter reason kept in the reason header, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// How long a message whose dead-lettering failed waits before it is delivered again.
const DEAD_LETTER_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Options of a durable consumer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// The durable name (ASCII letters, digits, `_`, `-`): the server remembers its position.
    pub durable_name: String,
    /// Only events on this subject (for example [`crate::type_filter`] or
    /// [`crate::stream_filter`]); `None` for every event.
    pub filter_subject: Option<String>,
    /// How long a delivered message may stay unsettled before the server delivers it again.
    pub ack_wait: Duration,
    /// The most messages delivered and not yet settled at once.
    pub max_ack_pending: i64,
}

impl ConsumerOptions {
    /// Options for the durable consumer `durable_name`: every event, 30 s ack wait, 1000 pending.
    pub fn new(durable_name: impl Into<String>) -> Self {
        Self {
            durable_name: durable_name.into(),
            filter_subject: None,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
        }
    }
}

/// A durable JetStream pull consumer of the event stream.
///
/// - Messages are settled explicitly through [`EventConsumer::settle`]. The server's
///   `max_deliver` is unlimited: the [`edupulse_ports::RetryPolicy`] decides when to give up.
/// - [`Settlement::Retry`] naks the message with the delay; the server redelivers it after that.
/// - [`Settlement::DeadLetter`] publishes a copy (payload and headers, plus reason headers) to
///   `<prefix>-dlq.<consumer>.<EventType>.<stream id>`, waits for its acknowledgement, and only
///   then terminates the original: a message is never dropped. A retry after a failure in
///   between is deduplicated on the dead-letter stream.
/// - A message that cannot be decoded is dead-lettered at once with the decode error as the
///   reason and never returned. An event type this build does not know is returned, as
///   [`edupulse_domain::DomainEvent::Unknown`].
pub struct NatsConsumer {
    js: jetstream::Context,
    consumer: PullConsumer,
    name: String,
    subject_prefix: String,
    dlq_prefix: String,
    dlq_stream: String,
    limits: DecodeLimits,
    unsettled: HashMap<u64, jetstream::Message>,
    next_token: u64,
    /// How long a pull may go unanswered beyond its own wait (the configured ack timeout).
    request_timeout: Duration,
}

impl std::fmt::Debug for NatsConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConsumer")
            .field("name", &self.name)
            .field("unsettled", &self.unsettled.len())
            .finish_non_exhaustive()
    }
}

impl NatsConsumer {
    /// Creates (or updates) the durable consumer on the event stream of `config` and binds to it.
    ///
    /// # Errors
    /// [`ConsumeError::Misconfigured`] when the stream does not exist (run [`crate::provision`])
    /// or the options are refused; [`ConsumeError::Unavailable`] when JetStream does not answer.
    pub async fn create(
        client: async_nats::Client,
        config: &NatsConfig,
        options: ConsumerOptions,
    ) -> Result<Self, ConsumeError> {
        if !is_valid_name(&options.durable_name) {
            return Err(ConsumeError::Misconfigured {
                reason: format!(
                    "consumer name {:?}: ASCII letters, digits, '_' or '-' expected",
                    options.durable_name
                ),
            });
        }
        let js = jetstream_context(client, config);
        let stream = js
            .get_stream(&config.stream_name)
            .await
            .map_err(|e| stream_error(&config.stream_name, e))?;
        let consumer = stream
            .create_consumer(PullConfig {
                durable_name: Some(options.durable_name.clone()),
                filter_subject: options.filter_subject.clone().unwrap_or_default(),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                ack_wait: options.ack_wait,
                max_deliver: -1,
                max_ack_pending: options.max_ack_pending,
                ..PullConfig::default()
            })
            .await
            .map_err(consumer_error)?;
        Ok(Self {
            js,
            consumer,
            name: options.durable_name,
            subject_prefix: config.subject_prefix.clone(),
            dlq_prefix: config.dlq_subject_prefix(),
            dlq_stream: config.dlq_stream_name(),
            limits: DecodeLimits {
                max_bytes: config.max_message_bytes,
                ..DecodeLimits::default()
            },
            unsettled: HashMap::new(),
            next_token: 0,
            request_timeout: config.ack_timeout,
        })
    }

    /// The durable name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many deliveries returned by [`EventConsumer::next_batch`] are not settled yet.
    pub fn unsettled(&self) -> usize {
        self.unsettled.len()
    }

    /// Fetches what is available now, up to `max`, without waiting.
    async fn fetch_now(&self, max: usize) -> Result<Vec<jetstream::Message>, ConsumeError> {
        let batch = self
            .consumer
            .fetch()
            .max_messages(max)
            .messages()
            .await
            .map_err(|e| ConsumeError::Unavailable(Box::new(e)))?;
        collect(batch, self.request_timeout).await
    }

    /// Waits up to `wait` for one message.
    async fn wait_for_one(&self, wait: Duration) -> Result<Vec<jetstream::Message>, ConsumeError> {
        let batch = self
            .consumer
            .batch()
            .max_messages(1)
            // The server refuses a pull that expires in less than a millisecond.
            .expires(wait.max(Duration::from_millis(10)))
            .messages()
            .await
            .map_err(|e| ConsumeError::Unavailable(Box::new(e)))?;
        collect(batch, wait + self.request_timeout).await
    }

    /// Turns a message into a delivery, or dead-letters it when it cannot be decoded.
    async fn delivery(&mut self, message: jetstream::Message) -> Option<Delivery> {
        let attempt = match message.info() {
            Ok(info) => u64::try_from(info.delivered).unwrap_or(1).max(1),
            Err(e) => {
                // Not a JetStream delivery (no ack subject): nothing can settle it.
                tracing::warn!(error = %e, subject = %message.subject, "ignoring a message without JetStream metadata");
                return None;
            }
        };
        let envelope = match EventEnvelope::decode_with(&message.payload, self.limits) {
            Ok(envelope) => envelope,
            Err(e) => {
                let reason = format!("undecodable message: {e}");
                match self.dead_letter(&message, &reason).await {
                    Ok(()) => {
                        tracing::warn!(consumer = %self.name, subject = %message.subject, %reason, "dead-lettered")
                    }
                    Err(error) => {
                        tracing::warn!(consumer = %self.name, %error, "dead-lettering an undecodable message failed; it will be delivered again");
                        let _ = message
                            .ack_with(AckKind::Nak(Some(DEAD_LETTER_RETRY_DELAY)))
                            .await;
                    }
                }
                return None;
            }
        };
        let header_u64 = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .and_then(|v| v.as_str().parse::<u64>().ok())
        };
        // The Edupulse-* headers, or the CloudEvents extensions carrying the same values, so a
        // message from a publisher that sends only CloudEvents attributes (a bridge, another
        // backbone) still tells its order.
        let stream_version =
            header_u64(headers::STREAM_VERSION).or_else(|| header_u64(headers::CE_STREAMVERSION));
        let position = header_u64(headers::POSITION).or_else(|| header_u64(headers::CE_POSITION));
        self.next_token += 1;
        let token = DeliveryToken::new(self.next_token);
        self.unsettled.insert(self.next_token, message);
        Some(Delivery {
            envelope,
            stream_version,
            position,
            attempt,
            token,
        })
    }

    /// The dead-letter subject of a message consumed from `subject`.
    fn dlq_subject(&self, subject: &str) -> String {
        let rest = subject
            .strip_prefix(self.subject_prefix.as_str())
            .and_then(|r| r.strip_prefix('.'))
            .filter(|r| !r.is_empty())
            .unwrap_or("unknown.unknown");
        format!("{}.{}.{rest}", self.dlq_prefix, self.name)
    }

    /// Maps a failed dead-letter publish. "No responders" is a missing dead-letter stream
    /// (misconfigured) only if the stream really does not exist; otherwise it has no leader for
    /// the moment (unavailable).
    async fn dlq_error(&self, error: PublishError) -> ConsumeError {
        match error {
            PublishError::Misconfigured { reason } => {
                match self.js.get_stream(&self.dlq_stream).await {
                    Err(e)
                        if matches!(
                            e.kind(),
                            GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND
                        ) =>
                    {
                        ConsumeError::Misconfigured {
                            reason: format!("dead-letter stream {}: {reason}", self.dlq_stream),
                        }
                    }
                    _ => ConsumeError::Unavailable(
                        format!("dead-letter stream {} not ready: {reason}", self.dlq_stream)
                            .into(),
                    ),
                }
            }
            other => ConsumeError::Unavailable(Box::new(other)),
        }
    }

    /// Publishes a copy of `message` to the dead-letter stream and waits for the acknowledgement,
    /// then terminates the original.
    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        reason: &str,
    ) -> Result<(), ConsumeError> {
        let info = message
            .info()
            .map_err(|e| ConsumeError::Unavailable(e.to_string().into()))?;
        let sequence = info.stream_sequence;
        let delivered = info.delivered;
        let stream = info.stream.to_owned();
        let mut map = HeaderMap::new();
        let mut original_id = None;
        if let Some(original) = &message.headers {
            for (name, values) in original.iter() {
                let name: &str = name.as_ref();
                if name.eq_ignore_ascii_case(headers::MSG_ID) {
                    original_id = values.first().map(|v| v.as_str().to_owned());
                    continue;
                }
                // Publish expectations belonged to the original stream, not this one.
                if name.len() >= 4 && name[..4].eq_ignore_ascii_case("Nats") {
                    continue;
                }
                for value in values {
                    map.append(name, value.clone());
                }
            }
        }
        // Deduplicated on the dead-letter stream, should the term below fail and the message be
        // dead-lettered again.
        map.insert(
            headers::MSG_ID,
            format!("{}:{stream}:{sequence}", self.name),
        );
        map.insert(headers::DLQ_REASON, header_text(reason, MAX_REASON_BYTES));
        map.insert(headers::DLQ_ORIGINAL_SUBJECT, message.subject.as_str());
        map.insert(headers::DLQ_ORIGINAL_SEQUENCE, sequence.to_string());
        map.insert(headers::DLQ_DELIVERY_COUNT, delivered.to_string());
        map.insert(headers::DLQ_CONSUMER, self.name.as_str());
        if let Some(id) = original_id
            .as_deref()
            .filter(|id| id.parse::<async_nats::HeaderValue>().is_ok())
        {
            map.insert(headers::DLQ_ORIGINAL_MSG_ID, id);
        }

        let subject = self.dlq_subject(message.subject.as_str());
        let payload = message.payload.clone();
        let max = self.js.client().max_payload();
        let (payload, map) = if wire_size(&map, payload.len()) > max {
            // The copy does not fit with its reason headers. The original stays in the event
            // stream (limits retention), so record where it is instead of its bytes.
            let mut map = map;
            map.insert(headers::DLQ_PAYLOAD_OMITTED, "true");
            (Bytes::new(), map)
        } else {
            (payload, map)
        };
        let published = match self
            .js
            .send_publish(
                subject,
                PublishMessage::build().headers(map).payload(payload),
            )
            .await
        {
            Ok(ack) => ack.await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = published {
            return Err(self.dlq_error(classify(e, 0, max)).await);
        }
        message
            .ack_with(AckKind::Term)
            .await
            .map_err(ConsumeError::Unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl EventConsumer for NatsConsumer {
    async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, ConsumeError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut messages = self.fetch_now(max).await?;
        if messages.is_empty() && !wait.is_zero() {
            messages = self.wait_for_one(wait).await?;
            if !messages.is_empty() && max > 1 {
                messages.extend(self.fetch_now(max - 1).await.unwrap_or_default());
            }
        }
        let mut deliveries = Vec::with_capacity(messages.len());
        for message in messages {
            if let Some(delivery) = self.delivery(message).await {
                deliveries.push(delivery);
            }
        }
        Ok(deliveries)
    }

    async fn settle(
        &mut self,
        token: DeliveryToken,
        settlement: Settlement,
    ) -> Result<(), ConsumeError> {
        let message = self
            .unsettled
            .remove(&token.raw())
            .ok_or(ConsumeError::UnknownDelivery)?;
        match settlement {
            Settlement::Ack => message.ack().await.map_err(ConsumeError::Unavailable),
            Settlement::Retry { delay } => message
                .ack_with(AckKind::Nak((!delay.is_zero()).then_some(delay)))
                .await
                .map_err(ConsumeError::Unavailable),
            Settlement::DeadLetter { reason } => {
                // On failure the message stays unacknowledged and is delivered again after the
                // ack wait: never lost.
                self.dead_letter(&message, &reason).await
            }
        }
    }
}

/// Collects a batch; a failure after some messages keeps those (they must be settled).
/// Collects the messages of a pull until the server ends it, or until `limit` passes: the end
/// of a pull is a status message from the server, which never comes when the server is paused,
/// partitioned away or died with the request (the client has no timeout of its own there).
/// Messages received before the limit are returned; none at all is `Unavailable`.
async fn collect(
    mut batch: async_nats::jetstream::consumer::pull::Batch,
    limit: Duration,
) -> Result<Vec<jetstream::Message>, ConsumeError> {
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let item = match tokio::time::timeout_at(deadline, batch.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(_) if messages.is_empty() => {
                return Err(ConsumeError::Unavailable(
                    format!("no answer to a pull request within {limit:?}").into(),
                ));
            }
            Err(_) => {
                tracing::debug!(?limit, "pull not ended in time; keeping what arrived");
                break;
            }
        };
        match item {
            Ok(message) => messages.push(message),
            Err(e) if messages.is_empty() => return Err(ConsumeError::Unavailable(e)),
            Err(e) => {
                tracing::debug!(error = %e, "pull ended early");
                break;
            }
        }
    }
    Ok(messages)
}

fn stream_error(stream: &str, e: GetStreamError) -> ConsumeError {
    match e.kind() {
        GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND => {
            ConsumeError::Misconfigured {
                reason: format!("stream {stream} does not exist (provision it first)"),
            }
        }
        GetStreamErrorKind::Request => ConsumeError::Unavailable(Box::new(e)),
        GetStreamErrorKind::JetStream(_)
        | GetStreamErrorKind::EmptyName
        | GetStreamErrorKind::InvalidStreamName => ConsumeError::Misconfigured {
            reason: e.to_string(),
        },
    }
}

fn consumer_error(e: ConsumerError) -> ConsumeError {
    match e.kind() {
        ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => {
            ConsumeError::Unavailable(Box::new(e))
        }
        ConsumerErrorKind::JetStream(js)
            if [
                ErrorCode::CLUSTER_NOT_AVAILABLE,
                ErrorCode::CLUSTER_NOT_ACTIVE,
                ErrorCode::CLUSTER_NOT_LEADER,
            ]
            .contains(&js.error_code()) =>
        {
            ConsumeError::Unavailable(Box::new(e))
        }
        ConsumerErrorKind::JetStream(_)
        | ConsumerErrorKind::InvalidConsumerType
        | ConsumerErrorKind::InvalidName
        | ConsumerErrorKind::Other => ConsumeError::Misconfigured {
            reason: e.to_string(),
        },
    }
}
