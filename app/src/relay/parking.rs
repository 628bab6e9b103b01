//! Parked streams: an event the relay cannot decode or the broker refuses for good parks its own
//! stream, never the whole relay.
//!
//! The parked event is recorded with its stored bytes and reason ([`CheckpointStore::park`])
//! before the checkpoint may pass it, so it is never skipped silently. Later events of the same
//! stream are held back (publishing them would break the stream's order at the broker); every
//! other stream keeps flowing. The checkpoint moves past held events: they stay in the store, and
//! the parking record says where the stream resumes.
//!
//! An operator lists parked streams (`edupulse-events parked`) and asks for a release
//! ([`Release::Retry`] once the cause is fixed, or [`Release::Skip`] to leave the event out for
//! good). The active relay looks for such requests every [`super::RELEASE_POLL`] and publishes the
//! stream from the parked version (or the one after it) in order, through the same fenced
//! publisher: events it also meets later in its normal flow are then duplicates the broker
//! refuses. A release that fails again parks the stream again with the new reason and clears the
//! request.

use super::{Interrupted, Relay};
use chrono::Utc;
use edupulse_domain::StreamId;
use edupulse_ports::{
    Cursor, FollowedRow, Lease, ParkedEvent, RecordedEvent, Release, UndecodableRow,
};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Builds the parking records.
pub(super) struct Poison;

impl Poison {
    /// An event the broker refused for good.
    pub(super) fn of(event: &RecordedEvent, reason: String, raw: String) -> ParkedEvent {
        ParkedEvent {
            stream_id: event.stream_id,
            stream_version: event.stream_version,
            event_id: event.envelope.id,
            cursor: event.cursor,
            reason,
            raw,
            parked_at: Utc::now(),
            release: None,
        }
    }

    /// A row that cannot be decoded.
    fn of_row(row: UndecodableRow) -> ParkedEvent {
        ParkedEvent {
            stream_id: row.stream_id,
            stream_version: row.stream_version,
            event_id: row.event_id,
            cursor: row.cursor,
            reason: format!("cannot be decoded ({}): {}", row.event_type, row.reason),
            raw: row.raw,
            parked_at: Utc::now(),
            release: None,
        }
    }
}

impl Relay {
    /// The streams parked before this relay became active.
    pub(super) async fn load_parked(
        &self,
        lease: &dyn Lease,
        shutdown: &CancellationToken,
    ) -> Result<HashSet<StreamId>, Interrupted> {
        let mut failures = 0;
        loop {
            match self.ports.checkpoints.parked(&self.config.name).await {
                Ok(list) => {
                    let parked: HashSet<StreamId> = list.iter().map(|p| p.stream_id).collect();
                    metrics::gauge!("edupulse_relay_parked_streams").set(parked.len() as f64);
                    if !parked.is_empty() {
                        info!(streams = parked.len(), "parked streams stay held back");
                    }
                    return Ok(parked);
                }
                Err(e) => {
                    self.note_store_error("list parked streams", &e);
                    failures += 1;
                    self.backoff(failures, lease, shutdown).await?;
                }
            }
        }
    }

    /// The events of `page` to publish: rows of parked streams are held back, and a row that
    /// cannot be decoded parks its stream.
    pub(super) async fn sort_page(
        &self,
        page: Vec<FollowedRow>,
        settled_to: Option<Cursor>,
        parked: &mut HashSet<StreamId>,
        lease: &dyn Lease,
        shutdown: &CancellationToken,
    ) -> Result<Vec<RecordedEvent>, Interrupted> {
        let mut events = Vec::with_capacity(page.len());
        for row in page {
            if parked.contains(&row.stream_id()) {
                // Counted once, when the checkpoint passes it: a row above the horizon is read
                // again until then.
                if settled_to.is_some_and(|settled| row.cursor() <= settled) {
                    self.held_back(1);
                }
                continue;
            }
            match row {
                FollowedRow::Event(event) => events.push(event),
                FollowedRow::Undecodable(row) => {
                    self.park(Poison::of_row(row), parked, lease, shutdown)
                        .await?;
                }
            }
        }
        Ok(events)
    }

    /// Records `poison` (retrying until it is recorded: the checkpoint must not pass an event
    /// that is neither published nor parked) and holds its stream back from now on.
    pub(super) async fn park(
        &self,
        poison: ParkedEvent,
        parked: &mut HashSet<StreamId>,
        lease: &dyn Lease,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        error!(
            stream = %poison.stream_id,
            version = poison.stream_version,
            event_id = %poison.event_id,
            position = poison.cursor.position,
            reason = %poison.reason,
            "event parked: its stream is held back until an operator releases it \
             (edupulse-events parked)"
        );
        let mut failures = 0;
        while let Err(e) = self
            .ports
            .checkpoints
            .park(&self.config.name, &poison)
            .await
        {
            self.note_store_error("park a stream", &e);
            failures += 1;
            self.backoff(failures, lease, shutdown).await?;
        }
        if parked.insert(poison.stream_id) {
            self.stats.parked.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("edupulse_relay_parked_total").increment(1);
        }
        metrics::gauge!("edupulse_relay_parked_streams").set(parked.len() as f64);
        Ok(())
    }

    /// Counts events held back behind a parked event.
    pub(super) fn held_back(&self, events: u64) {
        self.stats.held.fetch_add(events, Ordering::Relaxed);
        metrics::counter!("edupulse_relay_held_total").increment(events);
    }

    /// Releases the parked streams an operator asked for.
    pub(super) async fn release_requested(
        &self,
        parked: &mut HashSet<StreamId>,
        lease: &dyn Lease,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        if parked.is_empty() {
            return Ok(());
        }
        let requests = match self.ports.checkpoints.parked(&self.config.name).await {
            Ok(list) => list,
            Err(e) => {
                self.note_store_error("list parked streams", &e);
                return Ok(());
            }
        };
        for request in requests {
            let Some(release) = request.release else {
                continue;
            };
            match self.release_one(&request, release, lease, shutdown).await? {
                None => {
                    if let Err(e) = self
                        .ports
                        .checkpoints
                        .unpark(&self.config.name, request.stream_id)
                        .await
                    {
                        // Still parked in the store: the next poll releases it again, and the
                        // events already published are refused as duplicates by the broker.
                        self.note_store_error("unpark a stream", &e);
                        continue;
                    }
                    parked.remove(&request.stream_id);
                    metrics::gauge!("edupulse_relay_parked_streams").set(parked.len() as f64);
                    info!(stream = %request.stream_id, release = release.as_str(), "stream released");
                }
                Some(reason) => {
                    let again = ParkedEvent {
                        reason: format!("release ({}) failed: {reason}", release.as_str()),
                        ..request
                    };
                    self.park(again, parked, lease, shutdown).await?;
                }
            }
        }
        Ok(())
    }

    /// Publishes `request`'s stream from the parked version (or the next one, to skip it), in
    /// order. `Some(reason)` when it still cannot be.
    async fn release_one(
        &self,
        request: &ParkedEvent,
        release: Release,
        lease: &dyn Lease,
        shutdown: &CancellationToken,
    ) -> Result<Option<String>, Interrupted> {
        let mut from = match release {
            Release::Skip => request.stream_version + 1,
            _ => request.stream_version,
        };
        loop {
            let page = match self
                .ports
                .store
                .read_stream(request.stream_id, from, self.config.batch_size)
                .await
            {
                Ok(page) => page,
                Err(e) => return Ok(Some(e.to_string())),
            };
            let Some(last) = page.last().map(|e| e.stream_version) else {
                return Ok(None);
            };
            match self.settle_batch(&page, lease, shutdown).await {
                Ok(given_up) if given_up.is_empty() => from = last + 1,
                Ok(_) => {
                    return Ok(Some(
                        "the broker refused an event of the stream for good".into(),
                    ));
                }
                Err(why) => return Err(why),
            }
        }
    }
}
