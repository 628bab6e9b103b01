//! In-memory projection store and feed.

use super::{InMemoryBroker, InMemoryEventStore, lock};
use crate::projection::{
    AggregateProgress, Bucket, BucketEvent, BucketReader, ParkReason, ParkedAggregate,
    ParkedProjectionEvent, ProjectionFeed, ProjectionId, ProjectionProgress, ProjectionStore,
    ProjectionUnit, Skipped,
};
use crate::{AppendOutcome, ConsumeError, EventAppender, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use edupulse_domain::{EventEnvelope, ExpectedVersion, StreamId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The bucket of `stream` among `buckets` (any stable spread will do for a fake).
pub fn bucket_of(stream: StreamId, buckets: Bucket) -> Bucket {
    let folded = stream.as_uuid().as_u128() % u128::from(buckets.max(1));
    Bucket::try_from(folded).unwrap_or(0)
}

#[derive(Debug, Clone, Default)]
struct Aggregate {
    applied: u64,
    parked: Vec<ParkedProjectionEvent>,
    retry: bool,
}

#[derive(Debug, Clone, Default)]
struct State {
    positions: HashMap<Bucket, (u64, u64)>,
    aggregates: HashMap<StreamId, Aggregate>,
    documents: BTreeMap<String, serde_json::Value>,
}

#[derive(Default)]
struct Shared {
    projections: HashMap<ProjectionId, State>,
    buckets: HashMap<(ProjectionId, Bucket), Arc<AsyncMutex<()>>>,
    documents: HashMap<(ProjectionId, String), Arc<AsyncMutex<()>>>,
    workers: HashMap<ProjectionId, HashMap<String, Instant>>,
    active: HashMap<String, u32>,
}

/// A [`ProjectionStore`] in memory. Units of one bucket run one at a time (a lock per bucket,
/// which operators' retries and skips take too); a unit keeps copies of what it touches and
/// writes them back at commit. [`ProjectionUnit::emit`] appends to the event store at once,
/// unlike a transactional store's: its idempotency by event id makes a retried unit's emit a
/// replay.
#[derive(Clone)]
pub struct InMemoryProjectionStore {
    events: Arc<InMemoryEventStore>,
    shared: Arc<std::sync::Mutex<Shared>>,
}

impl InMemoryProjectionStore {
    /// A projection store whose units emit into `events`.
    pub fn new(events: Arc<InMemoryEventStore>) -> Self {
        Self {
            events,
            shared: Arc::default(),
        }
    }

    fn read<T>(&self, projection: &ProjectionId, f: impl FnOnce(&State) -> T) -> T {
        let shared = lock(&self.shared);
        match shared.projections.get(projection) {
            Some(state) => f(state),
            None => f(&State::default()),
        }
    }

    fn write<T>(&self, projection: &ProjectionId, f: impl FnOnce(&mut State) -> T) -> T {
        f(lock(&self.shared)
            .projections
            .entry(projection.clone())
            .or_default())
    }

    async fn lock_bucket(&self, projection: &ProjectionId, bucket: Bucket) -> OwnedMutexGuard<()> {
        let mutex = lock(&self.shared)
            .buckets
            .entry((projection.clone(), bucket))
            .or_default()
            .clone();
        mutex.lock_owned().await
    }

    /// The bucket of the first parked event of `stream`, if it is parked.
    fn parked_bucket(&self, projection: &ProjectionId, stream: StreamId) -> Option<Bucket> {
        self.read(projection, |state| {
            state
                .aggregates
                .get(&stream)
                .and_then(|a| a.parked.first().map(|p| p.bucket))
        })
    }

    /// The document `key` of `projection`, as committed.
    pub async fn document(
        &self,
        projection: &ProjectionId,
        key: &str,
    ) -> Option<serde_json::Value> {
        self.read(projection, |state| state.documents.get(key).cloned())
    }

    /// Every committed document of `projection`, by key.
    pub async fn documents(
        &self,
        projection: &ProjectionId,
    ) -> BTreeMap<String, serde_json::Value> {
        self.read(projection, |state| state.documents.clone())
    }
}

/// A unit of [`InMemoryProjectionStore`]: its bucket's lock, and copies of what it touched.
pub struct InMemoryUnit {
    _bucket_lock: OwnedMutexGuard<()>,
    store: InMemoryProjectionStore,
    projection: ProjectionId,
    bucket: Bucket,
    aggregates: HashMap<StreamId, Aggregate>,
    documents: HashMap<String, Option<serde_json::Value>>,
    saved: BTreeMap<String, serde_json::Value>,
    /// The documents this unit loaded, locked until it ends.
    document_locks: Vec<OwnedMutexGuard<()>>,
}

impl InMemoryUnit {
    /// Locks document `key` for the rest of the unit. Another unit holding it makes this
    /// `Unavailable` at once (as a lock timeout or a deadlock would): the unit is run again.
    fn lock_document(&mut self, key: &str) -> Result<(), StoreError> {
        let mutex = lock(&self.store.shared)
            .documents
            .entry((self.projection.clone(), key.to_owned()))
            .or_default()
            .clone();
        let guard = mutex.try_lock_owned().map_err(|_| {
            StoreError::Unavailable(format!("document {key} is in another unit").into())
        })?;
        self.document_locks.push(guard);
        Ok(())
    }

    fn working(&mut self, stream: StreamId) -> &mut Aggregate {
        let (store, projection) = (&self.store, &self.projection);
        self.aggregates.entry(stream).or_insert_with(|| {
            store.read(projection, |state| {
                state.aggregates.get(&stream).cloned().unwrap_or_default()
            })
        })
    }
}

#[async_trait]
impl ProjectionStore for InMemoryProjectionStore {
    type Unit = InMemoryUnit;

    async fn begin(
        &self,
        projection: &ProjectionId,
        bucket: Bucket,
    ) -> Result<(InMemoryUnit, u64), StoreError> {
        self.events.check_available()?;
        let guard = self.lock_bucket(projection, bucket).await;
        let position = self.read(projection, |state| {
            state.positions.get(&bucket).map_or(0, |p| p.0)
        });
        let unit = InMemoryUnit {
            _bucket_lock: guard,
            store: self.clone(),
            projection: projection.clone(),
            bucket,
            aggregates: HashMap::new(),
            documents: HashMap::new(),
            saved: BTreeMap::new(),
            document_locks: Vec::new(),
        };
        Ok((unit, position))
    }

    async fn heartbeat(
        &self,
        projection: &ProjectionId,
        worker: &str,
        ttl: Duration,
    ) -> Result<u64, StoreError> {
        self.events.check_available()?;
        let now = Instant::now();
        let mut shared = lock(&self.shared);
        let workers = shared.workers.entry(projection.clone()).or_default();
        workers.insert(worker.to_owned(), now + ttl);
        workers.retain(|_, until| *until > now);
        Ok(workers.len() as u64)
    }

    async fn parked(&self, projection: &ProjectionId) -> Result<Vec<ParkedAggregate>, StoreError> {
        let mut parked: Vec<ParkedAggregate> = self.read(projection, |state| {
            state
                .aggregates
                .iter()
                .filter(|(_, a)| !a.parked.is_empty())
                .map(|(stream, a)| ParkedAggregate {
                    stream: *stream,
                    applied: a.applied,
                    events: a.parked.clone(),
                    retry_requested: a.retry,
                })
                .collect()
        });
        parked.sort_by_key(|a| *a.stream.as_uuid());
        Ok(parked)
    }

    async fn retry(&self, projection: &ProjectionId, stream: StreamId) -> Result<bool, StoreError> {
        let Some(bucket) = self.parked_bucket(projection, stream) else {
            return Ok(false);
        };
        let _bucket = self.lock_bucket(projection, bucket).await;
        Ok(self.write(projection, |state| {
            match state.aggregates.get_mut(&stream) {
                Some(a) if !a.parked.is_empty() => {
                    a.retry = true;
                    true
                }
                _ => false,
            }
        }))
    }

    async fn skip(
        &self,
        projection: &ProjectionId,
        stream: StreamId,
    ) -> Result<Skipped, StoreError> {
        let Some(bucket) = self.parked_bucket(projection, stream) else {
            return Ok(Skipped::NothingParked);
        };
        let _bucket = self.lock_bucket(projection, bucket).await;
        Ok(self.write(projection, |state| {
            let Some(aggregate) = state.aggregates.get_mut(&stream) else {
                return Skipped::NothingParked;
            };
            let Some(first) = aggregate.parked.first().cloned() else {
                return Skipped::NothingParked;
            };
            aggregate.retry = true;
            if first.version > aggregate.applied + 1 {
                aggregate.applied = first.version - 1;
                Skipped::Gap {
                    until: first.version - 1,
                }
            } else {
                aggregate.parked.remove(0);
                aggregate.applied = aggregate.applied.max(first.version);
                Skipped::Event {
                    version: first.version,
                }
            }
        }))
    }

    async fn applied(
        &self,
        projection: &ProjectionId,
        stream: StreamId,
    ) -> Result<u64, StoreError> {
        Ok(self.read(projection, |state| {
            state.aggregates.get(&stream).map_or(0, |a| a.applied)
        }))
    }

    async fn progress(&self, projection: &ProjectionId) -> Result<ProjectionProgress, StoreError> {
        let workers = {
            let now = Instant::now();
            let shared = lock(&self.shared);
            shared.workers.get(projection).map_or(0, |w| {
                w.values().filter(|until| **until > now).count() as u64
            })
        };
        Ok(self.read(projection, |state| {
            let parked = state.aggregates.values().filter(|a| !a.parked.is_empty());
            ProjectionProgress {
                applied: state.aggregates.values().map(|a| a.applied).sum(),
                parked_aggregates: parked.clone().count() as u64,
                parked_events: parked.map(|a| a.parked.len() as u64).sum(),
                pending: state.positions.values().map(|p| p.1).sum(),
                workers,
            }
        }))
    }

    async fn active_generation(&self, name: &str) -> Result<Option<u32>, StoreError> {
        Ok(lock(&self.shared).active.get(name).copied())
    }

    async fn activate(&self, projection: &ProjectionId) -> Result<(), StoreError> {
        lock(&self.shared)
            .active
            .insert(projection.name().to_owned(), projection.generation());
        Ok(())
    }
}

#[async_trait]
impl ProjectionUnit for InMemoryUnit {
    async fn aggregate(&mut self, stream: StreamId) -> Result<AggregateProgress, StoreError> {
        let a = self.working(stream);
        Ok(AggregateProgress {
            applied: a.applied,
            parked: a.parked.first().map(|p| p.version),
        })
    }

    async fn record_applied(&mut self, stream: StreamId, version: u64) -> Result<(), StoreError> {
        let a = self.working(stream);
        a.applied = a.applied.max(version);
        Ok(())
    }

    async fn park(
        &mut self,
        event: &BucketEvent,
        bucket: Bucket,
        reason: &ParkReason,
    ) -> Result<(), StoreError> {
        let a = self.working(event.stream);
        if a.parked.iter().all(|p| p.version != event.version) {
            a.parked.push(ParkedProjectionEvent {
                stream: event.stream,
                bucket,
                version: event.version,
                body: event.body.clone(),
                reason: reason.to_string(),
            });
            a.parked.sort_by_key(|p| p.version);
        }
        Ok(())
    }

    async fn take_retries(
        &mut self,
        bucket: Bucket,
    ) -> Result<Vec<ParkedProjectionEvent>, StoreError> {
        let flagged: Vec<StreamId> = self.store.read(&self.projection, |state| {
            state
                .aggregates
                .iter()
                .filter(|(_, a)| a.retry && a.parked.first().is_some_and(|p| p.bucket == bucket))
                .map(|(stream, _)| *stream)
                .collect()
        });
        let mut taken = Vec::new();
        for stream in flagged {
            let a = self.working(stream);
            a.retry = false;
            taken.append(&mut a.parked);
        }
        taken.sort_by_key(|p| (*p.stream.as_uuid(), p.version));
        Ok(taken)
    }

    async fn take_parked(
        &mut self,
        stream: StreamId,
    ) -> Result<Vec<ParkedProjectionEvent>, StoreError> {
        let a = self.working(stream);
        a.retry = false;
        Ok(std::mem::take(&mut a.parked))
    }

    async fn load(&mut self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        if let Some(document) = self.documents.get(key) {
            return Ok(document.clone());
        }
        self.lock_document(key)?;
        let document = self
            .store
            .read(&self.projection, |state| state.documents.get(key).cloned());
        self.documents.insert(key.to_owned(), document.clone());
        Ok(document)
    }

    async fn save(&mut self, key: &str, document: serde_json::Value) -> Result<(), StoreError> {
        self.documents
            .insert(key.to_owned(), Some(document.clone()));
        self.saved.insert(key.to_owned(), document);
        Ok(())
    }

    async fn emit(
        &mut self,
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<EventEnvelope>,
    ) -> Result<AppendOutcome, StoreError> {
        self.store.events.append(stream, expected, events).await
    }

    async fn commit(self, position: u64, pending: u64) -> Result<(), StoreError> {
        self.store.events.check_available()?;
        let Self {
            store,
            projection,
            bucket,
            aggregates,
            saved,
            ..
        } = self;
        store.write(&projection, |state| {
            state.positions.insert(bucket, (position, pending));
            state.aggregates.extend(aggregates);
            state.documents.extend(saved);
        });
        Ok(())
    }
}

/// A [`ProjectionFeed`] over what an [`InMemoryBroker`] holds, split into buckets by
/// [`bucket_of`]; a message's sequence is its place in the broker's stream, from 1.
#[derive(Clone)]
pub struct InMemoryFeed {
    broker: InMemoryBroker,
    buckets: Bucket,
}

impl InMemoryFeed {
    /// A feed of `buckets` buckets over `broker`.
    pub fn new(broker: InMemoryBroker, buckets: Bucket) -> Self {
        Self { broker, buckets }
    }
}

#[async_trait]
impl ProjectionFeed for InMemoryFeed {
    fn buckets(&self) -> Bucket {
        self.buckets
    }

    async fn open(
        &self,
        _reader: &str,
        bucket: Bucket,
        after: u64,
    ) -> Result<Box<dyn BucketReader>, ConsumeError> {
        if bucket >= self.buckets {
            return Err(ConsumeError::Misconfigured {
                reason: format!("bucket {bucket} of {}", self.buckets),
            });
        }
        Ok(Box::new(InMemoryBucketReader {
            feed: self.clone(),
            bucket,
            after,
            pending: 0,
        }))
    }
}

struct InMemoryBucketReader {
    feed: InMemoryFeed,
    bucket: Bucket,
    after: u64,
    pending: u64,
}

#[async_trait]
impl BucketReader for InMemoryBucketReader {
    async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<BucketEvent>, ConsumeError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mine: Vec<BucketEvent> = self
                .feed
                .broker
                .messages()
                .into_iter()
                .zip(1u64..)
                .filter(|(m, sequence)| {
                    *sequence > self.after
                        && bucket_of(m.stream_id, self.feed.buckets) == self.bucket
                })
                .map(|(m, sequence)| BucketEvent {
                    stream: m.stream_id,
                    version: m.stream_version,
                    sequence,
                    body: Bytes::from(m.envelope.encode()),
                    event: Ok(m.envelope),
                })
                .collect();
            if !mine.is_empty() || tokio::time::Instant::now() >= deadline {
                let batch: Vec<BucketEvent> = mine.iter().take(max).cloned().collect();
                self.pending = (mine.len() - batch.len()) as u64;
                if let Some(last) = batch.last() {
                    self.after = last.sequence;
                }
                return Ok(batch);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn pending(&self) -> u64 {
        self.pending
    }
}
