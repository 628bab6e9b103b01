//! The broker fails under sustained appends: stopped for ≥ 10 s, or paused mid-publish (acks
//! never arrive: every outcome in flight is ambiguous). The relay retries with the same event
//! ids; the broker deduplicates; nothing is lost, duplicated or reordered.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edupulse_integration_tests::{NatsContainer, fresh_database, start_nats};

use crate::workload::{Run, Workload, soak_factor};

/// Appends for `before`, applies `fault` (which returns when the broker is healthy again),
/// appends for `after`, and judges the run.
async fn run_with_broker_fault(
    what: &str,
    nats: &NatsContainer,
    fault: impl AsyncFnOnce(&NatsContainer),
) {
    let db = fresh_database().await;
    let run = Run::start(what, db.url(), vec![nats.url()]).await;
    let relay = run.spawn_relay().await;
    let writers = run.writers(Workload::default());

    let soak = soak_factor();
    tokio::time::sleep(Duration::from_secs(2) * soak).await;
    let published_before = relay.stats.published.load(Ordering::Relaxed);
    assert!(published_before > 0, "the relay publishes before the fault");
    fault(nats).await;
    let healed = Instant::now();
    tokio::time::sleep(Duration::from_secs(2) * soak).await;
    writers.join().await;
    let recovery = run.caught_up_since(healed).await;

    let retries = relay.stats.retries.load(Ordering::Relaxed);
    let published = relay.stats.published.load(Ordering::Relaxed);
    let duplicates = relay.stats.duplicates.load(Ordering::Relaxed);
    let mut figures = run.finish(what, &HashSet::new()).await;
    relay.stop().await;
    figures.recovery = recovery;
    figures.notes = format!(
        "relay: {published} published, {duplicates} deduplicated re-publishes, {retries} retries"
    );
    figures.report_and_check();
    assert!(retries > 0, "the relay must have seen the fault");
    // An event whose ack was lost is counted as a deduplicated re-publish by the retry.
    assert!(
        published <= figures.stored && published + duplicates >= figures.stored,
        "every stored event was acknowledged to the relay, once as new at most: {figures:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_10s_during_sustained_appends() {
    let nats = start_nats().await;
    run_with_broker_fault("broker_stopped", &nats, async |nats: &NatsContainer| {
        nats.stop().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        nats.start().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_paused_mid_publish() {
    let nats = start_nats().await;
    run_with_broker_fault("broker_paused", &nats, async |nats: &NatsContainer| {
        nats.pause().await;
        // Longer than the ack timeout (2 s): the acks in flight never arrive.
        tokio::time::sleep(Duration::from_secs(6)).await;
        nats.unpause().await;
    })
    .await;
}
