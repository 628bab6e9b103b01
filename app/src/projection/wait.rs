//! Waiting for a projection to catch up with events a caller appended (read-your-writes for
//! tests and for APIs that answer once a read model shows a change).

use edupulse_domain::StreamId;
use edupulse_ports::projection::{ProjectionId, ProjectionStore};
use edupulse_ports::{AppendOutcome, StoreError};
use std::time::Duration;
use thiserror::Error;
use tokio::time::Instant;

/// How often the store is asked.
const POLL: Duration = Duration::from_millis(50);

/// Why a projection did not catch up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CatchUpError {
    /// An awaited event's aggregate is parked before that event: it will not be applied until
    /// an operator retries or skips.
    ///
    /// # Handling
    /// Not retryable by waiting: look at `projections parked`.
    #[error("stream {stream} is parked at version {applied} of {wanted}")]
    Parked {
        /// The aggregate.
        stream: StreamId,
        /// Its last applied version.
        applied: u64,
        /// The version waited for.
        wanted: u64,
    },
    /// The time ran out with events not applied (the workers are behind, or not running).
    ///
    /// # Handling
    /// Wait longer, or check `projections status`.
    #[error("{missing} events not applied within {waited:?}")]
    TimedOut {
        /// Events (aggregate versions) not applied yet.
        missing: usize,
        /// How long the call waited.
        waited: Duration,
    },
    /// The projection store failed.
    ///
    /// # Handling
    /// As the [`StoreError`].
    #[error("projection store")]
    Store(#[from] StoreError),
}

/// Waits until `projection` has applied every event of `appended` (the outcomes of appends), or
/// fails fast when one of them is parked.
///
/// # Errors
/// [`CatchUpError`].
pub async fn wait_until_applied<S: ProjectionStore + ?Sized>(
    store: &S,
    projection: &ProjectionId,
    appended: &[AppendOutcome],
    timeout: Duration,
) -> Result<(), CatchUpError> {
    let versions: Vec<(StreamId, u64)> = appended
        .iter()
        .filter_map(|o| Some((o.stream_id, o.events.last()?.stream_version)))
        .collect();
    wait_until_versions_applied(store, projection, versions, timeout).await
}

/// Waits until `projection` has applied each `(stream, version)` of `versions`, or fails fast
/// when one of them is parked.
///
/// # Errors
/// [`CatchUpError`].
pub async fn wait_until_versions_applied<S: ProjectionStore + ?Sized>(
    store: &S,
    projection: &ProjectionId,
    versions: Vec<(StreamId, u64)>,
    timeout: Duration,
) -> Result<(), CatchUpError> {
    let mut waiting = versions;
    let started = Instant::now();
    loop {
        let mut still = Vec::with_capacity(waiting.len());
        for (stream, wanted) in waiting {
            if store.applied(projection, stream).await? < wanted {
                still.push((stream, wanted));
            }
        }
        waiting = still;
        if waiting.is_empty() {
            return Ok(());
        }
        if let Some(parked) = parked_among(store, projection, &waiting).await? {
            return Err(parked);
        }
        if started.elapsed() >= timeout {
            return Err(CatchUpError::TimedOut {
                missing: waiting.len(),
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn parked_among<S: ProjectionStore + ?Sized>(
    store: &S,
    projection: &ProjectionId,
    waiting: &[(StreamId, u64)],
) -> Result<Option<CatchUpError>, StoreError> {
    let parked = store.parked(projection).await?;
    Ok(waiting.iter().find_map(|(stream, wanted)| {
        let aggregate = parked.iter().find(|a| a.stream == *stream)?;
        let first = aggregate.events.first()?;
        (first.version <= *wanted).then_some(CatchUpError::Parked {
            stream: *stream,
            applied: aggregate.applied,
            wanted: *wanted,
        })
    }))
}
