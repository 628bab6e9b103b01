//! The relay against the in-memory fakes: ordering, faults, poison events, leases, shutdown.

use super::*;
use edupulse_domain::{BadgeAwarded, EventEnvelope, ExpectedVersion, StreamId, Uuid};
use edupulse_ports::EventAppender;
use edupulse_ports::memory::{BrokerFault, InMemoryBroker, InMemoryEventStore};
use std::collections::HashMap;

fn ports(store: &InMemoryEventStore, broker: &InMemoryBroker) -> RelayPorts {
    RelayPorts {
        store: Arc::new(store.clone()),
        hints: Arc::new(store.clone()),
        checkpoints: Arc::new(store.clone()),
        leases: Arc::new(store.clone()),
        publisher: Arc::new(broker.clone()),
    }
}

fn config() -> RelayConfig {
    RelayConfig {
        batch_size: 7,
        poll_interval: Duration::from_millis(20),
        lease_retry: Duration::from_millis(10),
        backoff_min: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        ..RelayConfig::default()
    }
}

async fn append_events(
    store: &InMemoryEventStore,
    streams: usize,
    per_stream: usize,
) -> Vec<StreamId> {
    let ids: Vec<StreamId> = (0..streams).map(|_| StreamId::new()).collect();
    for _ in 0..per_stream {
        for s in &ids {
            let e = EventEnvelope::new(BadgeAwarded {
                badge_id: Uuid::new_v4(),
                recipient_id: Uuid::new_v4(),
            })
            .with_stream(*s);
            store
                .append(*s, ExpectedVersion::Any, vec![e])
                .await
                .unwrap();
        }
    }
    ids
}

/// Waits until the broker holds `n` messages (or panics after 10 s).
async fn wait_for(broker: &InMemoryBroker, n: usize) {
    for _ in 0..1000 {
        if broker.messages().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "broker has {} messages, expected {n}",
        broker.messages().len()
    );
}

fn assert_exactly_once_in_stream_order(store: &InMemoryEventStore, broker: &InMemoryBroker) {
    let messages = broker.messages();
    let stored = store.all_events();
    assert_eq!(messages.len(), stored.len(), "every event published once");
    let mut last: HashMap<StreamId, u64> = HashMap::new();
    for m in &messages {
        let prev = last.insert(m.stream_id, m.stream_version).unwrap_or(0);
        assert_eq!(m.stream_version, prev + 1, "per-stream order at the broker");
    }
}

fn spawn(relay: Arc<Relay>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let handle = tokio::spawn({
        let stop = stop.clone();
        async move { relay.run(stop).await }
    });
    (stop, handle)
}

#[tokio::test]
async fn publishes_everything_in_order_and_checkpoints() {
    let (store, broker) = (InMemoryEventStore::new(), InMemoryBroker::new());
    append_events(&store, 5, 10).await;
    let relay = Arc::new(Relay::new(ports(&store, &broker), config()));
    let (stop, handle) = spawn(relay.clone());
    wait_for(&broker, 50).await;
    // New events are picked up by the hint, not only by polling.
    append_events(&store, 1, 3).await;
    wait_for(&broker, 53).await;
    stop.cancel();
    handle.await.unwrap();
    assert_exactly_once_in_stream_order(&store, &broker);
    let cp = store.load("default").await.unwrap().unwrap();
    assert_eq!(cp.cursor, store.all_events().last().unwrap().cursor);
    assert_eq!(relay.stats().published.load(Ordering::Relaxed), 53);
}

#[tokio::test]
async fn broker_faults_are_retried_without_loss_duplication_or_reordering() {
    let (store, broker) = (InMemoryEventStore::new(), InMemoryBroker::new());
    append_events(&store, 4, 25).await;
    broker.inject([
        BrokerFault::Timeout { stored: true },
        BrokerFault::Timeout { stored: false },
        BrokerFault::Disconnected,
    ]);
    broker.inject((0..5).map(|i| BrokerFault::Timeout { stored: i % 2 == 0 }));
    let relay = Arc::new(Relay::new(ports(&store, &broker), config()));
    let (stop, handle) = spawn(relay.clone());
    wait_for(&broker, 100).await;
    stop.cancel();
    handle.await.unwrap();
    assert_exactly_once_in_stream_order(&store, &broker);
    assert!(relay.stats().retries.load(Ordering::Relaxed) >= 1);
    assert!(
        relay.stats().duplicates.load(Ordering::Relaxed) >= 1,
        "stored-but-unacked events come back as duplicates"
    );
}

#[tokio::test]
async fn broker_outage_then_recovery() {
    let (store, broker) = (InMemoryEventStore::new(), InMemoryBroker::new());
    append_events(&store, 3, 10).await;
    broker.set_down(true);
    let relay = Arc::new(Relay::new(ports(&store, &broker), config()));
    let (stop, handle) = spawn(relay.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(broker.messages().is_empty());
    assert!(relay.stats().retries.load(Ordering::Relaxed) > 0);
    broker.set_down(false);
    wait_for(&broker, 30).await;
    stop.cancel();
    handle.await.unwrap();
    assert_exactly_once_in_stream_order(&store, &broker);
}

#[tokio::test]
async fn store_outage_then_recovery() {
    let (store, broker) = (InMemoryEventStore::new(), InMemoryBroker::new());
    append_events(&store, 2, 5).await;
    store.set_unavailable(true);
    let relay = Arc::new(Relay::new(ports(&store, &broker), config()));
    let (stop, handle) = spawn(relay.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.set_unavailable(false);
    wait_for(&broker, 10).await;
    stop.cancel();
    handle.await.unwrap();
    assert_exactly_once_in_stream_order(&store, &broker);
}

#[tokio::test]
async fn poison_event_is_dead_lettered_and_the_rest_flows() {
    let (store, broker) = (InMemoryEventStore::new(), InMemoryBroker::new());
    append_events(&store, 3, 4).await;
    let poison = store.all_events()[5].clone();
    broker.reject_always(poison.envelope.id);
    let relay = Arc::new(Relay::new(ports(&store, &broker), config()));
    let (stop, handle) = spawn(relay.clone());
    wait_for(&broker, 11).await;
    stop.cancel();
    handle.await.unwrap();
    let published: Vec<_> = broker.messages().iter().map(|m| m.envelope.id).collect();
    assert!(!published.contains(&poison.envelope.id));
    assert_eq!(published.len(), 11);
    assert_eq!(store.dead_letter_count("default").await.unwrap(), 1);
    assert_eq!(relay.stats().dead_letters.load(Ordering::Relaxed), 1);
    let cp = store.load("default").await.unwrap().unwrap();
    assert_eq!(cp.cursor, store.all_events().last().unwrap().cursor);
}

#[tokio::test]
async fn one_active_relay_and_standby_takeover() {
    let (store, broker) = (InMemoryEventStore::new(), InMemoryBroker::new());
    append_events(&store, 2, 5).await;
    let a = Arc::new(Relay::new(ports(&store, &broker), config()));
    let b = Arc::new(Relay::new(ports(&store, &broker), config()));
    let (stop_a, handle_a) = spawn(a.clone());
    wait_for(&broker, 10).await;
    let (stop_b, handle_b) = spawn(b.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(a.stats().active.load(Ordering::Relaxed));
    assert!(!b.stats().active.load(Ordering::Relaxed));
    // The active relay's lease expires (not renewed in time): it stops, the standby takes over.
    store.revoke_lease("default");
    append_events(&store, 2, 5).await;
    wait_for(&broker, 20).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let active = [&a, &b]
        .iter()
        .filter(|r| r.stats().active.load(Ordering::Relaxed))
        .count();
    assert_eq!(active, 1, "exactly one relay is active");
    stop_a.cancel();
    stop_b.cancel();
    handle_a.await.unwrap();
    handle_b.await.unwrap();
    assert_exactly_once_in_stream_order(&store, &broker);
    assert_eq!(
        a.stats().takeovers.load(Ordering::Relaxed) + b.stats().takeovers.load(Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn crash_then_restart_loses_nothing() {
    let (store, broker) = (InMemoryEventStore::new(), InMemoryBroker::new());
    append_events(&store, 4, 10).await;
    // Every publish times out: the relay is mid-batch when it is killed (task aborted).
    broker.set_down(true);
    let relay = Arc::new(Relay::new(ports(&store, &broker), config()));
    let (_stop, handle) = spawn(relay);
    tokio::time::sleep(Duration::from_millis(30)).await;
    handle.abort();
    let _ = handle.await;
    store.revoke_lease("default"); // the dead process's lease expired
    broker.set_down(false);
    let relay = Arc::new(Relay::new(ports(&store, &broker), config()));
    let (stop, handle) = spawn(relay);
    wait_for(&broker, 40).await;
    stop.cancel();
    handle.await.unwrap();
    assert_exactly_once_in_stream_order(&store, &broker);
}

#[tokio::test]
async fn replay_republishes_a_range_safely() {
    let (store, broker) = (InMemoryEventStore::new(), InMemoryBroker::new());
    append_events(&store, 2, 5).await;
    let relay = Relay::new(ports(&store, &broker), config());
    let report = relay.replay(1, 10, CancellationToken::new()).await.unwrap();
    assert_eq!(report.events, 10);
    assert_eq!(report.republished, 10);
    let again = relay.replay(3, 6, CancellationToken::new()).await.unwrap();
    assert_eq!((again.events, again.duplicates), (4, 4));
    assert_eq!(broker.messages().len(), 10);
}

#[test]
fn backoff_is_bounded_and_jittered() {
    let c = RelayConfig::default();
    for failures in [1, 2, 5, 30, u32::MAX] {
        let d = backoff_delay(&c, failures);
        assert!(d >= c.backoff_min && d <= c.backoff_max, "{d:?}");
    }
}
