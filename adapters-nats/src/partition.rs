//! [`NatsFeed`]: the event stream split into buckets by stream id, for projections.
//!
//! The broker does the partitioning: a second stream, `<stream>_BUCKETS`, sources the event
//! stream through a subject transform that rewrites `<prefix>.<EventType>.<stream id>` into
//! `<prefix>-b.<bucket>.<EventType>.<stream id>`, the bucket being the server's
//! `partition(N, …)` hash of the stream id token. Every event of an aggregate lands in one
//! bucket, in the event stream's order (a source copies in order). The bucket count is fixed
//! when the stream is created (changing it means a new stream and a rebuild); provisioning a
//! different count over an existing stream is [`ProvisionError::Incompatible`].
//!
//! A bucket is read by an ordered pull consumer filtered on its subjects, starting after the
//! position the projection store committed: the client recreates it from its last sequence
//! after a gap or a lost heartbeat, so a bucket reads with no gap and no repeat, and nothing on
//! the broker has to be acknowledged or cleaned up (the store, not the broker, keeps progress).
//! A message's feed position is its sequence in the bucket stream.

use crate::config::NatsConfig;
use crate::provision::{ProvisionError, StreamOutcome, base_config, ensure_stream};
use crate::publisher::jetstream_context;
use crate::wire::headers;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{Config, Source, SubjectTransform};
use async_nats::jetstream::{self, ErrorCode};
use async_trait::async_trait;
use edupulse_domain::{DecodeLimits, EventEnvelope, StreamId, Uuid};
use edupulse_ports::ConsumeError;
use edupulse_ports::projection::{Bucket, BucketEvent, BucketReader, ProjectionFeed};
use futures::StreamExt;
use std::time::Duration;

/// The most buckets a feed may have (each is a consumer while it is read).
pub const MAX_BUCKETS: Bucket = 1024;

/// The default number of buckets: enough to share among a few dozen workers.
pub const DEFAULT_BUCKETS: Bucket = 64;

const DESCRIPTION: &str = "EduPulse domain events split into buckets by stream id, for projections (managed by edupulse-nats)";

/// How long a batch waits for one more message once it has some.
const LULL: Duration = Duration::from_millis(5);

/// The namespace of the aggregates given to messages that name none (see [`bucket_event`]).
const UNATTRIBUTED: Uuid = Uuid::from_u128(0x3c4e_14b7_1d1f_4d8e_9a3e_5f61_0b7c_2a90);

/// The name of the bucket stream of `config`'s event stream.
pub fn feed_stream_name(config: &NatsConfig) -> String {
    format!("{}_BUCKETS", config.stream_name)
}

/// The subject prefix of the bucket stream: `<prefix>-b.<bucket>.<EventType>.<stream id>`.
pub fn feed_subject_prefix(config: &NatsConfig) -> String {
    format!("{}-b", config.subject_prefix)
}

/// The configuration the bucket stream must have for `buckets` buckets.
pub fn feed_stream_config(config: &NatsConfig, buckets: Bucket) -> Config {
    let mut stream = base_config(
        feed_stream_name(config),
        Vec::new(),
        config,
        config.max_message_bytes,
        DESCRIPTION,
    );
    stream.sources = Some(vec![feed_source(config, buckets)]);
    stream
}

fn feed_source(config: &NatsConfig, buckets: Bucket) -> Source {
    let prefix = &config.subject_prefix;
    let destination = format!(
        "{}.{{{{partition({buckets},2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}",
        feed_subject_prefix(config)
    );
    Source {
        name: config.stream_name.clone(),
        subject_transforms: vec![SubjectTransform {
            source: format!("{prefix}.*.*"),
            destination,
        }],
        ..Source::default()
    }
}

/// Creates or checks the bucket stream (the event stream must exist: [`crate::provision`]).
///
/// # Errors
/// As [`crate::provision`]; [`ProvisionError::Incompatible`] with field `sources` when the
/// stream exists with another bucket count or source, or `buckets` is 0 or above
/// [`MAX_BUCKETS`].
pub async fn provision_feed(
    js: &jetstream::Context,
    config: &NatsConfig,
    buckets: Bucket,
) -> Result<StreamOutcome, ProvisionError> {
    let required = feed_stream_config(config, buckets);
    let incompatible = |existing: String| ProvisionError::Incompatible {
        stream: required.name.clone(),
        field: "sources",
        existing,
        required: format!(
            "{buckets} buckets of {} (1 to {MAX_BUCKETS})",
            config.stream_name
        ),
    };
    if buckets == 0 || buckets > MAX_BUCKETS {
        return Err(incompatible(format!("{buckets} buckets asked for")));
    }
    let outcome = ensure_stream(js, required.clone()).await?;
    let stream = js
        .get_stream(&required.name)
        .await
        .map_err(|e| ProvisionError::Unavailable {
            stream: required.name.clone(),
            source: Box::new(e),
        })?;
    let have = source_shape(stream.cached_info().config.sources.as_deref());
    if have != source_shape(required.sources.as_deref()) {
        return Err(incompatible(format!("{have:?}")));
    }
    Ok(outcome)
}

/// What matters of a stream's sources: their names and transforms.
fn source_shape(sources: Option<&[Source]>) -> Vec<(String, Vec<(String, String)>)> {
    sources
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let transforms = s
                .subject_transforms
                .iter()
                .map(|t| (t.source.clone(), t.destination.clone()))
                .collect();
            (s.name.clone(), transforms)
        })
        .collect()
}

/// The [`ProjectionFeed`] of a provisioned bucket stream.
#[derive(Clone)]
pub struct NatsFeed {
    js: jetstream::Context,
    stream: String,
    subject_prefix: String,
    buckets: Bucket,
    limits: DecodeLimits,
}

impl NatsFeed {
    /// The feed of `config`'s bucket stream, provisioned with `buckets` buckets.
    pub fn new(client: async_nats::Client, config: &NatsConfig, buckets: Bucket) -> Self {
        Self {
            js: jetstream_context(client, config),
            stream: feed_stream_name(config),
            subject_prefix: feed_subject_prefix(config),
            buckets,
            limits: DecodeLimits {
                max_bytes: config.max_message_bytes,
                ..DecodeLimits::default()
            },
        }
    }
}

#[async_trait]
impl ProjectionFeed for NatsFeed {
    fn buckets(&self) -> Bucket {
        self.buckets
    }

    async fn open(
        &self,
        reader: &str,
        bucket: Bucket,
        after: u64,
    ) -> Result<Box<dyn BucketReader>, ConsumeError> {
        if bucket >= self.buckets {
            return Err(ConsumeError::Misconfigured {
                reason: format!("bucket {bucket} of {}", self.buckets),
            });
        }
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| match e.kind() {
                GetStreamErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    ConsumeError::Misconfigured {
                        reason: format!("stream {} does not exist (provision it)", self.stream),
                    }
                }
                _ => ConsumeError::Unavailable(Box::new(e)),
            })?;
        let deliver_policy = match after {
            0 => DeliverPolicy::All,
            n => DeliverPolicy::ByStartSequence {
                start_sequence: n.saturating_add(1),
            },
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: format!("{}.{bucket}.>", self.subject_prefix),
                deliver_policy,
                description: Some(format!("projection reader {reader}")),
                ..OrderedConfig::default()
            })
            .await
            .map_err(|e| ConsumeError::Unavailable(Box::new(e)))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| ConsumeError::Unavailable(Box::new(e)))?;
        Ok(Box::new(NatsBucketReader {
            messages,
            last: after,
            pending: 0,
            feed: self.stream.clone(),
            limits: self.limits,
        }))
    }
}

struct NatsBucketReader {
    messages: Ordered,
    last: u64,
    pending: u64,
    feed: String,
    limits: DecodeLimits,
}

impl NatsBucketReader {
    /// Keeps `message` if it comes after the last one returned.
    fn take(&mut self, message: &jetstream::Message, batch: &mut Vec<BucketEvent>) {
        let Ok(info) = message.info() else {
            return;
        };
        if info.stream_sequence <= self.last {
            return;
        }
        self.last = info.stream_sequence;
        self.pending = info.pending;
        batch.push(bucket_event(
            &self.feed,
            info.stream_sequence,
            message,
            self.limits,
        ));
    }
}

#[async_trait]
impl BucketReader for NatsBucketReader {
    async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<BucketEvent>, ConsumeError> {
        let mut batch = Vec::new();
        let first = match tokio::time::timeout(wait, self.messages.next()).await {
            Err(_) => return Ok(batch),
            Ok(None) => {
                return Err(ConsumeError::Unavailable(
                    "the bucket's reader ended".into(),
                ));
            }
            Ok(Some(Err(e))) => return Err(ConsumeError::Unavailable(Box::new(e))),
            Ok(Some(Ok(message))) => message,
        };
        self.take(&first, &mut batch);
        // Then what keeps arriving, until a short lull: a batch is what the client has or is
        // receiving, not one message per call.
        while batch.len() < max {
            match tokio::time::timeout(LULL, self.messages.next()).await {
                Ok(Some(Ok(message))) => self.take(&message, &mut batch),
                // An error after some messages: return those; the next call meets it again.
                Ok(Some(Err(_)) | None) | Err(_) => break,
            }
        }
        Ok(batch)
    }

    fn pending(&self) -> u64 {
        self.pending
    }
}

/// A message of the bucket stream as a [`BucketEvent`]. Its stream and version come from the
/// relay's headers. A message that names no valid stream or version is not an event of any
/// aggregate: it gets an aggregate of its own (derived from its place in the feed), at version
/// 1, so it is parked alone and holds nothing else back.
fn bucket_event(
    feed: &str,
    sequence: u64,
    message: &jetstream::Message,
    limits: DecodeLimits,
) -> BucketEvent {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let stream = header(headers::STREAM_ID).and_then(|s| s.parse::<Uuid>().ok());
    let version = header(headers::STREAM_VERSION)
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v >= 1);
    let body = message.payload.clone();
    match (stream, version) {
        (Some(stream), Some(version)) => BucketEvent {
            stream: StreamId::from_uuid(stream),
            version,
            sequence,
            event: EventEnvelope::decode_with(&body, limits).map_err(|e| e.to_string()),
            body,
        },
        _ => {
            let name = format!("{feed}/{sequence}");
            BucketEvent {
                stream: StreamId::from_uuid(Uuid::new_v5(&UNATTRIBUTED, name.as_bytes())),
                version: 1,
                sequence,
                event: Err(format!(
                    "message {sequence} of {feed} names no stream and version (headers {} and {})",
                    headers::STREAM_ID,
                    headers::STREAM_VERSION
                )),
                body,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transform_partitions_by_stream_id() {
        let config = NatsConfig::new(["nats://127.0.0.1:4222"], "EVENTS", "edupulse");
        let stream = feed_stream_config(&config, 16);
        assert_eq!(stream.name, "EVENTS_BUCKETS");
        assert!(stream.subjects.is_empty());
        let source = &stream.sources.as_ref().expect("sources")[0];
        assert_eq!(source.name, "EVENTS");
        assert_eq!(source.subject_transforms[0].source, "edupulse.*.*");
        assert_eq!(
            source.subject_transforms[0].destination,
            "edupulse-b.{{partition(16,2)}}.{{wildcard(1)}}.{{wildcard(2)}}"
        );
    }
}
