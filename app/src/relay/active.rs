//! The active loop: read pages (the next one prefetched while catching up), publish them, events
//! committed beyond the store's horizon included, hand the settled and acknowledged cursor to the
//! checkpoint saver; idle, wait for a commit hint or the poll interval.

use super::publish::Settle;
use super::{HEAD_REFRESH, HELD_BACK_RECHECK, Interrupted, RELEASE_POLL, Relay};
use edupulse_ports::{Cursor, FollowedPage, FollowedRow, Lease, ReadAhead};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
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
            let exit = self.active_loop(lease, shutdown, cursor, &acked).await;
            if matches!(exit, Interrupted::LeaseLost) {
                // Another relay may be active already: save nothing more.
                lease_lost.store(true, Ordering::SeqCst);
            }
            drop(acked);
        };
        tokio::join!(work, self.save_in_background(cursor, acked_rx, &lease_lost));
    }

    /// Reads and publishes until shutdown (everything acknowledged handed to the saver) or the
    /// loss of the lease.
    pub(super) async fn active_loop(
        &self,
        lease: &dyn Lease,
        shutdown: &CancellationToken,
        mut cursor: Cursor,
        acked: &tokio::sync::watch::Sender<Cursor>,
    ) -> Interrupted {
        let mut hints: Option<BoxStream<'static, ()>> = None;
        let mut failures = 0u32;
        let mut next_page: Option<FollowedPage> = None;
        // Rows published above the store's horizon (see `ReadAhead`), at most half a page, so
        // that every read has room for rows not published yet.
        let mut ahead = ReadAhead::new(self.config.batch_size / 2);
        let mut parked = match self.load_parked(lease, shutdown).await {
            Ok(parked) => parked,
            Err(why) => return why,
        };
        let mut release_checked: Option<std::time::Instant> = None;
        let mut head_refreshed: Option<std::time::Instant> = None;
        // After a hint that read nothing, how soon to read again (see below).
        let mut recheck: Option<Duration> = None;
        loop {
            if shutdown.is_cancelled() {
                return Interrupted::Shutdown;
            }
            if !lease.is_held() {
                return Interrupted::LeaseLost;
            }
            if hints.is_none() {
                hints = self.ports.hints.subscribe().await.ok();
            }
            if release_checked.is_none_or(|t| t.elapsed() >= RELEASE_POLL) {
                release_checked = Some(std::time::Instant::now());
                if let Err(why) = self.release_requested(&mut parked, lease, shutdown).await {
                    return why;
                }
            }
            let page = match next_page.take() {
                Some(page) => Ok(page),
                None => {
                    self.ports
                        .store
                        .follow_visible(cursor, self.config.batch_size)
                        .await
                }
            };
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    self.note_store_error("read", &e);
                    failures += 1;
                    if let Err(why) = self.backoff(failures, lease, shutdown).await {
                        return why;
                    }
                    continue;
                }
            };
            failures = 0;
            self.stats.beat();
            // Read the next page while this one is published (catch-up throughput), when this
            // one is full and settled (so the next one starts where the checkpoint will be).
            // The read is a task of its own: decoding a page of rows is milliseconds of CPU,
            // and inside this task it would stop the publisher from sending and taking acks
            // meanwhile (the broker then idles); as a task it runs on another worker.
            let last = page.rows.last().map_or(cursor, FollowedRow::cursor);
            let prefetch = page.rows.len() == self.config.batch_size
                && page.settled == page.rows.len()
                && !shutdown.is_cancelled();
            let mut planned = ahead.plan(page);
            self.stats
                .read_ahead
                .store(ahead.len() as u64, Ordering::Relaxed);
            if planned.is_idle() {
                // The head is for the lag metric only; reading it costs a query (an aggregate on
                // the events table), so at most once per second, not every time the relay idles.
                if head_refreshed.is_none_or(|t| t.elapsed() >= HEAD_REFRESH) {
                    self.refresh_head().await;
                    head_refreshed = Some(std::time::Instant::now());
                }
                // Idle: wait for a hint, the poll interval, shutdown or the loss of the lease.
                //
                // A hint means a commit, yet the read after it can bring nothing new: the rows
                // read ahead of the horizon are bounded, and beyond that bound events committed
                // after an older transaction still open wait for it (any writing transaction,
                // not only appends). That transaction ends within milliseconds but may send no
                // hint of its own, so waiting for the next hint or the poll would delay the
                // held-back events by up to the poll interval. After a hint that read nothing,
                // read again soon, backing off (1, 2, 4… ms).
                let wait = recheck.map_or(self.config.poll_interval, |d| {
                    d.min(self.config.poll_interval)
                });
                let hint = async {
                    match hints.as_mut() {
                        Some(h) => {
                            if h.next().await.is_none() {
                                hints = None;
                            }
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => return Interrupted::Shutdown,
                    () = lease.lost() => return Interrupted::LeaseLost,
                    () = hint => recheck = Some(HELD_BACK_RECHECK),
                    () = tokio::time::sleep(wait) => {
                        recheck = recheck
                            .map(|d| d * 2)
                            .filter(|d| *d < self.config.poll_interval);
                    }
                }
                continue;
            }
            recheck = None;
            let prefetch = prefetch.then(|| {
                let store = self.ports.store.clone();
                let limit = self.config.batch_size;
                tokio::spawn(async move { store.follow_visible(last, limit).await.ok() })
            });
            let settled_to = planned.settled_to;
            let rows = std::mem::take(&mut planned.rows);
            let events = match self
                .sort_page(rows, settled_to, &mut parked, lease, shutdown)
                .await
            {
                Ok(events) => events,
                Err(why) => return why,
            };
            let prefetch = async {
                match prefetch {
                    Some(task) => task.await.ok().flatten(),
                    None => None,
                }
            };
            let settle = Settle {
                parked: Some(&mut parked),
                checkpoint_through: settled_to,
            };
            let (settled, prefetched) = tokio::join!(
                self.settle_batch(&events, lease, shutdown, settle),
                prefetch
            );
            next_page = prefetched;
            match settled {
                Ok(given_up) => {
                    // What went out above the horizon is not published again when read again.
                    for event in events.iter().filter(|e| planned.is_ahead(e.cursor)) {
                        if !given_up.contains(&event.stream_id)
                            && !parked.contains(&event.stream_id)
                        {
                            ahead.handled(event.cursor);
                        }
                    }
                    if let Some(settled_to) = settled_to {
                        cursor = settled_to;
                        acked.send_replace(cursor);
                    }
                }
                Err((acked_to, Interrupted::Shutdown)) => {
                    if let Some(c) = acked_to {
                        acked.send_replace(c);
                    }
                    return Interrupted::Shutdown;
                }
                Err((_, Interrupted::LeaseLost)) => return Interrupted::LeaseLost,
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
