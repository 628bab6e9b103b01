use crate::{Cursor, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use edupulse_domain::{EventId, StreamId};

/// A named checkpoint: how far a follower (the relay) has processed the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every event at or before this cursor is done.
    pub cursor: Cursor,
    /// The highest broker sequence acknowledged when it was saved (0: unknown). A broker whose
    /// last sequence is below it lost messages it had acknowledged.
    pub broker_sequence: u64,
    /// When it was last saved.
    pub updated_at: DateTime<Utc>,
}

/// An event a follower could not process, parked with its stream: the follower holds back the
/// later events of that stream (publishing them would break the stream's order) while every other
/// stream keeps flowing, until an operator releases it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedEvent {
    /// The stream held back.
    pub stream_id: StreamId,
    /// The version parked; later versions wait behind it.
    pub stream_version: u64,
    /// The parked event's id.
    pub event_id: EventId,
    /// Where it is in the commit-safe order.
    pub cursor: Cursor,
    /// Why it was parked.
    pub reason: String,
    /// The stored bytes (JSON text) of the event, for the operator.
    pub raw: String,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
    /// What an operator asked for, if anything yet.
    pub release: Option<Release>,
}

/// How an operator releases a parked stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Release {
    /// Publish the parked event (once fixed) and what waits behind it, in order.
    Retry,
    /// Leave the parked event out for good and publish what waits behind it.
    Skip,
}

impl Release {
    /// The name stored and shown (`retry`, `skip`).
    pub fn as_str(self) -> &'static str {
        match self {
            Release::Retry => "retry",
            Release::Skip => "skip",
        }
    }

    /// The release named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "retry" => Some(Release::Retry),
            "skip" => Some(Release::Skip),
            _ => None,
        }
    }
}

/// Stores named checkpoints, and the streams a follower parked.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The checkpoint named `name`, if any was saved.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, StoreError>;

    /// Saves `cursor` as the checkpoint `name`. A checkpoint never moves backwards: saving a cursor
    /// lower than the stored one keeps the stored one.
    ///
    /// A save is progress, not a fact: a store may make it durable lazily, so a crash of the store
    /// right after a save can bring back an older checkpoint. Followers resume from it and
    /// process some events again, which at-least-once delivery allows anyway.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    /// `broker_sequence` is the highest broker sequence acknowledged so far; it never moves
    /// backwards either.
    async fn save(
        &self,
        name: &str,
        cursor: Cursor,
        broker_sequence: u64,
    ) -> Result<(), StoreError>;

    /// Parks `event` for follower `name`: its stream is held back from now on. A stream has at
    /// most one parked event (the first); parking it again keeps the first, except that while a
    /// release is requested it means the release failed: the new reason is kept and the request
    /// cleared.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn park(&self, name: &str, event: &ParkedEvent) -> Result<(), StoreError>;

    /// The streams follower `name` holds back, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>, StoreError>;

    /// Asks follower `name` to release `stream` as `release`. `false` when the stream is not
    /// parked.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn request_release(
        &self,
        name: &str,
        stream: StreamId,
        release: Release,
    ) -> Result<bool, StoreError>;

    /// Forgets the parked event of `stream` (the follower released it).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn unpark(&self, name: &str, stream: StreamId) -> Result<(), StoreError>;
}
