//! The machine's ceilings and the seed's design, measured with the drivers directly (no store
//! logic, no relay): batched inserts with sqlx, pipelined acknowledged publishes with async-nats,
//! and the seed's "one transaction per event, then a core publish".

use super::BenchError;
use super::workload::{Rows, Template, UNNEST};
use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use edupulse_domain::{StreamId, Uuid};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rand::SeedableRng;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Rows per statement (and transaction) of the batched paths.
pub(crate) const ROWS_PER_STATEMENT: usize = 1000;

/// How many events and how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    pub(crate) events: u64,
    pub(crate) elapsed: Duration,
}

impl Measured {
    /// Events per second.
    pub(crate) fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn pg(what: &'static str) -> impl FnOnce(sqlx::Error) -> BenchError {
    move |source| BenchError::Postgres { what, source }
}

fn nats<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> BenchError {
    move |source| BenchError::Nats {
        what,
        source: Box::new(source),
    }
}

/// Creates the scratch table of the raw insert: the events table's columns, its primary key
/// (an identity), no other index and no trigger.
pub(crate) async fn create_raw_table(pool: &PgPool, table: &str) -> Result<(), BenchError> {
    let sql = format!(
        "CREATE TABLE {table} (position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         event_id uuid NOT NULL, stream_id uuid NOT NULL, stream_version bigint NOT NULL, \
         aggregate_id uuid, event_type text NOT NULL, schema_version integer NOT NULL, \
         occurred_at timestamptz NOT NULL, recorded_at timestamptz NOT NULL DEFAULT \
         clock_timestamp(), metadata json NOT NULL, payload json NOT NULL)"
    );
    sqlx::query(&sql)
        .execute(pool)
        .await
        .map_err(pg("create the raw scratch table"))?;
    Ok(())
}

/// Creates the seed's table, as the seed declares it.
pub(crate) async fn create_seed_table(pool: &PgPool, table: &str) -> Result<(), BenchError> {
    let sql = format!(
        "CREATE TABLE {table} (id uuid PRIMARY KEY, aggregate_id uuid NULL, \
         occurred_at timestamptz NOT NULL, envelope jsonb NOT NULL)"
    );
    sqlx::query(&sql)
        .execute(pool)
        .await
        .map_err(pg("create the seed table"))?;
    Ok(())
}

/// Inserts `total` rows into `table` with `writers` connections, [`ROWS_PER_STATEMENT`] rows per
/// statement (each its own transaction), spread over many streams.
pub(crate) async fn raw_insert(
    pool: &PgPool,
    table: &str,
    template: &Arc<Template>,
    total: u64,
    writers: usize,
) -> Result<Measured, BenchError> {
    let sql: Arc<str> = format!(
        "INSERT INTO {table} (event_id, stream_id, stream_version, aggregate_id, event_type, \
         schema_version, occurred_at, metadata, payload) \
         SELECT event_id, stream_id, version, stream_id, event_type, schema_version, \
         occurred_at, metadata, payload FROM {UNNEST}"
    )
    .into();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers.max(1) {
        let (pool, sql, next, template) =
            (pool.clone(), sql.clone(), next.clone(), template.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(ROWS_PER_STATEMENT as u64, Ordering::Relaxed);
                if from >= total {
                    return Ok::<_, BenchError>(());
                }
                let n = (total - from).min(ROWS_PER_STATEMENT as u64);
                let mut rows = Rows::default();
                for _ in 0..n {
                    rows.push(&template, Uuid::new_v4(), 1);
                }
                rows.bind(sqlx::query(&sql))
                    .execute(&pool)
                    .await
                    .map_err(pg("raw batched insert"))?;
            }
        }));
    }
    join_all(tasks).await?;
    Ok(Measured {
        events: total,
        elapsed: started.elapsed(),
    })
}

/// Waits for every task; the first error wins.
pub(crate) async fn join_all<T>(
    tasks: Vec<tokio::task::JoinHandle<Result<T, BenchError>>>,
) -> Result<Vec<T>, BenchError> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.map_err(|e| BenchError::Task(e.to_string()))??);
    }
    Ok(out)
}

/// Creates a scratch JetStream stream like the event stream (file storage, the default
/// duplicate window) capturing `<prefix>.>`.
pub(crate) async fn create_raw_stream(
    js: &jetstream::Context,
    name: &str,
    prefix: &str,
) -> Result<(), BenchError> {
    js.create_stream(jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{prefix}.>")],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: edupulse_nats::DEFAULT_DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .map_err(nats("create the raw scratch stream"))?;
    Ok(())
}

/// How [`raw_publish`] orders and fences its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fencing {
    /// Pipelined over 1024 subjects, no expectation: the broker's plain ceiling.
    Unfenced,
    /// The relay's ordering and fence and nothing else of the relay: one message in flight per
    /// subject, each carrying `Nats-Expected-Last-Subject-Sequence` (the previous
    /// acknowledgement's sequence). What the broker can do for a fenced, per-aggregate ordered
    /// publisher.
    PerSubject,
}

/// Publishes `total` messages of the template's size and headers (a fresh `Nats-Msg-Id` each)
/// with up to `window` awaiting their acknowledgement, and awaits every acknowledgement.
pub(crate) async fn raw_publish(
    js: &jetstream::Context,
    prefix: &str,
    template: &Template,
    total: u64,
    window: usize,
    fencing: Fencing,
) -> Result<Measured, BenchError> {
    match fencing {
        Fencing::Unfenced => pipelined(js, prefix, template, total, window).await,
        Fencing::PerSubject => fenced(js, prefix, template, total, window).await,
    }
}

/// The template's headers with a fresh `Nats-Msg-Id`.
fn fresh_headers(template: &Template) -> async_nats::HeaderMap {
    let mut headers = template.headers.clone();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        Uuid::now_v7().to_string().as_str(),
    );
    headers
}

async fn pipelined(
    js: &jetstream::Context,
    prefix: &str,
    template: &Template,
    total: u64,
    window: usize,
) -> Result<Measured, BenchError> {
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut sent = 0u64;
    // Subjects as the relay's: `<prefix>.<type>.<stream>`, over many streams.
    let streams: Vec<String> = (0..1024)
        .map(|_| format!("{prefix}.{}.{}", template.event_type, StreamId::new()))
        .collect();
    loop {
        while in_flight.len() < window.max(1) && sent < total {
            let message = PublishMessage::build()
                .headers(fresh_headers(template))
                .payload(template.encoded.clone());
            let subject = streams[(sent % streams.len() as u64) as usize].clone();
            in_flight.push(async move {
                js.send_publish(subject, message)
                    .await
                    .map_err(nats("raw publish"))?
                    .await
                    .map_err(nats("raw publish acknowledgement"))
            });
            sent += 1;
        }
        match in_flight.next().await {
            Some(ack) => {
                ack?;
            }
            None => break,
        }
    }
    Ok(Measured {
        events: total,
        elapsed: started.elapsed(),
    })
}

/// [`Fencing::PerSubject`] over `chains` subjects.
async fn fenced(
    js: &jetstream::Context,
    prefix: &str,
    template: &Template,
    total: u64,
    chains: usize,
) -> Result<Measured, BenchError> {
    let chains = chains.max(1);
    let per_chain = total / chains as u64;
    let started = Instant::now();
    let mut running: FuturesUnordered<_> = (0..chains)
        .map(|_| {
            let subject = format!("{prefix}.{}.{}", template.event_type, StreamId::new());
            async move {
                let mut last = 0u64;
                for _ in 0..per_chain {
                    let mut headers = fresh_headers(template);
                    headers.insert(
                        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                        last.to_string().as_str(),
                    );
                    let message = PublishMessage::build()
                        .headers(headers)
                        .payload(template.encoded.clone());
                    let ack = js
                        .send_publish(subject.clone(), message)
                        .await
                        .map_err(nats("raw fenced publish"))?
                        .await
                        .map_err(nats("raw fenced publish acknowledgement"))?;
                    last = ack.sequence;
                }
                Ok::<(), BenchError>(())
            }
        })
        .collect();
    while let Some(chain) = running.next().await {
        chain?;
    }
    Ok(Measured {
        events: per_chain * chains as u64,
        elapsed: started.elapsed(),
    })
}

/// The seed's design: per event, a transaction with one INSERT of the envelope as jsonb, a
/// commit, then a core NATS publish (no acknowledgement). `callers` loop until `duration`.
pub(crate) async fn seed_design(
    pool: &PgPool,
    client: &async_nats::Client,
    table: &str,
    subject: &str,
    callers: usize,
    duration: Duration,
) -> Result<Measured, BenchError> {
    let sql: Arc<str> = format!(
        "INSERT INTO {table} (id, aggregate_id, occurred_at, envelope) VALUES ($1, $2, $3, $4)"
    )
    .into();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..callers.max(1) {
        let (pool, client, sql, subject) = (
            pool.clone(),
            client.clone(),
            sql.clone(),
            subject.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
            let mut done = 0u64;
            while Instant::now() < deadline {
                let envelope = edupulse_integration_tests::workload::quiz_submission(
                    StreamId::new(),
                    &mut rng,
                );
                let mut tx = pool.begin().await.map_err(pg("seed: begin"))?;
                sqlx::query(&sql)
                    .bind(envelope.id.as_uuid())
                    .bind(envelope.aggregate_id.map(|s| *s.as_uuid()))
                    .bind(envelope.occurred_at)
                    .bind(serde_json::to_value(&envelope).unwrap_or_default())
                    .execute(&mut *tx)
                    .await
                    .map_err(pg("seed: insert"))?;
                tx.commit().await.map_err(pg("seed: commit"))?;
                client
                    .publish(subject.clone(), envelope.encode().into())
                    .await
                    .map_err(nats("seed: core publish"))?;
                done += 1;
            }
            Ok(done)
        }));
    }
    let events = join_all(tasks).await?.into_iter().sum();
    let elapsed = started.elapsed();
    client.flush().await.map_err(nats("seed: flush"))?;
    Ok(Measured { events, elapsed })
}
