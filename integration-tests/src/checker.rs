//! The history of a run and its verdict, in Jepsen's vocabulary: the one definition of lost,
//! duplicated, redelivered, reordered and unexpected, used by the demo and by every suite.
//!
//! Writers record what they **attempted**, what the store **acknowledged** (append committed,
//! with the stream version it got), what failed **ambiguously** ([`StoreError::Unavailable`]:
//! it may have committed) and what is known **not** to have committed (a rolled-back caller
//! transaction). The consumer side records every delivery. The verdict ([`Figures`]):
//!
//! - **lost**: acknowledged, never consumed;
//! - **unexpected**: consumed, never acknowledged, and not an unresolved ambiguous append
//!   (those are **indeterminate**: retried with the same ids, the store reports a replay, so a
//!   run normally ends with none);
//! - **duplicated**: one event id delivered as a *first* delivery more than once, i.e. stored
//!   twice by the broker in spite of its deduplication; **redelivered** counts deliveries with
//!   `attempt > 1` (an ack that did not reach the broker), which are harmless and reported apart.
//!   Where the fault may kill the node leading the consumer, first deliveries repeated by the new
//!   consumer leader count as redeliveries ([`Figures::consumer_leader_may_be_lost`]); the broker's
//!   stream must still hold each event once;
//! - **reordered**: per stream, in the broker's stream (read back by sequence after the run), a
//!   version that is not the previous + 1 (versions dead-lettered on purpose skipped): the
//!   per-stream publication order the backbone guarantees. The consumer's first deliveries are
//!   checked the same way and reported apart (**delivery out of order**): JetStream hands the
//!   messages of a pull whose requester went away (a fetch given up during an outage) to a later
//!   pull, behind newer ones, with the same delivery count — consumers see per-stream order only
//!   modulo such re-queued messages, and must not rely on more.
//! - The broker's copy is also checked for duplicates (an id stored twice).
//!
//! [`StoreError::Unavailable`]: edupulse_ports::StoreError::Unavailable

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use edupulse_domain::{EventEnvelope, EventId, StreamId};
use edupulse_ports::{AppendOutcome, Delivery};

/// Locks, ignoring poisoning (a panicking writer must not hide the verdict).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the writers did.
#[derive(Debug, Default)]
pub struct History {
    inner: Mutex<HistoryInner>,
}

#[derive(Debug, Default)]
struct HistoryInner {
    attempted: HashSet<EventId>,
    acknowledged: HashMap<EventId, (StreamId, u64)>,
    ambiguous: HashSet<EventId>,
    not_committed: HashSet<EventId>,
    retryable_errors: u64,
    conflicts: u64,
}

impl History {
    /// A shared, empty history.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The events are about to be appended (counted once, whatever the retries).
    pub fn attempt(&self, events: &[EventEnvelope]) {
        let mut h = lock(&self.inner);
        h.attempted.extend(events.iter().map(|e| e.id));
    }

    /// The store acknowledged the append (a replay of an ambiguous attempt included).
    pub fn acknowledged(&self, outcome: &AppendOutcome) {
        let mut h = lock(&self.inner);
        for e in &outcome.events {
            h.ambiguous.remove(&e.id);
            h.acknowledged
                .insert(e.id, (outcome.stream_id, e.stream_version));
        }
    }

    /// The append failed with a retryable error: it may or may not have committed.
    pub fn ambiguous(&self, events: &[EventEnvelope]) {
        let mut h = lock(&self.inner);
        h.retryable_errors += 1;
        h.ambiguous.extend(events.iter().map(|e| e.id));
    }

    /// The events are known not to be committed (rolled back): they must never be consumed.
    pub fn not_committed(&self, events: &[EventEnvelope]) {
        let mut h = lock(&self.inner);
        for e in events {
            h.ambiguous.remove(&e.id);
            h.not_committed.insert(e.id);
        }
    }

    /// An optimistic concurrency conflict was seen (and handled by the writer).
    pub fn conflict(&self) {
        lock(&self.inner).conflicts += 1;
    }

    /// Number of acknowledged events.
    pub fn acknowledged_count(&self) -> usize {
        lock(&self.inner).acknowledged.len()
    }

    /// The acknowledged events.
    pub fn acknowledged_ids(&self) -> HashSet<EventId> {
        lock(&self.inner).acknowledged.keys().copied().collect()
    }

    /// The acknowledged events with their stream and version.
    pub fn acknowledged_versions(&self) -> HashMap<EventId, (StreamId, u64)> {
        lock(&self.inner).acknowledged.clone()
    }

    /// Appends that failed with a retryable error (each retry counts).
    pub fn retryable_errors(&self) -> u64 {
        lock(&self.inner).retryable_errors
    }

    /// Conflicts seen by writers.
    pub fn conflicts(&self) -> u64 {
        lock(&self.inner).conflicts
    }
}

/// What the consumer received.
#[derive(Debug, Default)]
pub struct Consumed {
    /// Per event id: the attempts of its deliveries.
    deliveries: HashMap<EventId, Vec<u64>>,
    /// Per stream: the versions of first deliveries, in delivery order.
    versions: HashMap<StreamId, Vec<u64>>,
    /// First deliveries lacking a stream version header (counted as reordered: unverifiable).
    unversioned: u64,
    /// When set, the envelopes received (to compare them with what was appended).
    pub envelopes: Option<HashMap<EventId, EventEnvelope>>,
}

impl Consumed {
    /// Records one delivery.
    pub fn record(&mut self, d: &Delivery) {
        if let Some(envelopes) = &mut self.envelopes {
            envelopes.insert(d.envelope.id, d.envelope.clone());
        }
        self.note(
            d.envelope.id,
            d.envelope.stream_id(),
            d.stream_version,
            d.attempt,
        );
    }

    /// The broker's copy ([`broker_log`]) as if a consumer had received it, each message once: for
    /// a run with no consumer of its own (the bench judges what the relay stored). Messages
    /// whose headers hold no event id or stream id are left out (they are nobody's events).
    pub fn from_broker(log: &[(String, String, u64)]) -> Self {
        let mut consumed = Self::default();
        for (id, stream, version) in log {
            if let (Ok(id), Ok(stream)) = (id.parse(), stream.parse()) {
                consumed.note(id, stream, Some(*version), 1);
            }
        }
        consumed
    }

    fn note(&mut self, id: EventId, stream: StreamId, version: Option<u64>, attempt: u64) {
        let attempts = self.deliveries.entry(id).or_default();
        attempts.push(attempt);
        let first_seen = attempts.len() == 1;
        // Order is judged on first deliveries only; a redelivery after a lost ack is not a
        // reordering of the stream, and a second copy stored by the broker is a duplicate.
        if first_seen && attempt == 1 {
            match version {
                Some(version) => self.versions.entry(stream).or_default().push(version),
                None => self.unversioned += 1,
            }
        }
    }

    /// Distinct events received.
    pub fn distinct(&self) -> usize {
        self.deliveries.len()
    }

    /// Whether `id` was received.
    pub fn contains(&self, id: &EventId) -> bool {
        self.deliveries.contains_key(id)
    }
}

/// One row of the figures table.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// What the run did to the backbone (the row's name).
    pub fault: String,
    /// Events the writers tried to append.
    pub attempted: u64,
    /// Events the store acknowledged as committed.
    pub acknowledged: u64,
    /// Events whose append ended ambiguously and was never resolved.
    pub indeterminate: u64,
    /// Messages the broker holds in the run's stream (each stored once if dedup held).
    pub stored: u64,
    /// Distinct events the consumer received.
    pub consumed: u64,
    /// Acknowledged, never consumed.
    pub lost: u64,
    /// Consumed, never acknowledged (and not an unresolved ambiguous append).
    pub unexpected: u64,
    /// Stored twice by the broker, or delivered twice as a first delivery.
    pub duplicated: u64,
    /// The part of `duplicated` seen by the consumer (an id delivered as a first delivery more
    /// than once) rather than in the broker's stream.
    pub first_delivered_twice: u64,
    /// Deliveries after the first (an acknowledgement lost): harmless, reported apart.
    pub redelivered: u64,
    /// Versions of a stream stored by the broker out of order.
    pub reordered: u64,
    /// First deliveries to the consumer out of their stream's order (see `judge`).
    pub delivery_out_of_order: u64,
    /// Events left out on purpose (parked and skipped; excluded from `lost`).
    pub dead_lettered: u64,
    /// From the fault healing to every event acknowledged before it being consumed.
    pub recovery: Option<Duration>,
    /// Free-form notes (retries seen, takeovers…).
    pub notes: String,
    /// The first reorderings found, for the failure message.
    pub reorder_examples: Vec<String>,
}

/// Judges a run: `history` against `consumed`. `dead_lettered` are ids the relay was expected
/// to dead-letter (not lost), `stored` the broker's message count of the run's stream.
pub fn judge(
    fault: &str,
    history: &History,
    consumed: &Consumed,
    dead_lettered: &HashSet<EventId>,
    broker: &[(String, String, u64)],
) -> Figures {
    let h = lock(&history.inner);
    let lost = h
        .acknowledged
        .keys()
        .filter(|id| !consumed.contains(id) && !dead_lettered.contains(id))
        .count() as u64;
    let unexpected = consumed
        .deliveries
        .keys()
        .filter(|id| {
            !h.acknowledged.contains_key(id)
                && (!h.ambiguous.contains(id) || h.not_committed.contains(id))
        })
        .count() as u64;
    let duplicated = consumed
        .deliveries
        .values()
        .filter(|attempts| attempts.iter().filter(|&&a| a == 1).count() > 1)
        .count() as u64;
    // Per stream, each first delivery must be the previous version + 1, skipping only the
    // versions dead-lettered on purpose.
    let skipped: HashSet<(StreamId, u64)> = dead_lettered
        .iter()
        .filter_map(|id| h.acknowledged.get(id).copied())
        .collect();
    // The broker's own order (stream sequence): the per-stream publication order the backbone
    // guarantees. Each stream's versions must follow each other, dead letters skipped.
    let skipped_text: HashSet<(String, u64)> =
        skipped.iter().map(|(s, v)| (s.to_string(), *v)).collect();
    let mut reordered = 0;
    let mut examples = Vec::new();
    let mut broker_last: HashMap<&str, u64> = HashMap::new();
    let mut broker_ids: HashSet<&str> = HashSet::new();
    let mut broker_duplicated = 0;
    for (id, stream, version) in broker {
        if !broker_ids.insert(id) {
            broker_duplicated += 1;
        }
        let prev = broker_last.insert(stream, *version).unwrap_or(0);
        let mut next = prev + 1;
        while skipped_text.contains(&(stream.clone(), next)) {
            next += 1;
        }
        if *version != next {
            reordered += 1;
            if examples.len() < 10 {
                examples.push(format!(
                    "broker: stream {stream}: version {version} stored after {prev}"
                ));
            }
        }
    }
    // The consumer's delivery order: JetStream may hand a message back to a later pull (a pull
    // whose requester went away), so this is reported, not a guarantee of the backbone.
    let mut delivery_out_of_order = consumed.unversioned;
    for (stream, versions) in &consumed.versions {
        let mut prev = 0;
        for &version in versions {
            let mut next = prev + 1;
            while skipped.contains(&(*stream, next)) {
                next += 1;
            }
            if version != next {
                delivery_out_of_order += 1;
                if examples.len() < 10 {
                    examples.push(format!(
                        "delivery: stream {stream}: version {version} after {prev}"
                    ));
                }
            }
            prev = version;
        }
    }
    let redelivered = consumed
        .deliveries
        .values()
        .map(|attempts| attempts.iter().filter(|&&a| a > 1).count() as u64)
        .sum();
    Figures {
        fault: fault.to_owned(),
        attempted: h.attempted.len() as u64,
        acknowledged: h.acknowledged.len() as u64,
        indeterminate: h.ambiguous.len() as u64,
        stored: broker.len() as u64,
        consumed: consumed.distinct() as u64,
        lost,
        unexpected,
        duplicated: duplicated + broker_duplicated,
        first_delivered_twice: duplicated,
        redelivered,
        reordered,
        delivery_out_of_order,
        dead_lettered: dead_lettered.len() as u64,
        recovery: None,
        notes: String::new(),
        reorder_examples: examples,
    }
}

impl Figures {
    /// For a fault that loses the node leading the consumer: JetStream replicates a consumer's
    /// delivered and acked state asynchronously, so the new consumer leader may deliver again,
    /// as a first delivery, messages already delivered and acked (at-least-once to consumers,
    /// which deduplicate by event id). Those count as redeliveries; a duplicate in the broker's
    /// own stream still counts as duplicated.
    pub fn consumer_leader_may_be_lost(&mut self) {
        self.duplicated -= self.first_delivered_twice;
        self.redelivered += self.first_delivered_twice;
        self.first_delivered_twice = 0;
    }

    /// Prints the row, appends it to `target/faults-report.md`, then asserts the invariants:
    /// lost = unexpected = duplicated = reordered = 0, something was acknowledged, and the
    /// broker stores each event once.
    pub fn report_and_check(&self) {
        let row = self.row();
        println!("{HEADER}\n{SEPARATOR}\n{row}");
        eprintln!("faults: {row}");
        append_report(&row);
        for example in &self.reorder_examples {
            eprintln!("faults: {}: {example}", self.fault);
        }
        assert!(self.acknowledged > 0, "nothing was acknowledged: {self:?}");
        assert_eq!(self.lost, 0, "lost events: {self:?}");
        assert_eq!(self.unexpected, 0, "unexpected events: {self:?}");
        assert_eq!(self.duplicated, 0, "duplicated events: {self:?}");
        assert_eq!(self.reordered, 0, "reordered events: {self:?}");
        assert_eq!(
            self.stored, self.consumed,
            "the broker stores each consumed event exactly once: {self:?}"
        );
    }

    /// Whether the run kept every guarantee: nothing lost, unexpected, duplicated or reordered,
    /// and the broker holds each consumed event once.
    pub fn kept_the_guarantees(&self) -> bool {
        self.lost == 0
            && self.unexpected == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.stored == self.consumed
    }

    /// The table of this one row, header included (Markdown).
    pub fn table(&self) -> String {
        format!("{HEADER}\n{SEPARATOR}\n{}", self.row())
    }

    fn row(&self) -> String {
        let mut dead = if self.dead_lettered > 0 {
            format!("{} left out on purpose; ", self.dead_lettered)
        } else {
            String::new()
        };
        if self.delivery_out_of_order > 0 {
            dead.push_str(&format!(
                "{} first deliveries out of stream order (JetStream re-queued a pull's messages); ",
                self.delivery_out_of_order
            ));
        }
        let recovery = self
            .recovery
            .map_or_else(|| "—".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()));
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {dead}{} |",
            self.fault,
            self.attempted,
            self.acknowledged,
            self.indeterminate,
            self.stored,
            self.consumed,
            self.lost,
            self.unexpected,
            self.duplicated,
            self.redelivered,
            self.reordered,
            recovery,
            self.notes
        )
    }
}

const HEADER: &str = "| fault | attempted | acknowledged | indeterminate | published (in broker) | consumed | lost | unexpected | duplicated | redelivered | reordered | time to recover | notes |";
const SEPARATOR: &str = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|";

/// `target/faults-report.md` of the workspace (or `$CARGO_TARGET_DIR`).
fn report_path() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        std::path::PathBuf::from,
    );
    target.join("faults-report.md")
}

/// Appends one row (the header first when the file is new). One `write` per row: rows of
/// tests running in parallel do not interleave.
fn append_report(row: &str) {
    let path = report_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        let _ = f.write_all(format!("{HEADER}\n{SEPARATOR}\n").as_bytes());
    }
    match std::fs::OpenOptions::new().append(true).open(&path) {
        Ok(mut f) => {
            let _ = f.write_all(format!("{row}\n").as_bytes());
        }
        Err(e) => eprintln!("faults: cannot write {}: {e}", path.display()),
    }
}

/// What the broker stores in `stream`, in stream sequence order: (event id, stream id, stream
/// version) from each message's headers, read with an ephemeral consumer. The verdict's
/// `broker` argument: order and duplicates are judged on the broker's own copy.
///
/// # Panics
/// When the stream cannot be read back within two minutes.
pub async fn broker_log(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<(String, String, u64)> {
    broker_log_since(js, stream, 1).await
}

/// The broker's sequence the next message of `stream` will get (where a run's part of a shared
/// stream starts, for [`broker_log_since`]).
///
/// # Errors
/// The stream cannot be read, as text.
pub async fn next_sequence(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Result<u64, String> {
    let mut s = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let info = s.info().await.map_err(|e| e.to_string())?;
    Ok(info.state.last_sequence + 1)
}

/// [`broker_log`] from stream sequence `first` on (a run's part of a stream others wrote too).
///
/// # Panics
/// When the stream cannot be read back within two minutes.
pub async fn broker_log_since(
    js: &async_nats::jetstream::Context,
    stream: &str,
    first: u64,
) -> Vec<(String, String, u64)> {
    use async_nats::jetstream::consumer::DeliverPolicy;
    use futures::StreamExt as _;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (expected, consumer) = loop {
        let attempt = async {
            let mut s = js.get_stream(stream).await.map_err(|e| e.to_string())?;
            let state = &s.info().await.map_err(|e| e.to_string())?.state;
            let messages = if first <= state.first_sequence {
                state.messages
            } else {
                (state.last_sequence + 1).saturating_sub(first)
            };
            let config = async_nats::jetstream::consumer::pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: first.max(1),
                },
                ..crate::read_back_config()
            };
            let consumer = s.create_consumer(config).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((messages, consumer))
        };
        match attempt.await {
            Ok(found) => break found,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "cannot read the stream {stream} back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let mut log = Vec::with_capacity(usize::try_from(expected).unwrap_or_default());
    while (log.len() as u64) < expected {
        assert!(
            std::time::Instant::now() < deadline,
            "reading the stream {stream} back timed out"
        );
        let Ok(mut batch) = consumer
            .batch()
            .max_messages(1000)
            .expires(Duration::from_secs(1))
            .messages()
            .await
        else {
            continue;
        };
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), batch.next()).await
        {
            let header = |name: &str| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default()
            };
            log.push((
                header(MSG_ID),
                header(STREAM_ID),
                header(STREAM_VERSION).parse().unwrap_or(0),
            ));
        }
    }
    log
}

/// The header names the relay sets (mirrored from `edupulse_nats::headers`, which this harness
/// does not depend on: a copy checked by the NATS suite's header test).
const MSG_ID: &str = "Nats-Msg-Id";
const STREAM_ID: &str = "Edupulse-Stream-Id";
const STREAM_VERSION: &str = "Edupulse-Stream-Version";
