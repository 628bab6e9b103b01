//! `bench`: throughput and latency measured against the machine's own ceilings.
//!
//! Figures on a shared 2-core machine are noisy, so everything is measured in **one run against
//! the same servers** and read as ratios: the store and the relay against raw batched inserts
//! (row 1), raw pipelined acknowledged publishes (row 2) and the seed's design (row 3).
//!
//! | phase | what |
//! |---|---|
//! | 1 | raw PostgreSQL: `INSERT … SELECT FROM unnest(…)`, 1000 rows per statement and transaction, 4 connections, rows of the events' columns and size, into a scratch table without the store's indexes, triggers or checks |
//! | 2 | raw JetStream: pipelined publishes (1024 awaiting their ack), same size and headers as the relay's, a fresh `Nats-Msg-Id` each, to a scratch stream |
//! | 2c | as 2, with the relay's ordering and fence only: 1024 subjects, one message in flight on each, each with `Nats-Expected-Last-Subject-Sequence` |
//! | 3 | the seed's design: one transaction per event (INSERT of the envelope as jsonb), then a core publish (no ack); 1 and 16 callers |
//! | 4 | the store's `append` (group commit on): batches of 1, 10, 100, 1000 × 1, 16, 64 callers, each for a fixed time |
//! | 5 | the relay catching up from a backlog (`--backlog`, spread over 10 000 aggregates), from its checkpoint to caught up, in a process of its own |
//! | 6 | commit → ack latency with the relay running, appenders paced at 1k and 5k events/s |
//! | 7 | the relay's peak RSS during 5 |
//! | 8 | the achievements projection, 4 workers over 16 buckets, applying the stream the catch-up published (events/s applied, against the relay's catch-up rate) |
//! | + | the ceiling "batched insert + pipelined publish together", and end to end: appenders at full speed with the relay running, until every event is acknowledged by JetStream |
//!
//! Servers come from `DATABASE_URL` / `NATS_URL`, or are started in Docker (PostgreSQL with
//! `fsync` on) as for `demo`. Each run works in a database of its own (`edupulse_bench_<id>`,
//! dropped at the end) and JetStream streams and subjects of its own (deleted at the end), so it
//! can run against shared servers without touching their data. If the database cannot be created
//! (no `CREATEDB`), the bench stops: it writes into the given database only when told to
//! (`--bench-database given`), since the events it appends would stay in that database's
//! append-only events table.
//!
//! CPU time per event is reported per phase for the client (this process, or the relay process
//! during the catch-up) and, when the bench started the servers in Docker, for PostgreSQL and
//! nats-server (their cgroups' CPU accounting): that says which side bounds a figure.
//!
//! Outputs: the table on stdout, `bench.json` and `bench.svg` under `--out`.

mod catchup;
mod load;
mod phases;
mod raw;
pub mod report;
mod sys;
mod timing;
mod workload;

pub use catchup::RelayMode;
pub use report::BenchReport;

use crate::cli::{BenchArgs, BenchDatabase, BenchPhase};
use edupulse_app::wiring::WiringError;
use edupulse_domain::Uuid;
use edupulse_integration_tests::local::{BrokerSync, DockerError, LocalNats, LocalServers};
use edupulse_integration_tests::workload::WorkloadError;
use edupulse_ports::StoreError;
use report::{P99_TARGET_MS, Target};
use secrecy::{ExposeSecret, SecretString};
use sqlx::Connection;
use std::path::PathBuf;

use std::time::Duration;
use sys::CpuProbe;
use thiserror::Error;

/// Why the bench could not run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BenchError {
    /// Docker could not provide servers.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// The backbone could not be connected.
    #[error(transparent)]
    Wiring(#[from] WiringError),
    /// The store failed (not retryable, or retried too often).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The appenders stopped: the store refused an append, broke a promise, or was unavailable
    /// during a measurement.
    #[error("appenders: {0}")]
    Workload(#[from] WorkloadError),
    /// A raw PostgreSQL step failed.
    #[error("PostgreSQL ({what}): {source}")]
    Postgres {
        /// The step.
        what: &'static str,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A raw NATS step failed.
    #[error("NATS ({what}): {source}")]
    Nats {
        /// The step.
        what: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store stayed unavailable for so long during a measurement that appenders gave up:
    /// the figures would be meaningless. Rerun on a quieter machine.
    #[error("{appends} appends were given up: the store was unavailable during a measurement")]
    GaveUp {
        /// Appends given up.
        appends: u64,
    },
    /// The bench could not create a database of its own beside the given one; it never writes
    /// into the given database unless told to (`--bench-database given`).
    #[error(
        "cannot create the bench's own database ({0}); grant CREATEDB, or pass \
         --bench-database given to write into the given (scratch) database"
    )]
    OwnDatabase(String),
    /// The live phase's events, judged by the checker, were not each stored once in order.
    #[error("the checker's verdict on the live phase: {0}")]
    Verdict(String),
    /// The relay did not start or did not catch up in time.
    #[error("relay: {0}")]
    Relay(String),
    /// A task of the bench panicked or was cancelled.
    #[error("bench task: {0}")]
    Task(String),
    /// The outputs could not be written.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How to run the bench beyond its command-line arguments.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Where the relay runs during the catch-up.
    pub relay: RelayMode,
}

/// Runs the bench (the relay in a process of its own: this executable's `relay` command), prints
/// the table and writes the outputs.
///
/// # Errors
/// [`BenchError`].
pub async fn run(args: &BenchArgs) -> Result<(), BenchError> {
    let relay = match std::env::current_exe() {
        Ok(exe) => RelayMode::Subprocess(exe),
        Err(_) => RelayMode::InProcess,
    };
    run_with(args, &BenchOptions { relay }).await?;
    Ok(())
}

/// Runs the bench with `options`, prints the table, writes `bench.json` and `bench.svg` under
/// `args.out`, and returns the report.
///
/// # Errors
/// [`BenchError`].
pub async fn run_with(args: &BenchArgs, options: &BenchOptions) -> Result<BenchReport, BenchError> {
    let local = match (&args.pg.database_url, args.nats.nats_url.is_empty()) {
        (Some(_), false) => None,
        _ => {
            eprintln!("starting PostgreSQL (fsync on) and NATS in Docker…");
            // nats-server's default sync, as the rows measured before; the cost of syncing
            // every write is the row of its own below, on a second server.
            let servers = LocalServers::start(BrokerSync::ServerDefault).await?;
            eprintln!("servers ready in {:.1} s", servers.startup.as_secs_f64());
            Some(servers)
        }
    };
    let durable = match &local {
        Some(_) => Some(LocalNats::start(BrokerSync::Always).await?),
        None => None,
    };
    let mut pg = args.pg.clone();
    let mut nats = args.nats.clone();
    let mut probe = CpuProbe::default();
    if let Some(servers) = &local {
        pg.database_url = Some(SecretString::from(servers.database_url.clone()));
        nats.nats_url = vec![servers.nats_url.clone()];
        let (pg_id, nats_id) = servers.ids();
        probe = CpuProbe {
            postgres: Some(pg_id),
            nats: Some(nats_id),
        };
    }
    let run_id = Uuid::new_v4().simple().to_string()[..12].to_owned();
    nats.nats_stream = format!("BENCH_{run_id}");
    nats.subject_prefix = format!("bench-{run_id}");
    let given = pg.store_config()?.url;
    let database = match args.bench_database {
        BenchDatabase::Own => Scratch::create(&given, &format!("edupulse_bench_{run_id}")).await?,
        BenchDatabase::Given => Scratch::given(),
    };
    let url = database.url.clone().unwrap_or_else(|| given.clone());
    pg.database_url = Some(url.clone());

    let result = run_phases(args, options, &pg, &nats, &run_id, &probe, durable.as_ref()).await;
    database.remove(&given).await;
    drop(durable);
    drop(local);
    let report = result?;
    print!("{}", report.table());
    let (json, svg) = report
        .write(&args.out)
        .map_err(|(path, source)| BenchError::Output { path, source })?;
    println!("\nwrote {} and {}", json.display(), svg.display());
    Ok(report)
}

/// The bench's own database, dropped at the end.
struct Scratch {
    name: String,
    url: Option<SecretString>,
}

impl Scratch {
    /// Creates the bench's own database beside `given`.
    async fn create(given: &SecretString, name: &str) -> Result<Self, BenchError> {
        let mut url = url::Url::parse(given.expose_secret())
            .map_err(|_| BenchError::OwnDatabase("the database URL is not understood".into()))?;
        url.set_path(&format!("/{name}"));
        let created = async {
            let mut conn = sqlx::PgConnection::connect(given.expose_secret()).await?;
            sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
                .execute(&mut conn)
                .await?;
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        created.map_err(|e| BenchError::OwnDatabase(e.to_string()))?;
        Ok(Self {
            name: name.to_owned(),
            url: Some(SecretString::from(url.to_string())),
        })
    }

    /// The given database, used as it is (`--bench-database given`).
    fn given() -> Self {
        Self {
            name: String::new(),
            url: None,
        }
    }

    async fn remove(self, given: &SecretString) {
        if self.url.is_none() {
            return;
        }
        if let Ok(mut conn) = sqlx::PgConnection::connect(given.expose_secret()).await {
            let sql = format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name);
            if let Err(e) = sqlx::query(&sql).execute(&mut conn).await {
                eprintln!("warning: {sql}: {e}");
            }
            let _ = conn.close().await;
        }
    }
}

/// Sizes and durations of a run.
struct Plan {
    phases: Vec<BenchPhase>,
    raw_events: u64,
    seed_cell: Duration,
    store_cell: Duration,
    backlog: u64,
    paced: Duration,
    /// Runs at the higher paced rate.
    repeat: u32,
    e2e: Duration,
    drain_timeout: Duration,
    /// The projection phase's warm-up, then its measured window.
    projection_window: (Duration, Duration),
}

impl Plan {
    fn of(args: &BenchArgs) -> Self {
        let phases = if args.only.is_empty() {
            vec![
                BenchPhase::Seed,
                BenchPhase::Store,
                BenchPhase::Catchup,
                BenchPhase::Live,
                BenchPhase::Projection,
            ]
        } else {
            args.only.clone()
        };
        if args.quick {
            Self {
                phases,
                raw_events: 10_000,
                seed_cell: Duration::from_millis(300),
                store_cell: Duration::from_millis(200),
                backlog: args.backlog.clamp(1, 20_000),
                paced: Duration::from_millis(800),
                repeat: args.repeat,
                e2e: Duration::from_millis(800),
                drain_timeout: Duration::from_secs(60),
                projection_window: (Duration::from_secs(2), Duration::from_secs(4)),
            }
        } else {
            Self {
                phases,
                raw_events: 300_000,
                seed_cell: Duration::from_secs(3),
                store_cell: Duration::from_millis(2500),
                backlog: args.backlog.max(1),
                paced: Duration::from_secs(10),
                repeat: args.repeat,
                e2e: Duration::from_secs(10),
                drain_timeout: Duration::from_secs(600),
                projection_window: (Duration::from_secs(5), Duration::from_secs(30)),
            }
        }
    }

    fn runs(&self, phase: BenchPhase) -> bool {
        self.phases.contains(&phase)
    }
}

/// Connections of the raw batched paths (phase 1, the ceiling, the backlog).
const RAW_WRITERS: usize = 4;
/// The end-to-end load: callers × events per call, over many aggregates.
const E2E_CALLERS: usize = 64;
const E2E_BATCH: usize = 10;
/// The relay's page size (the `relay` command's default).
const RELAY_BATCH: usize = edupulse_app::relay::DEFAULT_BATCH_SIZE;

async fn run_phases(
    args: &BenchArgs,
    options: &BenchOptions,
    pg: &edupulse_app::cli::PgArgs,
    nats: &edupulse_app::cli::NatsArgs,
    run_id: &str,
    probe: &CpuProbe,
    durable: Option<&LocalNats>,
) -> Result<BenchReport, BenchError> {
    let lab = phases::Lab::open(
        args,
        phases::LabSetup {
            options,
            pg,
            nats,
            run_id,
            probe,
        },
    )
    .await?;
    let result = lab.measure(args, durable).await;
    lab.close().await;
    result
}

/// Opens `n` connections of `pool` at once, so that measurements do not pay for connecting.
async fn warm_pool(pool: &sqlx::PgPool, n: usize) -> Result<(), BenchError> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(pool.acquire());
    }
    for conn in futures::future::join_all(held).await {
        conn.map_err(|source| BenchError::Postgres {
            what: "connect",
            source,
        })?;
    }
    Ok(())
}

fn notes(plan: &Plan) -> Vec<String> {
    vec![
        "ratios are within this run, on the same servers: read them rather than the absolute \
         figures on a shared machine"
            .into(),
        format!(
            "the catch-up backlog ({} events) spreads over 10 000 aggregates, 1000 per \
             statement, as real traffic interleaves aggregates: the publisher keeps one message \
             in flight per aggregate (per-stream order), so a backlog of a few hot aggregates is \
             bound by round trips instead",
            plan.backlog
        ),
        "catch-up is timed from the relay's first saved checkpoint (after its first page) to \
         caught up; the relay (the code of `edupulse-events relay`) runs in its own process unless noted"
            .into(),
        "commit → ack runs from the moment `append` returned (committed) to the moment the \
         relay's publish returned with JetStream's ack; insert → ack (the relay's own metric) \
         runs from the row's recorded_at (clock_timestamp() at insert), so it also includes the \
         commit's WAL flush (see append p50/p99)"
            .into(),
        "end to end: appenders through the store (group commit) at full speed over many \
         aggregates while the relay publishes; timed until the last event is acknowledged"
            .into(),
        "CPU µs/event: client = this process (the relay process for the catch-up); PostgreSQL \
         and NATS from their containers' cgroups when the bench started them"
            .into(),
    ]
}

fn targets(report: &BenchReport) -> Vec<Target> {
    let mut targets = Vec::new();
    // A throughput ratio `key / base` of at least `min`; left out when either row did not run
    // (`--only`). `as_percent` prints it as a percentage, else as a multiple.
    let mut ratio_target = |goal: &str, key: &str, base: &str, min: f64, as_percent: bool| {
        let (Some(row), Some(base_row)) = (report.row(key), report.row(base)) else {
            return;
        };
        let ratio = if base_row.rate > 0.0 {
            row.rate / base_row.rate
        } else {
            0.0
        };
        let shown = if as_percent {
            format!("{:.0}%", ratio * 100.0)
        } else {
            format!("{ratio:.2}x")
        };
        targets.push(Target {
            goal: goal.into(),
            measured: format!("{shown} ({:.0} vs {:.0} events/s)", row.rate, base_row.rate),
            met: ratio >= min,
        });
    };
    ratio_target(
        "end to end >= 75% of insert+publish ceiling",
        "e2e",
        "ceiling",
        0.75,
        true,
    );
    ratio_target(
        "64 single-event callers >= 4x seed with 16 callers",
        "store_b1_c64",
        "seed_c16",
        4.0,
        false,
    );
    ratio_target(
        "relay catch-up >= 80% of raw pipelined publish",
        "catchup",
        "raw_js",
        0.8,
        true,
    );
    let paced: Vec<_> = report
        .latency
        .iter()
        .filter(|l| l.offered_rate >= 5000.0)
        .collect();
    if !paced.is_empty() {
        // Judged on every run of `--repeat`: at least 8 runs in 10 under the target, each at
        // the offered rate.
        let under = paced
            .iter()
            .filter(|l| l.p99_ms < P99_TARGET_MS && l.achieved_rate >= 0.95 * l.offered_rate)
            .count();
        let worst = paced.iter().map(|l| l.p99_ms).fold(0.0, f64::max);
        targets.push(Target {
            goal: format!(
                "commit → ack p99 < {P99_TARGET_MS:.0} ms at 5k events/s in >= 8 of 10 runs"
            ),
            measured: format!("{under} of {} runs (worst p99 {worst:.2} ms)", paced.len()),
            met: under * 10 >= paced.len() * 8,
        });
    }
    if let (Some(projection), Some(relay)) = (report.row("projection"), report.row("catchup")) {
        let ratio = projection.rate / relay.rate.max(1e-9);
        targets.push(Target {
            goal: "achievements projection, 4 workers (reported, no target)".into(),
            measured: format!(
                "{:.0} events/s applied = {:.2}x the relay's catch-up ({:.0} events/s)",
                projection.rate, ratio, relay.rate
            ),
            met: true,
        });
    }
    let rss = report.relay_peak_rss_bytes;
    if report.row("catchup").is_some() {
        targets.push(Target {
            goal: "relay RSS < 64 MB during catch-up".into(),
            measured: rss.map_or("unknown".into(), |b| {
                format!(
                    "{:.1} MiB ({})",
                    b as f64 / 1048576.0,
                    report.relay_peak_rss_of
                )
            }),
            met: rss.is_some_and(|b| b < 64 * 1024 * 1024),
        });
    }
    targets
}
