//! Projections: each aggregate's events applied in order, aggregates in parallel, every effect
//! exactly once.
//!
//! # How the pieces fit
//!
//! - The broker offers the published events split into a fixed number of **buckets** by stream
//!   id ([`ProjectionFeed`]): every event of an aggregate is in one bucket, in stream order, and a
//!   bucket can be read from any position after a given one.
//! - The projection's store ([`ProjectionStore`]) keeps, per projection, each bucket's position,
//!   each aggregate's applied version and its parked events, next to the projection's own state.
//!   One [`ProjectionUnit`] is one transaction: the handler's writes, the applied versions and the
//!   bucket's new position commit together or not at all. That is what makes effects exactly
//!   once: a redelivered event finds its version applied, an event applied by a worker that then
//!   died was either committed with its position or not applied at all.
//! - A runner (in the app) leases buckets to workers ([`crate::LeaseProvider`]), reads each held
//!   bucket from its committed position and drives a [`Projection`] through units.
//!
//! The store is the source of truth for progress, not the broker: a worker that takes over a
//! bucket starts exactly after what its predecessor committed, without waiting for the broker
//! to time out deliveries nobody will settle.

use crate::{AppendOutcome, ConsumeError, HandlerError, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use edupulse_domain::{EventEnvelope, ExpectedVersion, StreamId, event_types::is_identifier};
use std::fmt;
use std::time::Duration;
use thiserror::Error;

/// A bucket of the partitioned feed: `0..ProjectionFeed::buckets()`.
pub type Bucket = u16;

/// Which projection, and which generation of it: a rebuild runs generation `n + 1` beside `n`,
/// into its own state, until it is switched to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProjectionId {
    name: String,
    generation: u32,
}

/// Why a projection name was refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProjectionNameError {
    /// Names are identifiers of 1 to 64 ASCII letters, digits, `_` and `-`, so that they can
    /// name broker consumers and lease names without escaping.
    ///
    /// # Handling
    /// Not retryable: choose another name.
    #[error("projection name {0:?}: 1 to 64 ASCII letters, digits, '_' or '-' expected")]
    Invalid(String),
}

impl ProjectionId {
    /// Generation `generation` of the projection `name`.
    ///
    /// # Errors
    /// [`ProjectionNameError::Invalid`].
    pub fn new(name: impl Into<String>, generation: u32) -> Result<Self, ProjectionNameError> {
        let name = name.into();
        if is_identifier(&name) {
            Ok(Self { name, generation })
        } else {
            Err(ProjectionNameError::Invalid(name))
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The next generation, for a rebuild.
    pub fn next_generation(&self) -> Self {
        Self {
            name: self.name.clone(),
            generation: self.generation.saturating_add(1),
        }
    }

    /// The name of the lease on `bucket` of this projection.
    pub fn bucket_lease(&self, bucket: Bucket) -> String {
        format!("projection/{self}/{bucket}")
    }
}

impl fmt::Display for ProjectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-g{}", self.name, self.generation)
    }
}

/// One message of a bucket.
#[derive(Debug, Clone)]
pub struct BucketEvent {
    /// Its stream (the aggregate).
    pub stream: StreamId,
    /// Its version in the stream.
    pub version: u64,
    /// Its position in the feed: increasing within a bucket; read again after it with
    /// [`ProjectionFeed::open`].
    pub sequence: u64,
    /// The message's bytes (the envelope), kept with the event if it is parked.
    pub body: Bytes,
    /// The decoded event, or why the message is not one (it is then parked, never applied).
    pub event: Result<EventEnvelope, String>,
}

/// The partitioned feed of published events.
#[async_trait]
pub trait ProjectionFeed: Send + Sync {
    /// How many buckets the feed has (fixed when it is provisioned).
    fn buckets(&self) -> Bucket;

    /// Reads `bucket` for `reader` (a name the broker may show) from the message after
    /// `after` (0: from the start).
    ///
    /// # Errors
    /// [`ConsumeError::Unavailable`] (retry); [`ConsumeError::Misconfigured`] (the feed is not
    /// provisioned, or the bucket is out of range).
    async fn open(
        &self,
        reader: &str,
        bucket: Bucket,
        after: u64,
    ) -> Result<Box<dyn BucketReader>, ConsumeError>;
}

/// An open read of one bucket, in feed order.
#[async_trait]
pub trait BucketReader: Send {
    /// Waits up to `wait` for at most `max` messages, in order, with no gap and no repeat.
    ///
    /// # Errors
    /// [`ConsumeError::Unavailable`]: open the bucket again from the last position committed.
    async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<BucketEvent>, ConsumeError>;

    /// Messages of the bucket after the last one returned, as last known (the lag).
    fn pending(&self) -> u64;
}

/// What a unit knows of one aggregate of its projection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AggregateProgress {
    /// The last version applied (or skipped); 0 before the first.
    pub applied: u64,
    /// The version of its first parked event, when the aggregate is parked: later events wait
    /// behind it.
    pub parked: Option<u64>,
}

/// Why an event is parked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParkReason {
    /// The handler failed for good (or the message is not an event).
    Failed(String),
    /// An earlier event of the aggregate is parked: this one waits behind it.
    Behind,
    /// The event arrived before the version it follows: it waits for that version.
    Early {
        /// The version the aggregate waits for.
        waiting_for: u64,
    },
}

impl fmt::Display for ParkReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParkReason::Failed(reason) => write!(f, "failed: {reason}"),
            ParkReason::Behind => f.write_str("behind an earlier parked event"),
            ParkReason::Early { waiting_for } => write!(f, "waiting for version {waiting_for}"),
        }
    }
}

/// A parked event, as kept by the store.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedProjectionEvent {
    /// Its stream.
    pub stream: StreamId,
    /// Its bucket.
    pub bucket: Bucket,
    /// Its version.
    pub version: u64,
    /// The message's bytes.
    pub body: Bytes,
    /// Why it is parked.
    pub reason: String,
}

/// A parked aggregate: its parked events, first the one holding the others.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedAggregate {
    /// The stream.
    pub stream: StreamId,
    /// The last version applied before the first parked event.
    pub applied: u64,
    /// Its parked events, by version.
    pub events: Vec<ParkedProjectionEvent>,
    /// Whether an operator asked for a retry that has not run yet.
    pub retry_requested: bool,
}

/// What [`ProjectionStore::skip`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// The first parked event, of this version, is now counted as applied without effect.
    Event {
        /// Its version.
        version: u64,
    },
    /// The aggregate waited for versions up to `until`, which will never come: it stops
    /// waiting and goes on from its first parked event.
    Gap {
        /// The last missing version, now counted as applied.
        until: u64,
    },
    /// The aggregate is not parked.
    NothingParked,
}

/// A projection's progress, for `status`, `/metrics` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectionProgress {
    /// Events applied (or skipped) so far, over all aggregates.
    pub applied: u64,
    /// Aggregates parked now.
    pub parked_aggregates: u64,
    /// Events parked now (the failed ones and those waiting behind them).
    pub parked_events: u64,
    /// Messages of the feed not yet read, as last reported by the workers.
    pub pending: u64,
    /// Workers seen within their time to live.
    pub workers: u64,
}

/// Where a projection keeps its progress, its parked events and (for projections that want it)
/// its state.
#[async_trait]
pub trait ProjectionStore: Send + Sync {
    /// One transaction of this store.
    type Unit: ProjectionUnit;

    /// Starts a unit on `bucket`: locks the bucket, so that two workers never commit to it at
    /// once, and returns the bucket's committed position with the unit.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] (retry); [`StoreError::Internal`].
    async fn begin(
        &self,
        projection: &ProjectionId,
        bucket: Bucket,
    ) -> Result<(Self::Unit, u64), StoreError>;

    /// Records that `worker` is alive for `ttl` and returns how many workers of `projection`
    /// are (this one included), so that workers can share the buckets.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn heartbeat(
        &self,
        projection: &ProjectionId,
        worker: &str,
        ttl: Duration,
    ) -> Result<u64, StoreError>;

    /// The parked aggregates of `projection`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn parked(&self, projection: &ProjectionId) -> Result<Vec<ParkedAggregate>, StoreError>;

    /// Asks the worker of `stream`'s bucket to apply its parked events again, in order (after
    /// a fix). `false` when the aggregate is not parked.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn retry(&self, projection: &ProjectionId, stream: StreamId) -> Result<bool, StoreError>;

    /// Gives up the first parked event of `stream` (or the gap it waits on) explicitly, and
    /// asks for the others to be applied again.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn skip(
        &self,
        projection: &ProjectionId,
        stream: StreamId,
    ) -> Result<Skipped, StoreError>;

    /// The last version of `stream` applied (or skipped) by `projection`, as committed; 0
    /// before the first.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn applied(&self, projection: &ProjectionId, stream: StreamId)
    -> Result<u64, StoreError>;

    /// The projection's progress.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn progress(&self, projection: &ProjectionId) -> Result<ProjectionProgress, StoreError>;

    /// The generation of `name` that readers use, if one was switched to.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn active_generation(&self, name: &str) -> Result<Option<u32>, StoreError>;

    /// Makes `projection` the generation readers use.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn activate(&self, projection: &ProjectionId) -> Result<(), StoreError>;
}

/// One transaction of a [`ProjectionStore`]: dropped without [`ProjectionUnit::commit`], it
/// leaves no trace.
#[async_trait]
pub trait ProjectionUnit: Send {
    /// The progress of `stream`, locked until the unit ends.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn aggregate(&mut self, stream: StreamId) -> Result<AggregateProgress, StoreError>;

    /// Locks and reads the progress of all of `streams` at once (the runner calls it with a
    /// batch's streams before applying it), so that [`ProjectionUnit::aggregate`] then answers
    /// without a round trip. The default asks for each in turn.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn lock_aggregates(&mut self, streams: &[StreamId]) -> Result<(), StoreError> {
        for stream in streams {
            self.aggregate(*stream).await?;
        }
        Ok(())
    }

    /// Records that `version` of `stream` was applied (or skipped).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn record_applied(&mut self, stream: StreamId, version: u64) -> Result<(), StoreError>;

    /// Parks `event` of `stream` (the aggregate is parked from then on).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn park(
        &mut self,
        event: &BucketEvent,
        bucket: Bucket,
        reason: &ParkReason,
    ) -> Result<(), StoreError>;

    /// The aggregates of `bucket` an operator asked to retry: their parked events are removed
    /// from the store (to be applied or parked again in this unit) and returned by version;
    /// the aggregates are no longer parked.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn take_retries(
        &mut self,
        bucket: Bucket,
    ) -> Result<Vec<ParkedProjectionEvent>, StoreError>;

    /// Removes the parked events of `stream` (those of this unit included) and returns them by
    /// version, to be applied or parked again in this unit; the aggregate is no longer parked.
    /// The runner calls it when the version its first parked event waits for arrives.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn take_parked(
        &mut self,
        stream: StreamId,
    ) -> Result<Vec<ParkedProjectionEvent>, StoreError>;

    /// Loads the projection's document `key`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn load(&mut self, key: &str) -> Result<Option<serde_json::Value>, StoreError>;

    /// Saves the projection's document `key`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn save(&mut self, key: &str, document: serde_json::Value) -> Result<(), StoreError>;

    /// Appends events to the event store in this unit's transaction (an event caused by an
    /// event): committed with the projection's progress or not at all.
    ///
    /// # Errors
    /// As [`crate::EventAppender::append`].
    async fn emit(
        &mut self,
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<EventEnvelope>,
    ) -> Result<AppendOutcome, StoreError>;

    /// Commits, with the bucket's new `position` and the feed's `pending` messages.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]: the outcome is unknown; begin again and read the position.
    async fn commit(self, position: u64, pending: u64) -> Result<(), StoreError>;
}

/// An event handed to a projection.
#[derive(Debug, Clone, Copy)]
pub struct Applying<'a> {
    /// The event (an unknown type arrives as [`edupulse_domain::DomainEvent::Unknown`]).
    pub envelope: &'a EventEnvelope,
    /// Its stream.
    pub stream: StreamId,
    /// Its version in the stream.
    pub version: u64,
}

/// A projection: what to do with each event, in the store's unit `U`.
///
/// Called once per event and aggregate version, in version order per aggregate; never twice for
/// the same version once a unit committed. Writes through `unit` commit with the progress. A
/// projection that keeps state elsewhere (a search index) gets at-least-once calls instead and
/// must be idempotent there.
#[async_trait]
pub trait Projection<U: ProjectionUnit>: Send + Sync {
    /// Applies one event.
    ///
    /// # Errors
    /// [`HandlerError::Transient`]: retried with backoff, then parked;
    /// [`HandlerError::Permanent`]: parked now. Either way the aggregate waits, others go on.
    /// [`HandlerError::Store`] (what `?` on the unit's calls gives when the store fails): the
    /// unit is run again, however often, and nothing is parked for it.
    async fn apply(&self, unit: &mut U, event: Applying<'_>) -> Result<(), HandlerError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_identifiers() {
        let id = ProjectionId::new("achievements", 1).expect("valid");
        assert_eq!(id.to_string(), "achievements-g1");
        assert_eq!(id.next_generation().generation(), 2);
        assert_eq!(id.bucket_lease(3), "projection/achievements-g1/3");
        assert!(ProjectionId::new("a.b", 1).is_err());
        assert!(ProjectionId::new("", 1).is_err());
    }
}
