//! Measures what an append costs, step by step, against a real server: a round trip, a commit,
//! appends of 1 to 1000 events, concurrent single-event callers with and without group commit,
//! a raw batched insert without the store's logic, and a commit-safe read.
//!
//! ```text
//! EDUPULSE_PG_URL=postgres://postgres:pw@127.0.0.1:5432/postgres \
//!     cargo run --release -p edupulse-postgres --example append_costs
//! ```
//!
//! It creates a scratch database next to the one in the URL, migrates it, and drops it at the
//! end. The figures in the crate docs come from this program (the real bench command, with
//! NATS, lives in the app).

use edupulse_domain::{
    EventEnvelope, ExpectedVersion, LessonPublished, LessonTitle, StreamId, Uuid,
};
use edupulse_ports::{Cursor, EventAppender, EventReader};
use edupulse_postgres::{GroupCommitConfig, MIGRATOR, PgEventStore, PgStoreConfig};
use secrecy::SecretString;
use sqlx::{Connection, Executor, PgConnection};
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn event(stream: StreamId) -> Result<EventEnvelope, Error> {
    Ok(EventEnvelope::new(LessonPublished {
        lesson_id: *stream.as_uuid(),
        author_id: Uuid::new_v4(),
        title: LessonTitle::new(format!("Lesson {}", Uuid::new_v4()))?,
    })
    .with_stream(stream))
}

fn report(what: &str, n: usize, elapsed: Duration) {
    let per = elapsed / u32::try_from(n).unwrap_or(u32::MAX).max(1);
    let rate = n as f64 / elapsed.as_secs_f64();
    println!("{what:<58} {per:>10.1?} / op {rate:>10.0} /s  (n={n})");
}

async fn store(url: &str, group: bool) -> Result<PgEventStore, Error> {
    let mut config = PgStoreConfig::new(SecretString::from(url.to_owned()));
    config.max_connections = 16;
    config.group_commit = if group {
        GroupCommitConfig::default()
    } else {
        GroupCommitConfig::disabled()
    };
    Ok(PgEventStore::connect(&config).await?)
}

async fn concurrent(
    store: &PgEventStore,
    callers: usize,
    per_caller: usize,
) -> Result<Duration, Error> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = StreamId::new();
            for i in 0..per_caller {
                let expected = if i == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(i as u64)
                };
                store.append(stream, expected, vec![event(stream)?]).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let admin_url = std::env::var("EDUPULSE_PG_URL")
        .map_err(|_| "set EDUPULSE_PG_URL to a postgres:// URL (a superuser's)")?;
    let name = format!("append_costs_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url).await?;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let (base, _) = admin_url.rsplit_once('/').ok_or("URL without a database")?;
    let url = format!("{base}/{name}");
    let result = run(&url).await;
    if let Err(e) = &result {
        eprintln!("failed: {e}");
    }
    admin
        .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
        .await?;
    result
}

async fn run(url: &str) -> Result<(), Error> {
    let mut conn = PgConnection::connect(url).await?;
    MIGRATOR.run(&mut conn).await?;
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings \
         WHERE name IN ('fsync', 'synchronous_commit', 'wal_sync_method', 'server_version')",
    )
    .fetch_all(&mut conn)
    .await?;
    println!("server: {settings:?}");
    let size = event(StreamId::new())?.encode().len();
    println!("event size: {size} bytes encoded\n");

    // 1. A round trip.
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        sqlx::query("SELECT 1").execute(&mut conn).await?;
    }
    report("round trip (SELECT 1)", n, t.elapsed());

    // 2. A commit: one small row in its own transaction (WAL insert + flush).
    conn.execute("CREATE TABLE scratch (id bigserial PRIMARY KEY, note text)")
        .await?;
    let n = 1000;
    let t = Instant::now();
    for _ in 0..n {
        sqlx::query("INSERT INTO scratch (note) VALUES ('x')")
            .execute(&mut conn)
            .await?;
    }
    report("commit of a one-row insert (autocommit)", n, t.elapsed());

    // 3. Raw batched insert, same columns, none of the store's logic.
    conn.execute(
        "CREATE TABLE raw_events (position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         event_id uuid UNIQUE, stream_id uuid, event_type text, occurred_at timestamptz, \
         metadata jsonb, payload jsonb)",
    )
    .await?;
    let batches = 20;
    let mut total = 0;
    let t = Instant::now();
    for _ in 0..batches {
        let stream = StreamId::new();
        let events: Vec<EventEnvelope> =
            (0..1000).map(|_| event(stream)).collect::<Result<_, _>>()?;
        let ids: Vec<Uuid> = events.iter().map(|e| *e.id.as_uuid()).collect();
        let streams: Vec<Uuid> = events.iter().map(|_| *stream.as_uuid()).collect();
        let types: Vec<String> = events.iter().map(|e| e.event_type().to_owned()).collect();
        let at: Vec<_> = events.iter().map(|e| e.occurred_at).collect();
        let meta: Vec<serde_json::Value> = events
            .iter()
            .map(|e| serde_json::Value::Object(e.metadata.to_json()))
            .collect();
        let payload: Vec<serde_json::Value> = events.iter().map(|e| e.event.payload()).collect();
        sqlx::query(
            "INSERT INTO raw_events (event_id, stream_id, event_type, occurred_at, metadata, payload) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::jsonb[], $6::jsonb[])",
        )
        .bind(&ids)
        .bind(&streams)
        .bind(&types)
        .bind(&at)
        .bind(&meta)
        .bind(&payload)
        .execute(&mut conn)
        .await?;
        total += 1000;
    }
    report(
        "raw batched insert, 1000 rows per statement (per row)",
        total,
        t.elapsed(),
    );

    // 4. The store's append, one caller, batch sizes 1..1000, group commit off.
    let direct = store(url, false).await?;
    for (batch, count) in [(1usize, 1000usize), (10, 200), (100, 50), (1000, 20)] {
        let t = Instant::now();
        for _ in 0..count {
            let stream = StreamId::new();
            let events = (0..batch)
                .map(|_| event(stream))
                .collect::<Result<_, _>>()?;
            direct
                .append(stream, ExpectedVersion::NoStream, events)
                .await?;
        }
        report(
            &format!("append, batch of {batch}, one caller (per event)"),
            batch * count,
            t.elapsed(),
        );
    }
    let grouped = store(url, true).await?;
    let t = Instant::now();
    for _ in 0..1000 {
        let stream = StreamId::new();
        grouped
            .append(stream, ExpectedVersion::NoStream, vec![event(stream)?])
            .await?;
    }
    report(
        "append, 1 event, one caller, group commit on",
        1000,
        t.elapsed(),
    );

    // 5. Concurrent single-event callers.
    for callers in [16usize, 64] {
        let per_caller = 6400 / callers;
        let off = concurrent(&direct, callers, per_caller).await?;
        report(
            &format!("{callers} concurrent single-event callers, group commit off"),
            callers * per_caller,
            off,
        );
        let on = concurrent(&grouped, callers, per_caller).await?;
        report(
            &format!("{callers} concurrent single-event callers, group commit on"),
            callers * per_caller,
            on,
        );
    }

    // 6. Commit-safe read, pages of 1000.
    let t = Instant::now();
    let mut cursor = Cursor::START;
    let mut read = 0;
    loop {
        let page = direct.read_all(cursor, 1000).await?;
        let Some(last) = page.last() else { break };
        cursor = last.cursor;
        read += page.len();
    }
    report(
        "read_all, pages of 1000 (per event, decoded)",
        read,
        t.elapsed(),
    );
    Ok(())
}
