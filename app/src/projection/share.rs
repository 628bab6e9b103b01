//! A worker: says it is alive, takes its share of bucket leases and gives back the rest.

use super::ProjectionRunner;
use super::bucket::BucketTask;
use edupulse_ports::projection::{Bucket, Projection, ProjectionStore};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A worker's held buckets, each served by its own task.
pub(super) struct Worker<S: ProjectionStore, P> {
    runner: Arc<ProjectionRunner<S, P>>,
    held: BTreeMap<Bucket, (CancellationToken, JoinHandle<()>)>,
}

impl<S, P> Worker<S, P>
where
    S: ProjectionStore + 'static,
    P: Projection<S::Unit> + 'static,
{
    pub(super) fn new(runner: Arc<ProjectionRunner<S, P>>) -> Self {
        Self {
            runner,
            held: BTreeMap::new(),
        }
    }

    pub(super) async fn run(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.runner.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => self.rebalance().await,
            }
        }
        self.give_back_all().await;
    }

    /// One heartbeat: forget finished tasks (a lost lease), then take or give back buckets so
    /// as to hold this worker's share.
    async fn rebalance(&mut self) {
        self.held.retain(|_, (_, task)| !task.is_finished());
        let Some(share) = self.share().await else {
            return;
        };
        while self.held.len() > share {
            let Some((bucket, _)) = self.held.last_key_value() else {
                break;
            };
            let bucket = *bucket;
            self.give_back(bucket).await;
        }
        if self.held.len() < share {
            self.take_free_buckets(share).await;
        }
        let held = self.held.len() as u64;
        let before = self.runner.stats.buckets_held.load(Ordering::Relaxed);
        if held != before {
            tracing::info!(projection = %self.runner.projection, worker = %self.runner.config.worker, buckets = held, share, "buckets held");
        }
        self.runner
            .stats
            .buckets_held
            .store(self.held.len() as u64, Ordering::Relaxed);
        self.report_progress().await;
    }

    /// The projection's progress as gauges of `/metrics` (the same figures from every worker).
    async fn report_progress(&self) {
        let runner = &self.runner;
        let progress = match runner.store.progress(&runner.projection).await {
            Ok(progress) => progress,
            Err(error) => {
                tracing::debug!(projection = %runner.projection, %error, "progress not read");
                return;
            }
        };
        let name = runner.projection.to_string();
        let gauge = |metric: &'static str, value: u64| {
            metrics::gauge!(metric, "projection" => name.clone()).set(value as f64);
        };
        gauge("edupulse_projection_lag_messages", progress.pending);
        gauge("edupulse_projection_applied", progress.applied);
        gauge(
            "edupulse_projection_parked_aggregates",
            progress.parked_aggregates,
        );
        gauge("edupulse_projection_parked_events", progress.parked_events);
        gauge("edupulse_projection_workers", progress.workers);
    }

    /// Buckets / live workers, rounded up; `None` when the store cannot be reached (the worker
    /// keeps what it holds: its leases say whether it still may).
    async fn share(&self) -> Option<usize> {
        let runner = &self.runner;
        let ttl = runner.config.heartbeat.saturating_mul(3);
        let live = match runner
            .store
            .heartbeat(&runner.projection, &runner.config.worker, ttl)
            .await
        {
            Ok(live) => live.max(1),
            Err(error) => {
                tracing::warn!(projection = %runner.projection, %error, "heartbeat failed");
                return None;
            }
        };
        let buckets = u64::from(runner.feed.buckets());
        usize::try_from(buckets.div_ceil(live)).ok()
    }

    /// Tries the free buckets, starting at a place of this worker's own so that workers
    /// starting together do not all race for the same ones.
    async fn take_free_buckets(&mut self, share: usize) {
        let buckets = self.runner.feed.buckets();
        let start = start_of(&self.runner.config.worker, buckets);
        for offset in 0..buckets {
            if self.held.len() >= share {
                break;
            }
            let bucket = (start + offset) % buckets;
            if !self.held.contains_key(&bucket) {
                self.try_take(bucket).await;
            }
        }
    }

    async fn try_take(&mut self, bucket: Bucket) {
        let runner = &self.runner;
        let name = runner.projection.bucket_lease(bucket);
        match runner
            .leases
            .try_acquire(&name, &runner.config.worker)
            .await
        {
            Ok(Some(lease)) => {
                tracing::debug!(projection = %runner.projection, bucket, epoch = lease.epoch(), "bucket taken");
                let token = CancellationToken::new();
                let task = BucketTask::new(runner.clone(), bucket, lease);
                let handle = tokio::spawn(task.run(token.clone()));
                self.held.insert(bucket, (token, handle));
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(projection = %runner.projection, bucket, %error, "bucket lease not taken");
            }
        }
    }

    /// Stops the bucket's task (it ends its unit or rolls it back) and lets its lease go.
    async fn give_back(&mut self, bucket: Bucket) {
        if let Some((token, task)) = self.held.remove(&bucket) {
            token.cancel();
            if let Err(error) = task.await {
                tracing::error!(bucket, %error, "bucket task failed");
            }
            tracing::debug!(projection = %self.runner.projection, bucket, "bucket given back");
        }
    }

    async fn give_back_all(&mut self) {
        let buckets: Vec<Bucket> = self.held.keys().copied().collect();
        for bucket in buckets {
            self.give_back(bucket).await;
        }
        self.runner.stats.buckets_held.store(0, Ordering::Relaxed);
    }
}

/// Where `worker` starts looking for free buckets: a stable spread of its name.
fn start_of(worker: &str, buckets: Bucket) -> Bucket {
    let folded = worker
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    Bucket::try_from(folded % u32::from(buckets.max(1))).unwrap_or(0)
}
