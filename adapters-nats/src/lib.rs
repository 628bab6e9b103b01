//! The NATS JetStream adapter of the EduPulse event backbone: it publishes stored events with
//! acknowledgement, deduplication and per-stream order, and gives downstream projections a
//! durable consumer with retries and dead letters.
//!
//! It implements three ports of `edupulse-ports`: [`EventPublisher`](edupulse_ports::EventPublisher)
//! with [`NatsPublisher`], [`EventConsumer`](edupulse_ports::EventConsumer) with
//! [`NatsConsumer`], and [`ProjectionFeed`](edupulse_ports::projection::ProjectionFeed) with
//! [`NatsFeed`]. Nothing of `async-nats` leaks through those traits.
//!
//! ```no_run
//! use edupulse_nats::{NatsConfig, NatsPublisher, connect, jetstream_context, provision};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = NatsConfig::new(["nats://127.0.0.1:4222"], "EDUPULSE_EVENTS", "edupulse");
//! let client = connect(&config).await?; // typed: unreachable, bad URL, auth, TLS
//! provision(&jetstream_context(client.clone(), &config), &config).await?; // idempotent
//! let publisher = NatsPublisher::new(client, &config);
//! # Ok(()) }
//! ```
//!
//! # Layout on the broker
//!
//! - **Subjects** are `<prefix>.<EventType>.<stream id>`, so a consumer filters by type with
//!   `<prefix>.LessonPublished.*` ([`type_filter`]) and by aggregate with `<prefix>.*.<stream id>`
//!   ([`stream_filter`]). The event stream captures exactly `<prefix>.*.*`.
//! - **The event stream** ([`provision`]) uses file storage, limits retention with no limit
//!   (events are never dropped by the broker), the configured replicas, duplicate window and
//!   maximum message size. **The dead-letter stream** `<stream>_DLQ` captures `<prefix>-dlq.>`.
//! - Provisioning is create-or-check: a missing stream is created; an existing one that
//!   contradicts a requirement (other subjects, memory storage, a shorter duplicate window, fewer
//!   replicas, a retention or a limit that drops events, `no_ack`) is a
//!   [`ProvisionError::Incompatible`] naming the field, never silently used. Harmless differences
//!   (maximum message size, description) are updated.
//! - **Messages**: the payload is [`RecordedEvent::encoded`](edupulse_ports::RecordedEvent::encoded):
//!   the store's bytes of the envelope when it kept them (PostgreSQL: the payload as the appender
//!   wrote it, never encoded a second time), otherwise
//!   [`EventEnvelope::encode`](edupulse_domain::EventEnvelope::encode); the same seed-compatible
//!   JSON either way, byte for byte (a store conformance check). The headers ([`headers`]) carry `Nats-Msg-Id` = the event id,
//!   the event type, schema version, stream id and version, global position, content type, and
//!   the envelope's `traceparent`, correlation and causation ids; and the CloudEvents attributes
//!   in binary content mode (`ce-specversion`, `ce-id`, `ce-source`, `ce-type`, `ce-time`,
//!   `ce-subject`, `ce-dataschema`, and the extensions `ce-streamversion` and `ce-position`;
//!   the mapping is in the `cloudevents` module's source and the README). The payload's JSON
//!   Schemas are the committed files under `schemas/` (see `edupulse_domain::schemas`).
//!
//! # Publishing: acknowledged, deduplicated, ordered per stream, pipelined
//!
//! Every message is published with JetStream and its acknowledgement awaited; a duplicate
//! (same `Nats-Msg-Id` within the duplicate window) is reported as
//! [`PublishAck::duplicate`](edupulse_ports::PublishAck).
//!
//! **Exactly once, whatever the time between two copies.** JetStream's deduplication only
//! remembers ids for its duplicate window, so a relay down for longer than the window, or paused
//! and woken up after its successor took over, would store events a second time. Every message
//! is therefore fenced per subject: it carries `Nats-Expected-Last-Subject-Sequence`, the
//! sequence of the last message on its own subject that precedes it, and the broker refuses it if
//! the subject moved. The publisher learns those sequences from its acknowledgements and, when it
//! does not know one (a new process, an aggregate first seen midway), from a look-up of the
//! subject's last message on the stream leader; a refusal means someone else stored on the
//! subject meanwhile, and a look-up tells whether the event itself is there (a duplicate) or what
//! to expect now. The design is in the private `ledger` module; its limits: a deposed publisher can
//! still store an event nobody stored yet (in order, once), and messages the stream removed
//! (limits, purges) are forgotten by the fence as by the stream. NATS 2.11's
//! `Nats-Expected-Last-Subject-Sequence-Subject` would allow one fence per aggregate across its
//! subjects; the image runs 2.10. The duplicate window ([`NatsConfig::duplicate_window`]) still
//! turns a quick retry of an ambiguous publish into a plain duplicate acknowledgement.
//!
//! **What an acknowledgement is worth is the server's setting.** nats-server acknowledges a
//! write before it reaches the disk unless JetStream runs with `sync_interval: always` (the
//! default syncs every two minutes), and a single replica is lost with its disk. The relay
//! checkpoints after acknowledgements, so a broker that loses acknowledged writes loses them for
//! consumers until a replay. Run production with `sync_interval: always` and `replicas = 3`; the
//! test image ships that configuration as `/etc/nats/durable.conf`.
//!
//! **Ordering under pipelining.** Throughput comes from many messages awaiting acknowledgement at
//! once, but pipelining within one stream can reorder it at the broker: if event 5 of a stream
//! times out while event 6 is acknowledged (the connection dropped between the two and the
//! client reconnected; 5 was lost on the old connection, 6 went out on the new one), retrying 5
//! stores it *after* 6. So the publisher pipelines **across** streams — up to
//! [`NatsConfig::max_in_flight`] messages in flight — but keeps **at most one message in flight
//! per stream**: the next event of a stream is sent only once the previous one is acknowledged.
//! When an event fails, the later events of its stream in the batch are not sent and are
//! reported as [`PublishError::NotAttempted`](edupulse_ports::PublishError), while other
//! streams proceed.
//!
//! **Streaming.** [`EventPublisher::publish_stream`](edupulse_ports::EventPublisher) applies the
//! same rules to events that keep arriving: each joins its stream's queue, the window of
//! `max_in_flight` messages is refilled as acknowledgements come in (never drained at the end of
//! a page), and each event is handed back the moment its own acknowledgement arrives. A stream
//! that failed takes no more events for the rest of the call, even events that arrive after the
//! failure, so a caller retrying the failed one never finds a later version stored before it. A stale copy of a timed-out event that reaches the broker late is older than
//! any retry and is dropped as a duplicate.
//!
//! *Trade-off:* a batch dominated by one hot stream is bound by the round trip (one
//! acknowledgement per event of that stream). Batches of the relay span many aggregates, so in
//! practice the pipeline stays full. NATS 2.11's `Nats-Expected-Last-Subject-Sequence-Subject`
//! header would let the server itself refuse out-of-order writes and allow several in flight per
//! stream; the test image runs 2.10, so this adapter does not rely on it.
//!
//! **Failures** are classified by the client's error kinds and the server's error codes, never by
//! message text: no acknowledgement in time → `Timeout` (ambiguous: retry with the same id); no
//! stream or no responders → `Misconfigured`, unless a stream look-up finds the stream (then it
//! has no leader for the moment, as during an election in a cluster or a restart: `Unavailable`);
//! connection lost → `Unavailable`; a message larger
//! than [`NatsConfig::max_message_bytes`] (payload plus headers) → `TooLarge`, checked before
//! sending; an event type that cannot be a subject token, or a permanent server refusal →
//! `Rejected`. A publish the server refuses for lack of permission gets no reply at all (the
//! server reports the violation on the connection), so it surfaces as `Timeout`; the connection's
//! error events are logged with `tracing`.
//!
//! # Consuming
//!
//! [`NatsConsumer`] is a durable pull consumer with explicit acknowledgement and an unlimited
//! `max_deliver` (the [`RetryPolicy`](edupulse_ports::RetryPolicy) decides when to give up).
//! A retry naks with a delay; a dead letter is copied to the dead-letter stream with reason
//! headers, and the original is terminated only once the copy is acknowledged. Messages that
//! cannot be decoded are dead-lettered by the consumer itself.
//!
//! # The bucket stream, for projections
//!
//! [`provision_feed`] creates (or checks) `<stream>_BUCKETS`, a stream with no subjects of its
//! own that sources the event stream through the subject transform `<prefix>.*.*` →
//! `<prefix>-b.{{partition(N,2)}}.{{wildcard(1)}}.{{wildcard(2)}}`: the server hashes the stream
//! id token into one of `N` buckets, so every event of an aggregate lands in one bucket, in the
//! event stream's order. [`NatsFeed`] reads a bucket with an ordered pull consumer from a
//! sequence the projection store committed (the client recreates it after a gap, so a read has
//! no gap and no repeat); nothing is acknowledged and nothing durable is left on the broker,
//! since progress lives with the projection's state. `N` is fixed at creation; another count over
//! an existing stream is refused (field `sources`). A message without the relay's stream id and
//! version headers becomes an aggregate of its own, so it is parked alone.
//!
//! # Connecting
//!
//! [`connect`] applies TLS and authentication (credentials file, nkey, token, user and password)
//! and classifies a failed first connection ([`ConnectError`]): bad URL, unreachable, refused
//! credentials, TLS. Secrets are never printed: [`NatsConfig`]'s `Debug` masks them and URLs in
//! errors are redacted.

mod asyncapi;
mod cloudevents;
mod config;
mod connect;
mod consumer;
mod ledger;
mod partition;
mod provision;
mod publisher;
mod wire;

pub use asyncapi::asyncapi_document;
pub use cloudevents::{SOURCE as CE_SOURCE, SPEC_VERSION as CE_SPEC_VERSION, ce_type};
pub use config::{
    DEFAULT_ACK_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DUPLICATE_WINDOW, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_MESSAGE_BYTES, NatsAuth, NatsConfig, NatsTls, redact_url,
};
pub use connect::{ConnectError, connect};
pub use consumer::{ConsumerOptions, MAX_REASON_BYTES, NatsConsumer};
pub use partition::{
    DEFAULT_BUCKETS, MAX_BUCKETS, NatsFeed, feed_stream_config, feed_stream_name,
    feed_subject_prefix, provision_feed,
};
pub use provision::{
    DLQ_HEADER_ROOM, ProvisionError, ProvisionReport, StreamOutcome, dlq_stream_config,
    ensure_stream, event_stream_config, provision, validate,
};
pub use publisher::{NatsPublisher, jetstream_context};
pub use wire::{
    dlq_stream_subjects, event_headers, event_subject, headers, stream_filter, stream_subjects,
    type_filter, wire_size,
};
