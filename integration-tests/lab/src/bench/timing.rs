//! Commit → acknowledgement, measured from the moment the appender's `append` returned (the commit
//! is done and acknowledged to the caller) to the moment the relay's publish of the event returned
//! with JetStream's acknowledgement. The relay's own histogram starts earlier, at the row's
//! `recorded_at` (the insert, before the WAL flush), so it includes the commit itself.

use async_trait::async_trait;
use edupulse_app::latency::LatencyHistogram;
use edupulse_domain::{EventId, StreamId};
use edupulse_integration_tests::workload::CommitObserver;
use edupulse_ports::{
    AppendOutcome, EventPublisher, PublishError, PublishResult, RecordedEvent, Settled,
};
use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use futures::stream::BoxStream;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// When each measured event's `append` returned; events not in it are not measured.
pub(crate) type Committed = Arc<Mutex<HashMap<EventId, Instant>>>;

/// An observer of the appenders noting when each event's `append` returned in `committed`.
pub(crate) fn noting(committed: &Committed) -> CommitObserver {
    let committed = committed.clone();
    Arc::new(move |outcome: &AppendOutcome, at: Instant| {
        let mut committed = committed.lock().unwrap_or_else(PoisonError::into_inner);
        for e in &outcome.events {
            committed.insert(e.id, at);
        }
    })
}

/// A publisher that records, for each event in [`Committed`], the time from commit to ack, and
/// the part of it spent before the relay handed the event to the publisher (commit → read), so a
/// tail can be told apart: store side (read horizon, polling) or broker side.
pub(crate) struct TimingPublisher {
    pub(crate) inner: Arc<dyn EventPublisher>,
    pub(crate) committed: Committed,
    pub(crate) latency: Arc<LatencyHistogram>,
    pub(crate) read: Arc<LatencyHistogram>,
}

#[async_trait]
impl EventPublisher for TimingPublisher {
    /// Not timed: the relay publishes through [`EventPublisher::publish_stream`] (this batch
    /// path serves replays and releases).
    async fn publish(&self, events: &[RecordedEvent]) -> Vec<PublishResult> {
        self.inner.publish(events).await
    }

    /// The inner publisher's stream, timed per event: handed to the publisher (read) when it
    /// enters the stream, acknowledged when it comes out settled.
    async fn publish_stream(
        &self,
        events: BoxStream<'static, RecordedEvent>,
        settled: UnboundedSender<Settled>,
    ) {
        let handed: Arc<Mutex<HashMap<EventId, Instant>>> = Arc::default();
        let noted = handed.clone();
        let events = events
            .inspect(move |event| {
                noted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(event.envelope.id, Instant::now());
            })
            .boxed();
        let (inner_tx, mut inner_rx) = futures::channel::mpsc::unbounded::<Settled>();
        let forward = async {
            while let Some(outcome) = inner_rx.next().await {
                let now = Instant::now();
                let read = handed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&outcome.event.envelope.id);
                // A failed publish is sent again later: timed when it is acknowledged.
                let commit = outcome.result.is_ok().then(|| {
                    self.committed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&outcome.event.envelope.id)
                });
                if let (Some(Some(at)), Some(read)) = (commit, read) {
                    self.latency.record(now.saturating_duration_since(at));
                    self.read.record(read.saturating_duration_since(at));
                }
                if settled.unbounded_send(outcome).is_err() {
                    return;
                }
            }
        };
        tokio::join!(self.inner.publish_stream(events, inner_tx), forward);
    }

    async fn last_version(&self, stream: StreamId) -> Result<Option<u64>, PublishError> {
        self.inner.last_version(stream).await
    }

    async fn republish(&self, event: &RecordedEvent) -> PublishResult {
        self.inner.republish(event).await
    }
}
