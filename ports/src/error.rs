use edupulse_domain::{DecodeError, EventId, ExpectedVersion, StreamId};
use thiserror::Error;

/// A foreign error kept as the source of a port error (driver and broker errors stay opaque here,
/// so that no adapter type leaks into the ports).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why an event store operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream's version is not what the append expected. Nothing was appended.
    ///
    /// # Handling
    /// Not retryable as is: reload the aggregate (its events up to `actual`), decide again, and
    /// append with the new expected version. An HTTP API answers 409.
    #[error("stream {stream}: expected version {expected}, actual {}", display_actual(.actual))]
    Conflict {
        /// The stream appended to.
        stream: StreamId,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's actual version (`None`: the stream does not exist).
        actual: Option<u64>,
    },
    /// An event id is already used by a different event (another stream, another content). A
    /// retry of the very same batch is not an error: it succeeds as a replay.
    ///
    /// # Handling
    /// Not retryable: the caller reused an id. Give the new event a new id.
    #[error("event id {event_id} is already used by a different event")]
    DuplicateEventId {
        /// The id in question.
        event_id: EventId,
    },
    /// An encoded event is larger than the store accepts (chosen so that the broker accepts it).
    /// Nothing was appended.
    ///
    /// # Handling
    /// Not retryable: shrink the event (store large content elsewhere and reference it).
    #[error("event {event_id} is {size} bytes encoded, the limit is {max}")]
    EventTooLarge {
        /// The event.
        event_id: EventId,
        /// Its encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The request itself is invalid (an empty batch, an event of another stream in the batch, a
    /// zero page size). Nothing was done.
    ///
    /// # Handling
    /// Not retryable: a bug of the caller.
    #[error("invalid request: {reason}")]
    InvalidInput {
        /// What is wrong.
        reason: String,
    },
    /// The store could not be reached or the operation was cut short: connection lost, pool
    /// timeout, server shutting down, serialization failure or deadlock. Nothing is known to have
    /// been appended, but it may have been (the commit may have happened before the connection
    /// dropped).
    ///
    /// # Handling
    /// Retryable with backoff, with the **same events** (same ids): an append that did happen is
    /// then reported as a replay, never stored twice. An HTTP API answers 503.
    #[error("event store unavailable")]
    Unavailable(#[source] BoxError),
    /// A stored event cannot be decoded (corrupted, or written by a newer incompatible build).
    ///
    /// # Handling
    /// Not retryable; needs an operator. The position tells which row.
    #[error("stored event at position {position} cannot be decoded")]
    Corrupted {
        /// Global position of the row.
        position: u64,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// The store's schema is missing or older than this build: a table, column or function it
    /// needs does not exist.
    ///
    /// # Handling
    /// Not retryable: apply the migrations (`edupulse-events migrate`), then retry.
    #[error("the event store's schema is missing or out of date; run `edupulse-events migrate`")]
    SchemaMissing(#[source] BoxError),
    /// The database refused the operation to this login: its role lacks the privilege (a
    /// relay's login appending, a writer's login touching checkpoints or leases).
    ///
    /// # Handling
    /// Not retryable: grant the login the role for its job (`edupulse_writer` for services that
    /// append, `edupulse_relay` for the relay; see the README's configuration section).
    #[error("the database refused this login the operation: grant it the role for its job")]
    PermissionDenied(#[source] BoxError),
    /// Any other failure of the backend (a bug).
    ///
    /// # Handling
    /// Not retryable without an operator. An HTTP API answers 500.
    #[error("event store failure")]
    Internal(#[source] BoxError),
}

fn display_actual(actual: &Option<u64>) -> String {
    actual.map_or_else(|| "no stream".to_owned(), |v| v.to_string())
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Why one event could not be published. Returned per event by
/// [`crate::EventPublisher::publish`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PublishError {
    /// No acknowledgement arrived in time. The event may or may not be stored by the broker.
    ///
    /// # Handling
    /// Retry with the same event (same id): the broker deduplicates it within its window.
    #[error("publish timed out waiting for the broker's acknowledgement")]
    Timeout,
    /// The connection to the broker is down or was lost while publishing.
    ///
    /// # Handling
    /// Retry with backoff, same event.
    #[error("broker unavailable")]
    Unavailable(#[source] BoxError),
    /// The broker has no stream for the subject, or no server answers for it: a deployment or
    /// configuration problem.
    ///
    /// # Handling
    /// Retry with a long backoff and alert an operator; it will not fix itself.
    #[error("broker not configured for this event: {reason}")]
    Misconfigured {
        /// What is missing.
        reason: String,
    },
    /// The event is larger than the broker accepts. Checked before sending.
    ///
    /// # Handling
    /// Permanent: dead-letter the event.
    #[error("event is {size} bytes, the broker accepts at most {max}")]
    TooLarge {
        /// Size of message plus headers.
        size: usize,
        /// The broker's limit.
        max: usize,
    },
    /// The broker refused the event for good (an invalid subject, a permission denied).
    ///
    /// # Handling
    /// Permanent: dead-letter the event.
    #[error("broker rejected the event: {reason}")]
    Rejected {
        /// The broker's reason.
        reason: String,
    },
    /// Not sent, because an earlier event of the same stream failed in this batch and sending it
    /// would break the stream's order at the broker.
    ///
    /// # Handling
    /// Retry after the earlier event succeeds.
    #[error("not attempted: an earlier event of the same stream failed")]
    NotAttempted,
}

impl PublishError {
    /// Whether the event can never be published as it is (dead-letter it).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            PublishError::TooLarge { .. } | PublishError::Rejected { .. }
        )
    }
}
