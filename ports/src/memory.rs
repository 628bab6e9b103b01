//! In-memory implementations of every port, for unit tests of the core (feature `test-util`).
//!
//! They implement the same contracts as the real adapters (the store passes the same
//! [`crate::conformance`] kit as PostgreSQL) and can inject faults: a store that becomes
//! unavailable, a broker that times out, refuses, or loses its connection.

use crate::{
    AppendOutcome, AppendedEvent, Checkpoint, CheckpointStore, CommitHints, ConsumeError, Cursor,
    Delivery, DeliveryToken, EventAppender, EventConsumer, EventPublisher, EventReader,
    FollowedPage, FollowedRow, Lease, LeaseProvider, ParkedEvent, PublishAck, PublishError,
    PublishResult, RecordedEvent, Release, Settlement, StoreError, StoreHead,
};
use async_trait::async_trait;
use chrono::Utc;
use edupulse_domain::{DEFAULT_MAX_EVENT_BYTES, EventEnvelope, EventId, ExpectedVersion, StreamId};
use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::BoxStream;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

mod projection;
pub use projection::{InMemoryFeed, InMemoryProjectionStore, InMemoryUnit, bucket_of};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another test thread must not cascade into every later call.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Default)]
struct StoreState {
    events: Vec<RecordedEvent>,
    streams: HashMap<StreamId, Vec<usize>>,
    ids: HashMap<EventId, usize>,
    commits: u64,
    checkpoints: HashMap<String, Checkpoint>,
    parked: HashMap<String, Vec<ParkedEvent>>,
    leases: HashMap<String, (u64, String, Arc<LeaseFlag>)>,
    /// The last epoch handed out per lease name (kept when a lease is freed).
    lease_epochs: HashMap<String, u64>,
    hints: Vec<mpsc::UnboundedSender<()>>,
    unavailable: bool,
    /// A simulated transaction still open: appends from this commit number on are visible but
    /// above the horizon ([`InMemoryEventStore::hold_horizon`]).
    horizon: Option<u64>,
}

/// An event store, checkpoint store, lease provider and hint source in memory.
///
/// Appends are serialized by a mutex, so commit order is append order and
/// `Cursor { commit, position }` has `commit` = the append's sequence number.
#[derive(Clone)]
pub struct InMemoryEventStore {
    state: Arc<Mutex<StoreState>>,
    max_event_bytes: usize,
    lease_ids: Arc<AtomicU64>,
}

impl Default for InMemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryEventStore {
    /// An empty store with the default event size limit.
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            lease_ids: Arc::default(),
        }
    }

    /// While `true`, every call fails with [`StoreError::Unavailable`] (a database outage).
    pub fn set_unavailable(&self, unavailable: bool) {
        lock(&self.state).unavailable = unavailable;
    }

    /// Simulates the expiry of lease `name` (its holder could not renew it in time): the holder
    /// sees [`Lease::lost`] resolve, and the lease becomes free.
    pub fn revoke_lease(&self, name: &str) {
        if let Some((_, _, flag)) = lock(&self.state).leases.remove(name) {
            flag.revoke();
        }
    }

    /// Simulates a transaction left open from now on (a slow writer elsewhere): appends after
    /// this call are visible but above the horizon, so [`EventReader::read_all`] and
    /// [`EventReader::follow`] hold them back and [`EventReader::follow_visible`] returns them as
    /// not settled, until [`InMemoryEventStore::release_horizon`].
    pub fn hold_horizon(&self) {
        let mut state = lock(&self.state);
        state.horizon = Some(state.commits + 1);
    }

    /// Ends the transaction simulated by [`InMemoryEventStore::hold_horizon`].
    pub fn release_horizon(&self) {
        lock(&self.state).horizon = None;
    }

    /// Every stored event, in commit order.
    pub fn all_events(&self) -> Vec<RecordedEvent> {
        lock(&self.state).events.clone()
    }

    /// [`StoreError::Unavailable`] while the store is set unavailable.
    pub(crate) fn check_available(&self) -> Result<(), StoreError> {
        self.state().map(drop)
    }

    fn state(&self) -> Result<MutexGuard<'_, StoreState>, StoreError> {
        let state = lock(&self.state);
        if state.unavailable {
            return Err(StoreError::Unavailable(
                "in-memory store set unavailable".into(),
            ));
        }
        Ok(state)
    }
}

impl StoreState {
    /// Below the simulated horizon, if any.
    fn is_settled(&self, event: &RecordedEvent) -> bool {
        self.horizon.is_none_or(|h| event.cursor.commit < h)
    }
}

fn check_limit(limit: usize) -> Result<(), StoreError> {
    if limit == 0 {
        return Err(StoreError::InvalidInput {
            reason: "limit must be at least 1".into(),
        });
    }
    Ok(())
}

/// Whether a stored event is the same event as `new` (a retry of it), by content.
pub(crate) fn same_event(stored: &EventEnvelope, new: &EventEnvelope) -> bool {
    stored.aggregate_id == new.aggregate_id
        && stored.event == new.event
        && stored.metadata == new.metadata
}

#[async_trait]
impl EventAppender for InMemoryEventStore {
    async fn append(
        &self,
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<EventEnvelope>,
    ) -> Result<AppendOutcome, StoreError> {
        crate::store::validate_batch(stream, &events, self.max_event_bytes)?;
        let mut state = self.state()?;

        let existing: Vec<Option<usize>> = events
            .iter()
            .map(|e| state.ids.get(&e.id).copied())
            .collect();
        if existing.iter().any(Option::is_some) {
            let replay = existing
                .iter()
                .zip(&events)
                .all(|(idx, e)| idx.is_some_and(|i| same_event(&state.events[i].envelope, e)));
            if !replay {
                let clash = events
                    .iter()
                    .zip(&existing)
                    .find(|(e, idx)| idx.is_some_and(|i| !same_event(&state.events[i].envelope, e)))
                    .or_else(|| events.iter().zip(&existing).find(|(_, idx)| idx.is_some()));
                let event_id = clash.map_or(events[0].id, |(e, _)| e.id);
                return Err(StoreError::DuplicateEventId { event_id });
            }
            let appended = existing
                .iter()
                .flatten()
                .map(|&i| {
                    let r = &state.events[i];
                    AppendedEvent {
                        id: r.envelope.id,
                        stream_version: r.stream_version,
                        position: r.position(),
                    }
                })
                .collect();
            return Ok(AppendOutcome {
                stream_id: stream,
                events: appended,
                replayed: true,
            });
        }

        let current = state.streams.get(&stream).map(|v| v.len() as u64);
        if !expected.accepts(current) {
            return Err(StoreError::Conflict {
                stream,
                expected,
                actual: current,
            });
        }
        state.commits += 1;
        let commit = state.commits;
        let recorded_at = Utc::now();
        let mut appended = Vec::with_capacity(events.len());
        for (i, envelope) in events.into_iter().enumerate() {
            let index = state.events.len();
            let stream_version = current.unwrap_or(0) + 1 + i as u64;
            let position = index as u64 + 1;
            appended.push(AppendedEvent {
                id: envelope.id,
                stream_version,
                position,
            });
            state.ids.insert(envelope.id, index);
            state.streams.entry(stream).or_default().push(index);
            state.events.push(RecordedEvent {
                envelope,
                stream_id: stream,
                stream_version,
                cursor: Cursor { commit, position },
                recorded_at,
                body: None,
            });
        }
        state.hints.retain(|tx| tx.unbounded_send(()).is_ok());
        Ok(AppendOutcome {
            stream_id: stream,
            events: appended,
            replayed: false,
        })
    }
}

#[async_trait]
impl EventReader for InMemoryEventStore {
    async fn read_stream(
        &self,
        stream: StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        check_limit(limit)?;
        let state = self.state()?;
        Ok(state
            .streams
            .get(&stream)
            .into_iter()
            .flatten()
            .map(|&i| &state.events[i])
            .filter(|e| e.stream_version >= from_version)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn read_all(
        &self,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        check_limit(limit)?;
        let state = self.state()?;
        // Events are stored in commit order, which is cursor order.
        let start = state.events.partition_point(|e| e.cursor <= after);
        Ok(state.events[start..]
            .iter()
            .take_while(|e| state.is_settled(e))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn follow_visible(
        &self,
        after: Cursor,
        limit: usize,
    ) -> Result<FollowedPage, StoreError> {
        check_limit(limit)?;
        let state = self.state()?;
        let start = state.events.partition_point(|e| e.cursor <= after);
        let rows: Vec<RecordedEvent> = state.events[start..].iter().take(limit).cloned().collect();
        Ok(FollowedPage {
            settled: rows.iter().take_while(|e| state.is_settled(e)).count(),
            rows: rows.into_iter().map(FollowedRow::Event).collect(),
        })
    }

    async fn read_positions(
        &self,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        check_limit(limit)?;
        let state = self.state()?;
        Ok(state
            .events
            .iter()
            .filter(|e| (from..=to).contains(&e.position()))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn stream_version(&self, stream: StreamId) -> Result<Option<u64>, StoreError> {
        Ok(self.state()?.streams.get(&stream).map(|v| v.len() as u64))
    }

    async fn head(&self) -> Result<StoreHead, StoreError> {
        let state = self.state()?;
        Ok(StoreHead {
            last_position: state.events.last().map_or(0, RecordedEvent::position),
            events: state.events.len() as u64,
        })
    }
}

#[async_trait]
impl CommitHints for InMemoryEventStore {
    async fn subscribe(&self) -> Result<BoxStream<'static, ()>, StoreError> {
        let (tx, rx) = mpsc::unbounded();
        self.state()?.hints.push(tx);
        Ok(rx.boxed())
    }
}

#[async_trait]
impl CheckpointStore for InMemoryEventStore {
    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self.state()?.checkpoints.get(name).cloned())
    }

    async fn save(
        &self,
        name: &str,
        cursor: Cursor,
        broker_sequence: u64,
    ) -> Result<(), StoreError> {
        let mut state = self.state()?;
        let entry = state
            .checkpoints
            .entry(name.to_owned())
            .or_insert(Checkpoint {
                cursor,
                broker_sequence,
                updated_at: Utc::now(),
            });
        entry.cursor = entry.cursor.max(cursor);
        entry.broker_sequence = entry.broker_sequence.max(broker_sequence);
        entry.updated_at = Utc::now();
        Ok(())
    }

    async fn park(&self, name: &str, event: &ParkedEvent) -> Result<(), StoreError> {
        let mut state = self.state()?;
        let parked = state.parked.entry(name.to_owned()).or_default();
        match parked.iter_mut().find(|p| p.stream_id == event.stream_id) {
            Some(p) if p.release.is_some() => {
                p.reason.clone_from(&event.reason);
                p.release = None;
            }
            Some(_) => {}
            None => parked.push(event.clone()),
        }
        Ok(())
    }

    async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>, StoreError> {
        Ok(self.state()?.parked.get(name).cloned().unwrap_or_default())
    }

    async fn request_release(
        &self,
        name: &str,
        stream: StreamId,
        release: Release,
    ) -> Result<bool, StoreError> {
        let mut state = self.state()?;
        let parked = state.parked.entry(name.to_owned()).or_default();
        Ok(match parked.iter_mut().find(|p| p.stream_id == stream) {
            Some(p) => {
                p.release = Some(release);
                true
            }
            None => false,
        })
    }

    async fn unpark(&self, name: &str, stream: StreamId) -> Result<(), StoreError> {
        if let Some(parked) = self.state()?.parked.get_mut(name) {
            parked.retain(|p| p.stream_id != stream);
        }
        Ok(())
    }
}

struct LeaseFlag {
    held: AtomicBool,
    notify: tokio::sync::Notify,
}

impl LeaseFlag {
    fn revoke(&self) {
        self.held.store(false, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

struct MemoryLease {
    id: u64,
    epoch: u64,
    name: String,
    flag: Arc<LeaseFlag>,
    state: Arc<Mutex<StoreState>>,
}

#[async_trait]
impl Lease for MemoryLease {
    async fn lost(&self) {
        loop {
            let notified = self.flag.notify.notified();
            if !self.flag.held.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    fn is_held(&self) -> bool {
        self.flag.held.load(Ordering::SeqCst)
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Drop for MemoryLease {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        if state
            .leases
            .get(&self.name)
            .is_some_and(|(id, _, _)| *id == self.id)
        {
            state.leases.remove(&self.name);
        }
    }
}

#[async_trait]
impl LeaseProvider for InMemoryEventStore {
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
    ) -> Result<Option<Box<dyn Lease>>, StoreError> {
        let mut state = self.state()?;
        if state.leases.contains_key(name) {
            return Ok(None);
        }
        let id = self.lease_ids.fetch_add(1, Ordering::SeqCst);
        let flag = Arc::new(LeaseFlag {
            held: AtomicBool::new(true),
            notify: tokio::sync::Notify::new(),
        });
        state
            .leases
            .insert(name.to_owned(), (id, holder.to_owned(), flag.clone()));
        let epoch = state.lease_epochs.entry(name.to_owned()).or_default();
        *epoch += 1;
        let epoch = *epoch;
        Ok(Some(Box::new(MemoryLease {
            id,
            epoch,
            name: name.to_owned(),
            flag,
            state: self.state.clone(),
        })))
    }

    async fn holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.state()?.leases.get(name).map(|(_, h, _)| h.clone()))
    }
}

/// A fault the [`InMemoryBroker`] applies to the next publish of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerFault {
    /// No ack: reported as [`PublishError::Timeout`]; `stored` says whether the broker kept it.
    Timeout {
        /// Whether the message was stored despite the missing ack.
        stored: bool,
    },
    /// Connection lost before sending: [`PublishError::Unavailable`].
    Disconnected,
    /// Refused for good: [`PublishError::Rejected`].
    Reject,
}

#[derive(Default)]
struct BrokerState {
    messages: Vec<RecordedEvent>,
    /// Each stored event's sequence (its place in `messages`, from 1).
    ids: HashMap<EventId, u64>,
    faults: VecDeque<BrokerFault>,
    reject_ids: HashSet<EventId>,
    down: bool,
    publish_calls: u64,
    consumer: ConsumerState,
}

#[derive(Default)]
struct ConsumerState {
    next: usize,
    redeliver: VecDeque<(usize, u64)>,
    /// Unsettled deliveries: message index, attempt, when it is delivered again if still
    /// unsettled (a lost acknowledgement).
    pending: HashMap<u64, (usize, u64, std::time::Instant)>,
    attempts: HashMap<usize, u64>,
    tokens: u64,
    dead_letters: Vec<(RecordedEvent, String)>,
}

/// A broker in memory: deduplicates by event id like JetStream, records what it stored, injects
/// faults, and serves one durable consumer.
#[derive(Clone, Default)]
pub struct InMemoryBroker {
    state: Arc<Mutex<BrokerState>>,
}

impl InMemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues faults, applied one per event to the next events published.
    pub fn inject(&self, faults: impl IntoIterator<Item = BrokerFault>) {
        lock(&self.state).faults.extend(faults);
    }

    /// Refuses this event for good, whenever it is published.
    pub fn reject_always(&self, id: EventId) {
        lock(&self.state).reject_ids.insert(id);
    }

    /// Stops refusing this event (an operator fixed the cause).
    pub fn accept(&self, id: EventId) {
        lock(&self.state).reject_ids.remove(&id);
    }

    /// While `true`, every publish fails with [`PublishError::Unavailable`].
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }

    /// Every message stored, in broker order (deduplicated).
    pub fn messages(&self) -> Vec<RecordedEvent> {
        lock(&self.state).messages.clone()
    }

    /// How many times [`EventPublisher::publish`] was called.
    pub fn publish_calls(&self) -> u64 {
        lock(&self.state).publish_calls
    }

    /// Events the consumer dead-lettered, with reasons.
    pub fn dead_letters(&self) -> Vec<(RecordedEvent, String)> {
        lock(&self.state).consumer.dead_letters.clone()
    }

    /// A consumer of the stored messages (one durable consumer per broker).
    pub fn consumer(&self) -> InMemoryConsumer {
        self.consumer_with_ack_wait(Duration::from_secs(30))
    }

    /// A consumer that delivers a message again when it is not settled within `ack_wait` (as
    /// JetStream does after a lost acknowledgement).
    pub fn consumer_with_ack_wait(&self, ack_wait: Duration) -> InMemoryConsumer {
        InMemoryConsumer {
            state: self.state.clone(),
            ack_wait,
        }
    }
}

#[async_trait]
impl EventPublisher for InMemoryBroker {
    async fn publish(&self, events: &[RecordedEvent]) -> Vec<PublishResult> {
        let mut state = lock(&self.state);
        state.publish_calls += 1;
        let mut failed_streams = HashSet::new();
        events
            .iter()
            .map(|event| {
                if failed_streams.contains(&event.stream_id) {
                    return Err(PublishError::NotAttempted);
                }
                let result = publish_one(&mut state, event);
                if result.is_err() {
                    failed_streams.insert(event.stream_id);
                }
                result
            })
            .collect()
    }

    async fn last_version(&self, stream: StreamId) -> Result<Option<u64>, PublishError> {
        let state = lock(&self.state);
        if state.down {
            return Err(PublishError::Unavailable("in-memory broker is down".into()));
        }
        Ok(last_version_of(&state, stream))
    }

    async fn republish(&self, event: &RecordedEvent) -> PublishResult {
        let mut state = lock(&self.state);
        if state.down {
            return Err(PublishError::Unavailable("in-memory broker is down".into()));
        }
        state.messages.push(event.clone());
        Ok(PublishAck {
            duplicate: false,
            sequence: state.messages.len() as u64,
        })
    }
}

fn last_version_of(state: &BrokerState, stream: StreamId) -> Option<u64> {
    state
        .messages
        .iter()
        .filter(|m| m.stream_id == stream)
        .map(|m| m.stream_version)
        .max()
}

fn publish_one(state: &mut BrokerState, event: &RecordedEvent) -> PublishResult {
    if state.down {
        return Err(PublishError::Unavailable("in-memory broker is down".into()));
    }
    if state.reject_ids.contains(&event.envelope.id) {
        return Err(PublishError::Rejected {
            reason: "rejected by test".into(),
        });
    }
    // As a real broker: an event type that cannot name it on the wire is refused for good.
    if event.envelope.check_storable().is_err() {
        return Err(PublishError::Rejected {
            reason: format!(
                "event type {:?} cannot be carried",
                event.envelope.event_type()
            ),
        });
    }
    let store = |state: &mut BrokerState| match state.ids.get(&event.envelope.id) {
        Some(&sequence) => PublishAck {
            duplicate: true,
            sequence,
        },
        None => {
            state.messages.push(event.clone());
            let sequence = state.messages.len() as u64;
            state.ids.insert(event.envelope.id, sequence);
            PublishAck {
                duplicate: false,
                sequence,
            }
        }
    };
    match state.faults.pop_front() {
        None => Ok(store(state)),
        Some(BrokerFault::Timeout { stored }) => {
            if stored {
                store(state);
            }
            Err(PublishError::Timeout)
        }
        Some(BrokerFault::Disconnected) => Err(PublishError::Unavailable("connection lost".into())),
        Some(BrokerFault::Reject) => Err(PublishError::Rejected {
            reason: "rejected by test".into(),
        }),
    }
}

/// The durable consumer of an [`InMemoryBroker`]. Retry delays are not waited for.
pub struct InMemoryConsumer {
    state: Arc<Mutex<BrokerState>>,
    ack_wait: Duration,
}

#[async_trait]
impl EventConsumer for InMemoryConsumer {
    async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, ConsumeError> {
        let batch = {
            let mut guard = lock(&self.state);
            let state = &mut *guard;
            let mut batch = Vec::new();
            let now = std::time::Instant::now();
            let expired: Vec<u64> = state
                .consumer
                .pending
                .iter()
                .filter(|(_, (_, _, due))| *due <= now)
                .map(|(token, _)| *token)
                .collect();
            for token in expired {
                if let Some((index, attempt, _)) = state.consumer.pending.remove(&token) {
                    state.consumer.redeliver.push_back((index, attempt));
                }
            }
            while batch.len() < max {
                let index = if let Some((index, _)) = state.consumer.redeliver.pop_front() {
                    index
                } else if state.consumer.next < state.messages.len() {
                    state.consumer.next += 1;
                    state.consumer.next - 1
                } else {
                    break;
                };
                let attempt = state.consumer.attempts.entry(index).or_insert(0);
                *attempt += 1;
                let attempt = *attempt;
                state.consumer.tokens += 1;
                let token = state.consumer.tokens;
                state
                    .consumer
                    .pending
                    .insert(token, (index, attempt, now + self.ack_wait));
                let m = &state.messages[index];
                batch.push(Delivery {
                    envelope: m.envelope.clone(),
                    stream_version: Some(m.stream_version),
                    position: Some(m.position()),
                    attempt,
                    token: DeliveryToken::new(token),
                });
            }
            batch
        };
        if batch.is_empty() {
            tokio::time::sleep(wait.min(Duration::from_millis(10))).await;
        }
        Ok(batch)
    }

    async fn settle(
        &mut self,
        token: DeliveryToken,
        settlement: Settlement,
    ) -> Result<(), ConsumeError> {
        let mut state = lock(&self.state);
        let (index, attempt, _) = state
            .consumer
            .pending
            .remove(&token.raw())
            .ok_or(ConsumeError::UnknownDelivery)?;
        match settlement {
            Settlement::Ack => {}
            Settlement::Retry { .. } => state.consumer.redeliver.push_back((index, attempt)),
            Settlement::DeadLetter { reason } => {
                let message = state.messages[index].clone();
                state.consumer.dead_letters.push((message, reason));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::{RetryPolicy, run_handler};
    use crate::{EventHandler, HandlerError};
    use edupulse_domain::{BadgeAwarded, EventEnvelope};

    crate::event_store_conformance!(InMemoryEventStore::new());
    crate::checkpoint_conformance!(InMemoryEventStore::new());
    crate::lease_conformance!(InMemoryEventStore::new());
    crate::hints_conformance!(InMemoryEventStore::new());
    crate::projection_store_conformance!({
        let events = Arc::new(InMemoryEventStore::new());
        (InMemoryProjectionStore::new(events.clone()), events)
    });
    crate::consumer_conformance!({
        let broker = InMemoryBroker::new();
        let consumer = broker.consumer_with_ack_wait(Duration::from_secs(1));
        (broker, consumer)
    });
    crate::publisher_conformance!({
        let broker = InMemoryBroker::new();
        (broker.clone(), broker)
    });

    fn badge(stream: StreamId) -> EventEnvelope {
        EventEnvelope::new(BadgeAwarded {
            badge_id: uuid_of(stream),
            recipient_id: uuid_of(stream),
        })
        .with_stream(stream)
    }

    fn uuid_of(s: StreamId) -> edupulse_domain::Uuid {
        *s.as_uuid()
    }

    #[tokio::test]
    async fn broker_dedups_and_keeps_stream_order_on_failure() {
        let store = InMemoryEventStore::new();
        let (a, b) = (StreamId::new(), StreamId::new());
        for s in [a, b, a, b] {
            store
                .append(s, ExpectedVersion::Any, vec![badge(s)])
                .await
                .unwrap();
        }
        let events = store.read_all(Cursor::START, 10).await.unwrap();
        let broker = InMemoryBroker::new();
        broker.inject([BrokerFault::Timeout { stored: false }]);
        let results = broker.publish(&events).await;
        assert!(matches!(results[0], Err(PublishError::Timeout)));
        assert!(results[1].is_ok());
        assert!(matches!(results[2], Err(PublishError::NotAttempted)));
        let again = broker.publish(&events).await;
        assert_eq!(
            again
                .iter()
                .map(|r| r.as_ref().unwrap().duplicate)
                .collect::<Vec<_>>(),
            vec![false, true, false, true]
        );
        assert_eq!(broker.messages().len(), 4);
    }

    struct FailTwice;
    #[async_trait]
    impl EventHandler for FailTwice {
        async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
            if d.attempt < 3 {
                Err(HandlerError::Transient("not yet".into()))
            } else if d.stream_version == Some(2) {
                Err(HandlerError::Permanent("poison".into()))
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn run_handler_retries_and_dead_letters_without_losing() {
        let store = InMemoryEventStore::new();
        let s = StreamId::new();
        store
            .append(
                s,
                ExpectedVersion::NoStream,
                vec![badge(s), badge(s), badge(s)],
            )
            .await
            .unwrap();
        let broker = InMemoryBroker::new();
        let events = store.read_all(Cursor::START, 10).await.unwrap();
        broker.publish(&events).await;
        let mut consumer = broker.consumer();
        let stop = tokio::time::sleep(Duration::from_millis(200));
        let settled = run_handler(&mut consumer, &FailTwice, RetryPolicy::default(), stop)
            .await
            .unwrap();
        assert_eq!(settled, 9);
        let dead = broker.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].0.stream_version, 2);
    }

    #[tokio::test]
    async fn lease_is_exclusive_and_loss_is_signalled() {
        let store = InMemoryEventStore::new();
        let lease = store.try_acquire("relay", "a").await.unwrap().unwrap();
        assert!(store.try_acquire("relay", "b").await.unwrap().is_none());
        assert_eq!(store.holder("relay").await.unwrap().as_deref(), Some("a"));
        store.revoke_lease("relay");
        lease.lost().await;
        assert!(!lease.is_held());
        let other = store.try_acquire("relay", "b").await.unwrap().unwrap();
        assert!(
            other.epoch() > lease.epoch(),
            "a takeover has a later epoch"
        );
        drop(lease); // dropping the stale lease must not free the new holder's
        assert_eq!(store.holder("relay").await.unwrap().as_deref(), Some("b"));
    }
}
