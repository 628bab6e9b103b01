//! Publishing a batch (replay, a released stream) until every event is acknowledged or given up,
//! with retries; what every path shares: the blocked state and the per-event accounting.

use super::backoff::backoff_delay;
use super::{EventMetrics, Interrupted, Relay};
use chrono::Utc;
use edupulse_domain::StreamId;
use edupulse_ports::{Lease, PublishAck, PublishError, RecordedEvent};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info_span, warn};

impl Relay {
    /// Publishes `batch` (a replay, a released stream) until every event is acknowledged or its
    /// stream is given up (refused for good by the broker), retrying the rest with the same ids.
    /// Returns the given-up streams. It saves no checkpoint: these events are not everything
    /// before them in the store's order.
    pub(super) async fn settle_batch(
        &self,
        batch: &[RecordedEvent],
        lease: &dyn Lease,
        shutdown: &CancellationToken,
    ) -> Result<HashSet<StreamId>, Interrupted> {
        let span = info_span!("publish_batch", size = batch.len());
        async {
            let mut retry: Vec<RecordedEvent>;
            let mut pending = batch;
            let mut given_up: HashSet<StreamId> = HashSet::new();
            let mut failures = 0u32;
            while !pending.is_empty() {
                if !lease.is_held() {
                    return Err(Interrupted::LeaseLost);
                }
                // The lease is watched during the publish itself: losing it stops at once.
                let results = tokio::select! {
                    results = self.ports.publisher.publish(pending) => results,
                    () = lease.lost() => return Err(Interrupted::LeaseLost),
                };
                let mut done = 0;
                let mut failure: Option<&PublishError> = None;
                for (event, result) in pending.iter().zip(&results) {
                    match result {
                        _ if given_up.contains(&event.stream_id) => {}
                        Ok(ack) => {
                            self.acked(event, *ack);
                        }
                        Err(e) if e.is_permanent() => {
                            given_up.insert(event.stream_id);
                        }
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                    done += 1;
                }
                self.note_blocked(failure);
                if results.len() < pending.len() && failure.is_none() {
                    // A publisher must answer for every event; treat a short answer as a failure.
                    warn!("publisher returned fewer results than events; retrying the rest");
                }
                if pending.len() == done {
                    break;
                }
                // What is left, less the streams given up. Copied only on this failure path.
                retry = pending[done..]
                    .iter()
                    .filter(|e| !given_up.contains(&e.stream_id))
                    .cloned()
                    .collect();
                pending = &retry;
                if pending.is_empty() {
                    break;
                }
                failures += 1;
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("edupulse_relay_retries_total").increment(1);
                let delay = backoff_delay(&self.config, failures);
                warn!(
                    error = failure.map(ToString::to_string).unwrap_or_default(),
                    position = pending[0].position(),
                    retry_in_ms = delay.as_millis() as u64,
                    attempt = failures,
                    "publish failed; retrying with the same event ids"
                );
                tokio::select! {
                    () = shutdown.cancelled() => return Err(Interrupted::Shutdown),
                    () = lease.lost() => return Err(Interrupted::LeaseLost),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            self.note_blocked(None);
            Ok(given_up)
        }
        .instrument(span)
        .await
    }

    /// Records why the whole broker stream refuses writes (readiness reports it), or clears it.
    pub(super) fn note_blocked(&self, failure: Option<&PublishError>) {
        let reason = match failure {
            Some(e @ PublishError::Misconfigured { .. }) => Some(e.to_string()),
            Some(_) => return,
            None => None,
        };
        let mut blocked = self
            .stats
            .blocked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if reason.is_some() && *blocked != reason {
            error!(
                reason = reason.as_deref().unwrap_or_default(),
                "the broker refuses the whole stream; publishing nothing until it is fixed"
            );
        }
        metrics::gauge!("edupulse_relay_blocked").set(if reason.is_some() { 1.0 } else { 0.0 });
        *blocked = reason;
    }

    /// Accounts for `event`'s acknowledgement: the broker's sequence (saved with the checkpoint),
    /// the counters and the commit → ack latency.
    pub(super) fn acked(&self, event: &RecordedEvent, ack: PublishAck) {
        self.stats
            .broker_sequence
            .fetch_max(ack.sequence, Ordering::Relaxed);
        // Per-event metrics go through handles taken once: the `metrics` macros look the metric
        // up in the registry (hash and lock) at every call, which showed on the catch-up path.
        // Taken at first use, i.e. once running, after the exporter was installed.
        let handles = self.handles.get_or_init(|| EventMetrics {
            published: metrics::counter!("edupulse_relay_published_total"),
            duplicates: metrics::counter!("edupulse_relay_duplicates_total"),
            commit_to_ack: metrics::histogram!("edupulse_relay_commit_to_ack_seconds"),
        });
        if ack.duplicate {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            handles.duplicates.increment(1);
        } else {
            self.stats.published.fetch_add(1, Ordering::Relaxed);
            handles.published.increment(1);
            let latency = (Utc::now() - event.recorded_at)
                .to_std()
                .unwrap_or_default();
            self.stats.commit_to_ack.record(latency);
            handles.commit_to_ack.record(latency.as_secs_f64());
        }
    }
}
