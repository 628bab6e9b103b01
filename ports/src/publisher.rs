use crate::{PublishError, RecordedEvent};
use async_trait::async_trait;
use edupulse_domain::StreamId;
use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use futures::stream::BoxStream;
use std::collections::HashSet;

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

/// One event of [`EventPublisher::publish_stream`], settled: handed back with its outcome.
#[derive(Debug)]
pub struct Settled {
    /// The event, as it was given.
    pub event: RecordedEvent,
    /// The broker's acknowledgement, or why it was not stored.
    pub result: PublishResult,
}

/// How many events the default [`EventPublisher::publish_stream`] hands to
/// [`EventPublisher::publish`] at most at once.
const DEFAULT_STREAM_CHUNK: usize = 256;

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

    /// Publishes `events` as they come (in the store's commit-safe order) and sends each one,
    /// once settled, to `settled`, in the order they settle. Returns once `events` has ended
    /// and every event has been sent to `settled` (or `settled` was closed).
    ///
    /// A streaming publisher keeps its window full: new events are sent while earlier ones await
    /// their acknowledgement, up to its in-flight limit, with at most one in flight per stream
    /// (each stream's order at the broker is the order given). Once an event of a stream fails,
    /// every later event of that stream given to this call settles as
    /// [`PublishError::NotAttempted`] without being sent, so a caller that retries the failed
    /// one (same ids) never finds a later version stored before it.
    ///
    /// The default publishes whatever has arrived in chunks through [`EventPublisher::publish`]:
    /// correct, but each chunk waits for its slowest acknowledgement.
    async fn publish_stream(
        &self,
        events: BoxStream<'static, RecordedEvent>,
        settled: UnboundedSender<Settled>,
    ) {
        let mut failed: HashSet<StreamId> = HashSet::new();
        let mut chunks = events.ready_chunks(DEFAULT_STREAM_CHUNK);
        while let Some(chunk) = chunks.next().await {
            let (blocked, go): (Vec<_>, Vec<_>) = chunk
                .into_iter()
                .partition(|e| failed.contains(&e.stream_id));
            let mut results = self.publish(&go).await.into_iter();
            let outcomes = go
                .into_iter()
                .map(|event| {
                    let result = results.next().unwrap_or(Err(PublishError::NotAttempted));
                    Settled { event, result }
                })
                .chain(blocked.into_iter().map(|event| Settled {
                    event,
                    result: Err(PublishError::NotAttempted),
                }));
            for outcome in outcomes {
                if outcome.result.is_err() {
                    failed.insert(outcome.event.stream_id);
                }
                if settled.unbounded_send(outcome).is_err() {
                    return;
                }
            }
        }
    }

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
