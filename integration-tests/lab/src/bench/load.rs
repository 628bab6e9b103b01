//! Appenders through the store's real `append` (group commit on): at full speed or paced, each
//! caller owning its aggregates and appending with their exact expected version, as a service
//! instance owning a shard would.

use super::BenchError;
use super::raw::{Measured, join_all};
use edupulse_app::latency::LatencyHistogram;
use edupulse_domain::{ExpectedVersion, StreamId};
use edupulse_ports::EventAppender;
use edupulse_postgres::PgEventStore;
use rand::SeedableRng;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;

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

/// Where paced appenders note when each event's `append` returned.
pub(crate) type Committed = Option<super::timing::Committed>;

/// What a load did.
pub(crate) struct LoadResult {
    /// Events appended and the time until the last call returned.
    pub(crate) measured: Measured,
    /// Latency of each `append` call.
    pub(crate) latency: Arc<LatencyHistogram>,
}

/// Runs `load` against `store`.
pub(crate) async fn run(store: &Arc<PgEventStore>, load: Load) -> Result<LoadResult, BenchError> {
    run_noting(store, load, None).await
}

/// Runs `load`; paced appenders note when each event's `append` returned in `committed`.
pub(crate) async fn run_noting(
    store: &Arc<PgEventStore>,
    load: Load,
    committed: Committed,
) -> Result<LoadResult, BenchError> {
    if let Some(rate) = load.pace {
        return paced(store, load, rate, committed).await;
    }
    let latency = Arc::new(LatencyHistogram::default());
    let started = Instant::now();
    let deadline = started + load.duration;
    let callers = load.callers.max(1);
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let store = store.clone();
        let latency = latency.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
            let mut streams: Vec<(StreamId, Option<u64>)> = (0..load.streams_per_caller.max(1))
                .map(|_| (StreamId::new(), None))
                .collect();
            let mut appended = 0u64;
            let mut turn = caller;
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let slot = turn % streams.len();
                turn += 1;
                let (stream, version) = streams[slot];
                let batch = super::workload::batch(stream, load.batch.max(1), &mut rng);
                let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                let mut attempts = 0;
                loop {
                    let t0 = Instant::now();
                    match store.append(stream, expected, batch.clone()).await {
                        Ok(out) => {
                            latency.record(t0.elapsed());
                            appended += out.events.len() as u64;
                            streams[slot].1 = Some(out.last_version());
                            break;
                        }
                        // Same batch, same ids: an idempotent retry.
                        Err(e) if e.is_retryable() && attempts < 20 => {
                            attempts += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => return Err(BenchError::Store(e)),
                    }
                }
            }
            Ok::<_, BenchError>(appended)
        }));
    }
    let events = join_all(tasks).await?.into_iter().sum();
    Ok(LoadResult {
        measured: Measured {
            events,
            elapsed: started.elapsed(),
        },
        latency,
    })
}

/// Open loop: one call (of `load.batch` events, to a new aggregate) per tick at `rate` events per
/// second, each in a task of its own, so a slow call does not lower the offered rate.
async fn paced(
    store: &Arc<PgEventStore>,
    load: Load,
    rate: f64,
    committed: Committed,
) -> Result<LoadResult, BenchError> {
    let latency = Arc::new(LatencyHistogram::default());
    let limit = Arc::new(tokio::sync::Semaphore::new(load.callers.max(1)));
    let calls_per_sec = rate / load.batch.max(1) as f64;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / calls_per_sec.max(1e-3)));
    // Late ticks fire at once: the offered rate holds even after a stall of the timer.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let started = Instant::now();
    let deadline = started + load.duration;
    let mut tasks = tokio::task::JoinSet::new();
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    while Instant::now() < deadline {
        ticker.tick().await;
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let stream = StreamId::new();
        let batch = super::workload::batch(stream, load.batch.max(1), &mut rng);
        let (store, latency, committed) = (store.clone(), latency.clone(), committed.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let t0 = Instant::now();
            let out = store
                .append(stream, ExpectedVersion::NoStream, batch)
                .await?;
            let now = Instant::now();
            latency.record(now - t0);
            if let Some(committed) = committed {
                let mut committed = committed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for e in &out.events {
                    committed.insert(e.id, now);
                }
            }
            Ok::<_, BenchError>(out.events.len() as u64)
        });
    }
    let mut events = 0;
    while let Some(done) = tasks.join_next().await {
        events += done.map_err(|e| BenchError::Task(e.to_string()))??;
    }
    Ok(LoadResult {
        measured: Measured {
            events,
            elapsed: started.elapsed(),
        },
        latency,
    })
}
