//! PostgreSQL faults under load: the server restarted mid-load; statements of the writers'
//! backends cancelled at random while they append through group commit. Appends fail with the
//! typed retryable error (`StoreError::Unavailable`; any other error fails the writers), are
//! retried with the same event ids, nothing acknowledged is lost, nothing unacknowledged is
//! published, and the relay resumes by itself.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edupulse_integration_tests::{
    cancel_statements_at_random, fresh_database, shared_nats, start_postgres,
};
use edupulse_postgres::PgEventStore;

use crate::workload::{
    Batch, Pace, Run, Until, Workload, pg_config, soak_factor, spawn_writers, wait_published,
};

/// `application_name` of the writers' connections: the backends whose statements are cancelled.
const CANCELLED_WRITERS: &str = "edupulse-faults-cancelled-writers";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_load() {
    let pg = start_postgres().await;
    PgEventStore::connect(&pg_config(&pg.url()))
        .await
        .expect("connect")
        .migrate()
        .await
        .expect("migrate");
    let nats = shared_nats().await;
    let run = Run::start("pg_restart", &pg.url(), vec![nats.url()]).await;
    let relay = run.spawn_relay().await;
    let writers = run.writers(Workload::default());

    let soak = soak_factor();
    wait_published(&relay, 500 * u64::from(soak)).await;
    // Fast shutdown: sessions are terminated, in-flight appends fail (some after their commit).
    pg.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.start().await;
    let healed = Instant::now();
    tokio::time::sleep(Duration::from_secs(2) * soak).await;
    writers.join().await;
    let recovery = run.caught_up_since(healed).await;

    let retryable = run.history.retryable_errors();
    let takeovers = relay.stats.snapshot().takeovers;
    let mut figures = run.finish("postgres_restarted", &HashSet::new()).await;
    Run::stop_relay(relay).await;
    figures.recovery = recovery;
    figures.notes = format!(
        "{retryable} appends failed with Unavailable and were retried; relay took its lease {takeovers} times, never restarted"
    );
    figures.report_and_check();
    assert!(retryable > 0, "the writers must have seen the restart");
}

/// Statements of the writers' backends cancelled at random every 1–2 ms (`pg_cancel_backend`:
/// SQLSTATE 57014, as a `statement_timeout` or an operator would), while 32 writers append small
/// batches back to back through group commit with the relay and a consumer running: grouped statements,
/// calls replayed one by one in savepoints, their lookups and commits are cut short at random.
/// 30% of the acknowledged appends are sent again (answers lost by a client), so the lookups
/// that resolve a replay run under cancellation too.
/// The relay's own connections are left alone: this row is about what the store acknowledges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_cancellations_under_group_commit() {
    let db = fresh_database().await;
    let nats = shared_nats().await;
    let run = Run::start("pg_cancel", db.url(), vec![nats.url()]).await;
    let relay = run.spawn_relay().await;
    let mut config = pg_config(db.url());
    config.application_name = CANCELLED_WRITERS.to_owned();
    let store = Arc::new(
        PgEventStore::connect(&config)
            .await
            .expect("connect the writers' store"),
    );
    assert!(
        config.group_commit.enabled,
        "the writers append through group commit"
    );
    let workload = Workload {
        writers: 32,
        streams_per_writer: 4,
        batch: Batch::UpTo(2),
        pace: Pace::Closed {
            pause: Duration::ZERO,
        },
        until: Until::Stopped,
        resend_percent: 30,
        ..Workload::default()
    };
    let canceller = cancel_statements_at_random(
        db.url(),
        CANCELLED_WRITERS,
        Duration::from_millis(2),
        rand::random(),
    )
    .await;
    let writers = spawn_writers(store.clone(), run.history.clone(), &run.name, workload);
    tokio::time::sleep(Duration::from_secs(4) * soak_factor()).await;
    let cancelled = canceller.stop().await;
    let healed = Instant::now();
    writers.join().await;
    let recovery = run.caught_up_since(healed).await;

    // Grouping happened: fewer transactions than events (xmin is the writing transaction).
    let (events, transactions): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT xmin::text) FROM events")
            .fetch_one(store.pool())
            .await
            .expect("count the transactions");
    let retryable = run.history.retryable_errors();
    let mut figures = run
        .finish(
            "statement cancellations under group commit",
            &HashSet::new(),
        )
        .await;
    Run::stop_relay(relay).await;
    figures.recovery = recovery;
    figures.notes = format!(
        "{cancelled} writer statements cancelled; {retryable} appends failed with Unavailable and \
         were retried; {events} events written by {transactions} transactions"
    );
    figures.report_and_check();
    assert!(cancelled > 0, "statements were cancelled");
    assert!(retryable > 0, "the writers must have seen cancellations");
    assert!(transactions < events, "appends were grouped");
}
