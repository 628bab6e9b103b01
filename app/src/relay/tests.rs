//! The relay against the in-memory fakes: ordering, faults, poison events, leases, shutdown.

use super::backoff::backoff_delay;
use super::*;
use edupulse_domain::{BadgeAwarded, EventEnvelope, ExpectedVersion, StreamId, Uuid};
use edupulse_ports::memory::{BrokerFault, InMemoryBroker, InMemoryEventStore};
use edupulse_ports::{EventAppender, RecordedEvent, Release};
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
    assert_eq!(relay.stats().snapshot().published, 53);
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
    assert!(relay.stats().snapshot().retries >= 1);
    assert!(
        relay.stats().snapshot().duplicates >= 1,
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
    assert!(relay.stats().snapshot().retries > 0);
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

/// Waits until `relay` parked `n` streams and the rest flowed (or panics after 10 s).
async fn wait_parked(relay: &Relay, broker: &InMemoryBroker, n: u64, published: usize) {
    for _ in 0..1000 {
        if relay.stats().snapshot().parked >= n && broker.messages().len() >= published {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not parked");
}

/// Waits until the saved checkpoint is `cursor` (or panics after 5 s).
async fn wait_checkpoint(store: &InMemoryEventStore, cursor: edupulse_ports::Cursor) {
    for _ in 0..500 {
        if store.load("default").await.unwrap().map(|c| c.cursor) == Some(cursor) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let saved = store.load("default").await.unwrap().map(|c| c.cursor);
    panic!("the checkpoint is {saved:?}, expected {cursor}");
}

fn assert_in_stream_order(broker: &InMemoryBroker) {
    let mut last: HashMap<StreamId, u64> = HashMap::new();
    for m in broker.messages() {
        let prev = last.insert(m.stream_id, m.stream_version).unwrap_or(0);
        assert!(m.stream_version > prev, "per-stream order at the broker");
    }
}

#[tokio::test]
async fn poison_event_parks_its_stream_and_the_rest_flows_until_skipped() {
    let (store, broker) = (InMemoryEventStore::new(), InMemoryBroker::new());
    let streams = append_events(&store, 3, 4).await;
    // Round robin: the sixth event is version 2 of the third stream.
    let poison = store.all_events()[5].clone();
    assert_eq!((poison.stream_id, poison.stream_version), (streams[2], 2));
    broker.reject_always(poison.envelope.id);
    let relay = Arc::new(Relay::new(ports(&store, &broker), config()));
    let (stop, handle) = spawn(relay.clone());
    // The other streams flow; the poison's stream stops before it (versions 3 and 4 held).
    wait_parked(&relay, &broker, 1, 9).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(broker.messages().len(), 9);
    let parked = store.parked("default").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event_id, poison.envelope.id);
    assert!(parked[0].raw.contains(&poison.envelope.id.to_string()));
    // Saved at most every checkpoint interval: wait for it.
    wait_checkpoint(&store, store.all_events().last().unwrap().cursor).await;

    // Released with --skip: what waited behind it goes, in order; the poison never does.
    assert!(
        store
            .request_release("default", streams[2], Release::Skip)
            .await
            .unwrap()
    );
    wait_for(&broker, 11).await;
    stop.cancel();
    handle.await.unwrap();
    let published: Vec<_> = broker.messages().iter().map(|m| m.envelope.id).collect();
    assert!(!published.contains(&poison.envelope.id));
    assert_eq!(published.len(), 11);
    assert!(store.parked("default").await.unwrap().is_empty());
    assert_in_stream_order(&broker);
}

#[tokio::test]
async fn a_parked_stream_released_after_a_fix_publishes_everything_in_order() {
    let (store, broker) = (InMemoryEventStore::new(), InMemoryBroker::new());
    let streams = append_events(&store, 2, 3).await;
    let poison = store.all_events()[1].clone();
    broker.reject_always(poison.envelope.id);
    let relay = Arc::new(Relay::new(ports(&store, &broker), config()));
    let (stop, handle) = spawn(relay.clone());
    wait_parked(&relay, &broker, 1, 3).await;
    // A release that fails again parks the stream again and clears the request.
    store
        .request_release("default", streams[1], Release::Retry)
        .await
        .unwrap();
    for _ in 0..500 {
        let parked = store.parked("default").await.unwrap();
        if parked[0].release.is_none() && parked[0].reason.starts_with("release") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(broker.messages().len(), 3);
    broker.accept(poison.envelope.id);
    store
        .request_release("default", streams[1], Release::Retry)
        .await
        .unwrap();
    wait_for(&broker, 6).await;
    stop.cancel();
    handle.await.unwrap();
    assert_exactly_once_in_stream_order(&store, &broker);
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
    assert!(a.stats().snapshot().active);
    assert!(!b.stats().snapshot().active);
    // The active relay's lease expires (not renewed in time): it stops, the standby takes over.
    store.revoke_lease("default");
    append_events(&store, 2, 5).await;
    wait_for(&broker, 20).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let active = [&a, &b]
        .iter()
        .filter(|r| r.stats().snapshot().active)
        .count();
    assert_eq!(active, 1, "exactly one relay is active");
    stop_a.cancel();
    stop_b.cancel();
    handle_a.await.unwrap();
    handle_b.await.unwrap();
    assert_exactly_once_in_stream_order(&store, &broker);
    assert_eq!(
        a.stats().snapshot().takeovers + b.stats().snapshot().takeovers,
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
    let replay = |from, to, mode| relay.replay(from, to, mode, CancellationToken::new());
    // Positions alternate between the two streams: 1..=5 are versions 1..=3 of one, 1..=2 of
    // the other, each following its predecessor.
    let first = replay(1, 5, ReplayMode::Missing).await.unwrap();
    assert_eq!((first.events, first.republished), (5, 5));
    // The whole range: the first five are there already, the rest follow them in order.
    let report = replay(1, 10, ReplayMode::Missing).await.unwrap();
    assert_eq!(report.events, 10);
    assert_eq!((report.republished, report.duplicates), (5, 5));
    let again = replay(3, 6, ReplayMode::Missing).await.unwrap();
    assert_eq!((again.events, again.duplicates), (4, 4));
    assert_eq!(broker.messages().len(), 10);
    assert_exactly_once_in_stream_order(&store, &broker);
}

#[tokio::test]
async fn replay_never_stores_a_version_before_its_predecessor_or_after_a_later_one() {
    let (store, broker) = (InMemoryEventStore::new(), InMemoryBroker::new());
    append_events(&store, 1, 6).await;
    let relay = Relay::new(ports(&store, &broker), config());
    let replay = |from, to, mode| relay.replay(from, to, mode, CancellationToken::new());
    // Version 6 while 1..=5 are unpublished: refused, nothing stored.
    let early = replay(6, 6, ReplayMode::Missing).await.unwrap();
    assert_eq!((early.refused_earlier_missing, early.republished), (1, 0));
    assert!(broker.messages().is_empty());
    replay(1, 6, ReplayMode::Missing).await.unwrap();
    // Forced: only the stream's last version may be stored again.
    let forced = replay(5, 6, ReplayMode::Force).await.unwrap();
    assert_eq!((forced.refused_later_present, forced.forced), (1, 1));
    let versions: Vec<u64> = broker.messages().iter().map(|m| m.stream_version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6, 6]);
}

#[test]
fn backoff_is_bounded_and_jittered() {
    let c = RelayConfig::default();
    for failures in [1, 2, 5, 30, u32::MAX] {
        let d = backoff_delay(&c, failures);
        assert!(d >= c.backoff_min && d <= c.backoff_max, "{d:?}");
    }
}

/// A publisher that fails one event every time, and acknowledges every other.
struct FailingOn(edupulse_domain::EventId);

#[async_trait::async_trait]
impl EventPublisher for FailingOn {
    async fn publish(&self, batch: &[RecordedEvent]) -> Vec<edupulse_ports::PublishResult> {
        use edupulse_ports::{PublishAck, PublishError};
        let mut failed = false;
        batch
            .iter()
            .map(|e| {
                if failed {
                    Err(PublishError::NotAttempted)
                } else if e.envelope.id == self.0 {
                    failed = true;
                    Err(PublishError::Unavailable("the broker keeps failing".into()))
                } else {
                    Ok(PublishAck {
                        duplicate: false,
                        sequence: e.position(),
                    })
                }
            })
            .collect()
    }

    async fn last_version(&self, _: StreamId) -> Result<Option<u64>, edupulse_ports::PublishError> {
        Ok(None)
    }

    async fn republish(&self, _: &RecordedEvent) -> edupulse_ports::PublishResult {
        Err(edupulse_ports::PublishError::NotAttempted)
    }
}

/// An interaction only a mock can check: however the publisher fails, every checkpoint the
/// relay saves (while running and at its graceful stop) is at or before the last event that
/// was acknowledged in order. Here the second of three events of one stream keeps failing.
#[tokio::test]
async fn never_saves_a_checkpoint_past_a_failed_event() {
    use edupulse_ports::MockCheckpointStore;
    let store = InMemoryEventStore::new();
    append_events(&store, 1, 3).await;
    let events = store.all_events();
    let (first, failing) = (events[0].cursor, events[1].envelope.id);

    let mut checkpoints = MockCheckpointStore::new();
    checkpoints.expect_load().returning(|_| Ok(None));
    checkpoints.expect_parked().returning(|_| Ok(Vec::new()));
    checkpoints
        .expect_save()
        .withf(move |_, cursor, _| *cursor <= first)
        .returning(|_, _, _| Ok(()));

    let ports = RelayPorts {
        checkpoints: Arc::new(checkpoints),
        publisher: Arc::new(FailingOn(failing)),
        ..ports(&store, &InMemoryBroker::new())
    };
    let relay = Arc::new(Relay::new(ports, config()));
    let (stop, handle) = spawn(relay.clone());
    for _ in 0..200 {
        if relay.stats().snapshot().retries >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        relay.stats().snapshot().retries >= 3,
        "the failure was retried"
    );
    stop.cancel();
    // A save past the failed event would have failed the mock's expectation in the relay's task.
    handle
        .await
        .expect("the relay stopped without an unexpected save");
    // The first event is acknowledged in every session (the broker deduplicates it).
    assert!(relay.stats().snapshot().published >= 1);
}

#[tokio::test]
async fn events_above_the_horizon_are_published_once_and_never_checkpointed_early() {
    let (store, broker) = (InMemoryEventStore::new(), InMemoryBroker::new());
    append_events(&store, 3, 2).await;
    // Pages of 20: up to 10 events published ahead of the horizon.
    let config = RelayConfig {
        batch_size: 20,
        ..config()
    };
    let relay = Arc::new(Relay::new(ports(&store, &broker), config));
    let (stop, handle) = spawn(relay.clone());
    wait_for(&broker, 6).await;
    // A transaction elsewhere stays open: what commits after it is published anyway, at once,
    // and the checkpoint stays behind it.
    store.hold_horizon();
    append_events(&store, 2, 2).await;
    wait_for(&broker, 10).await;
    let settled = store.all_events()[5].cursor;
    for _ in 0..50 {
        if store.load("default").await.unwrap().map(|c| c.cursor) == Some(settled) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        store.load("default").await.unwrap().unwrap().cursor,
        settled,
        "the checkpoint never passes the horizon"
    );
    assert_eq!(relay.stats().snapshot().read_ahead, 4);
    // Re-read at every poll, the events published ahead are not published again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.release_horizon();
    append_events(&store, 1, 1).await;
    wait_for(&broker, 11).await;
    stop.cancel();
    handle.await.unwrap();
    assert_exactly_once_in_stream_order(&store, &broker);
    let snapshot = relay.stats().snapshot();
    assert_eq!((snapshot.published, snapshot.duplicates), (11, 0));
    assert_eq!(snapshot.read_ahead, 0);
    let cp = store.load("default").await.unwrap().unwrap();
    assert_eq!(cp.cursor, store.all_events().last().unwrap().cursor);
}
