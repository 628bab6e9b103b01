//! Phase 5 and 7: the relay catching up from a backlog, and its peak memory meanwhile.
//!
//! The backlog is written straight into the events table with batched inserts (1000 rows per
//! statement, the same columns and `commit_key` rule as the store), because a million single
//! appends would take longer than the bench itself. It spreads over 10 000 aggregates, each
//! statement touching 1000 of them, as real traffic interleaves many aggregates: the relay's
//! publisher keeps one message in flight per aggregate, so a backlog of a few hot aggregates
//! would measure round trips, not throughput. Per-aggregate versions follow commit order (each
//! group of aggregates is written by one worker, in order).
//!
//! The relay starts from a checkpoint saved at the tip before the backlog was written, and is
//! caught up when its saved checkpoint reaches the tip after it. It runs in a process of its own
//! (`edupulse-lab relay`, the production relay's code), so its peak resident size (`VmHWM`) is its own; in-process (tests)
//! the bench's own peak is reported instead, and labelled so.

use super::BenchError;
use super::raw::{Measured, ROWS_PER_STATEMENT, join_all};
use super::sys::{self, CpuPerEvent, CpuProbe};
use super::workload::{Rows, Template, UNNEST};
use edupulse_app::relay::RelayConfig;
use edupulse_app::wiring::{Backbone, spawn_relay};
use edupulse_domain::Uuid;
use edupulse_ports::{CheckpointStore, Cursor};
use sqlx::PgPool;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Aggregate groups of the backlog; statement `s` writes one event to each aggregate of group
/// `s % GROUPS`.
const GROUPS: usize = 10;
/// Workers writing the backlog; a divisor of [`GROUPS`], so each group has one writer.
const SEED_WORKERS: usize = 2;

/// How the relay runs during the catch-up.
#[derive(Debug, Clone)]
pub enum RelayMode {
    /// `<exe> relay …` in a process of its own (a clean RSS figure).
    Subprocess(PathBuf),
    /// A task of the bench process (its RSS is the bench's).
    InProcess,
}

/// What the catch-up measured.
#[derive(Debug, Clone)]
pub(crate) struct CatchUp {
    /// Writing the backlog (raw batched inserts into `events`).
    pub(crate) seeded: Measured,
    /// Events published from the first saved checkpoint to caught up (the first batch, which
    /// includes the relay's start, is left out).
    pub(crate) steady: Measured,
    /// From starting the relay to caught up, everything included.
    pub(crate) total: Measured,
    /// Peak resident size, in bytes.
    pub(crate) peak_rss: Option<u64>,
    /// What [`CatchUp::peak_rss`] is the peak of.
    pub(crate) rss_of: &'static str,
    /// CPU per event (client = the relay process, or the whole bench process in-process).
    pub(crate) cpu: CpuPerEvent,
}

/// The highest cursor stored (`START` when empty).
pub(crate) async fn tip(pool: &PgPool) -> Result<Cursor, BenchError> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT commit_key, position FROM events ORDER BY commit_key DESC, position DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .map_err(|source| BenchError::Postgres {
        what: "read the tip",
        source,
    })?;
    Ok(row.map_or(Cursor::START, |(c, p)| Cursor {
        commit: u64::try_from(c).unwrap_or_default(),
        position: u64::try_from(p).unwrap_or_default(),
    }))
}

/// Writes `total` events into `events` (see the module docs).
pub(crate) async fn seed_backlog(
    pool: &PgPool,
    template: &Arc<Template>,
    total: u64,
) -> Result<Measured, BenchError> {
    let sql: Arc<str> = format!(
        "INSERT INTO events (commit_key, event_id, stream_id, stream_version, aggregate_id, \
         event_type, schema_version, occurred_at, metadata, payload) \
         SELECT pg_current_xact_id()::text::int8, event_id, stream_id, version, stream_id, \
         event_type, schema_version, occurred_at, metadata, payload FROM {UNNEST}"
    )
    .into();
    let streams: Arc<Vec<Uuid>> = Arc::new(
        (0..GROUPS * ROWS_PER_STATEMENT)
            .map(|_| Uuid::new_v4())
            .collect(),
    );
    let statements = total.div_ceil(ROWS_PER_STATEMENT as u64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..SEED_WORKERS {
        let (pool, sql, streams, template) =
            (pool.clone(), sql.clone(), streams.clone(), template.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = worker as u64;
            while s < statements {
                let group = (s % GROUPS as u64) as usize;
                let version = (s / GROUPS as u64 + 1) as i64;
                let n = (total - s * ROWS_PER_STATEMENT as u64).min(ROWS_PER_STATEMENT as u64);
                let mut rows = Rows::default();
                for j in 0..n as usize {
                    rows.push(&template, streams[group * ROWS_PER_STATEMENT + j], version);
                }
                debug_assert_eq!(rows.len(), n as usize);
                rows.bind(sqlx::query(&sql))
                    .execute(&pool)
                    .await
                    .map_err(|source| BenchError::Postgres {
                        what: "write the backlog",
                        source,
                    })?;
                s += SEED_WORKERS as u64;
            }
            Ok::<_, BenchError>(())
        }));
    }
    join_all(tasks).await?;
    Ok(Measured {
        events: total,
        elapsed: started.elapsed(),
    })
}

/// A relay process, stopped (SIGTERM, then SIGKILL) when dropped.
struct Child(tokio::process::Child);

impl Child {
    fn pid(&self) -> Option<u32> {
        self.0.id()
    }

    async fn stop(mut self) {
        if let Some(pid) = self.pid() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(5), self.0.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.0.start_kill();
        let _ = self.0.wait().await;
    }
}

/// Everything the catch-up needs.
pub(crate) struct CatchUpSetup<'a> {
    pub(crate) backbone: &'a Backbone,
    pub(crate) raw_pool: &'a PgPool,
    pub(crate) template: &'a Arc<Template>,
    pub(crate) backlog: u64,
    pub(crate) mode: &'a RelayMode,
    /// Environment of the `relay` subprocess (servers, stream, prefix; secrets stay out of its
    /// command line).
    pub(crate) relay_env: Vec<(String, String)>,
    pub(crate) batch_size: usize,
    pub(crate) name: String,
    pub(crate) probe: &'a CpuProbe,
    pub(crate) timeout: Duration,
}

/// Seeds the backlog, runs the relay over it and measures.
pub(crate) async fn run(setup: CatchUpSetup<'_>) -> Result<CatchUp, BenchError> {
    let store = &setup.backbone.store;
    let start = tip(setup.raw_pool).await?;
    store.save(&setup.name, start, 0).await?;
    let seeded = seed_backlog(setup.raw_pool, setup.template, setup.backlog).await?;
    let end = tip(setup.raw_pool).await?;

    let before = setup.probe.snapshot(None);
    let started = Instant::now();
    let (child, running) = match setup.mode {
        RelayMode::Subprocess(exe) => {
            let mut cmd = tokio::process::Command::new(exe);
            cmd.arg("relay")
                .envs(
                    setup
                        .relay_env
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str())),
                )
                .args(["--name", &setup.name])
                .args(["--batch-size", &setup.batch_size.to_string()])
                .args(["--listen", "127.0.0.1:0", "--pg-max-connections", "4"])
                .env("RUST_LOG", "warn")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true);
            let child = cmd.spawn().map_err(|e| {
                BenchError::Relay(format!("cannot start {} relay: {e}", exe.display()))
            })?;
            (Some(Child(child)), None)
        }
        RelayMode::InProcess => {
            sys::reset_own_peak_rss();
            let relay = setup.backbone.relay(RelayConfig {
                name: setup.name.clone(),
                batch_size: setup.batch_size,
                poll_interval: Duration::from_millis(100),
                ..RelayConfig::default()
            });
            (None, Some(spawn_relay(relay, None).await?))
        }
    };
    let pid = child.as_ref().and_then(Child::pid);
    let mut first_save: Option<Instant> = None;
    let mut peak_rss_sampled: Option<u64> = None;
    let result = loop {
        if started.elapsed() > setup.timeout {
            break Err(BenchError::Relay(format!(
                "the relay did not catch up within {:?}",
                setup.timeout
            )));
        }
        if let Some(pid) = pid {
            let rss = sys::vm_field(&pid.to_string(), "VmRSS");
            peak_rss_sampled = peak_rss_sampled.max(rss);
        }
        let saved = store.load(&setup.name).await?.map_or(start, |c| c.cursor);
        if saved > start && first_save.is_none() {
            first_save = Some(Instant::now());
        }
        if saved >= end {
            break Ok(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let after = setup.probe.snapshot(None);
    let relay_cpu = pid.and_then(|p| sys::process_cpu(&p.to_string()));
    let peak_rss = match pid {
        Some(pid) => sys::vm_field(&pid.to_string(), "VmHWM").or(peak_rss_sampled),
        None => sys::vm_field("self", "VmHWM"),
    };
    if let Some(child) = child {
        child.stop().await;
    }
    if let Some(running) = running {
        running.stop().await;
    }
    let done = result?;
    let total = Measured {
        events: setup.backlog,
        elapsed: done - started,
    };
    // The first save comes after the first full page; time the rest.
    let first_page = setup.batch_size as u64;
    let steady = match first_save {
        Some(first) if setup.backlog > 2 * first_page && done > first => Measured {
            events: setup.backlog - first_page,
            elapsed: done - first,
        },
        _ => total,
    };
    let mut cpu = CpuPerEvent::between(before, after, setup.backlog);
    if let Some(relay) = relay_cpu {
        // The relay process's own CPU, not the bench's polling.
        cpu.client_us = Some(relay.as_secs_f64() * 1e6 / setup.backlog.max(1) as f64);
    }
    Ok(CatchUp {
        seeded,
        steady,
        total,
        peak_rss,
        rss_of: if pid.is_some() {
            "relay process (VmHWM)"
        } else {
            "bench process, relay in-process (VmHWM after reset)"
        },
        cpu,
    })
}
