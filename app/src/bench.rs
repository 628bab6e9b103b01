//! `bench`: throughput and latency measured against the machine's own ceilings (issue 8).
//!
//! Figures on a shared 2-core machine are noisy, so everything is measured in **one run against
//! the same servers** and read as ratios: the store and the relay against raw batched inserts
//! (row 1), raw pipelined acknowledged publishes (row 2) and the seed's design (row 3).
//!
//! | phase | what |
//! |---|---|
//! | 1 | raw PostgreSQL: `INSERT … SELECT FROM unnest(…)`, 1000 rows per statement and transaction, 4 connections, rows of the events' columns and size, into a scratch table without the store's indexes, triggers or checks |
//! | 2 | raw JetStream: pipelined publishes (1024 awaiting their ack), same size and headers as the relay's, a fresh `Nats-Msg-Id` each, to a scratch stream |
//! | 3 | the seed's design: one transaction per event (INSERT of the envelope as jsonb), then a core publish (no ack); 1 and 16 callers |
//! | 4 | the store's `append` (group commit on): batches of 1, 10, 100, 1000 × 1, 16, 64 callers, each for a fixed time |
//! | 5 | the relay catching up from a backlog (`--backlog`, spread over 10 000 aggregates), from its checkpoint to caught up, in a process of its own |
//! | 6 | commit → ack latency with the relay running, appenders paced at 1k and 5k events/s |
//! | 7 | the relay's peak RSS during 5 |
//! | + | the ceiling "batched insert + pipelined publish together", and end to end: appenders at full speed with the relay running, until every event is acknowledged by JetStream |
//!
//! Servers come from `DATABASE_URL` / `NATS_URL`, or are started in Docker (PostgreSQL with
//! `fsync` on) as for `demo`. Each run works in a database of its own (`edupulse_bench_<id>`,
//! dropped at the end) and JetStream streams and subjects of its own (deleted at the end), so it
//! can run against shared servers without touching their data. If the database cannot be created
//! (no `CREATEDB`), the given database is used: events appended by the bench then stay in its
//! append-only events table, so only do that on a scratch database.
//!
//! CPU time per event is reported per phase for the client (this process, or the relay process
//! during the catch-up) and, when the bench started the servers in Docker, for PostgreSQL and
//! nats-server (their cgroups' CPU accounting): that says which side bounds a figure.
//!
//! Outputs: the table on stdout, `bench.json` and `bench.svg` under `--out`.

mod catchup;
mod load;
mod raw;
pub mod report;
mod sys;
mod timing;
mod workload;

pub use catchup::RelayMode;
pub use report::BenchReport;

use crate::cli::{BenchArgs, BenchPhase};
use crate::docker::{BrokerSync, DockerError, LocalNats, LocalServers};
use crate::latency::ms;
use crate::relay::RelayConfig;
use crate::wiring::{Backbone, WiringError, spawn_relay};
use edupulse_domain::Uuid;
use edupulse_ports::StoreError;
use edupulse_postgres::{PgEventStore, PgStoreConfig, StatementLog};
use raw::Measured;
use report::{LatencyRow, Row, Target};
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions, Connection};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use std::time::{Duration, Instant};
use sys::{CpuPerEvent, CpuProbe};
use thiserror::Error;
use workload::Template;

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
    let database = Scratch::create(&given, &format!("edupulse_bench_{run_id}")).await;
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
    async fn create(given: &SecretString, name: &str) -> Self {
        let created = async {
            let mut conn = sqlx::PgConnection::connect(given.expose_secret()).await?;
            sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
                .execute(&mut conn)
                .await?;
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        let url = url::Url::parse(given.expose_secret()).ok().map(|mut u| {
            u.set_path(&format!("/{name}"));
            SecretString::from(u.to_string())
        });
        match (created, url) {
            (Ok(()), Some(url)) => Self {
                name: name.to_owned(),
                url: Some(url),
            },
            (created, _) => {
                eprintln!(
                    "warning: cannot create a database of the bench's own ({}); using the given \
                     database: the events the bench appends stay in its events table",
                    created
                        .err()
                        .map_or("URL not understood".into(), |e| e.to_string())
                );
                Self {
                    name: name.to_owned(),
                    url: None,
                }
            }
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
    e2e: Duration,
    drain_timeout: Duration,
}

impl Plan {
    fn of(args: &BenchArgs) -> Self {
        let phases = if args.only.is_empty() {
            vec![
                BenchPhase::Seed,
                BenchPhase::Store,
                BenchPhase::Catchup,
                BenchPhase::Live,
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
                e2e: Duration::from_millis(800),
                drain_timeout: Duration::from_secs(60),
            }
        } else {
            Self {
                phases,
                raw_events: 300_000,
                seed_cell: Duration::from_secs(3),
                store_cell: Duration::from_millis(2500),
                backlog: args.backlog.max(1),
                paced: Duration::from_secs(10),
                e2e: Duration::from_secs(10),
                drain_timeout: Duration::from_secs(600),
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
const RELAY_BATCH: usize = crate::relay::DEFAULT_BATCH_SIZE;

#[allow(clippy::too_many_lines)]
async fn run_phases(
    args: &BenchArgs,
    options: &BenchOptions,
    pg: &crate::cli::PgArgs,
    nats: &crate::cli::NatsArgs,
    run_id: &str,
    probe: &CpuProbe,
    durable: Option<&LocalNats>,
) -> Result<BenchReport, BenchError> {
    let plan = Plan::of(args);
    let mut pg_config: PgStoreConfig = pg.store_config()?;
    pg_config.max_connections = pg_config.max_connections.max(48);
    // The bench's statements are slow on purpose (bulk loads): its output is its table, not
    // the driver's warnings with whole statements in them.
    pg_config.statement_log = StatementLog::Off;
    let store = PgEventStore::connect(&pg_config).await?;
    store.migrate().await?;
    drop(store);
    let backbone = Backbone::connect(&pg_config, nats.nats_config()?).await?;
    let raw_options =
        sqlx::postgres::PgConnectOptions::from_str(pg.store_config()?.url.expose_secret())
            .map_err(|source| BenchError::Postgres {
                what: "parse the URL",
                source,
            })?
            .disable_statement_logging();
    let raw_pool = PgPoolOptions::new()
        .max_connections(20)
        .connect_with(raw_options)
        .await
        .map_err(|source| BenchError::Postgres {
            what: "connect",
            source,
        })?;
    // Open every connection before measuring: a new connection (authentication included) costs
    // more than many appends.
    warm_pool(&raw_pool, 20).await?;
    load::run(
        &backbone.store,
        load::Load {
            callers: 48,
            batch: 600,
            streams_per_caller: 1,
            pace: None,
            duration: Duration::from_millis(300),
        },
    )
    .await?;
    let js = edupulse_nats::jetstream_context(backbone.client.clone(), &backbone.nats);
    let template = Arc::new(Template::new());
    let raw_table = format!("bench_raw_{run_id}");
    let seed_table = format!("bench_seed_{run_id}");
    let raw_stream = format!("BENCH_RAW_{run_id}");
    let raw_prefix = format!("bench-raw-{run_id}");
    raw::create_raw_table(&raw_pool, &raw_table).await?;
    raw::create_seed_table(&raw_pool, &seed_table).await?;
    raw::create_raw_stream(&js, &raw_stream, &raw_prefix).await?;

    let result = async {
        let mut rows = Vec::new();
        let window = backbone.nats.max_in_flight;
        let mut row = |key: &str, label: String, m: Measured, cpu: CpuPerEvent| {
            eprintln!("  {label}: {:.0} events/s", m.rate());
            rows.push(Row {
                key: key.to_owned(),
                label,
                events: m.events,
                seconds: m.elapsed.as_secs_f64(),
                rate: m.rate(),
                vs_raw_pg: 0.0,
                vs_raw_js: 0.0,
                vs_seed16: 0.0,
                cpu_client_us: cpu.client_us,
                cpu_postgres_us: cpu.postgres_us,
                cpu_nats_us: cpu.nats_us,
            });
        };
        let measure = |before: sys::CpuSnapshot, m: &Measured| {
            CpuPerEvent::between(before, probe.snapshot(None), m.events)
        };

        // 1 and 2: the ceilings, alone.
        let cpu = probe.snapshot(None);
        let m = raw::raw_insert(
            &raw_pool,
            &raw_table,
            &template,
            plan.raw_events,
            RAW_WRITERS,
        )
        .await?;
        row(
            "raw_pg",
            format!("1. raw PG: batched INSERT (1000/stmt, {RAW_WRITERS} conns)"),
            m,
            measure(cpu, &m),
        );
        let cpu = probe.snapshot(None);
        let m = raw::raw_publish(&js, &raw_prefix, &template, plan.raw_events, window).await?;
        row(
            "raw_js",
            format!("2. raw JetStream: pipelined acked publish + msg id ({window})"),
            m,
            measure(cpu, &m),
        );
        // 2b: the same on a server that fsyncs every write before acknowledging it.
        if let Some(durable) = durable {
            let client = async_nats::connect(&durable.url)
                .await
                .map_err(|e| BenchError::Nats {
                    what: "connect to the syncing server",
                    source: Box::new(e),
                })?;
            let durable_js = edupulse_nats::jetstream_context(client, &backbone.nats);
            raw::create_raw_stream(&durable_js, &raw_stream, &raw_prefix).await?;
            let durable_probe = CpuProbe {
                postgres: None,
                nats: Some(durable.id()),
            };
            let before = durable_probe.snapshot(None);
            let m = raw::raw_publish(&durable_js, &raw_prefix, &template, plan.raw_events, window)
                .await?;
            row(
                "raw_js_sync_always",
                format!("2b. raw JetStream as 2, sync_interval: always ({window})"),
                m,
                CpuPerEvent::between(before, durable_probe.snapshot(None), m.events),
            );
        }
        // The ceiling of the whole path: both at once.
        let cpu = probe.snapshot(None);
        let started = Instant::now();
        let (a, b) = tokio::join!(
            raw::raw_insert(
                &raw_pool,
                &raw_table,
                &template,
                plan.raw_events,
                RAW_WRITERS
            ),
            raw::raw_publish(&js, &raw_prefix, &template, plan.raw_events, window),
        );
        a?;
        b?;
        let m = Measured {
            events: plan.raw_events,
            elapsed: started.elapsed(),
        };
        row(
            "ceiling",
            "   ceiling: batched insert + pipelined publish together".into(),
            m,
            measure(cpu, &m),
        );

        // 3: the seed's design.
        let seed_subject = format!("bench-seed-{run_id}.QuizSubmitted");
        let seed_callers: &[usize] = if plan.runs(BenchPhase::Seed) {
            &[1, 16]
        } else {
            &[]
        };
        for &callers in seed_callers {
            let cpu = probe.snapshot(None);
            let m = raw::seed_design(
                &raw_pool,
                &backbone.client,
                &seed_table,
                &seed_subject,
                callers,
                plan.seed_cell,
            )
            .await?;
            row(
                &format!("seed_c{callers}"),
                format!("3. seed: tx per event + core publish, {callers} callers"),
                m,
                measure(cpu, &m),
            );
        }

        // 4: the store's append.
        let batches: &[usize] = if plan.runs(BenchPhase::Store) {
            &[1, 10, 100, 1000]
        } else {
            &[]
        };
        for &batch in batches {
            for callers in [1usize, 16, 64] {
                let mut cell = load::Load {
                    callers,
                    batch,
                    streams_per_caller: 8,
                    pace: None,
                    duration: plan.store_cell / 5,
                };
                // Warm-up (the writers' queues, the pool, PostgreSQL's caches), not counted.
                load::run(&backbone.store, cell).await?;
                cell.duration = plan.store_cell;
                let cpu = probe.snapshot(None);
                let out = load::run(&backbone.store, cell).await?;
                row(
                    &format!("store_b{batch}_c{callers}"),
                    format!(
                        "4. store append: batch {batch:>4} x {callers:>2} callers (p99 {:.1} ms)",
                        ms(out.latency.quantile(0.99))
                    ),
                    out.measured,
                    measure(cpu, &out.measured),
                );
            }
        }

        // 5 and 7: catch-up.
        let mut peak_rss = (None, "not measured");
        if plan.runs(BenchPhase::Catchup) {
            let mut relay_env = vec![
                (
                    "DATABASE_URL".to_owned(),
                    pg.store_config()?.url.expose_secret().to_owned(),
                ),
                ("NATS_URL".to_owned(), nats.nats_url.join(",")),
                ("EDUPULSE_NATS_STREAM".to_owned(), nats.nats_stream.clone()),
                (
                    "EDUPULSE_SUBJECT_PREFIX".to_owned(),
                    nats.subject_prefix.clone(),
                ),
                (
                    "EDUPULSE_NATS_REPLICAS".to_owned(),
                    nats.nats_replicas.to_string(),
                ),
            ];
            for (key, value) in [
                ("NATS_CREDS", &nats.nats_creds),
                ("NATS_NKEY", &nats.nats_nkey),
                ("NATS_CA", &nats.nats_ca),
            ] {
                if let Some(v) = value {
                    relay_env.push((key.to_owned(), v.display().to_string()));
                }
            }
            if nats.nats_tls_required {
                relay_env.push(("NATS_TLS_REQUIRED".to_owned(), "true".to_owned()));
            }
            eprintln!("writing a backlog of {} events…", plan.backlog);
            let catch_up = catchup::run(catchup::CatchUpSetup {
                backbone: &backbone,
                raw_pool: &raw_pool,
                template: &template,
                backlog: plan.backlog,
                mode: &options.relay,
                relay_env,
                batch_size: RELAY_BATCH,
                name: format!("bench-catchup-{run_id}"),
                probe,
                timeout: plan.drain_timeout,
            })
            .await?;
            row(
                "backlog_write",
                "5. backlog written: batched INSERT into events (2 conns)".into(),
                catch_up.seeded,
                CpuPerEvent::default(),
            );
            row(
                "catchup",
                format!(
                    "5. relay catch-up: {} events, 10k aggregates ({:.0} s in all)",
                    plan.backlog,
                    catch_up.total.elapsed.as_secs_f64()
                ),
                catch_up.steady,
                catch_up.cpu,
            );
            peak_rss = (catch_up.peak_rss, catch_up.rss_of);
        }

        // 6 and end to end: the relay running in this process, from the tip.
        let mut latency = Vec::new();
        if plan.runs(BenchPhase::Live) {
            let relay_name = format!("bench-live-{run_id}");
            {
                use edupulse_ports::CheckpointStore;
                let tip = catchup::tip(&raw_pool).await?;
                backbone.store.save(&relay_name, tip, 0).await?;
            }
            // The backbone's relay, its publisher wrapped to time commit → ack per event.
            let committed: timing::Committed = Arc::default();
            let commit_to_ack = Arc::new(crate::latency::LatencyHistogram::default());
            let commit_to_read = Arc::new(crate::latency::LatencyHistogram::default());
            let store = backbone.store.clone();
            let relay = crate::relay::Relay::new(
                crate::relay::RelayPorts {
                    store: store.clone(),
                    hints: store.clone(),
                    checkpoints: store.clone(),
                    leases: store,
                    publisher: Arc::new(timing::TimingPublisher {
                        inner: Arc::new(backbone.publisher()),
                        committed: committed.clone(),
                        latency: commit_to_ack.clone(),
                        read: commit_to_read.clone(),
                    }),
                },
                RelayConfig {
                    name: relay_name,
                    batch_size: RELAY_BATCH,
                    poll_interval: Duration::from_millis(100),
                    ..RelayConfig::default()
                },
            );
            let running = spawn_relay(relay, None).await?;
            let stats = running.stats.clone();
            let drain = |target: u64| {
                let stats = stats.clone();
                async move {
                    let deadline = Instant::now() + plan.drain_timeout;
                    while stats.snapshot().published < target {
                        if Instant::now() > deadline {
                            return Err(BenchError::Relay(format!(
                                "the relay did not publish everything within {:?}",
                                plan.drain_timeout
                            )));
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Ok(Instant::now())
                }
            };
            let live = async {
                let mut latency = Vec::new();
                for rate in [1000.0, 5000.0] {
                    let base = stats.snapshot().published;
                    stats.commit_to_ack().reset();
                    commit_to_ack.reset();
                    commit_to_read.reset();
                    let out = load::run_noting(
                        &backbone.store,
                        load::Load {
                            callers: 256,
                            batch: 1,
                            streams_per_caller: 1,
                            pace: Some(rate),
                            duration: plan.paced,
                        },
                        Some(committed.clone()),
                    )
                    .await?;
                    drain(base + out.measured.events).await?;
                    let h = &commit_to_ack;
                    let insert = stats.commit_to_ack();
                    latency.push(LatencyRow {
                        offered_rate: rate,
                        achieved_rate: out.measured.rate(),
                        p50_ms: ms(h.quantile(0.5)),
                        p99_ms: ms(h.quantile(0.99)),
                        max_ms: ms(h.max()),
                        samples: h.count(),
                        read_p50_ms: ms(commit_to_read.quantile(0.5)),
                        read_p99_ms: ms(commit_to_read.quantile(0.99)),
                        insert_p50_ms: ms(insert.quantile(0.5)),
                        insert_p99_ms: ms(insert.quantile(0.99)),
                        append_p50_ms: ms(out.latency.quantile(0.5)),
                        append_p99_ms: ms(out.latency.quantile(0.99)),
                    });
                    committed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clear();
                    eprintln!("  commit → ack at {rate}/s: {}", h.summary());
                    eprintln!("  insert → ack at {rate}/s: {}", insert.summary());
                    eprintln!("  commit → read at {rate}/s: {}", commit_to_read.summary());
                }
                // End to end at full speed.
                let base = stats.snapshot().published;
                let cpu = probe.snapshot(None);
                let started = Instant::now();
                let out = load::run(
                    &backbone.store,
                    load::Load {
                        callers: E2E_CALLERS,
                        batch: E2E_BATCH,
                        streams_per_caller: 64,
                        pace: None,
                        duration: plan.e2e,
                    },
                )
                .await?;
                let done = drain(base + out.measured.events).await?;
                let m = Measured {
                    events: out.measured.events,
                    elapsed: done - started,
                };
                Ok::<_, BenchError>((latency, m, measure(cpu, &m)))
            }
            .await;
            running.stop().await;
            let (paced, e2e, e2e_cpu) = live?;
            latency = paced;
            row(
                "e2e",
                format!(
                    "   end to end: append ({E2E_CALLERS} x batch {E2E_BATCH}) + relay -> acked"
                ),
                e2e,
                e2e_cpu,
            );
        }

        let mut report = BenchReport {
            quick: args.quick,
            event_bytes: template.encoded.len(),
            message_bytes: template.wire_bytes,
            rows,
            latency,
            relay_peak_rss_bytes: peak_rss.0,
            relay_peak_rss_of: peak_rss.1.to_owned(),
            targets: Vec::new(),
            notes: notes(&plan),
        };
        report.compute_ratios();
        report.targets = targets(&report);
        Ok::<_, BenchError>(report)
    }
    .await;

    let _ = js.delete_stream(&raw_stream).await;
    let _ = js.delete_stream(&backbone.nats.stream_name).await;
    let _ = js
        .delete_stream(format!("{}_DLQ", backbone.nats.stream_name))
        .await;
    raw_pool.close().await;
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
         caught up; the relay runs as `edupulse-events relay` in its own process unless noted"
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
        "end to end >= 90% of insert+publish ceiling",
        "e2e",
        "ceiling",
        0.9,
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
    if let Some(l) = report.latency.iter().find(|l| l.offered_rate >= 5000.0) {
        targets.push(Target {
            goal: "commit → ack p99 < 10 ms at 5k events/s".into(),
            measured: format!("p99 {:.2} ms (achieved {:.0}/s)", l.p99_ms, l.achieved_rate),
            met: l.p99_ms < 10.0 && l.achieved_rate >= 0.95 * l.offered_rate,
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
