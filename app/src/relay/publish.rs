//! Publishing a batch until every event is acknowledged or parked, with retries.

use super::backoff::backoff_delay;
use super::{EventMetrics, Interrupted, Relay, parking};
use chrono::Utc;
use edupulse_domain::StreamId;
use edupulse_ports::{Cursor, Lease, PublishError, RecordedEvent};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info_span, warn};

/// How [`Relay::settle_batch`] treats what it cannot publish and what it may checkpoint.
#[derive(Default)]
pub(super) struct Settle<'a> {
    /// The parked streams (the active loop): an event refused for good parks its stream here.
    /// Without it (replay, a release), the stream is given up and reported to the caller.
    pub(super) parked: Option<&'a mut HashSet<StreamId>>,
    /// The highest cursor the checkpoint may be saved at during an outage: the settled part of
    /// the active loop's page. `None` (replay, a release): never saved.
    pub(super) checkpoint_through: Option<Cursor>,
}

impl Relay {
    /// Publishes `batch` until every event is acknowledged, or parked with its stream (refused
    /// for good by the broker; with a parking lot given, else given up and counted as failed).
    /// On interruption, returns the cursor up to which everything was settled, if any, within
    /// the checkpoint's bound.
    pub(super) async fn settle_batch(
        &self,
        batch: &[RecordedEvent],
        lease: &dyn Lease,
        shutdown: &CancellationToken,
        settle: Settle<'_>,
    ) -> Result<HashSet<StreamId>, (Option<Cursor>, Interrupted)> {
        let Settle {
            mut parked,
            checkpoint_through,
        } = settle;
        // Progress is a checkpoint only within the bound: events above the store's horizon
        // (read ahead) and events of a released stream are not everything before them.
        let checkpointable = |settled: Option<Cursor>| match (settled, checkpoint_through) {
            (Some(settled), Some(bound)) => Some(settled.min(bound)),
            _ => None,
        };
        let span = info_span!("publish_batch", size = batch.len());
        async {
            metrics::histogram!("edupulse_relay_batch_size").record(batch.len() as f64);
            let mut retry: Vec<RecordedEvent>;
            let mut pending = batch;
            let mut given_up: HashSet<StreamId> = HashSet::new();
            let mut settled_to: Option<Cursor> = None;
            let mut failures = 0u32;
            while !pending.is_empty() {
                if !lease.is_held() {
                    return Err((checkpointable(settled_to), Interrupted::LeaseLost));
                }
                // The lease is watched during the publish itself: losing it stops at once.
                let results = tokio::select! {
                    results = self.ports.publisher.publish(pending) => results,
                    () = lease.lost() => {
                        return Err((checkpointable(settled_to), Interrupted::LeaseLost));
                    }
                };
                let mut done = 0;
                let mut failure: Option<&PublishError> = None;
                for (event, result) in pending.iter().zip(&results) {
                    match result {
                        _ if given_up.contains(&event.stream_id) => self.held_back(1),
                        Ok(ack) => {
                            self.stats
                                .broker_sequence
                                .fetch_max(ack.sequence, Ordering::Relaxed);
                            self.acked(event, ack.duplicate);
                        }
                        Err(e) if e.is_permanent() => {
                            given_up.insert(event.stream_id);
                            // Without a parking lot (replay, releases) the caller reports
                            // the given-up stream as failed instead.
                            if let Some(parked) = parked.as_deref_mut() {
                                let raw = event.envelope.encode();
                                let raw = String::from_utf8_lossy(&raw).into_owned();
                                let poison = parking::Poison::of(event, e.to_string(), raw);
                                if let Err(i) = self.park(poison, parked, lease, shutdown).await {
                                    return Err((checkpointable(settled_to), i));
                                }
                            }
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
                if done > 0 {
                    settled_to = Some(pending[done - 1].cursor);
                }
                if pending.len() == done {
                    break;
                }
                // What is left, less the streams given up (their events wait behind the parked
                // one). Copied only on this failure path.
                let left: Vec<RecordedEvent> = pending[done..]
                    .iter()
                    .filter(|e| {
                        let held = given_up.contains(&e.stream_id);
                        if held {
                            self.held_back(1);
                        }
                        !held
                    })
                    .cloned()
                    .collect();
                retry = left;
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
                if let Some(c) = checkpointable(settled_to) {
                    // Progress made before the failure is kept across a crash during the outage.
                    self.save_checkpoint(c).await;
                }
                tokio::select! {
                    () = shutdown.cancelled() => {
                        return Err((checkpointable(settled_to), Interrupted::Shutdown));
                    }
                    () = lease.lost() => {
                        return Err((checkpointable(settled_to), Interrupted::LeaseLost));
                    }
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

    pub(super) fn acked(&self, event: &RecordedEvent, duplicate: bool) {
        // Per-event metrics go through handles taken once: the `metrics` macros look the metric
        // up in the registry (hash and lock) at every call, which showed on the catch-up path.
        // Taken at first use, i.e. once running, after the exporter was installed.
        let handles = self.handles.get_or_init(|| EventMetrics {
            published: metrics::counter!("edupulse_relay_published_total"),
            duplicates: metrics::counter!("edupulse_relay_duplicates_total"),
            commit_to_ack: metrics::histogram!("edupulse_relay_commit_to_ack_seconds"),
        });
        if duplicate {
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
