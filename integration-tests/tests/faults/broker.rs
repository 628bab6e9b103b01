//! The broker fails under sustained appends: stopped for ≥ 10 s, or paused mid-publish (acks
//! never arrive: every outcome in flight is ambiguous). The relay retries with the same event
//! ids; the broker deduplicates; nothing is lost, duplicated or reordered.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use edupulse_integration_tests::{NatsContainer, fresh_database, start_nats};

use crate::workload::{Run, Workload, soak_factor, wait_published, within};

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
    wait_published(&relay, 500 * u64::from(soak)).await;
    within("the fault", Duration::from_secs(120), fault(nats)).await;
    let healed = Instant::now();
    tokio::time::sleep(Duration::from_secs(2) * soak).await;
    writers.join().await;
    let recovery = run.caught_up_since(healed).await;

    let retries = relay.stats.snapshot().retries;
    let published = relay.stats.snapshot().published;
    let duplicates = relay.stats.snapshot().duplicates;
    let mut figures = run.finish(what, &HashSet::new()).await;
    Run::stop_relay(relay).await;
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

/// Regression: a pull whose answer never comes (the broker paused, or the node holding the
/// consumer killed) used to leave `next_batch` waiting forever; it must give up and report the
/// broker unavailable, and work again once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_never_hangs_on_a_paused_broker() {
    use edupulse_ports::{ConsumeError, EventConsumer};

    let nats = start_nats().await;
    let db = fresh_database().await;
    let run = Run::start("consumer_paused", db.url(), vec![nats.url()]).await;
    let mut consumer = run
        .backbone
        .consumer(&format!("{}_probe", run.name), None)
        .await
        .expect("consumer");
    nats.pause().await;
    for _ in 0..3 {
        let outcome = within(
            "next_batch on a paused broker",
            Duration::from_secs(30),
            consumer.next_batch(10, Duration::from_millis(250)),
        )
        .await;
        assert!(
            matches!(outcome, Err(ConsumeError::Unavailable(_)) | Ok(_)),
            "{outcome:?}"
        );
    }
    nats.unpause().await;
    let outcome = within(
        "next_batch after the pause",
        Duration::from_secs(30),
        consumer.next_batch(10, Duration::from_millis(250)),
    )
    .await;
    assert!(outcome.is_ok_and(|d| d.is_empty()));
    let figures = run
        .finish("consumer_on_paused_broker", &HashSet::new())
        .await;
    assert_eq!(figures.lost + figures.unexpected, 0);
}
