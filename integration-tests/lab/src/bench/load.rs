//! The bench's loads, in its own vocabulary (callers, batch, rate, duration), run by the harness's
//! one workload generator ([`edupulse_integration_tests::workload`]) through the store's real
//! `append` (group commit on). Full-speed loads are closed loop, each caller owning its aggregates
//! and appending with their exact expected version; paced loads are open loop.

use super::BenchError;
use super::raw::Measured;
use edupulse_app::latency::LatencyHistogram;
use edupulse_integration_tests::checker::History;
use edupulse_integration_tests::workload::{
    Batch, CommitObserver, Mix, Observers, Pace, Until, Workload,
};
use edupulse_postgres::PgEventStore;
use std::sync::Arc;
use std::time::Duration;

/// A load to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    /// Concurrent callers (closed loop: each waits for its call before the next). Paced loads are
    /// open loop instead: a call starts at each tick whatever the others do, up to this many at
    /// once.
    pub(crate) callers: usize,
    /// Events per `append` call (all to one stream, as the port requires).
    pub(crate) batch: usize,
    /// Aggregates each caller cycles through.
    pub(crate) streams_per_caller: usize,
    /// Total events per second across callers; `None` = as fast as possible.
    pub(crate) pace: Option<f64>,
    /// How long callers keep starting new calls.
    pub(crate) duration: Duration,
}

impl Load {
    fn workload(self) -> Workload {
        Workload {
            writers: self.callers.max(1),
            streams_per_writer: self.streams_per_caller.max(1),
            mix: Mix::QuizSubmissions,
            batch: Batch::Fixed(self.batch.max(1)),
            pace: self.pace.map_or(
                Pace::Closed {
                    pause: Duration::ZERO,
                },
                |events_per_sec| Pace::Open { events_per_sec },
            ),
            until: Until::Elapsed(self.duration),
            // A measurement with appends given up is worthless: fail it sooner than a suite would.
            give_up_after: Duration::from_secs(10),
            ..Workload::default()
        }
    }
}

/// What a load did.
pub(crate) struct LoadResult {
    /// Events appended and the time until the last call returned.
    pub(crate) measured: Measured,
    /// Latency of each `append` call.
    pub(crate) latency: LatencyHistogram,
}

/// Runs `load` against `store`, with nothing recorded but its counts (a throughput row).
pub(crate) async fn run(store: &Arc<PgEventStore>, load: Load) -> Result<LoadResult, BenchError> {
    run_observed(store, load, None, None).await
}

/// Runs `load`, recording into `history` (for the checker) and telling `on_commit` when each
/// append returned.
pub(crate) async fn run_observed(
    store: &Arc<PgEventStore>,
    load: Load,
    history: Option<Arc<History>>,
    on_commit: Option<CommitObserver>,
) -> Result<LoadResult, BenchError> {
    let observers = Observers { history, on_commit };
    let written = load
        .workload()
        .start(store.clone(), observers)
        .finish()
        .await?;
    if written.given_up > 0 {
        return Err(BenchError::GaveUp {
            appends: written.given_up,
        });
    }
    Ok(LoadResult {
        measured: Measured {
            events: written.appended,
            elapsed: written.elapsed,
        },
        latency: written.latency,
    })
}
