//! The projection runner: drives a [`Projection`] from the partitioned feed, each aggregate in
//! order, aggregates in parallel, every effect exactly once.
//!
//! # The design
//!
//! - **Buckets.** The broker keeps a copy of the event stream split into a fixed number of
//!   buckets by stream id ([`ProjectionFeed`]; on NATS, a stream sourced from the event stream
//!   through a subject transform). All events of an aggregate are in one bucket, in stream order.
//! - **Workers share buckets through leases.** Each worker (a task of any process) says it is
//!   alive ([`ProjectionStore::heartbeat`]), takes free bucket leases ([`LeaseProvider`]) up to
//!   its share (buckets / live workers, rounded up) and gives back what exceeds it. One holder
//!   per bucket means no two workers process an aggregate at once; a dead worker's leases expire
//!   and the others take them within about one lease time to live.
//! - **The store, not the broker, holds progress.** A bucket is read from the position its last
//!   unit committed. A unit (one transaction) applies a batch of events: the projection's writes,
//!   each aggregate's applied version and the bucket's new position commit together. A worker
//!   taking a bucket over starts exactly where its predecessor's last commit left it; a
//!   redelivered event finds its version applied and is passed over; a deposed worker that
//!   wakes up finds the position moved and reads again from there.
//! - **Order per aggregate.** An event is applied only right after its previous version. One
//!   that arrives early waits, parked, for the version it follows (it is never dead-lettered
//!   for it), and is applied in the same unit as that version when it comes; once an aggregate
//!   has a parked event, its later events park behind it. A version that never comes (the relay
//!   skipped it on an operator's order) is given up with `skip`, which accepts the gap.
//! - **A sequenced dead letter.** A handler that fails for good (or keeps failing through the
//!   [`RetryPolicy`]) parks its aggregate, not its bucket: the unit is rolled back and applied
//!   again with that one event parked, so the other aggregates' events of the batch go on.
//!   Operators list parked aggregates, ask for a retry after a fix, or skip an event
//!   ([`ProjectionStore::retry`], [`ProjectionStore::skip`]); the bucket's worker applies the
//!   parked events again, in order.
//! - **Rebuilds are generations.** A [`ProjectionId`] carries a generation: a rebuild runs
//!   generation `n + 1` from the start of the feed into its own state while `n` keeps serving,
//!   and [`ProjectionStore::activate`] switches readers over.
//!
//! # Where things are
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | [`ProjectionRunner`], its configuration and statistics |
//! | `share.rs` | the worker: heartbeats, taking and giving back bucket leases |
//! | `bucket.rs` | one held bucket: reading, units, retries and parking |
//! | `achievements.rs` | the achievements projection (badges awarded through the store) |
//! | `catalogue.rs` | the lesson catalogue projection |
//! | `wait.rs` | waiting until a projection applied given appends |

mod achievements;
mod bucket;
mod catalogue;
mod share;
#[cfg(test)]
mod tests;
mod wait;

pub use achievements::{Achievements, LearnerProgress};
pub use catalogue::{CatalogueEntry, LessonCatalogue};
pub use wait::{CatchUpError, wait_until_applied, wait_until_versions_applied};

use edupulse_ports::projection::{Projection, ProjectionFeed, ProjectionId, ProjectionStore};
use edupulse_ports::{LeaseProvider, RetryPolicy};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How a worker runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunnerConfig {
    /// This worker's name, unique among the projection's workers (shown as the lease holder).
    pub worker: String,
    /// Events read and applied per unit at most.
    pub batch_size: usize,
    /// How long a read waits for events before the worker looks at retries and its share.
    pub poll: Duration,
    /// Once a read brought events, how long to gather more before applying them: one unit
    /// (one commit) for a trickle of events instead of one each.
    pub linger: Duration,
    /// How often the worker says it is alive and rebalances its buckets; a worker silent for
    /// three of these no longer counts.
    pub heartbeat: Duration,
    /// Retries of a failing handler before its event is parked.
    pub retry: RetryPolicy,
}

impl RunnerConfig {
    /// Defaults for worker `worker`: units of 256 events, 250 ms reads, 50 ms of gathering,
    /// 1 s heartbeats, five attempts from 100 ms.
    pub fn new(worker: impl Into<String>) -> Self {
        Self {
            worker: worker.into(),
            batch_size: 256,
            poll: Duration::from_millis(250),
            linger: Duration::from_millis(50),
            heartbeat: Duration::from_secs(1),
            retry: RetryPolicy {
                max_deliveries: 5,
                base_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(2),
            },
        }
    }
}

/// What a worker did so far.
#[derive(Debug, Default)]
pub struct RunnerStats {
    applied: AtomicU64,
    passed_over: AtomicU64,
    parked: AtomicU64,
    units: AtomicU64,
    buckets_held: AtomicU64,
}

/// A reading of [`RunnerStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunnerSnapshot {
    /// Events applied.
    pub applied: u64,
    /// Events passed over because their version was already applied (redeliveries, a takeover).
    pub passed_over: u64,
    /// Events parked (failed, early, or behind a parked one).
    pub parked: u64,
    /// Units committed.
    pub units: u64,
    /// Buckets held now.
    pub buckets_held: u64,
}

impl RunnerStats {
    /// The counters now.
    pub fn snapshot(&self) -> RunnerSnapshot {
        RunnerSnapshot {
            applied: self.applied.load(Ordering::Relaxed),
            passed_over: self.passed_over.load(Ordering::Relaxed),
            parked: self.parked.load(Ordering::Relaxed),
            units: self.units.load(Ordering::Relaxed),
            buckets_held: self.buckets_held.load(Ordering::Relaxed),
        }
    }
}

/// One worker of one projection.
pub struct ProjectionRunner<S: ProjectionStore, P> {
    projection: ProjectionId,
    store: Arc<S>,
    feed: Arc<dyn ProjectionFeed>,
    leases: Arc<dyn LeaseProvider>,
    handler: Arc<P>,
    config: RunnerConfig,
    stats: Arc<RunnerStats>,
}

impl<S, P> ProjectionRunner<S, P>
where
    S: ProjectionStore + 'static,
    P: Projection<S::Unit> + 'static,
{
    /// A worker of `projection`.
    pub fn new(
        projection: ProjectionId,
        store: Arc<S>,
        feed: Arc<dyn ProjectionFeed>,
        leases: Arc<dyn LeaseProvider>,
        handler: Arc<P>,
        config: RunnerConfig,
    ) -> Self {
        Self {
            projection,
            store,
            feed,
            leases,
            handler,
            config,
            stats: Arc::default(),
        }
    }

    /// This worker's counters.
    pub fn stats(&self) -> Arc<RunnerStats> {
        self.stats.clone()
    }

    /// The projection this worker runs.
    pub fn projection(&self) -> &ProjectionId {
        &self.projection
    }

    /// Runs until `stop` is cancelled: takes its share of buckets, applies their events, gives
    /// back what exceeds its share. Failures of the store or the broker are retried; nothing is
    /// lost by stopping at any point.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        share::Worker::new(self).run(stop).await;
    }
}
