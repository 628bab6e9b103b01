//! Projection workers on PostgreSQL and NATS: the store's projection tables, the broker's bucket
//! stream, and the projections this product ships.

use super::{Backbone, WiringError};
use crate::projection::{
    Achievements, LessonCatalogue, ProjectionRunner, RunnerConfig, RunnerStats,
};
use edupulse_domain::achievements::QuizAceRule;
use edupulse_nats::NatsFeed;
use edupulse_ports::projection::{Bucket, Projection, ProjectionFeed, ProjectionId};
use edupulse_postgres::{PgProjectionStore, PgProjectionUnit};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The projections this product ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[non_exhaustive]
pub enum Shipped {
    /// Badges awarded through the store when a learner meets [`QuizAceRule`].
    Achievements,
    /// The read model of published lessons.
    LessonCatalogue,
}

impl Shipped {
    /// The projection's name (in its tables, leases and metrics).
    pub fn name(self) -> &'static str {
        match self {
            Shipped::Achievements => "achievements",
            Shipped::LessonCatalogue => "lesson-catalogue",
        }
    }

    /// Generation `generation` of it.
    ///
    /// # Errors
    /// Never for the shipped names.
    pub fn id(self, generation: u32) -> Result<ProjectionId, WiringError> {
        ProjectionId::new(self.name(), generation).map_err(|e| WiringError::Config(e.to_string()))
    }
}

impl Backbone {
    /// The projection store on the event store's database.
    pub fn projection_store(&self) -> Arc<PgProjectionStore> {
        Arc::new(self.store.projections())
    }

    /// The bucket stream of `buckets` buckets, provisioned (created, or checked to have that
    /// many), as a feed.
    ///
    /// # Errors
    /// [`WiringError::Provision`], for another bucket count among others.
    pub async fn feed(&self, buckets: Bucket) -> Result<Arc<NatsFeed>, WiringError> {
        let js = edupulse_nats::jetstream_context(self.client.clone(), &self.nats);
        edupulse_nats::provision_feed(&js, &self.nats, buckets).await?;
        Ok(Arc::new(NatsFeed::new(
            self.client.clone(),
            &self.nats,
            buckets,
        )))
    }
}

/// Workers of one projection running in the background.
pub struct RunningProjection {
    /// Each worker's counters.
    pub stats: Vec<Arc<RunnerStats>>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningProjection {
    /// What all workers applied, passed over and parked so far.
    pub fn applied(&self) -> u64 {
        self.stats.iter().map(|s| s.snapshot().applied).sum()
    }

    /// Stops every worker gracefully (units end or roll back, leases are let go).
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Waits until the workers stop (after `shutdown` is cancelled).
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// The token that stops the workers.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Starts `workers` workers of `projection` (named `<worker>-<i>`), applying `handler`.
pub fn spawn_workers<P>(
    backbone: &Backbone,
    projection: &ProjectionId,
    handler: Arc<P>,
    feed: Arc<dyn ProjectionFeed>,
    workers: usize,
    config: &RunnerConfig,
) -> RunningProjection
where
    P: Projection<PgProjectionUnit> + 'static,
{
    let shutdown = CancellationToken::new();
    let store = backbone.projection_store();
    let (mut stats, mut tasks) = (Vec::new(), Vec::new());
    for i in 0..workers.max(1) {
        let mut config = config.clone();
        config.worker = format!("{}-{i}", config.worker);
        let runner = Arc::new(ProjectionRunner::new(
            projection.clone(),
            store.clone(),
            feed.clone(),
            backbone.store.clone(),
            handler.clone(),
            config,
        ));
        stats.push(runner.stats());
        tasks.push(tokio::spawn(runner.run(shutdown.child_token())));
    }
    RunningProjection {
        stats,
        shutdown,
        tasks,
    }
}

/// Starts `workers` workers of generation `generation` of a shipped projection.
///
/// # Errors
/// [`WiringError::Config`].
pub fn spawn_shipped(
    backbone: &Backbone,
    shipped: Shipped,
    generation: u32,
    feed: Arc<dyn ProjectionFeed>,
    workers: usize,
    config: &RunnerConfig,
) -> Result<RunningProjection, WiringError> {
    let projection = shipped.id(generation)?;
    Ok(match shipped {
        Shipped::Achievements => spawn_workers(
            backbone,
            &projection,
            Arc::new(Achievements::new(QuizAceRule::default())),
            feed,
            workers,
            config,
        ),
        Shipped::LessonCatalogue => spawn_workers(
            backbone,
            &projection,
            Arc::new(LessonCatalogue),
            feed,
            workers,
            config,
        ),
    })
}
