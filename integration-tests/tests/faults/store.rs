//! PostgreSQL restarted mid-load: appends fail with the typed retryable error
//! (`StoreError::Unavailable`; any other error fails the writers), are retried with the same
//! event ids, nothing committed is lost, and the relay resumes by itself.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edupulse_integration_tests::{shared_nats, start_postgres};
use edupulse_postgres::PgEventStore;

use crate::workload::{Run, Workload, pg_config, soak_factor, wait_published};

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
    let takeovers = relay.stats.takeovers.load(Ordering::Relaxed);
    let mut figures = run.finish("postgres_restarted", &HashSet::new()).await;
    Run::stop_relay(relay).await;
    figures.recovery = recovery;
    figures.notes = format!(
        "{retryable} appends failed with Unavailable and were retried; relay took its lease {takeovers} times, never restarted"
    );
    figures.report_and_check();
    assert!(retryable > 0, "the writers must have seen the restart");
}
