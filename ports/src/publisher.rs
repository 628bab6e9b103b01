use crate::{PublishError, RecordedEvent};
use async_trait::async_trait;
use edupulse_domain::StreamId;

/// The broker's acknowledgement of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishAck {
    /// The broker already had this event (same id within its deduplication window): nothing new
    /// was stored.
    pub duplicate: bool,
    /// The broker's sequence number of the stored message. For a duplicate recognised after the
    /// broker's own duplicate window it is the best known: a later message of the same aggregate,
    /// or 0 when none is known (finding the original's would need a scan of the stream).
    pub sequence: u64,
}

/// The outcome of publishing one event.
pub type PublishResult = Result<PublishAck, PublishError>;

/// Publishes stored events to the broker.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait EventPublisher: Send + Sync {
    /// Publishes `events` (given in the store's commit-safe order) and returns, once every one is
    /// settled, one result per event in the same order.
    ///
    /// Implementations keep many events in flight but preserve each stream's order at the broker:
    /// an event is never stored by the broker before an earlier event of its stream that failed
    /// in this batch (later ones get [`PublishError::NotAttempted`]). Every event carries its id as
    /// the broker's deduplication key, so publishing it again is safe.
    ///
    /// A caller may checkpoint up to the longest prefix of successes.
    async fn publish(&self, events: &[RecordedEvent]) -> Vec<PublishResult>;

    /// The highest version of `stream` the broker holds (`None`: none of it). Replay uses it to
    /// never store an event after a later version of its stream, nor before an earlier one.
    ///
    /// # Errors
    /// [`PublishError::Unavailable`], [`PublishError::Timeout`] when the broker cannot answer.
    async fn last_version(&self, stream: StreamId) -> Result<Option<u64>, PublishError>;

    /// Stores `event` again although the broker may hold it (an operator's forced replay, for
    /// consumers that lost it). The caller checks that it is its stream's last version, so the
    /// copy never lands after a later version.
    async fn republish(&self, event: &RecordedEvent) -> PublishResult;
}
