//! A broker paused (acks never arrive: ambiguous outcomes) or stopped mid-run, with a relay-like
//! loop publishing batches: retryable errors, then success; nothing stored twice; every stream in
//! order at the broker.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use edupulse_integration_tests::{NatsContainer, start_nats};

use crate::support::{
    RunStats, assert_exactly_once_in_order, config, raw, read_stream, setup, spawn_relay,
    wait_batches, workload,
};

async fn run_with_fault(
    nats: &NatsContainer,
    what: &str,
    fault: impl AsyncFnOnce(&NatsContainer),
) -> RunStats {
    let config = config(vec![nats.url()], what);
    let (client, publisher) = setup(&config).await;
    // 40 aggregates × 150 events: 30 batches, at least 750 ms of publishing.
    let events = workload(40, 150);
    let done = Arc::new(AtomicUsize::new(0));
    let relay = spawn_relay(
        publisher,
        events.clone(),
        done.clone(),
        Duration::from_millis(25),
    );

    wait_batches(&done, 2).await;
    let started = Instant::now();
    fault(nats).await;
    let stats = relay.await.expect("relay task");
    eprintln!(
        "{what}: recovered {:?} after the fault began; {stats:?}",
        started.elapsed()
    );

    let stored = read_stream(&raw(&client), &config.stream_name).await;
    assert_eq!(stored.len(), events.len(), "stored exactly once");
    assert_eq!(assert_exactly_once_in_order(&stored, &events), 40);
    assert!(
        stats.retryable_errors() > 0,
        "the fault must have been seen: {stats:?}"
    );
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_paused_mid_batch_then_unpaused() {
    let nats = start_nats().await;
    let stats = run_with_fault(&nats, "paused", async |nats: &NatsContainer| {
        nats.pause().await;
        // Longer than the ack timeout (2 s): the batch in flight times out.
        tokio::time::sleep(Duration::from_secs(3)).await;
        nats.unpause().await;
    })
    .await;
    // Acks never arrived: the outcome was ambiguous, so the errors are timeouts (and the events
    // held back behind them).
    assert!(
        stats.errors.get("timeout").copied().unwrap_or(0) > 0,
        "{stats:?}"
    );
    assert!(
        stats
            .errors
            .keys()
            .all(|k| ["timeout", "not_attempted"].contains(k)),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_mid_batch_then_started() {
    let nats = start_nats().await;
    let stats = run_with_fault(&nats, "stopped", async |nats: &NatsContainer| {
        nats.stop().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        nats.start().await;
    })
    .await;
    assert!(
        stats
            .errors
            .keys()
            .all(|k| ["timeout", "unavailable", "not_attempted"].contains(k)),
        "only retryable kinds: {stats:?}"
    );
}
