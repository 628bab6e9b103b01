//! The bench's phases, each a named step over one [`Lab`]: the ceilings (rows 1, 2, 2b and
//! both together), the seed's design (3), the store's appends (4), the relay's catch-up (5) and
//! the live relay (6, end to end). `run` strings them together and builds the report.

use super::raw::{self, Fencing, Measured};
use super::report::{BenchReport, LatencyRow, Row};
use super::sys::{self, CpuPerEvent, CpuProbe};
use super::workload::Template;
use super::{
    BenchError, BenchOptions, E2E_BATCH, E2E_CALLERS, Plan, RAW_WRITERS, RELAY_BATCH, catchup,
    load, notes, targets, timing, warm_pool,
};
use crate::cli::{BenchArgs, BenchPhase};
use async_nats::jetstream;
use edupulse_app::cli::{NatsArgs, PgArgs};
use edupulse_app::latency::ms;
use edupulse_app::projection::RunnerConfig;
use edupulse_app::relay::RelayConfig;
use edupulse_app::wiring::{Backbone, Shipped, spawn_relay, spawn_shipped};
use edupulse_integration_tests::checker::{self, Consumed, History};
use edupulse_integration_tests::local::LocalNats;
use edupulse_postgres::{PgEventStore, PgStoreConfig, StatementLog};
use secrecy::ExposeSecret;
use sqlx::ConnectOptions;
use sqlx::postgres::PgPoolOptions;
use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The relay's peak RSS in the catch-up, and what it was measured on.
type PeakRss = (Option<u64>, &'static str);

/// One run's servers, clients and scratch names, shared by the phases.
pub(super) struct Lab<'a> {
    plan: Plan,
    options: &'a BenchOptions,
    pg: &'a PgArgs,
    nats: &'a NatsArgs,
    run_id: &'a str,
    probe: &'a CpuProbe,
    backbone: Backbone,
    raw_pool: sqlx::PgPool,
    js: jetstream::Context,
    template: Arc<Template>,
    raw_table: String,
    seed_table: String,
    raw_stream: String,
    raw_prefix: String,
    window: usize,
}

/// What [`Lab::open`] needs besides the bench's arguments.
pub(super) struct LabSetup<'a> {
    pub(super) options: &'a BenchOptions,
    pub(super) pg: &'a PgArgs,
    pub(super) nats: &'a NatsArgs,
    pub(super) run_id: &'a str,
    pub(super) probe: &'a CpuProbe,
}

impl<'a> Lab<'a> {
    /// Migrates the scratch database, connects, warms the pools, creates the scratch tables and
    /// stream.
    pub(super) async fn open(args: &BenchArgs, setup: LabSetup<'a>) -> Result<Self, BenchError> {
        let plan = Plan::of(args);
        let mut pg_config: PgStoreConfig = setup.pg.store_config()?;
        pg_config.max_connections = pg_config.max_connections.max(48);
        // The bench's statements are slow on purpose (bulk loads): its output is its table,
        // not the driver's warnings with whole statements in them.
        pg_config.statement_log = StatementLog::Off;
        let store = PgEventStore::connect(&pg_config).await?;
        store.migrate().await?;
        drop(store);
        let backbone = Backbone::connect(&pg_config, setup.nats.nats_config()?).await?;
        let raw_options = sqlx::postgres::PgConnectOptions::from_str(
            setup.pg.store_config()?.url.expose_secret(),
        )
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
        // Open every connection before measuring: a new connection (authentication included)
        // costs more than many appends.
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
        let run_id = setup.run_id;
        let lab = Self {
            plan,
            options: setup.options,
            pg: setup.pg,
            nats: setup.nats,
            run_id,
            probe: setup.probe,
            window: backbone.nats.max_in_flight,
            backbone,
            raw_pool,
            js,
            template: Arc::new(Template::new()),
            raw_table: format!("bench_raw_{run_id}"),
            seed_table: format!("bench_seed_{run_id}"),
            raw_stream: format!("BENCH_RAW_{run_id}"),
            raw_prefix: format!("bench-raw-{run_id}"),
        };
        raw::create_raw_table(&lab.raw_pool, &lab.raw_table).await?;
        raw::create_seed_table(&lab.raw_pool, &lab.seed_table).await?;
        raw::create_raw_stream(&lab.js, &lab.raw_stream, &lab.raw_prefix).await?;
        Ok(lab)
    }

    /// Every phase the plan asks for, then the report.
    pub(super) async fn measure(
        &self,
        args: &BenchArgs,
        durable: Option<&LocalNats>,
    ) -> Result<BenchReport, BenchError> {
        let mut rows = Vec::new();
        ceilings(self, &mut rows, durable).await?;
        if self.plan.runs(BenchPhase::Seed) {
            seed_design(self, &mut rows).await?;
        }
        if self.plan.runs(BenchPhase::Store) {
            store_appends(self, &mut rows).await?;
        }
        let peak_rss = catch_up(self, &mut rows).await?;
        let latency = live(self, &mut rows).await?;
        if self.plan.runs(BenchPhase::Projection) {
            projection(self, &mut rows).await?;
        }
        let mut report = BenchReport {
            quick: args.quick,
            event_bytes: self.template.encoded.len(),
            message_bytes: self.template.wire_bytes,
            rows,
            latency,
            relay_peak_rss_bytes: peak_rss.0,
            relay_peak_rss_of: peak_rss.1.to_owned(),
            targets: Vec::new(),
            notes: notes(&self.plan),
        };
        report.compute_ratios();
        report.targets = targets(&report);
        Ok(report)
    }

    /// Removes the scratch streams and closes the pool (the scratch database is dropped by the
    /// caller).
    pub(super) async fn close(self) {
        let _ = self.js.delete_stream(&self.raw_stream).await;
        let _ = self
            .js
            .delete_stream(edupulse_nats::feed_stream_name(&self.backbone.nats))
            .await;
        let _ = self.js.delete_stream(&self.backbone.nats.stream_name).await;
        let _ = self
            .js
            .delete_stream(format!("{}_DLQ", self.backbone.nats.stream_name))
            .await;
        self.raw_pool.close().await;
    }

    /// CPU per event of the servers and this process since `before`.
    fn cpu_since(&self, before: sys::CpuSnapshot, m: &Measured) -> CpuPerEvent {
        CpuPerEvent::between(before, self.probe.snapshot(None), m.events)
    }
}

/// Adds a row to `rows` and prints its rate as it goes.
fn record(rows: &mut Vec<Row>, key: &str, label: String, m: Measured, cpu: CpuPerEvent) {
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
}

/// Rows 1, 2 and 2b and the ceiling: raw inserts, raw publishes (on a syncing server too),
/// both together.
async fn ceilings(
    lab: &Lab<'_>,
    rows: &mut Vec<Row>,
    durable: Option<&LocalNats>,
) -> Result<(), BenchError> {
    let window = lab.window;
    // 1 and 2: the ceilings, alone.
    let cpu = lab.probe.snapshot(None);
    let m = raw::raw_insert(
        &lab.raw_pool,
        &lab.raw_table,
        &lab.template,
        lab.plan.raw_events,
        RAW_WRITERS,
    )
    .await?;
    record(
        rows,
        "raw_pg",
        format!("1. raw PG: batched INSERT (1000/stmt, {RAW_WRITERS} conns)"),
        m,
        lab.cpu_since(cpu, &m),
    );
    // 2, and 2c: the relay's ordering and fence alone (one in flight per subject, each fenced).
    let publishes = [
        (
            "raw_js",
            format!("2. raw JetStream: pipelined acked publish + msg id ({window})"),
            Fencing::Unfenced,
        ),
        (
            "raw_js_fenced",
            format!(
                "2c. raw JetStream as 2, fenced, one in flight per subject ({window} subjects)"
            ),
            Fencing::PerSubject,
        ),
    ];
    for (key, label, fencing) in publishes {
        let cpu = lab.probe.snapshot(None);
        let m = raw::raw_publish(
            &lab.js,
            &lab.raw_prefix,
            &lab.template,
            lab.plan.raw_events,
            lab.window,
            fencing,
        )
        .await?;
        record(rows, key, label, m, lab.cpu_since(cpu, &m));
    }
    // 2b: the same on a server that fsyncs every write before acknowledging it.
    if let Some(durable) = durable {
        let client = async_nats::connect(&durable.url)
            .await
            .map_err(|e| BenchError::Nats {
                what: "connect to the syncing server",
                source: Box::new(e),
            })?;
        let durable_js = edupulse_nats::jetstream_context(client, &lab.backbone.nats);
        raw::create_raw_stream(&durable_js, &lab.raw_stream, &lab.raw_prefix).await?;
        let durable_probe = CpuProbe {
            postgres: None,
            nats: Some(durable.id()),
        };
        let before = durable_probe.snapshot(None);
        let m = raw::raw_publish(
            &durable_js,
            &lab.raw_prefix,
            &lab.template,
            lab.plan.raw_events,
            lab.window,
            Fencing::Unfenced,
        )
        .await?;
        record(
            rows,
            "raw_js_sync_always",
            format!("2b. raw JetStream as 2, sync_interval: always ({window})"),
            m,
            CpuPerEvent::between(before, durable_probe.snapshot(None), m.events),
        );
    }
    // The ceiling of the whole path: both at once.
    let cpu = lab.probe.snapshot(None);
    let started = Instant::now();
    let (a, b) = tokio::join!(
        raw::raw_insert(
            &lab.raw_pool,
            &lab.raw_table,
            &lab.template,
            lab.plan.raw_events,
            RAW_WRITERS
        ),
        raw::raw_publish(
            &lab.js,
            &lab.raw_prefix,
            &lab.template,
            lab.plan.raw_events,
            lab.window,
            Fencing::Unfenced,
        ),
    );
    a?;
    b?;
    let m = Measured {
        events: lab.plan.raw_events,
        elapsed: started.elapsed(),
    };
    record(
        rows,
        "ceiling",
        "   ceiling: batched insert + pipelined publish together".into(),
        m,
        lab.cpu_since(cpu, &m),
    );
    Ok(())
}

/// Row 3: the seed's design, a transaction per event and a fire-and-forget core publish.
async fn seed_design(lab: &Lab<'_>, rows: &mut Vec<Row>) -> Result<(), BenchError> {
    // 3: the seed's design.
    let seed_subject = format!("bench-seed-{}.QuizSubmitted", lab.run_id);
    let seed_callers: &[usize] = if lab.plan.runs(BenchPhase::Seed) {
        &[1, 16]
    } else {
        &[]
    };
    for &callers in seed_callers {
        let cpu = lab.probe.snapshot(None);
        let m = raw::seed_design(
            &lab.raw_pool,
            &lab.backbone.client,
            &lab.seed_table,
            &seed_subject,
            callers,
            lab.plan.seed_cell,
        )
        .await?;
        record(
            rows,
            &format!("seed_c{callers}"),
            format!("3. seed: tx per event + core publish, {callers} callers"),
            m,
            lab.cpu_since(cpu, &m),
        );
    }
    Ok(())
}

/// Rows 4: the store's append, by batch size and callers.
async fn store_appends(lab: &Lab<'_>, rows: &mut Vec<Row>) -> Result<(), BenchError> {
    // 4: the store's append.
    let batches: &[usize] = if lab.plan.runs(BenchPhase::Store) {
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
                duration: lab.plan.store_cell / 5,
            };
            // Warm-up (the writers' queues, the pool, PostgreSQL's caches), not counted.
            load::run(&lab.backbone.store, cell).await?;
            cell.duration = lab.plan.store_cell;
            let cpu = lab.probe.snapshot(None);
            let out = load::run(&lab.backbone.store, cell).await?;
            record(
                rows,
                &format!("store_b{batch}_c{callers}"),
                format!(
                    "4. store append: batch {batch:>4} x {callers:>2} callers (p99 {:.1} ms)",
                    ms(out.latency.quantile(0.99))
                ),
                out.measured,
                lab.cpu_since(cpu, &out.measured),
            );
        }
    }
    Ok(())
}

/// Row 5: the relay's catch-up of a backlog, in a process of its own.
async fn catch_up(lab: &Lab<'_>, rows: &mut Vec<Row>) -> Result<PeakRss, BenchError> {
    // 5 and 7: catch-up.
    let mut peak_rss: PeakRss = (None, "not measured");
    if lab.plan.runs(BenchPhase::Catchup) {
        let mut relay_env = vec![
            (
                "DATABASE_URL".to_owned(),
                lab.pg.store_config()?.url.expose_secret().to_owned(),
            ),
            ("NATS_URL".to_owned(), lab.nats.nats_url.join(",")),
            (
                "EDUPULSE_NATS_STREAM".to_owned(),
                lab.nats.nats_stream.clone(),
            ),
            (
                "EDUPULSE_SUBJECT_PREFIX".to_owned(),
                lab.nats.subject_prefix.clone(),
            ),
            (
                "EDUPULSE_NATS_REPLICAS".to_owned(),
                lab.nats.nats_replicas.to_string(),
            ),
        ];
        for (key, value) in [
            ("NATS_CREDS", &lab.nats.nats_creds),
            ("NATS_NKEY", &lab.nats.nats_nkey),
            ("NATS_CA", &lab.nats.nats_ca),
        ] {
            if let Some(v) = value {
                relay_env.push((key.to_owned(), v.display().to_string()));
            }
        }
        if lab.nats.nats_tls_required {
            relay_env.push(("NATS_TLS_REQUIRED".to_owned(), "true".to_owned()));
        }
        eprintln!("writing a backlog of {} events…", lab.plan.backlog);
        let catch_up = catchup::run(catchup::CatchUpSetup {
            backbone: &lab.backbone,
            raw_pool: &lab.raw_pool,
            template: &lab.template,
            backlog: lab.plan.backlog,
            mode: &lab.options.relay,
            relay_env,
            batch_size: RELAY_BATCH,
            name: format!("bench-catchup-{}", lab.run_id),
            probe: lab.probe,
            timeout: lab.plan.drain_timeout,
        })
        .await?;
        record(
            rows,
            "backlog_write",
            "5. backlog written: batched INSERT into events (2 conns)".into(),
            catch_up.seeded,
            CpuPerEvent::default(),
        );
        record(
            rows,
            "catchup",
            format!(
                "5. relay catch-up: {} events, 10k aggregates ({:.0} s in all)",
                lab.plan.backlog,
                catch_up.total.elapsed.as_secs_f64()
            ),
            catch_up.steady,
            catch_up.cpu,
        );
        peak_rss = (catch_up.peak_rss, catch_up.rss_of);
    }
    Ok(peak_rss)
}

/// Row 8: four achievements workers (one process, 16 buckets) applying the event stream from
/// its start: after a warm-up, what they apply in a fixed window, as events per second.
async fn projection(lab: &Lab<'_>, rows: &mut Vec<Row>) -> Result<(), BenchError> {
    let (warm_up, window) = lab.plan.projection_window;
    eprintln!("achievements projection, 4 workers…");
    let feed = lab.backbone.feed(PROJECTION_BUCKETS).await?;
    let mut config = RunnerConfig::new(format!("bench-{}", lab.run_id));
    config.batch_size = 512;
    let running = spawn_shipped(&lab.backbone, Shipped::Achievements, 1, feed, 4, &config)?;
    tokio::time::sleep(warm_up).await;
    let (before, cpu_before, started) =
        (running.applied(), lab.probe.snapshot(None), Instant::now());
    tokio::time::sleep(window).await;
    let m = Measured {
        events: running.applied() - before,
        elapsed: started.elapsed(),
    };
    let cpu = lab.cpu_since(cpu_before, &m);
    running.stop().await;
    record(
        rows,
        "projection",
        format!(
            "8. achievements projection: 4 workers, {PROJECTION_BUCKETS} buckets, applied from the stream"
        ),
        m,
        cpu,
    );
    Ok(())
}

/// Buckets of the bench's feed.
const PROJECTION_BUCKETS: u16 = 16;

/// The checker's verdict on the live phase: every acknowledged event stored once by the broker,
/// each stream in version order (the relay is the only writer of the stream from
/// `first_sequence` on).
async fn judge_live(
    lab: &Lab<'_>,
    history: &History,
    first_sequence: u64,
) -> Result<(), BenchError> {
    let stream = &lab.backbone.nats.stream_name;
    let broker = checker::broker_log_since(&lab.js, stream, first_sequence).await;
    let stored = Consumed::from_broker(&broker);
    let verdict = checker::judge(
        "bench live phase",
        history,
        &stored,
        &HashSet::new(),
        &broker,
    );
    eprintln!("  the checker's verdict:\n{}", verdict.table());
    if verdict.kept_the_guarantees() {
        Ok(())
    } else {
        Err(BenchError::Verdict(verdict.table()))
    }
}

/// Row 6 and end to end: the relay in this process, paced latency and full speed.
async fn live(lab: &Lab<'_>, rows: &mut Vec<Row>) -> Result<Vec<LatencyRow>, BenchError> {
    // 6 and end to end: the relay running in this process, from the tip.
    let mut latency: Vec<LatencyRow> = Vec::new();
    if lab.plan.runs(BenchPhase::Live) {
        let relay_name = format!("bench-live-{}", lab.run_id);
        {
            use edupulse_ports::CheckpointStore;
            let tip = catchup::tip(&lab.raw_pool).await?;
            lab.backbone.store.save(&relay_name, tip, 0).await?;
        }
        // The backbone's relay, its publisher wrapped to time commit → ack per event.
        let committed: timing::Committed = Arc::default();
        let commit_to_ack = Arc::new(edupulse_app::latency::LatencyHistogram::default());
        let commit_to_read = Arc::new(edupulse_app::latency::LatencyHistogram::default());
        let store = lab.backbone.store.clone();
        let relay = edupulse_app::relay::Relay::new(
            edupulse_app::relay::RelayPorts {
                store: store.clone(),
                hints: store.clone(),
                checkpoints: store.clone(),
                leases: store,
                publisher: Arc::new(timing::TimingPublisher {
                    inner: Arc::new(lab.backbone.publisher()),
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
        // The checker judges the phase on the broker's copy of it, as it judges every suite.
        let history = History::new();
        let first_sequence = checker::next_sequence(&lab.js, &lab.backbone.nats.stream_name)
            .await
            .map_err(|e| BenchError::Relay(format!("cannot read the event stream: {e}")))?;
        let running = spawn_relay(relay, None).await?;
        let stats = running.stats.clone();
        let drain = |target: u64| {
            let stats = stats.clone();
            async move {
                let deadline = Instant::now() + lab.plan.drain_timeout;
                while stats.snapshot().published < target {
                    if Instant::now() > deadline {
                        return Err(BenchError::Relay(format!(
                            "the relay did not publish everything within {:?}",
                            lab.plan.drain_timeout
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok(Instant::now())
            }
        };
        let live = async {
            let mut latency = Vec::new();
            let rates = std::iter::once(1000.0)
                .chain(std::iter::repeat_n(5000.0, lab.plan.repeat.max(1) as usize));
            for rate in rates {
                let base = stats.snapshot().published;
                stats.commit_to_ack().reset();
                commit_to_ack.reset();
                commit_to_read.reset();
                let out = load::run_observed(
                    &lab.backbone.store,
                    load::Load {
                        callers: 256,
                        batch: 1,
                        streams_per_caller: 1,
                        pace: Some(rate),
                        duration: lab.plan.paced,
                    },
                    Some(history.clone()),
                    Some(timing::noting(&committed)),
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
            let cpu = lab.probe.snapshot(None);
            let started = Instant::now();
            let out = load::run_observed(
                &lab.backbone.store,
                load::Load {
                    callers: E2E_CALLERS,
                    batch: E2E_BATCH,
                    streams_per_caller: 64,
                    pace: None,
                    duration: lab.plan.e2e,
                },
                Some(history.clone()),
                None,
            )
            .await?;
            let done = drain(base + out.measured.events).await?;
            let m = Measured {
                events: out.measured.events,
                elapsed: done - started,
            };
            Ok::<_, BenchError>((latency, m, lab.cpu_since(cpu, &m)))
        }
        .await;
        running.stop().await;
        let (paced, e2e, e2e_cpu) = live?;
        judge_live(lab, &history, first_sequence).await?;
        latency = paced;
        record(
            rows,
            "e2e",
            format!("   end to end: append ({E2E_CALLERS} x batch {E2E_BATCH}) + relay -> acked"),
            e2e,
            e2e_cpu,
        );
    }
    Ok(latency)
}
