use crate::{Cursor, RecordedEvent, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// A named checkpoint: how far a follower (the relay) has processed the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every event at or before this cursor is done.
    pub cursor: Cursor,
    /// When it was last saved.
    pub updated_at: DateTime<Utc>,
}

/// Stores named checkpoints, and events a follower had to give up on (dead letters).
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
    async fn save(&self, name: &str, cursor: Cursor) -> Result<(), StoreError>;

    /// Records that follower `name` gave up on `event` (for example the broker refused it for
    /// good), with the reason. Recording the same event twice keeps one record.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn record_dead_letter(
        &self,
        name: &str,
        event: &RecordedEvent,
        reason: &str,
    ) -> Result<(), StoreError>;

    /// How many events follower `name` gave up on.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn dead_letter_count(&self, name: &str) -> Result<u64, StoreError>;
}
