//! `demo`: the whole path, end to end, checked.
//!
//! Concurrent writers append a realistic EduPulse workload (lessons published, quiz submissions,
//! badges, payments) across many aggregates, with expected versions; the relay publishes; a
//! durable consumer receives everything; the demo checks that every appended event arrived
//! exactly once and in per-stream order, and prints a summary.

use crate::cli::DemoArgs;
use edupulse_app::latency::{LatencyHistogram, ms};
use edupulse_app::relay::RelayConfig;
use edupulse_app::wiring::{Backbone, WiringError, spawn_relay};
use edupulse_domain::{
    Actor, AmountCents, BadgeAwarded, ContextId, DomainEvent, EventEnvelope, EventId,
    ExpectedVersion, LessonPublished, LessonTitle, Metadata, PaymentProcessed, QuizSubmitted,
    Score, StreamId, TraceParent, Uuid,
};
use edupulse_integration_tests::checker::{self, Consumed, Figures, History};
use edupulse_integration_tests::local::{BrokerSync, LocalServers};
use edupulse_ports::{EventAppender, EventConsumer, Settlement, StoreError};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;

/// What the demo found.
#[derive(Debug, Default, Clone)]
pub struct DemoReport {
    /// Events appended (acknowledged by the store).
    pub appended: u64,
    /// Appends refused by optimistic concurrency and retried by the writers.
    pub conflicts_retried: u64,
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
}

impl DemoReport {
    /// Whether everything arrived exactly once, in order.
    pub fn passed(&self) -> bool {
        self.appended > 0 && self.verdict.kept_the_guarantees()
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
    /// An append failed for a reason other than a conflict.
    #[error("append failed")]
    Append(#[from] StoreError),
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
                    .get("demo_run")
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
    let (appended, conflicts, append_latency) =
        write_workload(&backbone, events, writers.max(1), &history, &run_id).await?;
    let append_time = started.elapsed();
    let _ = done_tx.send(Some(appended));
    let (received, last_received) = consumed
        .await
        .unwrap_or_else(|_| (Consumed::default(), Instant::now()));
    let stats = running.stats.clone();
    running.stop().await;

    // The broker's own copy of this run's events, judged like every fault suite's run.
    let js = edupulse_nats::jetstream_context(backbone.client.clone(), &backbone.nats);
    let ours = history.acknowledged_ids();
    let mut broker = checker::broker_log(&js, &backbone.nats.stream_name).await;
    broker.retain(|(id, _, _)| id.parse().is_ok_and(|id: EventId| ours.contains(&id)));
    let verdict = checker::judge("demo", &history, &received, &HashSet::new(), &broker);
    Ok(DemoReport {
        appended,
        conflicts_retried: conflicts,
        received: received.distinct() as u64,
        verdict,
        append_time,
        end_to_end_time: last_received.saturating_duration_since(started),
        commit_to_ack_p50: stats.commit_to_ack().quantile(0.5),
        commit_to_ack_p99: stats.commit_to_ack().quantile(0.99),
        commit_to_ack_max: stats.commit_to_ack().max(),
        append_latency: (append_latency.quantile(0.5), append_latency.quantile(0.99)),
    })
}

/// Aggregates a writer works on. Each writer owns its aggregates, as a service instance owning
/// a shard would, and one shared "course catalogue" stream is contended by all writers on purpose.
struct Aggregates {
    lessons: Vec<(StreamId, Option<u64>)>,
    quizzes: Vec<(StreamId, Option<u64>)>,
    learners: Vec<StreamId>,
}

fn metadata(run_id: &str, rng: &mut impl Rng) -> Metadata {
    let trace: u128 = rng.random::<u128>() | 1;
    let span: u64 = rng.random::<u64>() | 1;
    let mut m = Metadata {
        correlation_id: ContextId::new(format!("req-{:016x}", rng.random::<u64>())).ok(),
        actor: Actor::new(format!("user:{}", Uuid::new_v4())).ok(),
        traceparent: TraceParent::new(format!("00-{trace:032x}-{span:016x}-01")).ok(),
        ..Metadata::default()
    };
    m.extra.insert("demo_run".into(), run_id.into());
    m
}

const TITLES: [&str; 6] = [
    "Ownership and borrowing",
    "Async Rust: futures and executors",
    "Les bases de la statistique",
    "Álgebra lineal para principiantes",
    "日本語の文法入門",
    "Event sourcing in practice 🦀",
];

async fn write_workload(
    backbone: &Backbone,
    events: u64,
    writers: usize,
    history: &Arc<History>,
    run_id: &str,
) -> Result<(u64, u64, LatencyHistogram), DemoError> {
    let budget = Arc::new(AtomicU64::new(events));
    let conflicts = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(LatencyHistogram::default());
    let catalogue = StreamId::new();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let store = backbone.store.clone();
        let budget = budget.clone();
        let conflicts = conflicts.clone();
        let latency = latency.clone();
        let history = history.clone();
        let run_id = run_id.to_owned();
        tasks.push(tokio::spawn(async move {
            // A Send generator: the task may move between worker threads.
            let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
            let mut aggregates = Aggregates {
                lessons: Vec::new(),
                quizzes: (0..8).map(|_| (StreamId::new(), None)).collect(),
                learners: (0..32).map(|_| StreamId::new()).collect(),
            };
            let mut appended = 0u64;
            loop {
                // Take 1–4 events from the budget for the next command.
                // Quiz submissions come in batches of up to 4; other commands emit one event.
                let kind = rng.random_range(0..100u32);
                let want = if QUIZ_KINDS.contains(&kind) {
                    rng.random_range(1..=4u64)
                } else {
                    1
                };
                let got = budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                        (b > 0).then(|| b - want.min(b))
                    })
                    .map_or(0, |b| want.min(b));
                if got == 0 {
                    break;
                }
                let (stream, expected, batch, slot) = next_command(
                    &mut aggregates,
                    &mut rng,
                    kind,
                    got as usize,
                    &run_id,
                    catalogue,
                );
                let mut expected = expected;
                history.attempt(&batch);
                loop {
                    let t0 = Instant::now();
                    match store.append(stream, expected, batch.clone()).await {
                        Ok(out) => {
                            latency.record(t0.elapsed());
                            history.acknowledged(&out);
                            appended += out.events.len() as u64;
                            if let Some(slot) = slot {
                                slot_version(&mut aggregates, slot, out.last_version());
                            }
                            break;
                        }
                        Err(StoreError::Conflict { actual, .. }) => {
                            // Someone else moved the stream: re-read and decide again.
                            conflicts.fetch_add(1, Ordering::Relaxed);
                            history.conflict();
                            expected =
                                actual.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                        }
                        Err(e) if e.is_retryable() => {
                            history.ambiguous(&batch);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(appended)
        }));
    }
    let mut total = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {}
        }
    }
    let latency = Arc::try_unwrap(latency).unwrap_or_default();
    Ok((total, conflicts.load(Ordering::Relaxed), latency))
}

#[derive(Clone, Copy)]
enum Slot {
    Lesson(usize),
    Quiz(usize),
}

fn slot_version(a: &mut Aggregates, slot: Slot, version: u64) {
    match slot {
        Slot::Lesson(i) => a.lessons[i].1 = Some(version),
        Slot::Quiz(i) => a.quizzes[i].1 = Some(version),
    }
}

type Command = (StreamId, ExpectedVersion, Vec<EventEnvelope>, Option<Slot>);

/// The share (out of 100) of commands that submit quizzes.
const QUIZ_KINDS: std::ops::RangeInclusive<u32> = 10..=64;

fn next_command(
    a: &mut Aggregates,
    rng: &mut impl Rng,
    kind: u32,
    n: usize,
    run_id: &str,
    catalogue: StreamId,
) -> Command {
    let expected_of = |v: Option<u64>| v.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
    let meta = metadata(run_id, rng);
    let envelope = |event: DomainEvent, stream: StreamId| {
        EventEnvelope::new(event)
            .with_stream(stream)
            .with_metadata(meta.clone())
    };
    let title =
        |i: usize| LessonTitle::new(TITLES[i % TITLES.len()]).expect("static titles are valid");
    match kind {
        // A lesson is published (a new aggregate), sometimes announced in the shared catalogue.
        0..=9 => {
            if rng.random_bool(0.3) {
                let lesson_id = Uuid::new_v4();
                let e = LessonPublished {
                    lesson_id,
                    author_id: Uuid::new_v4(),
                    title: title(rng.random_range(0..TITLES.len())),
                };
                return (
                    catalogue,
                    ExpectedVersion::Any,
                    vec![envelope(e.into(), catalogue)],
                    None,
                );
            }
            let stream = StreamId::new();
            a.lessons.push((stream, None));
            let e = LessonPublished {
                lesson_id: *stream.as_uuid(),
                author_id: Uuid::new_v4(),
                title: title(rng.random_range(0..TITLES.len())),
            };
            let slot = a.lessons.len() - 1;
            (
                stream,
                ExpectedVersion::NoStream,
                vec![envelope(e.into(), stream)],
                Some(Slot::Lesson(slot)),
            )
        }
        // Quiz submissions: a batch of n submissions to one quiz, with its expected version.
        10..=64 => {
            let i = rng.random_range(0..a.quizzes.len());
            let (quiz, version) = a.quizzes[i];
            let batch = (0..n)
                .map(|_| {
                    let max = Score::new(20.0).expect("valid");
                    let score = Score::new(rng.random_range(0..=40) as f32 / 2.0).expect("valid");
                    let e = QuizSubmitted::new(*quiz.as_uuid(), Uuid::new_v4(), score, max)
                        .expect("score within maximum");
                    envelope(e.into(), quiz)
                })
                .collect();
            (quiz, expected_of(version), batch, Some(Slot::Quiz(i)))
        }
        // Badges land in the learner's stream.
        65..=84 => {
            let learner = *a.learners.choose(rng).unwrap_or(&a.learners[0]);
            let e = BadgeAwarded {
                badge_id: Uuid::new_v4(),
                recipient_id: *learner.as_uuid(),
            };
            (
                learner,
                ExpectedVersion::Any,
                vec![envelope(e.into(), learner)],
                None,
            )
        }
        // A payment: a new invoice aggregate.
        _ => {
            let invoice = StreamId::new();
            let e = PaymentProcessed {
                invoice_id: *invoice.as_uuid(),
                user_id: Uuid::new_v4(),
                amount_cents: AmountCents::new(rng.random_range(499..=49_900)).expect("valid"),
            };
            (
                invoice,
                ExpectedVersion::NoStream,
                vec![envelope(e.into(), invoice)],
                None,
            )
        }
    }
}

/// Prints the report for humans.
pub fn print(report: &DemoReport) {
    let secs = report.append_time.as_secs_f64().max(1e-9);
    let e2e = report.end_to_end_time.as_secs_f64().max(1e-9);
    println!();
    println!("EduPulse event backbone — demo");
    println!("  events appended          {:>10}", report.appended);
    println!(
        "  conflicts (retried)      {:>10}",
        report.conflicts_retried
    );
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
    println!();
    println!("The checker's verdict (the fault suites' table, one row):");
    println!("{}", report.verdict.table());
    println!();
    println!(
        "  result                   {}",
        if report.passed() {
            "PASS: every event arrived exactly once, in per-stream order"
        } else {
            "FAIL"
        }
    );
}
