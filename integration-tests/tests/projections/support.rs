//! The suite's run: a database and a stream of its own, the relay, writers, the probe
//! projection's workers, and the figures every test reports.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edupulse_app::projection::{RunnerConfig, wait_until_versions_applied};
use edupulse_app::relay::RelayConfig;
use edupulse_app::wiring::{Backbone, RunningProjection, RunningRelay, spawn_relay, spawn_workers};
use edupulse_domain::StreamId;
use edupulse_integration_tests::checker::History;
use edupulse_integration_tests::projections::{Applications, Probe, applications};
use edupulse_integration_tests::workload::{
    Mix, Observers, Pace, Until, Workload, Writers, Written,
};
use edupulse_nats::{NatsConfig, NatsFeed};
use edupulse_ports::projection::{ProjectionId, ProjectionStore};
use edupulse_postgres::{LeaseConfig, PgProjectionStore, PgStoreConfig};
use secrecy::SecretString;

/// Buckets of every run's feed.
pub(crate) const BUCKETS: u16 = 8;

/// Bucket leases expire after this: a dead worker's share is taken over within about it.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(2);

/// A store configuration for `url` with the suite's short leases.
pub(crate) fn pg_config(url: &str) -> PgStoreConfig {
    let mut config = PgStoreConfig::new(SecretString::from(url.to_owned()));
    config.max_connections = 24;
    config.acquire_timeout = Duration::from_secs(3);
    config.lease = LeaseConfig::new(LEASE_TTL).expect("a valid lease TTL");
    config
}

/// A NATS configuration with the run's own stream and prefix.
pub(crate) fn nats_config(servers: Vec<String>, name: &str) -> NatsConfig {
    let mut config = NatsConfig::new(servers, name.to_uppercase(), name.to_owned());
    config.ack_timeout = Duration::from_secs(2);
    config
}

/// Worker settings of the suite: small units (faults land mid-unit), quick heartbeats.
pub(crate) fn runner_config(worker: &str) -> RunnerConfig {
    let mut config = RunnerConfig::new(worker);
    config.batch_size = 32;
    config.poll = Duration::from_millis(100);
    config.heartbeat = Duration::from_millis(300);
    config
}

/// One run of the suite.
pub(crate) struct Run {
    pub(crate) name: String,
    pub(crate) db: edupulse_integration_tests::TestDb,
    pub(crate) pg_url: String,
    pub(crate) backbone: Backbone,
    pub(crate) feed: Arc<NatsFeed>,
    pub(crate) store: Arc<PgProjectionStore>,
    pub(crate) history: Arc<History>,
    relay: Option<RunningRelay>,
}

impl Run {
    /// A run on its own database of the shared PostgreSQL and on `servers` (the shared NATS
    /// when `None`), with the relay running.
    pub(crate) async fn start(what: &str, servers: Option<Vec<String>>) -> Self {
        Self::start_with(what, servers, edupulse_nats::DEFAULT_DUPLICATE_WINDOW).await
    }

    /// As [`Run::start`], with the broker deduplicating within `duplicate_window` only.
    pub(crate) async fn start_with(
        what: &str,
        servers: Option<Vec<String>>,
        duplicate_window: Duration,
    ) -> Self {
        let db = edupulse_integration_tests::fresh_database().await;
        let servers = match servers {
            Some(servers) => servers,
            None => vec![edupulse_integration_tests::shared_nats().await.url()],
        };
        let name = edupulse_integration_tests::unique_name(what);
        let mut nats = nats_config(servers, &name);
        nats.duplicate_window = duplicate_window;
        let backbone = Backbone::connect(&pg_config(db.url()), nats)
            .await
            .expect("connect the backbone");
        let feed = backbone.feed(BUCKETS).await.expect("provision the feed");
        let relay = backbone.relay(RelayConfig {
            name: name.clone(),
            batch_size: 64,
            poll_interval: Duration::from_millis(100),
            lease_retry: Duration::from_millis(250),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            ..RelayConfig::default()
        });
        let relay = spawn_relay(relay, None).await.expect("spawn the relay");
        Self {
            name,
            pg_url: db.url().to_owned(),
            db,
            store: backbone.projection_store(),
            backbone,
            feed,
            history: History::new(),
            relay: Some(relay),
        }
    }

    /// A new LOGIN role member of `group` only; its URL to the run's database.
    pub(crate) async fn login_in(&self, group: &str) -> String {
        use sqlx::Connection;
        let pg = edupulse_integration_tests::shared_postgres().await;
        let role = edupulse_integration_tests::unique_name(group).to_lowercase();
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(self.db.url())
            .await
            .expect("connect");
        sqlx::query(&format!(
            r#"CREATE ROLE "{role}" LOGIN PASSWORD '{password}' IN ROLE {group}"#
        ))
        .execute(&mut admin)
        .await
        .expect("create the login role");
        format!(
            "postgres://{role}:{password}@127.0.0.1:{}/{}",
            pg.port(),
            self.db.name()
        )
    }

    /// Generation `generation` of the probe projection of this run.
    pub(crate) fn probe(&self, generation: u32) -> ProjectionId {
        ProjectionId::new("probe", generation).expect("a valid name")
    }

    /// `workers` probe workers named `<worker>-<i>`.
    pub(crate) fn workers(
        &self,
        projection: &ProjectionId,
        worker: &str,
        workers: usize,
    ) -> RunningProjection {
        spawn_workers(
            &self.backbone,
            projection,
            Arc::new(Probe),
            self.feed.clone(),
            workers,
            &runner_config(worker),
        )
    }

    /// Writers appending `events` quiz submissions to fresh aggregates, at `rate` events/s (an
    /// open loop: the rate holds whatever the latency).
    pub(crate) fn writers(&self, events: u64, rate: f64) -> Writers {
        self.start_writers(
            events,
            Pace::Open {
                events_per_sec: rate,
            },
        )
    }

    /// Writers appending `events` events of the EduPulse mix as fast as they can (learners
    /// submit several quizzes, so badges are earned).
    pub(crate) fn edupulse_writers(&self, events: u64) -> Writers {
        self.start_writers(
            events,
            Pace::Closed {
                pause: Duration::ZERO,
            },
        )
    }

    fn start_writers(&self, events: u64, pace: Pace) -> Writers {
        Workload {
            writers: 8,
            mix: Mix::Edupulse,
            pace,
            until: Until::Events(events),
            run: Some(self.name.clone()),
            ..Workload::default()
        }
        .start(
            self.backbone.store.clone(),
            Observers {
                history: Some(self.history.clone()),
                on_commit: None,
            },
        )
    }

    /// Waits for the writers, failing the test if they hang or the store broke a promise.
    pub(crate) async fn finish_writers(writers: Writers) -> Written {
        tokio::time::timeout(Duration::from_secs(300), writers.finish())
            .await
            .expect("the writers finish")
            .expect("the writers keep the store's promises")
    }

    /// The last acknowledged version of every stream of the run.
    pub(crate) fn acknowledged(&self) -> Vec<(StreamId, u64)> {
        let mut last: HashMap<StreamId, u64> = HashMap::new();
        for (stream, version) in self.history.acknowledged_versions().into_values() {
            let entry = last.entry(stream).or_default();
            *entry = (*entry).max(version);
        }
        last.into_iter().collect()
    }

    /// Waits until `projection` applied every acknowledged event; how long it took.
    pub(crate) async fn caught_up(&self, projection: &ProjectionId) -> Duration {
        let started = Instant::now();
        wait_until_versions_applied(
            &*self.store,
            projection,
            self.acknowledged(),
            Duration::from_secs(180),
        )
        .await
        .unwrap_or_else(|e| panic!("{projection} did not catch up: {e}"));
        started.elapsed()
    }

    /// Events the run acknowledged (each a version that the probe must apply once).
    pub(crate) fn acknowledged_events(&self) -> u64 {
        self.history.acknowledged_versions().len() as u64
    }

    /// Stops the relay.
    pub(crate) async fn stop(mut self) {
        if let Some(relay) = self.relay.take() {
            relay.stop().await;
        }
    }
}

/// One row of the suite's table.
#[derive(Debug, Default)]
pub(crate) struct Row {
    pub(crate) fault: String,
    pub(crate) events: u64,
    pub(crate) figures: Applications,
    pub(crate) parked: u64,
    pub(crate) recovered: Option<Duration>,
}

impl Row {
    /// Reads the probe's figures for `projection` and checks the suite's properties: every
    /// acknowledged event applied once (or parked as expected), none twice, none out of order.
    pub(crate) async fn judge(
        fault: &str,
        run: &Run,
        projection: &ProjectionId,
        parked_expected: u64,
        skipped: u64,
    ) -> Self {
        let (figures, _) = applications(&run.store, projection).await;
        let progress = run.store.progress(projection).await.expect("progress");
        let row = Self {
            fault: fault.to_owned(),
            events: run.acknowledged_events(),
            figures,
            parked: progress.parked_events,
            recovered: None,
        };
        assert_eq!(row.figures.applied_twice, 0, "{fault}: applied twice");
        assert_eq!(row.figures.out_of_order, 0, "{fault}: out of order");
        assert_eq!(row.figures.gaps, skipped, "{fault}: versions never applied");
        assert_eq!(row.parked, parked_expected, "{fault}: parked");
        assert_eq!(
            row.figures.applied + row.parked + skipped,
            row.events,
            "{fault}: every acknowledged event applied, parked or skipped"
        );
        row
    }

    /// A row for a run whose projection is not the probe: events, and what the store counts
    /// as applied and parked (applied twice and out of order are the probe's to count).
    pub(crate) async fn judge_without_probe(
        fault: &str,
        run: &Run,
        projection: &ProjectionId,
    ) -> Self {
        let progress = run.store.progress(projection).await.expect("progress");
        assert_eq!(progress.parked_events, 0, "{fault}: parked");
        Self {
            fault: fault.to_owned(),
            events: run.acknowledged_events(),
            figures: Applications {
                applied: progress.applied,
                ..Applications::default()
            },
            ..Self::default()
        }
    }

    /// Prints the row and appends it to `target/projections-report.md`.
    pub(crate) fn report(&self) {
        let recovered = self
            .recovered
            .map_or_else(|| "–".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()));
        let line = format!(
            "| {:<44} | {:>7} | {:>7} | {:>5} | {:>5} | {:>6} | {:>9} |",
            self.fault,
            self.events,
            self.figures.applied,
            self.figures.applied_twice,
            self.figures.out_of_order,
            self.parked,
            recovered
        );
        println!("| fault | events | applied | twice | out of order | parked | recovered |");
        println!("{line}");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/projections-report.md");
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{line}");
        }
    }
}
