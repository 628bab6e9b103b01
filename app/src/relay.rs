//! The relay: publishes every committed event to the broker, from a named checkpoint.
//!
//! The events table is the outbox. The relay follows the store's commit-safe order
//! ([`edupulse_ports::EventReader::follow`]), publishes in batches, and saves its checkpoint only
//! after every event up to it is acknowledged (or parked, see below). A crash anywhere loses
//! nothing: the next relay resumes from the last saved checkpoint and re-publishes what was
//! acknowledged since (at most `checkpoint_interval` of publishing, plus the batch in flight).
//! The publisher's fence makes the broker refuse those second copies however long the relay was
//! down, and the relay counts them as duplicates.
//!
//! Module map: this file holds the configuration, the statistics and the active loop (lease,
//! read-ahead, checkpoint saver, publishing with retries); `relay/parking.rs` the parked streams;
//! `relay/replay.rs` re-publishing a range ([`Relay::replay`]).
//!
//! # Behaviour
//! - **One active relay per checkpoint name**, by a lease ([`LeaseProvider`]). Others wait as
//!   standbys, retrying every `lease_retry`. The lease expires unless the active relay renews it,
//!   so when the active one dies, or its host or network goes silent, a standby takes over
//!   within about the lease's time to live. When the lease is lost (not renewed in time, or
//!   found taken over) the relay stops publishing at once, mid-batch, and goes back to standby
//!   without saving anything; the lease's store guarantees this happens before a successor can
//!   take it. Each takeover's epoch (a fencing token) is logged and kept in [`RelayStats`].
//! - **Latency and throughput.** Idle, the relay waits for a commit hint ([`CommitHints`], e.g.
//!   PostgreSQL NOTIFY) or the poll interval, so an event is published milliseconds after commit.
//!   Behind, it reads pages of `batch_size` and reads the next page while the current one is being
//!   published, in a task of its own. Checkpoints are saved off the publishing path (a companion
//!   future saves the latest acknowledged cursor at most every `checkpoint_interval`; a save is a
//!   commit, and waiting for it after every batch delayed the next one), and the store's head
//!   (for the lag metric) is read at most once a second when idle. A hint that reads nothing
//!   (its events held back behind an older open transaction) is followed by quick re-reads.
//! - **Broker failures** are retried forever with exponential backoff and jitter (never giving up
//!   silently), capped at `backoff_max`. A retry of an ambiguous publish never stores a second
//!   copy (the publisher's fence). Lag is exported as a metric and logged. A refusal of the whole
//!   broker stream ([`PublishError::Misconfigured`]: sealed, deleted) is retried the same way and
//!   reported by [`RelayStats::blocked_reason`] (and `/readyz`); no event is parked for it.
//! - **Poison events park their own stream.** A row that cannot be decoded, or an event the broker
//!   refuses for good ([`PublishError::is_permanent`]: too large for the broker), is recorded with
//!   its bytes and reason ([`CheckpointStore::park`]); the later events of its stream are held
//!   back, every other stream keeps flowing, and an operator releases the stream (see
//!   `relay/parking.rs`).
//! - **Graceful shutdown**: on cancellation the relay stops reading, lets in-flight publishes
//!   finish and be acknowledged, saves the checkpoint and returns.

use crate::latency::LatencyHistogram;
use chrono::Utc;
use edupulse_domain::StreamId;
use edupulse_ports::{
    CheckpointStore, CommitHints, Cursor, EventPublisher, EventStore, FollowedRow, Lease,
    LeaseProvider, PublishError, RecordedEvent, StoreError,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use rand::Rng;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

/// The ports the relay works with.
#[derive(Clone)]
pub struct RelayPorts {
    /// Where events are read from.
    pub store: Arc<dyn EventStore>,
    /// Wake-up hints after commits.
    pub hints: Arc<dyn CommitHints>,
    /// Checkpoints and dead letters.
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// The lease that makes one relay active per checkpoint.
    pub leases: Arc<dyn LeaseProvider>,
    /// The broker.
    pub publisher: Arc<dyn EventPublisher>,
}

/// The first re-read after a hint that read nothing (doubling up to the poll interval).
const HELD_BACK_RECHECK: Duration = Duration::from_millis(1);

/// Events per page by default. Each page ends with the in-flight window draining (the acks of the
/// last events), so larger pages keep the broker busier; but two pages are in memory at once (one
/// publishing, one read ahead): measured peak RSS during a 1M catch-up was 50 MiB at 2048 and
/// 61.5 MiB at 4096, against a 64 MB budget, for no faster catch-up (it is CPU-bound here).
pub const DEFAULT_BATCH_SIZE: usize = 2048;

/// How the relay behaves.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Checkpoint (and lease) name; one active relay per name.
    pub name: String,
    /// Who this relay is, shown by `status` (host, pid).
    pub holder: String,
    /// Events read and published per batch.
    pub batch_size: usize,
    /// Longest wait between reads when no hint arrives.
    pub poll_interval: Duration,
    /// Shortest time between two checkpoint saves. A save is a write to the store; saving after
    /// every batch costs the store a transaction per batch for nothing, since a crash only
    /// re-publishes (deduplicated) what was acknowledged since the last save. The last cursor
    /// is always saved on a graceful stop.
    pub checkpoint_interval: Duration,
    /// How often a standby tries to take the lease.
    pub lease_retry: Duration,
    /// First retry delay after a failure.
    pub backoff_min: Duration,
    /// Longest retry delay; keep it well below the broker's duplicate window.
    pub backoff_max: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
            holder: format!("pid {}", std::process::id()),
            batch_size: DEFAULT_BATCH_SIZE,
            poll_interval: Duration::from_millis(500),
            checkpoint_interval: Duration::from_millis(100),
            lease_retry: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// What the relay has done, for status, the demo and tests. Cheap to read concurrently.
#[derive(Default)]
pub struct RelayStats {
    /// Events acknowledged as newly stored by the broker.
    pub published: AtomicU64,
    /// Events the broker reported as duplicates (already stored).
    pub duplicates: AtomicU64,
    /// Publish or read attempts that failed and were retried.
    pub retries: AtomicU64,
    /// Streams this relay parked (an event it could not decode or the broker refused for good).
    pub parked: AtomicU64,
    /// Events held back behind a parked event of their stream.
    pub held: AtomicU64,
    /// Why publishing is blocked for every stream (the broker refuses the whole stream), if it is.
    pub blocked: std::sync::Mutex<Option<String>>,
    /// The highest broker sequence acknowledged (saved with each checkpoint).
    pub broker_sequence: AtomicU64,
    /// Global position of the last checkpoint saved.
    pub checkpoint_position: AtomicU64,
    /// Global position of the store's tip at the last check.
    pub head_position: AtomicU64,
    /// Whether this relay holds the lease.
    pub active: AtomicBool,
    /// Times this relay took the lease.
    pub takeovers: AtomicU64,
    /// Epoch (fencing token) of the last lease this relay took; 0 before the first.
    pub lease_epoch: AtomicU64,
    /// Time from the store recording an event to the broker's acknowledgement.
    pub commit_to_ack: LatencyHistogram,
    /// Unix time in milliseconds of the last healthy iteration (lease check or successful read).
    pub heartbeat_ms: AtomicU64,
}

impl RelayStats {
    fn beat(&self) {
        let now = u64::try_from(Utc::now().timestamp_millis()).unwrap_or_default();
        self.heartbeat_ms.store(now, Ordering::Relaxed);
    }

    /// Why the broker refuses every event (a sealed or deleted stream), while it does.
    pub fn blocked_reason(&self) -> Option<String> {
        self.blocked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether the relay had a healthy iteration within `within`.
    pub fn is_healthy(&self, within: Duration) -> bool {
        let now = u64::try_from(Utc::now().timestamp_millis()).unwrap_or_default();
        let last = self.heartbeat_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) <= u64::try_from(within.as_millis()).unwrap_or(u64::MAX)
    }

    /// Approximate number of events not yet published (positions are not dense in commit order,
    /// so this is an estimate; 0 when caught up).
    pub fn lag(&self) -> u64 {
        self.head_position
            .load(Ordering::Relaxed)
            .saturating_sub(self.checkpoint_position.load(Ordering::Relaxed))
    }
}

/// How often, at most, the idle relay reads the store's head for the lag metric.
const HEAD_REFRESH: Duration = Duration::from_secs(1);

/// How often the active relay looks for parked streams an operator asked to release.
const RELEASE_POLL: Duration = Duration::from_secs(1);

/// Why a batch could not be fully settled, or why the active loop ended.
enum Interrupted {
    /// Cancellation was requested while waiting to retry.
    Shutdown,
    /// The lease was lost: stop at once.
    LeaseLost,
}

/// Metric handles updated once per event.
struct EventMetrics {
    published: metrics::Counter,
    duplicates: metrics::Counter,
    commit_to_ack: metrics::Histogram,
}

/// The relay use case. See the module documentation.
pub struct Relay {
    ports: RelayPorts,
    config: RelayConfig,
    stats: Arc<RelayStats>,
    handles: std::sync::OnceLock<EventMetrics>,
}

impl Relay {
    /// A relay over `ports`.
    pub fn new(ports: RelayPorts, config: RelayConfig) -> Self {
        Self {
            ports,
            config,
            stats: Arc::default(),
            handles: std::sync::OnceLock::new(),
        }
    }

    /// Live statistics.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` is cancelled: standby until the lease is taken, then publishes.
    pub async fn run(&self, shutdown: CancellationToken) {
        let span = info_span!("relay", name = %self.config.name);
        async {
            while !shutdown.is_cancelled() {
                let Some(lease) = self.acquire_lease(&shutdown).await else {
                    break;
                };
                self.stats.active.store(true, Ordering::Relaxed);
                self.stats.takeovers.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .lease_epoch
                    .store(lease.epoch(), Ordering::Relaxed);
                metrics::gauge!("edupulse_relay_active").set(1.0);
                info!(
                    holder = %self.config.holder,
                    epoch = lease.epoch(),
                    "lease taken; relay active"
                );
                tokio::select! {
                    () = self.publish_while_active(lease.as_ref(), &shutdown) => {}
                    // Whatever the active loop waits for (a read or a checkpoint save on a
                    // connection that went silent), a lost lease ends it: nothing more is read,
                    // published or saved.
                    () = lease.lost() => {}
                }
                if !lease.is_held() {
                    self.lost();
                }
                self.stats.active.store(false, Ordering::Relaxed);
                metrics::gauge!("edupulse_relay_active").set(0.0);
                drop(lease);
            }
            info!("relay stopped");
        }
        .instrument(span)
        .await;
    }

    async fn acquire_lease(&self, shutdown: &CancellationToken) -> Option<Box<dyn Lease>> {
        let mut logged = false;
        loop {
            let attempt = self
                .ports
                .leases
                .try_acquire(&self.config.name, &self.config.holder);
            let attempt = tokio::select! {
                () = shutdown.cancelled() => return None,
                attempt = attempt => attempt,
            };
            match attempt {
                Ok(Some(lease)) => {
                    self.stats.beat();
                    return Some(lease);
                }
                Ok(None) if !logged => {
                    self.stats.beat();
                    info!("another relay is active; standing by");
                    logged = true;
                }
                Ok(None) => self.stats.beat(),
                Err(e) => warn!(error = %e, "cannot try the lease; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(self.config.lease_retry) => {}
            }
        }
    }

    /// The active loop. Returns on shutdown (after saving) or when the lease is lost.
    ///
    /// Checkpoints are saved by a companion future, off the publishing path: a save is a
    /// PostgreSQL commit (a WAL flush), and waiting for it after every batch would delay the next
    /// batch by that much. The saver always writes the latest acknowledged cursor (intermediate
    /// ones are skipped), at most once per [`RelayConfig::checkpoint_interval`], so at most one
    /// save is in flight and a crash re-publishes at most what was acknowledged since the last
    /// save (deduplicated by the broker).
    async fn publish_while_active(&self, lease: &dyn Lease, shutdown: &CancellationToken) {
        let cursor = match self.load_checkpoint(lease, shutdown).await {
            Some(c) => c,
            None => return,
        };
        self.stats
            .checkpoint_position
            .store(cursor.position, Ordering::Relaxed);
        let (acked, acked_rx) = tokio::sync::watch::channel(cursor);
        let lease_lost = AtomicBool::new(false);
        let work = async {
            let exit = self.active_loop(lease, shutdown, cursor, &acked).await;
            if matches!(exit, Interrupted::LeaseLost) {
                // Another relay may be active already: save nothing more.
                lease_lost.store(true, Ordering::SeqCst);
            }
            drop(acked);
        };
        tokio::join!(work, self.save_in_background(cursor, acked_rx, &lease_lost));
    }

    /// Saves the latest cursor sent on `acked` (beyond `saved`, the checkpoint loaded) until its
    /// sender is dropped (then saves the last one), unless the lease was lost.
    async fn save_in_background(
        &self,
        mut saved: Cursor,
        mut acked: tokio::sync::watch::Receiver<Cursor>,
        lease_lost: &AtomicBool,
    ) {
        loop {
            let open = acked.changed().await.is_ok();
            if lease_lost.load(Ordering::SeqCst) {
                return;
            }
            let latest = *acked.borrow_and_update();
            if latest > saved {
                self.save_checkpoint(latest).await;
                saved = latest;
            }
            if !open {
                return;
            }
            // At most one save per interval. Values sent meanwhile stay unseen, so the next
            // `changed` returns at once with the latest (or, after a stop, reports it closed
            // and the loop saves the last cursor).
            tokio::time::sleep(self.config.checkpoint_interval).await;
        }
    }

    /// Reads and publishes until shutdown (everything acknowledged handed to the saver) or the
    /// loss of the lease.
    async fn active_loop(
        &self,
        lease: &dyn Lease,
        shutdown: &CancellationToken,
        mut cursor: Cursor,
        acked: &tokio::sync::watch::Sender<Cursor>,
    ) -> Interrupted {
        let mut hints: Option<BoxStream<'static, ()>> = None;
        let mut failures = 0u32;
        let mut next_page: Option<Vec<FollowedRow>> = None;
        let mut parked = match self.load_parked(lease, shutdown).await {
            Ok(parked) => parked,
            Err(why) => return why,
        };
        let mut release_checked: Option<std::time::Instant> = None;
        let mut head_refreshed: Option<std::time::Instant> = None;
        // After a hint that read nothing, how soon to read again (see below).
        let mut recheck: Option<Duration> = None;
        loop {
            if shutdown.is_cancelled() {
                return Interrupted::Shutdown;
            }
            if !lease.is_held() {
                return Interrupted::LeaseLost;
            }
            if hints.is_none() {
                hints = self.ports.hints.subscribe().await.ok();
            }
            if release_checked.is_none_or(|t| t.elapsed() >= RELEASE_POLL) {
                release_checked = Some(std::time::Instant::now());
                if let Err(why) = self.release_requested(&mut parked, lease, shutdown).await {
                    return why;
                }
            }
            let page = match next_page.take() {
                Some(page) => Ok(page),
                None => {
                    self.ports
                        .store
                        .follow(cursor, self.config.batch_size)
                        .await
                }
            };
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    self.note_store_error("read", &e);
                    failures += 1;
                    if let Err(why) = self.backoff(failures, lease, shutdown).await {
                        return why;
                    }
                    continue;
                }
            };
            failures = 0;
            self.stats.beat();
            if page.is_empty() {
                // The head is for the lag metric only; reading it costs a query (an aggregate on
                // the events table), so at most once per second, not every time the relay idles.
                if head_refreshed.is_none_or(|t| t.elapsed() >= HEAD_REFRESH) {
                    self.refresh_head().await;
                    head_refreshed = Some(std::time::Instant::now());
                }
                // Idle: wait for a hint, the poll interval, shutdown or the loss of the lease.
                //
                // A hint means a commit, yet the read after it can come back empty: the store
                // holds back events committed after an older transaction still open (any
                // writing transaction, not only appends). That transaction ends within
                // milliseconds but may send no hint of its own, so waiting for the next hint or
                // the poll would delay the held-back events by up to the poll interval. After a
                // hint that read nothing, read again soon, backing off (1, 2, 4… ms).
                let wait = recheck.map_or(self.config.poll_interval, |d| {
                    d.min(self.config.poll_interval)
                });
                let hint = async {
                    match hints.as_mut() {
                        Some(h) => {
                            if h.next().await.is_none() {
                                hints = None;
                            }
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => return Interrupted::Shutdown,
                    () = lease.lost() => return Interrupted::LeaseLost,
                    () = hint => recheck = Some(HELD_BACK_RECHECK),
                    () = tokio::time::sleep(wait) => {
                        recheck = recheck
                            .map(|d| d * 2)
                            .filter(|d| *d < self.config.poll_interval);
                    }
                }
                continue;
            }
            recheck = None;
            // Read the next page while this one is published (catch-up throughput). The read
            // is a task of its own: decoding a page of rows is milliseconds of CPU, and inside
            // this task it would stop the publisher from sending and taking acks meanwhile
            // (the broker then idles); as a task it runs on another worker, or interleaved.
            let last = page.last().map_or(cursor, FollowedRow::cursor);
            let full = page.len() == self.config.batch_size;
            let read_ahead = (full && !shutdown.is_cancelled()).then(|| {
                let store = self.ports.store.clone();
                let limit = self.config.batch_size;
                tokio::spawn(async move { store.follow(last, limit).await.ok() })
            });
            let page = match self.sort_page(page, &mut parked, lease, shutdown).await {
                Ok(page) => page,
                Err(why) => return why,
            };
            let read_ahead = async {
                match read_ahead {
                    Some(task) => task.await.ok().flatten(),
                    None => None,
                }
            };
            let (settled, ahead) = tokio::join!(
                self.settle_batch(&page, lease, shutdown, Some(&mut parked)),
                read_ahead
            );
            next_page = ahead;
            match settled {
                Ok(_) => {
                    cursor = last;
                    acked.send_replace(cursor);
                }
                Err((acked_to, Interrupted::Shutdown)) => {
                    if let Some(c) = acked_to {
                        acked.send_replace(c);
                    }
                    return Interrupted::Shutdown;
                }
                Err((_, Interrupted::LeaseLost)) => return Interrupted::LeaseLost,
            }
        }
    }

    fn lost(&self) {
        error!("lease lost (not renewed in time, or taken over); stopped publishing, standing by");
        metrics::counter!("edupulse_relay_lease_lost_total").increment(1);
    }

    async fn load_checkpoint(
        &self,
        lease: &dyn Lease,
        shutdown: &CancellationToken,
    ) -> Option<Cursor> {
        let mut failures = 0;
        loop {
            match self.ports.checkpoints.load(&self.config.name).await {
                Ok(c) => {
                    let cursor = c.map_or(Cursor::START, |c| c.cursor);
                    info!(%cursor, "resuming from checkpoint");
                    return Some(cursor);
                }
                Err(e) => {
                    self.note_store_error("load checkpoint", &e);
                    failures += 1;
                    self.backoff(failures, lease, shutdown).await.ok()?;
                }
            }
        }
    }

    async fn save_checkpoint(&self, cursor: Cursor) {
        // A failed save is not fatal: the next save covers it, and a crash before then only
        // means re-publishing events the broker will deduplicate.
        let broker_sequence = self.stats.broker_sequence.load(Ordering::Relaxed);
        match self
            .ports
            .checkpoints
            .save(&self.config.name, cursor, broker_sequence)
            .await
        {
            Ok(()) => {
                self.stats
                    .checkpoint_position
                    .store(cursor.position, Ordering::Relaxed);
                metrics::gauge!("edupulse_relay_checkpoint_position").set(cursor.position as f64);
            }
            Err(e) => self.note_store_error("save checkpoint", &e),
        }
    }

    async fn refresh_head(&self) {
        if let Ok(head) = self.ports.store.head().await {
            self.stats
                .head_position
                .store(head.last_position, Ordering::Relaxed);
            metrics::gauge!("edupulse_relay_lag_events").set(self.stats.lag() as f64);
        }
    }

    fn note_store_error(&self, what: &str, e: &StoreError) {
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("edupulse_relay_store_errors_total").increment(1);
        if e.is_retryable() {
            warn!(error = %e, "{what} failed; retrying");
        } else {
            error!(error = %e, "{what} failed (needs an operator); retrying");
        }
    }

    /// Sleeps the backoff for the `failures`-th consecutive failure. `Err` if interrupted.
    async fn backoff(
        &self,
        failures: u32,
        lease: &dyn Lease,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let delay = backoff_delay(&self.config, failures);
        tokio::select! {
            () = shutdown.cancelled() => Err(Interrupted::Shutdown),
            () = lease.lost() => Err(Interrupted::LeaseLost),
            () = tokio::time::sleep(delay) => Ok(()),
        }
    }

    /// Publishes `batch` until every event is acknowledged, or parked with its stream (refused
    /// for good by the broker; with `parked` given, else given up and counted as failed). On
    /// interruption, returns the cursor up to which everything was settled, if any.
    async fn settle_batch(
        &self,
        batch: &[RecordedEvent],
        lease: &dyn Lease,
        shutdown: &CancellationToken,
        mut parked: Option<&mut HashSet<StreamId>>,
    ) -> Result<HashSet<StreamId>, (Option<Cursor>, Interrupted)> {
        let span = info_span!("publish_batch", size = batch.len());
        async {
            metrics::histogram!("edupulse_relay_batch_size").record(batch.len() as f64);
            let mut retry: Vec<RecordedEvent>;
            let mut pending = batch;
            let mut given_up: HashSet<StreamId> = HashSet::new();
            let mut settled_to: Option<Cursor> = None;
            let mut failures = 0u32;
            while !pending.is_empty() {
                if !lease.is_held() {
                    return Err((settled_to, Interrupted::LeaseLost));
                }
                // The lease is watched during the publish itself: losing it stops at once.
                let results = tokio::select! {
                    results = self.ports.publisher.publish(pending) => results,
                    () = lease.lost() => return Err((settled_to, Interrupted::LeaseLost)),
                };
                let mut done = 0;
                let mut failure: Option<&PublishError> = None;
                for (event, result) in pending.iter().zip(&results) {
                    match result {
                        _ if given_up.contains(&event.stream_id) => self.held_back(1),
                        Ok(ack) => {
                            self.stats
                                .broker_sequence
                                .fetch_max(ack.sequence, Ordering::Relaxed);
                            self.acked(event, ack.duplicate);
                        }
                        Err(e) if e.is_permanent() => {
                            given_up.insert(event.stream_id);
                            // Without a parking lot (replay, releases) the caller reports
                            // the given-up stream as failed instead.
                            if let Some(parked) = parked.as_deref_mut() {
                                let raw = event.envelope.encode();
                                let raw = String::from_utf8_lossy(&raw).into_owned();
                                let poison = parking::Poison::of(event, e.to_string(), raw);
                                if let Err(i) = self.park(poison, parked, lease, shutdown).await {
                                    return Err((settled_to, i));
                                }
                            }
                        }
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                    done += 1;
                }
                self.note_blocked(failure);
                if results.len() < pending.len() && failure.is_none() {
                    // A publisher must answer for every event; treat a short answer as a failure.
                    warn!("publisher returned fewer results than events; retrying the rest");
                }
                if done > 0 {
                    settled_to = Some(pending[done - 1].cursor);
                }
                if pending.len() == done {
                    break;
                }
                // What is left, less the streams given up (their events wait behind the parked
                // one). Copied only on this failure path.
                let left: Vec<RecordedEvent> = pending[done..]
                    .iter()
                    .filter(|e| {
                        let held = given_up.contains(&e.stream_id);
                        if held {
                            self.held_back(1);
                        }
                        !held
                    })
                    .cloned()
                    .collect();
                retry = left;
                pending = &retry;
                if pending.is_empty() {
                    break;
                }
                failures += 1;
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("edupulse_relay_retries_total").increment(1);
                let delay = backoff_delay(&self.config, failures);
                warn!(
                    error = failure.map(ToString::to_string).unwrap_or_default(),
                    position = pending[0].position(),
                    retry_in_ms = delay.as_millis() as u64,
                    attempt = failures,
                    "publish failed; retrying with the same event ids"
                );
                if let Some(c) = settled_to {
                    // Progress made before the failure is kept across a crash during the outage.
                    self.save_checkpoint(c).await;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return Err((settled_to, Interrupted::Shutdown)),
                    () = lease.lost() => return Err((settled_to, Interrupted::LeaseLost)),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            self.note_blocked(None);
            Ok(given_up)
        }
        .instrument(span)
        .await
    }

    /// Records why the whole broker stream refuses writes (readiness reports it), or clears it.
    fn note_blocked(&self, failure: Option<&PublishError>) {
        let reason = match failure {
            Some(e @ PublishError::Misconfigured { .. }) => Some(e.to_string()),
            Some(_) => return,
            None => None,
        };
        let mut blocked = self
            .stats
            .blocked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if reason.is_some() && *blocked != reason {
            error!(
                reason = reason.as_deref().unwrap_or_default(),
                "the broker refuses the whole stream; publishing nothing until it is fixed"
            );
        }
        metrics::gauge!("edupulse_relay_blocked").set(if reason.is_some() { 1.0 } else { 0.0 });
        *blocked = reason;
    }

    fn acked(&self, event: &RecordedEvent, duplicate: bool) {
        // Per-event metrics go through handles taken once: the `metrics` macros look the metric
        // up in the registry (hash and lock) at every call, which showed on the catch-up path.
        // Taken at first use, i.e. once running, after the exporter was installed.
        let handles = self.handles.get_or_init(|| EventMetrics {
            published: metrics::counter!("edupulse_relay_published_total"),
            duplicates: metrics::counter!("edupulse_relay_duplicates_total"),
            commit_to_ack: metrics::histogram!("edupulse_relay_commit_to_ack_seconds"),
        });
        if duplicate {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            handles.duplicates.increment(1);
        } else {
            self.stats.published.fetch_add(1, Ordering::Relaxed);
            handles.published.increment(1);
            let latency = (Utc::now() - event.recorded_at)
                .to_std()
                .unwrap_or_default();
            self.stats.commit_to_ack.record(latency);
            handles.commit_to_ack.record(latency.as_secs_f64());
        }
    }
}

/// A lease that is never lost, for work that needs none (replay).
struct AlwaysHeld;

#[async_trait::async_trait]
impl Lease for AlwaysHeld {
    async fn lost(&self) {
        std::future::pending::<()>().await;
    }
    fn is_held(&self) -> bool {
        true
    }
    fn epoch(&self) -> u64 {
        0
    }
}

/// Exponential backoff with full jitter: a random delay in [min, min·2^n], capped at max.
fn backoff_delay(config: &RelayConfig, failures: u32) -> Duration {
    let exp = config
        .backoff_min
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let cap = exp.min(config.backoff_max).max(config.backoff_min);
    let jittered = rand::rng().random_range(config.backoff_min.as_secs_f64()..=cap.as_secs_f64());
    let delay = Duration::from_secs_f64(jittered);
    debug!(?delay, failures, "backoff");
    delay
}

mod parking;
mod replay;
#[cfg(test)]
mod tests;

pub use replay::{ReplayMode, ReplayReport};
