//! Fixtures of the NATS suite: configurations with unique names, workloads of recorded events,
//! a relay-like retry loop, and reading a stream back to check what the broker holds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use edupulse_domain::{ContextId, EventEnvelope, Metadata, StreamId, TraceParent, Uuid};
use edupulse_integration_tests::unique_name;
use edupulse_nats::{
    NatsConfig, NatsPublisher, ProvisionError, connect, headers, jetstream_context, provision,
};
use edupulse_ports::{Cursor, EventPublisher, PublishError, RecordedEvent};
use futures::StreamExt;

pub(crate) const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A configuration with a unique stream name and subject prefix.
pub(crate) fn config(servers: Vec<String>, what: &str) -> NatsConfig {
    let name = unique_name(what);
    let mut config = NatsConfig::new(servers, name.to_uppercase(), name);
    config.ack_timeout = Duration::from_secs(2);
    config
}

/// Two publishers, each with a connection of its own (two processes), over one fresh stream of
/// the shared server: what the publisher conformance kit needs.
pub(crate) async fn fresh_publishers() -> (NatsPublisher, NatsPublisher) {
    let nats = edupulse_integration_tests::shared_nats().await;
    let config = config(vec![nats.url()], "kit");
    let (_, a) = setup(&config).await;
    let (_, b) = setup(&config).await;
    (a, b)
}

/// A publisher and a durable consumer (acknowledgement wait 2 s) of one fresh stream of the
/// shared server: what the consumer conformance kit needs.
pub(crate) async fn publisher_and_consumer() -> (NatsPublisher, edupulse_nats::NatsConsumer) {
    let nats = edupulse_integration_tests::shared_nats().await;
    let config = config(vec![nats.url()], "consumer-kit");
    let (client, publisher) = setup(&config).await;
    let mut options = edupulse_nats::ConsumerOptions::new("kit");
    options.ack_wait = Duration::from_secs(2);
    let consumer = edupulse_nats::NatsConsumer::create(client, &config, options)
        .await
        .expect("create the consumer");
    (publisher, consumer)
}

/// Connects and provisions (retrying while JetStream is not ready, as in a fresh cluster).
pub(crate) async fn setup(config: &NatsConfig) -> (async_nats::Client, NatsPublisher) {
    let client = connect(config).await.expect("connect");
    let js = jetstream_context(client.clone(), config);
    let started = Instant::now();
    loop {
        match provision(&js, config).await {
            Ok(_) => break,
            Err(e @ ProvisionError::Unavailable { .. })
                if started.elapsed() < Duration::from_secs(30) =>
            {
                eprintln!(
                    "provision: {e} ({:?}); retrying",
                    std::error::Error::source(&e)
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("provision: {e:?}"),
        }
    }
    let publisher = NatsPublisher::new(client.clone(), config);
    (client, publisher)
}

/// The recorded form of an envelope (as the store would hand it to the relay).
pub(crate) fn recorded(
    envelope: EventEnvelope,
    stream_version: u64,
    position: u64,
) -> RecordedEvent {
    RecordedEvent {
        stream_id: envelope.stream_id(),
        envelope,
        stream_version,
        cursor: Cursor {
            commit: position,
            position,
        },
        recorded_at: chrono::Utc::now(),
        body: None,
    }
}

/// Metadata with every field that travels in headers.
pub(crate) fn metadata(i: u64) -> Metadata {
    Metadata {
        correlation_id: Some(ContextId::new(format!("req-{i}")).expect("id")),
        causation_id: Some(ContextId::new(format!("cmd-{i}")).expect("id")),
        traceparent: Some(TraceParent::new(TRACEPARENT).expect("traceparent")),
        ..Metadata::default()
    }
}

/// An event of `stream`, alternating lessons and badges.
pub(crate) fn envelope(stream: StreamId, i: u64) -> EventEnvelope {
    edupulse_integration_tests::sample_event(stream, i).with_metadata(metadata(i))
}

/// `per_stream` events in each of `streams` streams, interleaved round robin (as concurrent
/// writers commit them), with positions from `first_position`.
pub(crate) fn workload(streams: usize, per_stream: u64) -> Vec<RecordedEvent> {
    let ids: Vec<StreamId> = (0..streams).map(|_| StreamId::new()).collect();
    let mut events = Vec::with_capacity(streams * per_stream as usize);
    let mut position = 0;
    for version in 1..=per_stream {
        for stream in &ids {
            position += 1;
            events.push(recorded(envelope(*stream, position), version, position));
        }
    }
    events
}

/// An envelope of an event type this build does not know (decoded from JSON).
pub(crate) fn unknown_envelope(event_type: &str, stream: StreamId) -> EventEnvelope {
    let json = serde_json::json!({
        "id": Uuid::now_v7(),
        "aggregate_id": stream,
        "occurred_at": "2024-05-01T10:00:00Z",
        "version": 1,
        "metadata": {"correlation_id": "req-unknown"},
        "event": {"type": event_type, "payload": {"course_id": Uuid::new_v4()}}
    });
    EventEnvelope::decode(json.to_string().as_bytes()).expect("unknown type decodes")
}

/// A short name of an error variant, for counting.
pub(crate) fn kind(error: &PublishError) -> &'static str {
    match error {
        PublishError::Timeout => "timeout",
        PublishError::Unavailable(_) => "unavailable",
        PublishError::Misconfigured { .. } => "misconfigured",
        PublishError::TooLarge { .. } => "too_large",
        PublishError::Rejected { .. } => "rejected",
        PublishError::NotAttempted => "not_attempted",
        _ => "other",
    }
}

/// What a relay-like loop saw.
#[derive(Debug, Default)]
pub(crate) struct RunStats {
    /// `publish` calls.
    pub(crate) calls: usize,
    /// Errors by kind.
    pub(crate) errors: BTreeMap<&'static str, usize>,
    /// Acks reported as duplicates.
    pub(crate) duplicates: usize,
}

impl RunStats {
    pub(crate) fn retryable_errors(&self) -> usize {
        self.errors.values().sum()
    }
}

/// Publishes `events` as the relay would: whatever fails (retryably) is published again, in order,
/// after a short backoff, until everything is acknowledged or `deadline` passes (panics then, or
/// on a permanent error).
pub(crate) async fn publish_until_done(
    publisher: &NatsPublisher,
    events: &[RecordedEvent],
    deadline: Duration,
) -> RunStats {
    let started = Instant::now();
    let mut stats = RunStats::default();
    let mut pending: Vec<RecordedEvent> = events.to_vec();
    while !pending.is_empty() {
        stats.calls += 1;
        let results = publisher.publish(&pending).await;
        assert_eq!(results.len(), pending.len());
        let mut failed = Vec::new();
        for (event, result) in pending.into_iter().zip(results) {
            match result {
                Ok(ack) => stats.duplicates += usize::from(ack.duplicate),
                Err(e) => {
                    assert!(!e.is_permanent(), "permanent failure: {e:?}");
                    *stats.errors.entry(kind(&e)).or_default() += 1;
                    failed.push(event);
                }
            }
        }
        pending = failed;
        if !pending.is_empty() {
            assert!(
                started.elapsed() < deadline,
                "still {} events unpublished after {deadline:?}: {stats:?}",
                pending.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    stats
}

/// One message as stored in the stream.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) sequence: u64,
    pub(crate) subject: String,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
}

impl Stored {
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.as_str().to_owned())
    }

    /// The stream id and stream version headers (every event carries both).
    pub(crate) fn stream_and_version(&self) -> (String, u64) {
        let stream = self.header(headers::STREAM_ID).expect("stream id");
        let version = self
            .header(headers::STREAM_VERSION)
            .expect("version")
            .parse()
            .expect("number");
        (stream, version)
    }
}

/// Every message of stream `name`, in stream order (read with an ephemeral consumer).
pub(crate) async fn read_stream(js: &Context, name: &str) -> Vec<Stored> {
    // Retried: right after a node of a cluster died, the meta leader may be re-elected.
    let started = Instant::now();
    let (expected, consumer) = loop {
        let attempt = async {
            let mut stream = js.get_stream(name).await.map_err(|e| e.to_string())?;
            let expected = stream
                .info()
                .await
                .map_err(|e| e.to_string())?
                .state
                .messages;
            let consumer = stream
                .create_consumer(edupulse_integration_tests::read_back_config())
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((expected, consumer))
        };
        match attempt.await {
            Ok(ready) => break ready,
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("reading {name}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("reading {name}: {e}"),
        }
    };
    let mut stored = Vec::new();
    let started = Instant::now();
    while (stored.len() as u64) < expected {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "reading {name} timed out"
        );
        let mut batch = consumer
            .batch()
            .max_messages(1000)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .expect("batch");
        while let Some(message) = batch.next().await {
            let message = message.expect("message");
            let sequence = message.info().expect("info").stream_sequence;
            stored.push(Stored {
                sequence,
                subject: message.subject.to_string(),
                headers: message.headers.clone().unwrap_or_default(),
                payload: message.payload.clone(),
            });
        }
    }
    stored.sort_by_key(|m| m.sequence);
    stored
}

/// How many messages stream `name` holds.
pub(crate) async fn message_count(js: &Context, name: &str) -> u64 {
    let mut stream = js.get_stream(name).await.expect("stream");
    stream.info().await.expect("info").state.messages
}

/// Checks that the broker holds exactly `events`, each once, and per stream in version order
/// (stream versions 1, 2, 3… in broker sequence order). Returns the number of streams.
pub(crate) fn assert_exactly_once_in_order(stored: &[Stored], events: &[RecordedEvent]) -> usize {
    let mut ids = HashSet::new();
    for m in stored {
        let id = m.header(headers::MSG_ID).expect("Nats-Msg-Id");
        assert!(ids.insert(id.clone()), "event {id} stored twice");
    }
    let expected: HashSet<String> = events.iter().map(|e| e.envelope.id.to_string()).collect();
    let missing = expected.difference(&ids).count();
    let unexpected = ids.difference(&expected).count();
    assert_eq!((missing, unexpected), (0, 0), "lost / unexpected events");
    assert_stream_prefixes(stored);
    let mut versions: HashMap<String, u64> = HashMap::new();
    for m in stored {
        let (stream, version) = m.stream_and_version();
        versions.insert(stream, version);
    }
    versions.len()
}

/// Checks the per-stream invariant at the broker: in broker order, each stream's versions are
/// exactly 1, 2, 3… — no gap (a later event stored without an earlier one), no reordering, no
/// duplicate.
pub(crate) fn assert_stream_prefixes(stored: &[Stored]) {
    let mut last: HashMap<String, u64> = HashMap::new();
    for m in stored {
        let (stream, version) = m.stream_and_version();
        let previous = last.insert(stream.clone(), version).unwrap_or(0);
        assert_eq!(
            version,
            previous + 1,
            "stream {stream}: version {version} stored after {previous} (seq {})",
            m.sequence
        );
    }
}

/// A plain JetStream context over `client` (for raw publishes and reads).
pub(crate) fn raw(client: &async_nats::Client) -> Context {
    jetstream::new(client.clone())
}

pub(crate) const BATCH: usize = 200;

/// Publishes `events` in batches of [`BATCH`], each until fully acknowledged, counting batches
/// done, with `pace` between batches (as a relay following steady appends), so that a fault
/// injected after the first batches lands mid-run.
pub(crate) fn spawn_relay(
    publisher: NatsPublisher,
    events: Vec<RecordedEvent>,
    done: Arc<AtomicUsize>,
    pace: Duration,
) -> tokio::task::JoinHandle<RunStats> {
    tokio::spawn(async move {
        let mut total = RunStats::default();
        for batch in events.chunks(BATCH) {
            let stats = publish_until_done(&publisher, batch, Duration::from_secs(90)).await;
            total.calls += stats.calls;
            total.duplicates += stats.duplicates;
            for (k, v) in stats.errors {
                *total.errors.entry(k).or_default() += v;
            }
            done.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(pace).await;
        }
        total
    })
}

pub(crate) async fn wait_batches(done: &AtomicUsize, n: usize) {
    let started = Instant::now();
    while done.load(Ordering::SeqCst) < n {
        assert!(started.elapsed() < Duration::from_secs(30), "relay stuck");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
