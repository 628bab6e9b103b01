//! Checkpoints: loaded at takeover, saved off the publishing path by a companion future.

use super::Relay;
use edupulse_ports::{Cursor, Lease};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;
use tracing::info;

impl Relay {
    /// Saves the latest cursor sent on `acked` (beyond `saved`, the checkpoint loaded) until its
    /// sender is dropped (then saves the last one), unless the lease was lost.
    pub(super) async fn save_in_background(
        &self,
        mut saved: Cursor,
        mut acked: tokio::sync::watch::Receiver<Cursor>,
        lease_lost: &AtomicBool,
    ) {
        loop {
            let open = acked.changed().await.is_ok();
            if lease_lost.load(Ordering::SeqCst) {
                return;
            }
            let latest = *acked.borrow_and_update();
            if latest > saved {
                self.save_checkpoint(latest).await;
                saved = latest;
            }
            if !open {
                return;
            }
            // At most one save per interval. Values sent meanwhile stay unseen, so the next
            // `changed` returns at once with the latest (or, after a stop, reports it closed
            // and the loop saves the last cursor).
            tokio::time::sleep(self.config.checkpoint_interval).await;
        }
    }

    pub(super) async fn load_checkpoint(
        &self,
        lease: &dyn Lease,
        shutdown: &CancellationToken,
    ) -> Option<Cursor> {
        let mut failures = 0;
        loop {
            match self.ports.checkpoints.load(&self.config.name).await {
                Ok(c) => {
                    let cursor = c.map_or(Cursor::START, |c| c.cursor);
                    info!(%cursor, "resuming from checkpoint");
                    return Some(cursor);
                }
                Err(e) => {
                    self.note_store_error("load checkpoint", &e);
                    failures += 1;
                    self.backoff(failures, lease, shutdown).await.ok()?;
                }
            }
        }
    }

    pub(super) async fn save_checkpoint(&self, cursor: Cursor) {
        // A failed save is not fatal: the next save covers it, and a crash before then only
        // means re-publishing events the broker will deduplicate.
        let broker_sequence = self.stats.broker_sequence.load(Ordering::Relaxed);
        match self
            .ports
            .checkpoints
            .save(&self.config.name, cursor, broker_sequence)
            .await
        {
            Ok(()) => {
                self.stats
                    .checkpoint_position
                    .store(cursor.position, Ordering::Relaxed);
                metrics::gauge!("edupulse_relay_checkpoint_position").set(cursor.position as f64);
            }
            Err(e) => self.note_store_error("save checkpoint", &e),
        }
    }
}
