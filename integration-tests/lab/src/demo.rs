//! `demo`: the whole path, end to end, checked.
//!
//! Concurrent writers append a realistic EduPulse workload (lessons published, quiz submissions,
//! badges, payments) across many aggregates, with expected versions (the harness's workload
//! generator, [`Mix::Edupulse`]); the relay publishes; a durable consumer receives everything;
//! the harness's checker judges the run on the consumer and on the broker's own copy, and the
//! demo prints a summary and the checker's table.
//!
//! Beside the relay run the shipped projections: two achievements workers and one lesson
//! catalogue worker, sharing the feed's buckets. Once every appended event is applied, the
//! projections are judged against the stored events (`projections::judge_projections`): the
//! badges the rule calls for, those awarded (each once, caused by a qualifying submission of its
//! learner) and published by the relay, and one catalogue row per published lesson.

use crate::cli::DemoArgs;
use edupulse_app::latency::ms;
use edupulse_app::projection::{RunnerConfig, wait_until_versions_applied};
use edupulse_app::relay::RelayConfig;
use edupulse_app::wiring::{
    Backbone, RunningProjection, Shipped, WiringError, spawn_relay, spawn_shipped,
};
use edupulse_domain::{DomainEvent, EventId, StreamId, Uuid};
use edupulse_integration_tests::checker::{self, Consumed, Figures, History};
use edupulse_integration_tests::local::{BrokerSync, LocalServers};
use edupulse_integration_tests::projections::{
    ProjectionFigures, judge_projections, stored_events,
};
use edupulse_integration_tests::workload::{
    Mix, Observers, Pace, RUN_KEY, Until, Workload, WorkloadError,
};
use edupulse_ports::projection::ProjectionStore;
use edupulse_ports::{EventConsumer, Settlement};
use secrecy::SecretString;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use thiserror::Error;

/// What the demo found.
#[derive(Debug, Default, Clone)]
pub struct DemoReport {
    /// Events appended (acknowledged by the store).
    pub appended: u64,
    /// Appends the writers gave up after retrying an ambiguous failure for long (their events
    /// stay indeterminate; none on healthy servers).
    pub given_up: u64,
    /// Distinct appended events received by the consumer.
    pub received: u64,
    /// The checker's verdict (the same as every fault suite's): lost, duplicated, redelivered,
    /// reordered, unexpected, judged on the broker's own stream and on the consumer.
    pub verdict: Figures,
    /// Time spent appending.
    pub append_time: Duration,
    /// From the first append to the last event received.
    pub end_to_end_time: Duration,
    /// Commit → broker acknowledgement, p50.
    pub commit_to_ack_p50: Duration,
    /// Commit → broker acknowledgement, p99.
    pub commit_to_ack_p99: Duration,
    /// Commit → broker acknowledgement, max.
    pub commit_to_ack_max: Duration,
    /// Append call latency, p50 / p99.
    pub append_latency: (Duration, Duration),
    /// What the achievements and lesson catalogue projections show, judged against the events.
    pub projections: ProjectionFigures,
    /// Events the projection workers applied (both projections).
    pub projection_applied: u64,
    /// From the end of the appends until both projections had applied every event of the run.
    pub projection_catch_up: Duration,
}

impl DemoReport {
    /// Whether everything arrived exactly once, in order.
    pub fn passed(&self) -> bool {
        self.appended > 0 && self.verdict.kept_the_guarantees() && self.projections.consistent()
    }
}

/// Why the demo could not run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DemoError {
    /// Wiring failed.
    #[error(transparent)]
    Wiring(#[from] WiringError),
    /// Docker could not provide servers.
    #[error(transparent)]
    Docker(#[from] edupulse_integration_tests::local::DockerError),
    /// The writers stopped: the store refused an append or broke a promise.
    #[error("the workload stopped")]
    Workload(#[from] WorkloadError),
    /// A projection did not catch up with the run (parked, or too slow).
    #[error("projection {0} did not catch up")]
    Projection(
        &'static str,
        #[source] edupulse_app::projection::CatchUpError,
    ),
}

/// Runs the demo: with Docker servers when no URLs are given.
///
/// # Errors
/// [`DemoError`]. A failed check is not an error: see [`DemoReport::passed`].
pub async fn run(args: &DemoArgs) -> Result<DemoReport, DemoError> {
    let local = match (&args.pg.database_url, args.nats.nats_url.is_empty()) {
        (Some(_), false) => None,
        _ => {
            eprintln!("starting PostgreSQL and NATS in Docker (images built if missing)…");
            // Acknowledged means fsynced, as the README asks of production.
            let servers = LocalServers::start(BrokerSync::Always).await?;
            eprintln!("servers ready in {:.1} s", servers.startup.as_secs_f64());
            Some(servers)
        }
    };
    let mut pg = args.pg.clone();
    let mut nats = args.nats.clone();
    if let Some(servers) = &local {
        pg.database_url = Some(SecretString::from(servers.database_url.clone()));
        nats.nats_url = vec![servers.nats_url.clone()];
    }
    let mut pg_config = pg.store_config()?;
    pg_config.max_connections = pg_config.max_connections.max(args.writers as u32 + 4);
    let report = run_against(&pg_config, nats.nats_config()?, args.events, args.writers).await;
    drop(local); // removes the containers
    report
}

/// Runs the workload against given servers (also used by the end-to-end tests).
///
/// # Errors
/// [`DemoError`].
pub async fn run_against(
    pg: &edupulse_postgres::PgStoreConfig,
    nats: edupulse_nats::NatsConfig,
    events: u64,
    writers: usize,
) -> Result<DemoReport, DemoError> {
    let store = edupulse_postgres::PgEventStore::connect(pg)
        .await
        .map_err(WiringError::from)?;
    store.migrate().await.map_err(WiringError::from)?;
    let backbone = Backbone::connect(pg, nats).await?;
    let run_id = Uuid::new_v4().simple().to_string();
    let relay = backbone.relay(RelayConfig {
        name: format!("demo-{run_id}"),
        poll_interval: Duration::from_millis(200),
        ..RelayConfig::default()
    });
    let running = spawn_relay(relay, None).await?;
    let mut consumer = backbone
        .consumer(&format!("demo-{}", &run_id[..12]), None)
        .await?;
    let projections = start_projections(&backbone, &run_id).await?;

    // The consumer runs concurrently with the writers.
    // Set once the writers are done, to the number of events they appended.
    let (done_tx, done_rx) = tokio::sync::watch::channel::<Option<u64>>(None);
    let history = History::new();
    let consumer_run_id = run_id.clone();
    let consumed = tokio::spawn(async move {
        let run_id = consumer_run_id;
        let mut received = Consumed::default();
        let mut idle_since = Instant::now();
        // Ends when every appended event arrived, or after 60 s without progress.
        loop {
            let done = *done_rx.borrow();
            if done.is_some_and(|n| received.distinct() as u64 >= n)
                || idle_since.elapsed() > Duration::from_secs(60)
            {
                break;
            }
            let Ok(batch) = consumer.next_batch(512, Duration::from_millis(200)).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if !batch.is_empty() {
                idle_since = Instant::now();
            }
            for d in batch {
                // Events of earlier runs on the same servers are not this run's to judge.
                let ours = d
                    .envelope
                    .metadata
                    .extra
                    .get(RUN_KEY)
                    .and_then(|v| v.as_str())
                    == Some(run_id.as_str());
                if ours {
                    received.record(&d);
                }
                let _ = consumer.settle(d.token, Settlement::Ack).await;
            }
        }
        (received, Instant::now())
    });

    let started = Instant::now();
    let written = Workload {
        writers: writers.max(1),
        mix: Mix::Edupulse,
        pace: Pace::Closed {
            pause: Duration::ZERO,
        },
        until: Until::Events(events),
        run: Some(run_id.clone()),
        ..Workload::default()
    }
    .start(
        backbone.store.clone(),
        Observers {
            history: Some(history.clone()),
            on_commit: None,
        },
    )
    .finish()
    .await?;
    let append_time = started.elapsed();
    let appended = written.appended;
    let _ = done_tx.send(Some(appended));
    let (received, last_received) = consumed
        .await
        .unwrap_or_else(|_| (Consumed::default(), Instant::now()));
    let appended_at = Instant::now();
    let projection_applied = catch_up(&backbone, &projections, &history).await?;
    let projection_catch_up = appended_at.elapsed();

    // The broker's own copy of this run's events, judged like every fault suite's run, and
    // the badges the projection awarded, which the relay publishes like any other event.
    let js = edupulse_nats::jetstream_context(backbone.client.clone(), &backbone.nats);
    let events = stored_events(&*backbone.store).await;
    let awards = awards_of(&events, &history.acknowledged_ids());
    let full_log = broker_with(&js, &backbone.nats.stream_name, &awards).await;
    let stats = running.stats.clone();
    running.stop().await;
    for (_, running) in projections.running {
        running.stop().await;
    }
    let published: HashSet<EventId> = full_log
        .iter()
        .filter_map(|(id, _, _)| id.parse().ok())
        .collect();
    let catalogue = (&*backbone.projection_store(), &projections.catalogue);
    let projection_figures = judge_projections(&events, Some(&run_id), catalogue, &published).await;
    let ours = history.acknowledged_ids();
    let mut broker = full_log;
    broker.retain(|(id, _, _)| id.parse().is_ok_and(|id: EventId| ours.contains(&id)));
    let verdict = checker::judge("demo", &history, &received, &HashSet::new(), &broker);
    Ok(DemoReport {
        appended,
        given_up: written.given_up,
        received: received.distinct() as u64,
        verdict,
        append_time,
        end_to_end_time: last_received.saturating_duration_since(started),
        commit_to_ack_p50: stats.commit_to_ack().quantile(0.5),
        commit_to_ack_p99: stats.commit_to_ack().quantile(0.99),
        commit_to_ack_max: stats.commit_to_ack().max(),
        append_latency: (
            written.latency.quantile(0.5),
            written.latency.quantile(0.99),
        ),
        projections: projection_figures,
        projection_applied,
        projection_catch_up,
    })
}

/// Buckets of the demo's feed.
const BUCKETS: u16 = 16;

/// The shipped projections, running beside the relay.
struct DemoProjections {
    running: Vec<(Shipped, RunningProjection)>,
    catalogue: edupulse_ports::projection::ProjectionId,
    ids: Vec<edupulse_ports::projection::ProjectionId>,
}

/// Starts two achievements workers and one catalogue worker, each projection a generation of
/// its own to this run (so that runs on shared servers do not mix), switched to at once.
async fn start_projections(
    backbone: &Backbone,
    run_id: &str,
) -> Result<DemoProjections, DemoError> {
    let feed = backbone.feed(BUCKETS).await?;
    let store = backbone.projection_store();
    let generation = u32::from_str_radix(&run_id[..7], 16).unwrap_or(1);
    let config = RunnerConfig::new(format!("demo-{}", &run_id[..8]));
    let mut running = Vec::new();
    let mut ids = Vec::new();
    for (shipped, workers) in [(Shipped::Achievements, 2), (Shipped::LessonCatalogue, 1)] {
        let id = shipped.id(generation)?;
        store.activate(&id).await.map_err(WiringError::from)?;
        running.push((
            shipped,
            spawn_shipped(
                backbone,
                shipped,
                generation,
                feed.clone(),
                workers,
                &config,
            )?,
        ));
        ids.push(id);
    }
    Ok(DemoProjections {
        running,
        catalogue: ids[1].clone(),
        ids,
    })
}

/// Waits until both projections applied every acknowledged event of the run; returns what
/// their workers applied.
async fn catch_up(
    backbone: &Backbone,
    projections: &DemoProjections,
    history: &History,
) -> Result<u64, DemoError> {
    let mut last: HashMap<StreamId, u64> = HashMap::new();
    for (stream, version) in history.acknowledged_versions().into_values() {
        let entry = last.entry(stream).or_default();
        *entry = (*entry).max(version);
    }
    let versions: Vec<(StreamId, u64)> = last.into_iter().collect();
    let store = backbone.projection_store();
    for ((shipped, _), id) in projections.running.iter().zip(&projections.ids) {
        wait_until_versions_applied(&*store, id, versions.clone(), Duration::from_secs(300))
            .await
            .map_err(|e| DemoError::Projection(shipped.name(), e))?;
    }
    Ok(projections.running.iter().map(|(_, r)| r.applied()).sum())
}

/// The badges awarded because of the run's events.
fn awards_of(
    events: &[edupulse_domain::EventEnvelope],
    run: &HashSet<EventId>,
) -> HashSet<EventId> {
    let causes: HashSet<String> = run.iter().map(ToString::to_string).collect();
    events
        .iter()
        .filter(|e| matches!(e.event, DomainEvent::BadgeAwarded(_)))
        .filter(|e| {
            e.metadata
                .causation_id
                .as_ref()
                .is_some_and(|c| causes.contains(c.as_str()))
        })
        .map(|e| e.id)
        .collect()
}

/// The broker's log, once it holds every one of `wanted` (or after a minute).
async fn broker_with(
    js: &async_nats::jetstream::Context,
    stream: &str,
    wanted: &HashSet<EventId>,
) -> Vec<(String, String, u64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = checker::broker_log(js, stream).await;
        let have: HashSet<EventId> = log
            .iter()
            .filter_map(|(id, _, _)| id.parse().ok())
            .collect();
        if wanted.is_subset(&have) || Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Prints the report for humans.
pub fn print(report: &DemoReport) {
    let secs = report.append_time.as_secs_f64().max(1e-9);
    let e2e = report.end_to_end_time.as_secs_f64().max(1e-9);
    println!();
    println!("EduPulse event backbone — demo");
    println!("  events appended          {:>10}", report.appended);
    println!("  appends given up         {:>10}", report.given_up);
    println!("  events received          {:>10}", report.received);
    println!(
        "  append throughput        {:>10.0} events/s ({:.2} s)",
        report.appended as f64 / secs,
        secs
    );
    println!(
        "  end-to-end throughput    {:>10.0} events/s ({:.2} s to the last delivery)",
        report.received as f64 / e2e,
        e2e
    );
    println!(
        "  append latency           p50 {:.2} ms, p99 {:.2} ms",
        ms(report.append_latency.0),
        ms(report.append_latency.1)
    );
    println!(
        "  commit → broker ack      p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(report.commit_to_ack_p50),
        ms(report.commit_to_ack_p99),
        ms(report.commit_to_ack_max)
    );
    println!(
        "  projections              {} events applied by 3 workers, caught up {:.2} s after the appends",
        report.projection_applied,
        report.projection_catch_up.as_secs_f64()
    );
    println!();
    println!("The projections, judged against the stored events:");
    println!("{}", report.projections.table());
    println!("The checker's verdict (the fault suites' table, one row):");
    println!("{}", report.verdict.table());
    println!();
    println!(
        "  result                   {}",
        if report.passed() {
            "PASS: every event arrived exactly once, in per-stream order; the projections agree with the events"
        } else {
            "FAIL"
        }
    );
}
