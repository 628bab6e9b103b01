//! Replay: re-publishing a range of positions, for a broker that lost data or consumers that
//! need events again.
//!
//! Replay keeps the broker's guarantees: every event goes through the fenced publisher, so an
//! event the broker already holds is reported as such and not stored again (whatever the time
//! since it was first published), and a stream's events are only ever stored in version order:
//! before publishing version `v` of a stream, replay asks the broker for the stream's last version
//! and publishes only if it is `v - 1`. An event whose predecessor is not in the broker yet (the
//! relay has not reached it) is refused, not stored out of order; an event that is already there
//! is counted, not stored again, unless the operator forces it ([`ReplayMode::Force`]), and even
//! then only the stream's last version may be stored again, never one after a later version.

use super::{AlwaysHeld, Relay};
use edupulse_domain::StreamId;
use edupulse_ports::{RecordedEvent, StoreError};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// What to do with an event the broker already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplayMode {
    /// Count it and store nothing (the default).
    #[default]
    Missing,
    /// Store it again if it is its stream's last version in the broker.
    Force,
}

/// Outcome of a [`Relay::replay`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Events read from the store.
    pub events: u64,
    /// Of which the broker did not have and now stores.
    pub republished: u64,
    /// Of which the broker already had (nothing stored).
    pub duplicates: u64,
    /// Of which were stored again on purpose ([`ReplayMode::Force`]).
    pub forced: u64,
    /// Of which were refused: an earlier version of the stream is not in the broker yet.
    pub refused_earlier_missing: u64,
    /// Of which were refused in forced mode: a later version of the stream is in the broker.
    pub refused_later_present: u64,
    /// Of which the broker refused for good.
    pub failed: u64,
}

/// What replay does with one event, given the broker's last version of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Publish,
    AlreadyThere,
    Force,
    RefuseEarlierMissing,
    RefuseLaterPresent,
}

fn decide(version: u64, broker_last: u64, mode: ReplayMode) -> Decision {
    match (version.cmp(&(broker_last + 1)), mode) {
        (std::cmp::Ordering::Equal, _) => Decision::Publish,
        (std::cmp::Ordering::Greater, _) => Decision::RefuseEarlierMissing,
        (std::cmp::Ordering::Less, ReplayMode::Missing) => Decision::AlreadyThere,
        (std::cmp::Ordering::Less, ReplayMode::Force) if version == broker_last => Decision::Force,
        (std::cmp::Ordering::Less, ReplayMode::Force) => Decision::RefuseLaterPresent,
    }
}

impl Relay {
    /// Re-publishes the events with global positions in `from..=to` (see the module docs). The
    /// checkpoint is not touched. Needs no lease: it can run beside the active relay, whose
    /// publishes the fence orders with its own.
    ///
    /// # Errors
    /// A store error that is not retryable.
    pub async fn replay(
        &self,
        from: u64,
        to: u64,
        mode: ReplayMode,
        shutdown: CancellationToken,
    ) -> Result<ReplayReport, StoreError> {
        let mut report = ReplayReport::default();
        let mut broker_last: HashMap<StreamId, u64> = HashMap::new();
        let mut next = from;
        while next <= to && !shutdown.is_cancelled() {
            let page = self
                .ports
                .store
                .read_positions(next, to, self.config.batch_size)
                .await?;
            let Some(last) = page.last() else { break };
            next = last.position() + 1;
            report.events += page.len() as u64;
            let mut publish: Vec<RecordedEvent> = Vec::new();
            for event in page {
                let Some(known) = self
                    .broker_last(&mut broker_last, event.stream_id, &shutdown)
                    .await
                else {
                    return Ok(report);
                };
                match decide(event.stream_version, known, mode) {
                    Decision::Publish => {
                        broker_last.insert(event.stream_id, event.stream_version);
                        publish.push(event);
                    }
                    Decision::AlreadyThere => report.duplicates += 1,
                    Decision::Force => self.force(&event, &mut report).await,
                    Decision::RefuseEarlierMissing => {
                        warn!(stream = %event.stream_id, version = event.stream_version,
                              broker_last = known,
                              "replay refused: an earlier version of the stream is not in the \
                               broker yet (the relay publishes it; replay again later)");
                        report.refused_earlier_missing += 1;
                    }
                    Decision::RefuseLaterPresent => report.refused_later_present += 1,
                }
            }
            let before = self.published_and_duplicates();
            match self.settle_batch(&publish, &AlwaysHeld, &shutdown).await {
                Ok(given_up) => {
                    report.failed += publish
                        .iter()
                        .filter(|e| given_up.contains(&e.stream_id))
                        .count() as u64;
                }
                Err(_) => break,
            }
            let after = self.published_and_duplicates();
            report.republished += after.0 - before.0;
            report.duplicates += after.1 - before.1;
        }
        Ok(report)
    }

    /// The broker's last version of `stream` (0: none), asked once per stream and then kept up
    /// to date by replay itself. `None` on shutdown.
    async fn broker_last(
        &self,
        known: &mut HashMap<StreamId, u64>,
        stream: StreamId,
        shutdown: &CancellationToken,
    ) -> Option<u64> {
        if let Some(v) = known.get(&stream) {
            return Some(*v);
        }
        let mut failures = 0;
        loop {
            match self.ports.publisher.last_version(stream).await {
                Ok(v) => {
                    let v = v.unwrap_or(0);
                    known.insert(stream, v);
                    return Some(v);
                }
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, "cannot read the broker's last version of a stream; retrying");
                    self.backoff(failures, &AlwaysHeld, shutdown).await.ok()?;
                }
            }
        }
    }

    async fn force(&self, event: &RecordedEvent, report: &mut ReplayReport) {
        match self.ports.publisher.republish(event).await {
            Ok(ack) if ack.duplicate => report.duplicates += 1,
            Ok(_) => report.forced += 1,
            Err(e) => {
                warn!(event_id = %event.envelope.id, error = %e, "forced replay failed");
                report.failed += 1;
            }
        }
    }

    fn published_and_duplicates(&self) -> (u64, u64) {
        (
            self.stats.published.load(Ordering::Relaxed),
            self.stats.duplicates.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_never_stores_out_of_order() {
        use Decision::*;
        assert_eq!(decide(1, 0, ReplayMode::Missing), Publish);
        assert_eq!(decide(6, 5, ReplayMode::Missing), Publish);
        assert_eq!(decide(6, 4, ReplayMode::Missing), RefuseEarlierMissing);
        assert_eq!(decide(6, 4, ReplayMode::Force), RefuseEarlierMissing);
        assert_eq!(decide(5, 5, ReplayMode::Missing), AlreadyThere);
        assert_eq!(decide(5, 5, ReplayMode::Force), Force);
        assert_eq!(decide(4, 5, ReplayMode::Force), RefuseLaterPresent);
        assert_eq!(decide(4, 5, ReplayMode::Missing), AlreadyThere);
    }
}
