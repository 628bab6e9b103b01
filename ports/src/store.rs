use crate::StoreError;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use edupulse_domain::{EventEnvelope, EventId, ExpectedVersion, StreamId};
use futures::stream::BoxStream;
use std::fmt;

/// A place in the store's commit-safe global order.
///
/// Ordered by `commit` first, then `position`. Every event a follower has not yet seen has a
/// cursor greater than the last one it saw, even when transactions commit out of position order:
/// that is the store's promise (see [`EventReader::read_all`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// The commit-order key of the event's transaction (adapter-defined, monotonic per commit).
    pub commit: u64,
    /// The event's global position (unique, assigned at append; not necessarily commit-ordered).
    pub position: u64,
}

impl Cursor {
    /// Before the first event.
    pub const START: Cursor = Cursor {
        commit: 0,
        position: 0,
    };
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.commit, self.position)
    }
}

/// An event as stored.
///
/// Equality compares the event, not [`RecordedEvent::body`]: the body is a cached form of the
/// envelope.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    /// The event.
    pub envelope: EventEnvelope,
    /// Its stream (the aggregate, or its own id for a standalone event).
    pub stream_id: StreamId,
    /// Its version in the stream, from 1.
    pub stream_version: u64,
    /// Where it is in the commit-safe global order; `cursor.position` is its global position.
    pub cursor: Cursor,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
    /// The envelope's wire bytes ([`EventEnvelope::encode`]), when the store read them from what
    /// it kept instead of encoding the event again (see
    /// [`edupulse_domain::StoredEnvelope::into_envelope_and_body`]); `None`: encode on use. A
    /// store sets it only together with `envelope`; whoever changes `envelope` clears it.
    pub body: Option<Bytes>,
}

impl RecordedEvent {
    /// The global position.
    pub fn position(&self) -> u64 {
        self.cursor.position
    }

    /// The envelope as the broker carries it: the stored bytes when the store kept them, the
    /// envelope's encoding otherwise.
    pub fn encoded(&self) -> Bytes {
        self.body
            .clone()
            .unwrap_or_else(|| Bytes::from(self.envelope.encode()))
    }
}

impl PartialEq for RecordedEvent {
    fn eq(&self, other: &Self) -> bool {
        self.envelope == other.envelope
            && self.stream_id == other.stream_id
            && self.stream_version == other.stream_version
            && self.cursor == other.cursor
            && self.recorded_at == other.recorded_at
    }
}

/// A stored row that cannot be decoded into an event (written by hand, by an older build, or
/// beyond what the decoder accepts). It comes back whole, so that a follower can park it with its
/// reason instead of stalling on it or skipping it silently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndecodableRow {
    /// The row's event id.
    pub event_id: EventId,
    /// Its stream.
    pub stream_id: StreamId,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Where it is in the commit-safe order.
    pub cursor: Cursor,
    /// The stored event type.
    pub event_type: String,
    /// The stored metadata and payload, as JSON text, exactly as stored.
    pub raw: String,
    /// Why it cannot be decoded.
    pub reason: String,
}

/// One row read by a follower ([`EventReader::follow`]).
#[derive(Debug, Clone, PartialEq)]
pub enum FollowedRow {
    /// A decoded event.
    Event(RecordedEvent),
    /// A row that cannot be decoded.
    Undecodable(UndecodableRow),
}

impl FollowedRow {
    /// The row's place in the commit-safe order.
    pub fn cursor(&self) -> Cursor {
        match self {
            FollowedRow::Event(e) => e.cursor,
            FollowedRow::Undecodable(r) => r.cursor,
        }
    }

    /// The row's stream.
    pub fn stream_id(&self) -> StreamId {
        match self {
            FollowedRow::Event(e) => e.stream_id,
            FollowedRow::Undecodable(r) => r.stream_id,
        }
    }
}

/// One appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendedEvent {
    /// The event's id.
    pub id: EventId,
    /// Its stream version.
    pub stream_version: u64,
    /// Its global position.
    pub position: u64,
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The stream appended to.
    pub stream_id: StreamId,
    /// One entry per event, in the order given.
    pub events: Vec<AppendedEvent>,
    /// `true` when the very same batch had already been appended (an idempotent retry): nothing
    /// was stored this time, `events` describes the earlier append.
    pub replayed: bool,
}

impl AppendOutcome {
    /// The stream's version after the append.
    pub fn last_version(&self) -> u64 {
        self.events.last().map_or(0, |e| e.stream_version)
    }
}

/// The tip of the store, for lag and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreHead {
    /// The highest global position committed (0: empty store).
    pub last_position: u64,
    /// Number of events stored (may be an estimate for large stores).
    pub events: u64,
}

/// Appends events.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait EventAppender: Send + Sync {
    /// Appends `events`, in order, to `stream`, atomically: all or none.
    ///
    /// Every event's [`EventEnvelope::stream_id`] must be `stream`. The first event gets the
    /// stream's current version + 1. Appending the same batch again (same ids, same content) after
    /// an ambiguous failure succeeds with [`AppendOutcome::replayed`] and stores nothing twice; the
    /// expected version is then not checked again.
    ///
    /// # Errors
    /// - [`StoreError::Conflict`] when `expected` does not match the stream's version;
    /// - [`StoreError::DuplicateEventId`] when an id is already used by a different event;
    /// - [`StoreError::EventTooLarge`] when an encoded event exceeds the store's limit;
    /// - [`StoreError::InvalidInput`] for an empty batch or an event of another stream;
    /// - [`StoreError::Unavailable`] when the store cannot be reached (retry the same batch);
    /// - [`StoreError::Internal`] otherwise.
    async fn append(
        &self,
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<EventEnvelope>,
    ) -> Result<AppendOutcome, StoreError>;
}

/// Reads events.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait EventReader: Send + Sync {
    /// Reads at most `limit` events of `stream` with version ≥ `from_version`, in version order.
    /// An unknown stream reads as empty.
    ///
    /// # Errors
    /// [`StoreError::InvalidInput`] for `limit == 0`; [`StoreError::Unavailable`];
    /// [`StoreError::Corrupted`]; [`StoreError::Internal`].
    async fn read_stream(
        &self,
        stream: StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Reads at most `limit` events after `after`, in commit-safe order (ascending [`Cursor`]).
    ///
    /// The promise: following this with the cursor of the last event returned sees every
    /// committed event exactly once and never one of a rolled-back transaction, whatever order
    /// transactions commit in. To keep it, a store may hold back events committed after an
    /// older transaction that is still open: an empty page does not mean nothing was committed.
    ///
    /// # Errors
    /// As [`EventReader::read_stream`].
    async fn read_all(&self, after: Cursor, limit: usize)
    -> Result<Vec<RecordedEvent>, StoreError>;

    /// [`EventReader::read_all`] for a follower that must not stall on one bad row: a row that
    /// cannot be decoded comes back as [`FollowedRow::Undecodable`] in its place, and the rows
    /// after it still come. The default suits stores that never hold undecodable rows.
    ///
    /// # Errors
    /// As [`EventReader::read_stream`], except [`StoreError::Corrupted`].
    async fn follow(&self, after: Cursor, limit: usize) -> Result<Vec<FollowedRow>, StoreError> {
        Ok(self
            .read_all(after, limit)
            .await?
            .into_iter()
            .map(FollowedRow::Event)
            .collect())
    }

    /// [`EventReader::follow`] plus what is committed beyond the horizon: the page's rows start
    /// with the settled ones (what `follow` returns), then come rows already committed that an
    /// older transaction still open may yet commit rows before. A follower that publishes them
    /// early keeps its checkpoint in the settled part and remembers what it handed out (see
    /// [`crate::ReadAhead`]). At most `limit` rows in all.
    ///
    /// The default is `follow`, all settled: right for stores that never hold rows back.
    ///
    /// # Errors
    /// As [`EventReader::follow`].
    async fn follow_visible(
        &self,
        after: Cursor,
        limit: usize,
    ) -> Result<crate::FollowedPage, StoreError> {
        Ok(crate::FollowedPage::settled(
            self.follow(after, limit).await?,
        ))
    }

    /// Reads at most `limit` events with global positions in `from..=to`, by position: for
    /// re-publishing a range (replay). Unlike [`EventReader::read_all`] it does not wait for
    /// open transactions; use it for ranges already published.
    ///
    /// # Errors
    /// As [`EventReader::read_stream`].
    async fn read_positions(
        &self,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The stream's current version (`None`: no such stream).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn stream_version(&self, stream: StreamId) -> Result<Option<u64>, StoreError>;

    /// The tip of the store.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn head(&self) -> Result<StoreHead, StoreError>;
}

/// An event store: appends and reads.
pub trait EventStore: EventAppender + EventReader {}

impl<T: EventAppender + EventReader + ?Sized> EventStore for T {}

/// A lossy wake-up signal sent after commits.
///
/// Hints can be lost (a dropped connection, a full buffer) or spurious: a follower must also poll
/// on a timer, and treat a hint only as "read now".
#[async_trait]
pub trait CommitHints: Send + Sync {
    /// Subscribes to hints. The stream ends when the subscription breaks: subscribe again.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    async fn subscribe(&self) -> Result<BoxStream<'static, ()>, StoreError>;
}

/// Checks what every store must refuse before touching storage: an empty batch, an event of
/// another stream, an event whose encoding exceeds `max_event_bytes`. Shared by all adapters so
/// they refuse exactly the same things.
///
/// # Errors
/// [`StoreError::InvalidInput`], [`StoreError::EventTooLarge`].
pub fn validate_batch(
    stream: StreamId,
    events: &[EventEnvelope],
    max_event_bytes: usize,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Err(StoreError::InvalidInput {
            reason: "an append needs at least one event".into(),
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    for event in events {
        if event.stream_id() != stream {
            return Err(StoreError::InvalidInput {
                reason: format!(
                    "event {} belongs to stream {}, not {stream}",
                    event.id,
                    event.stream_id()
                ),
            });
        }
        if !seen.insert(event.id) {
            return Err(StoreError::InvalidInput {
                reason: format!("event {} appears twice in the batch", event.id),
            });
        }
        let size = event
            .check_storable()
            .map_err(|e| StoreError::InvalidInput {
                reason: format!("event {}: {e}", event.id),
            })?;
        if size > max_event_bytes {
            return Err(StoreError::EventTooLarge {
                event_id: event.id,
                size,
                max: max_event_bytes,
            });
        }
    }
    Ok(())
}
