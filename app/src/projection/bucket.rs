//! One held bucket: read from the committed position, apply in units, park what fails.

use super::ProjectionRunner;
use edupulse_domain::{EventEnvelope, StreamId};
use edupulse_ports::projection::{
    Applying, Bucket, BucketEvent, BucketReader, ParkReason, ParkedProjectionEvent, Projection,
    ProjectionStore, ProjectionUnit,
};
use edupulse_ports::{ConsumeError, HandlerError, Lease, Settlement, StoreError};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The longest wait before a failed bucket is read again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why serving a bucket ended.
#[derive(Debug, thiserror::Error)]
enum Interrupted {
    /// Asked to stop, or the lease is lost: nothing more may be committed.
    #[error("stopped")]
    Stopped,
    /// The projection store failed (the unit was rolled back).
    #[error("projection store: {0}")]
    Store(#[from] StoreError),
    /// The feed failed.
    #[error("feed: {0}")]
    Feed(#[from] ConsumeError),
}

/// How a unit ended.
enum Applied {
    /// Committed.
    Committed,
    /// The bucket's committed position is not where this worker read from (another worker
    /// committed in between): read again from there.
    Moved,
}

/// What one event came to in a unit.
enum Step {
    Applied,
    PassedOver,
    Parked,
    Failed(HandlerError),
}

/// Where a unit's events come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Read from the feed: the bucket's position moves to the last one.
    Feed(&'a [BucketEvent]),
    /// The parked events of the aggregates an operator asked to retry.
    Retries,
}

/// The identity of an event within its projection.
type EventKey = (StreamId, u64);

/// The event whose handler failed, and how.
type Failure = (EventKey, HandlerError);

/// Counts of one unit, added to the worker's statistics once it commits.
#[derive(Default)]
struct Tally {
    applied: u64,
    passed_over: u64,
    parked: u64,
}

pub(super) struct BucketTask<S: ProjectionStore, P> {
    runner: Arc<ProjectionRunner<S, P>>,
    bucket: Bucket,
    lease: Box<dyn Lease>,
}

impl<S, P> BucketTask<S, P>
where
    S: ProjectionStore + 'static,
    P: Projection<S::Unit> + 'static,
{
    pub(super) fn new(
        runner: Arc<ProjectionRunner<S, P>>,
        bucket: Bucket,
        lease: Box<dyn Lease>,
    ) -> Self {
        Self {
            runner,
            bucket,
            lease,
        }
    }

    /// Serves the bucket until `stop` or the lease is lost, reading again after each failure.
    pub(super) async fn run(self, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.serve(&stop).await {
                Err(Interrupted::Stopped) => return,
                Ok(()) => backoff = Duration::from_millis(100),
                Err(error) => {
                    tracing::warn!(projection = %self.runner.projection, bucket = self.bucket, %error, "bucket interrupted; reading again");
                    if self.pause(&stop, backoff).await.is_err() {
                        return;
                    }
                    backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Reads the bucket from its committed position and applies what comes, until the position
    /// is found moved (`Ok`) or something fails.
    async fn serve(&self, stop: &CancellationToken) -> Result<(), Interrupted> {
        let mut position = self.committed_position().await?;
        let reader_name = format!("{}-{}", self.runner.projection, self.bucket);
        let mut reader = self
            .runner
            .feed
            .open(&reader_name, self.bucket, position)
            .await?;
        let mut retries_looked_at = Instant::now();
        self.apply_retries(stop, position, reader.pending()).await?;
        loop {
            let batch = self.next_batch(stop, reader.as_mut()).await?;
            if retries_looked_at.elapsed() >= self.runner.config.heartbeat {
                retries_looked_at = Instant::now();
                if let Applied::Moved = self.apply_retries(stop, position, reader.pending()).await?
                {
                    return Ok(());
                }
            }
            let Some(last) = batch.last() else {
                continue;
            };
            let next = last.sequence;
            match self
                .apply(stop, Source::Feed(&batch), position, next, reader.pending())
                .await?
            {
                Applied::Committed => position = next,
                Applied::Moved => return Ok(()),
            }
        }
    }

    async fn next_batch(
        &self,
        stop: &CancellationToken,
        reader: &mut dyn BucketReader,
    ) -> Result<Vec<BucketEvent>, Interrupted> {
        let config = &self.runner.config;
        let mut batch = self
            .read(stop, reader, config.batch_size, config.poll)
            .await?;
        // A trickle of events would otherwise make a unit (a commit) of each: gather what comes
        // within the linger after the first one.
        let gathering = Instant::now();
        while !batch.is_empty() && batch.len() < config.batch_size {
            let left = config.linger.saturating_sub(gathering.elapsed());
            if left.is_zero() {
                break;
            }
            let more = self
                .read(stop, reader, config.batch_size - batch.len(), left)
                .await?;
            batch.extend(more);
        }
        Ok(batch)
    }

    async fn read(
        &self,
        stop: &CancellationToken,
        reader: &mut dyn BucketReader,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<BucketEvent>, Interrupted> {
        tokio::select! {
            () = stop.cancelled() => Err(Interrupted::Stopped),
            () = self.lease.lost() => Err(Interrupted::Stopped),
            batch = reader.next_batch(max, wait) => Ok(batch?),
        }
    }

    async fn committed_position(&self) -> Result<u64, StoreError> {
        let (_unit, position) = self
            .runner
            .store
            .begin(&self.runner.projection, self.bucket)
            .await?;
        Ok(position)
    }

    async fn apply_retries(
        &self,
        stop: &CancellationToken,
        position: u64,
        pending: u64,
    ) -> Result<Applied, Interrupted> {
        self.apply(stop, Source::Retries, position, position, pending)
            .await
    }

    /// Applies `source`'s events in one unit and commits it with the bucket at `next`. When the
    /// handler fails, the unit is rolled back and tried again: after a backoff while the
    /// policy allows, then with the failing event parked (its aggregate waits, the others go on).
    async fn apply(
        &self,
        stop: &CancellationToken,
        source: Source<'_>,
        expected: u64,
        next: u64,
        pending: u64,
    ) -> Result<Applied, Interrupted> {
        let runner = &self.runner;
        let mut verdicts: HashMap<EventKey, String> = HashMap::new();
        let mut attempts: HashMap<EventKey, u64> = HashMap::new();
        loop {
            if !self.lease.is_held() {
                return Err(Interrupted::Stopped);
            }
            let (mut unit, committed) = runner.store.begin(&runner.projection, self.bucket).await?;
            if committed != expected {
                return Ok(Applied::Moved);
            }
            let events: Cow<'_, [BucketEvent]> = match source {
                Source::Feed(batch) => Cow::Borrowed(batch),
                Source::Retries => {
                    let parked = unit.take_retries(self.bucket).await?;
                    if parked.is_empty() {
                        return Ok(Applied::Committed);
                    }
                    Cow::Owned(parked.into_iter().map(retried).collect())
                }
            };
            unit.lock_aggregates(&streams_of(&events)).await?;
            let mut tally = Tally::default();
            let failure = self
                .apply_events(&mut unit, &events, &verdicts, &mut tally)
                .await?;
            let Some((key, error)) = failure else {
                if !self.lease.is_held() {
                    return Err(Interrupted::Stopped);
                }
                unit.commit(next, pending).await?;
                self.count(&tally);
                return Ok(Applied::Committed);
            };
            drop(unit);
            let attempt = attempts.entry(key).or_insert(0);
            *attempt += 1;
            match runner.config.retry.settle(*attempt, Err(error)) {
                Settlement::Retry { delay } => self.pause(stop, delay).await?,
                Settlement::DeadLetter { reason } => {
                    tracing::warn!(projection = %runner.projection, stream = %key.0, version = key.1, %reason, "event parked");
                    verdicts.insert(key, reason);
                }
                Settlement::Ack => {}
            }
        }
    }

    /// Applies `events` in `unit`, in order, and after each one the events parked early that
    /// waited for it; stops at the first handler failure.
    async fn apply_events(
        &self,
        unit: &mut S::Unit,
        events: &[BucketEvent],
        verdicts: &HashMap<EventKey, String>,
        tally: &mut Tally,
    ) -> Result<Option<Failure>, StoreError> {
        for event in events {
            let awaited = self.is_awaited(unit, event).await?;
            if let Some(failure) = self.counted_step(unit, event, verdicts, tally).await? {
                return Ok(Some(failure));
            }
            if awaited && unit.aggregate(event.stream).await?.applied == event.version {
                let resumed: Vec<BucketEvent> = unit
                    .take_parked(event.stream)
                    .await?
                    .into_iter()
                    .map(retried)
                    .collect();
                for event in &resumed {
                    if let Some(failure) = self.counted_step(unit, event, verdicts, tally).await? {
                        return Ok(Some(failure));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Whether `event` is the version an aggregate's early-parked events wait for.
    async fn is_awaited(
        &self,
        unit: &mut S::Unit,
        event: &BucketEvent,
    ) -> Result<bool, StoreError> {
        let progress = unit.aggregate(event.stream).await?;
        Ok(progress
            .parked
            .is_some_and(|first| event.version == progress.applied + 1 && event.version < first))
    }

    async fn counted_step(
        &self,
        unit: &mut S::Unit,
        event: &BucketEvent,
        verdicts: &HashMap<EventKey, String>,
        tally: &mut Tally,
    ) -> Result<Option<Failure>, StoreError> {
        match self.step(unit, event, verdicts).await? {
            Step::Applied => tally.applied += 1,
            Step::PassedOver => tally.passed_over += 1,
            Step::Parked => tally.parked += 1,
            Step::Failed(error) => return Ok(Some(((event.stream, event.version), error))),
        }
        Ok(None)
    }

    /// Applies one event in `unit`, or passes over it, or parks it.
    async fn step(
        &self,
        unit: &mut S::Unit,
        event: &BucketEvent,
        verdicts: &HashMap<EventKey, String>,
    ) -> Result<Step, StoreError> {
        let progress = unit.aggregate(event.stream).await?;
        let reason = if event.version <= progress.applied {
            return Ok(Step::PassedOver);
        } else if progress.parked.is_some_and(|first| first <= event.version) {
            ParkReason::Behind
        } else if event.version > progress.applied + 1 {
            ParkReason::Early {
                waiting_for: progress.applied + 1,
            }
        } else if let Some(reason) = verdicts.get(&(event.stream, event.version)) {
            ParkReason::Failed(reason.clone())
        } else {
            match &event.event {
                Err(reason) => ParkReason::Failed(format!("not an event: {reason}")),
                Ok(envelope) => return self.apply_one(unit, event, envelope).await,
            }
        };
        unit.park(event, self.bucket, &reason).await?;
        Ok(Step::Parked)
    }

    async fn apply_one(
        &self,
        unit: &mut S::Unit,
        event: &BucketEvent,
        envelope: &EventEnvelope,
    ) -> Result<Step, StoreError> {
        let applying = Applying {
            envelope,
            stream: event.stream,
            version: event.version,
        };
        match self.runner.handler.apply(unit, applying).await {
            Ok(()) => {
                unit.record_applied(event.stream, event.version).await?;
                Ok(Step::Applied)
            }
            // The unit failed, not the event: the bucket is read again, nothing is parked.
            Err(HandlerError::Store(error)) => Err(error),
            Err(error) => Ok(Step::Failed(error)),
        }
    }

    fn count(&self, tally: &Tally) {
        let stats = &self.runner.stats;
        stats.applied.fetch_add(tally.applied, Ordering::Relaxed);
        stats
            .passed_over
            .fetch_add(tally.passed_over, Ordering::Relaxed);
        stats.parked.fetch_add(tally.parked, Ordering::Relaxed);
        stats.units.fetch_add(1, Ordering::Relaxed);
        let name = self.runner.projection.name().to_owned();
        metrics::counter!("edupulse_projection_applied_total", "projection" => name.clone())
            .increment(tally.applied);
        metrics::counter!("edupulse_projection_parked_total", "projection" => name)
            .increment(tally.parked);
    }

    /// Waits `delay`; `Err` if the bucket must stop meanwhile.
    async fn pause(&self, stop: &CancellationToken, delay: Duration) -> Result<(), Interrupted> {
        tokio::select! {
            () = stop.cancelled() => Err(Interrupted::Stopped),
            () = self.lease.lost() => Err(Interrupted::Stopped),
            () = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

/// The distinct streams of `events`, in first-seen order.
fn streams_of(events: &[BucketEvent]) -> Vec<StreamId> {
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    events
        .iter()
        .map(|e| e.stream)
        .filter(|stream| seen.insert(*stream))
        .collect()
}

/// A parked event read back for a retry.
fn retried(parked: ParkedProjectionEvent) -> BucketEvent {
    let event = EventEnvelope::decode(&parked.body).map_err(|e| e.to_string());
    BucketEvent {
        stream: parked.stream,
        version: parked.version,
        sequence: 0,
        body: parked.body,
        event,
    }
}
