//! The active loop: publishing sessions (see `session.rs`) one after the other, a backoff between
//! a failed one and the next, the checkpoint saved beside them.

use super::backoff::backoff_delay;
use super::session::{SessionContext, SessionEnd};
use super::{Interrupted, Relay};
use edupulse_ports::{Cursor, Lease};
use futures::stream::BoxStream;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;
use tracing::error;

impl Relay {
    /// The active loop. Returns on shutdown (after saving) or when the lease is lost.
    ///
    /// Checkpoints are saved by a companion future, off the publishing path: a save is a
    /// PostgreSQL commit (a WAL flush), and waiting for it after every batch would delay the next
    /// batch by that much. The saver always writes the latest acknowledged cursor (intermediate
    /// ones are skipped), at most once per [`RelayConfig::checkpoint_interval`], so at most one
    /// save is in flight and a crash re-publishes at most what was acknowledged since the last
    /// save (deduplicated by the broker).
    pub(super) async fn publish_while_active(
        &self,
        lease: &dyn Lease,
        shutdown: &CancellationToken,
    ) {
        let cursor = match self.load_checkpoint(lease, shutdown).await {
            Some(c) => c,
            None => return,
        };
        self.stats
            .checkpoint_position
            .store(cursor.position, Ordering::Relaxed);
        let (acked, acked_rx) = tokio::sync::watch::channel(cursor);
        let lease_lost = AtomicBool::new(false);
        let work = async {
            let exit = self.active_loop(lease, shutdown, &acked).await;
            if matches!(exit, Interrupted::LeaseLost) {
                // Another relay may be active already: save nothing more.
                lease_lost.store(true, Ordering::SeqCst);
            }
            drop(acked);
        };
        tokio::join!(work, self.save_in_background(cursor, acked_rx, &lease_lost));
    }

    /// Publishes in sessions until shutdown (everything acknowledged handed to the saver) or the
    /// loss of the lease. A session that fails is followed, after a backoff, by a new one from
    /// the checkpoint.
    pub(super) async fn active_loop(
        &self,
        lease: &dyn Lease,
        shutdown: &CancellationToken,
        acked: &tokio::sync::watch::Sender<Cursor>,
    ) -> Interrupted {
        let mut hints: Option<BoxStream<'static, ()>> = None;
        let mut parked = match self.load_parked(lease, shutdown).await {
            Ok(parked) => parked,
            Err(why) => return why,
        };
        let mut failures = 0u32;
        loop {
            let from = *acked.borrow();
            let cx = SessionContext {
                lease,
                shutdown,
                acked,
                parked: &mut parked,
                hints: &mut hints,
            };
            match self.session(from, cx).await {
                SessionEnd::Interrupted(why) => return why,
                SessionEnd::Failed { error, progressed } => {
                    failures = if progressed { 1 } else { failures + 1 };
                    let delay = backoff_delay(&self.config, failures);
                    self.session_failed(&error, failures, delay);
                    tokio::select! {
                        () = shutdown.cancelled() => return Interrupted::Shutdown,
                        () = lease.lost() => return Interrupted::LeaseLost,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    pub(super) fn lost(&self) {
        error!("lease lost (not renewed in time, or taken over); stopped publishing, standing by");
        metrics::counter!("edupulse_relay_lease_lost_total").increment(1);
    }

    pub(super) async fn refresh_head(&self) {
        if let Ok(head) = self.ports.store.head().await {
            self.stats
                .head_position
                .store(head.last_position, Ordering::Relaxed);
            metrics::gauge!("edupulse_relay_lag_events").set(self.stats.lag() as f64);
        }
    }
}
