//! One publishing session: pages are read continuously and their events handed to the
//! publisher's stream ([`edupulse_ports::EventPublisher::publish_stream`]); acknowledgements are
//! taken as they come and the checkpoint moves through the settled prefix ([`Window`]).
//!
//! The window never drains between pages: the next page is read while earlier ones are being
//! published (as soon as at most one page is outstanding), and the publisher keeps its own
//! in-flight window full across page boundaries. Per-stream order is the publisher's: one event in flight per
//! stream, in the order given, and once an event of a stream fails, nothing later of that stream
//! is sent in the session.
//!
//! A transient failure (the broker unreachable, a timeout) ends the session: nothing more is
//! read, what is in flight settles, and the active loop waits and starts a new session from the
//! checkpoint, which never passed the failed event. Events acknowledged after it are sent again
//! with the same ids, and the broker's fence refuses the second copies.

use super::window::Window;
use super::{HEAD_REFRESH, HELD_BACK_RECHECK, Interrupted, RELEASE_POLL, Relay, parking};
use edupulse_domain::StreamId;
use edupulse_ports::{
    Cursor, FollowedPage, Lease, PublishError, ReadAhead, RecordedEvent, Settled, StoreError,
};
use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::BoxStream;
use std::collections::HashSet;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How a session ended.
pub(super) enum SessionEnd {
    /// Shutdown (everything in flight settled and handed to the saver) or the loss of the lease.
    Interrupted(Interrupted),
    /// A publish failed and is to be retried from the checkpoint after a backoff.
    Failed {
        /// The failure.
        error: PublishError,
        /// Whether the checkpoint moved in this session (the backoff starts over).
        progressed: bool,
    },
}

/// What a session works with, besides the relay.
pub(super) struct SessionContext<'a> {
    pub(super) lease: &'a dyn Lease,
    pub(super) shutdown: &'a CancellationToken,
    /// The acknowledged, settled cursor, for the checkpoint saver.
    pub(super) acked: &'a tokio::sync::watch::Sender<Cursor>,
    /// Streams parked (kept across sessions).
    pub(super) parked: &'a mut HashSet<StreamId>,
    /// Commit hints (kept across sessions).
    pub(super) hints: &'a mut Option<BoxStream<'static, ()>>,
}

/// A session's state.
struct Driver {
    /// Where the next read starts: the last settled row read (rows above the horizon are read
    /// again, and `ahead` says which were handed out).
    read_cursor: Cursor,
    ahead: ReadAhead,
    window: Window,
    /// The publisher's input; `None` once the session stops feeding it.
    input: Option<mpsc::UnboundedSender<RecordedEvent>>,
    failure: Option<PublishError>,
    progressed: bool,
    /// The read in flight, as a task: decoding a page is milliseconds of CPU that would otherwise
    /// keep this task from taking acknowledgements.
    reading: Option<JoinHandle<Result<FollowedPage, StoreError>>>,
    /// No read before this instant (idle, or backing off after a failed read).
    rest_until: Option<Instant>,
    /// Idle: a hint ends the rest early.
    waiting_for_hint: bool,
    /// After a hint that read nothing, how soon to read again.
    recheck: Option<Duration>,
    read_failures: u32,
    /// The first acknowledgement of the session clears a blocked state reported before.
    unblock: bool,
    release_checked: Option<Instant>,
    head_refreshed: Option<Instant>,
}

impl Relay {
    /// Runs one session from `from` (see the module documentation).
    pub(super) async fn session(&self, from: Cursor, cx: SessionContext<'_>) -> SessionEnd {
        let (input, events) = mpsc::unbounded();
        let (settled_tx, settled) = mpsc::unbounded();
        let mut driver = Driver {
            read_cursor: from,
            // At most half a page above the horizon, so every read has room for new rows.
            ahead: ReadAhead::new(self.config.batch_size / 2),
            window: Window::default(),
            input: Some(input),
            failure: None,
            progressed: false,
            reading: None,
            rest_until: None,
            waiting_for_hint: false,
            recheck: None,
            read_failures: 0,
            unblock: true,
            release_checked: None,
            head_refreshed: None,
        };
        let mut publishing = pin!(
            self.ports
                .publisher
                .publish_stream(events.boxed(), settled_tx)
        );
        let mut driving = pin!(self.drive(&mut driver, settled, cx));
        let mut published = false;
        // The driver decides when the session ends; the publisher returns once its input is
        // closed and everything it was given is settled. When the driver ends first (the lease
        // lost), dropping the publisher abandons what is in flight.
        loop {
            tokio::select! {
                end = &mut driving => return end,
                () = &mut publishing, if !published => published = true,
            }
        }
    }

    async fn drive(
        &self,
        d: &mut Driver,
        mut settled: mpsc::UnboundedReceiver<Settled>,
        mut cx: SessionContext<'_>,
    ) -> SessionEnd {
        let window_limit = self.config.batch_size.saturating_mul(2);
        loop {
            if d.input.is_none() && d.window.outstanding() == 0 {
                return d.end();
            }
            if !cx.lease.is_held() {
                return SessionEnd::Interrupted(Interrupted::LeaseLost);
            }
            let room = d.window.outstanding() + self.config.batch_size <= window_limit;
            let rested = d.rest_until.is_none_or(|t| Instant::now() >= t);
            if d.input.is_some() && d.reading.is_none() && room && rested {
                if let Err(why) = self.between_reads(d, &mut cx).await {
                    return SessionEnd::Interrupted(why);
                }
                let store = self.ports.store.clone();
                let (after, limit) = (d.read_cursor, self.config.batch_size);
                d.reading = Some(tokio::spawn(async move {
                    store.follow_visible(after, limit).await
                }));
                d.rest_until = None;
                d.waiting_for_hint = false;
            }
            let resting = d.input.is_some() && d.reading.is_none();
            let rest = d.rest_until;
            let hints = &mut *cx.hints;
            tokio::select! {
                biased;
                () = cx.lease.lost() => return SessionEnd::Interrupted(Interrupted::LeaseLost),
                () = cx.shutdown.cancelled(), if d.input.is_some() => d.stop_feeding(),
                outcome = settled.next() => match outcome {
                    Some(outcome) => {
                        if let Err(why) = self.take_outcome(d, outcome, &mut cx).await {
                            return SessionEnd::Interrupted(why);
                        }
                    }
                    // The publisher returned with events unsettled: a broken publisher. Start
                    // over from the checkpoint.
                    None => {
                        return SessionEnd::Failed {
                            error: PublishError::NotAttempted,
                            progressed: d.progressed,
                        };
                    }
                },
                page = join_read(&mut d.reading), if d.reading.is_some() => {
                    d.reading = None;
                    let page = page.unwrap_or_else(|e| Err(StoreError::Internal(Box::new(e))));
                    if let Err(why) = self.take_page(d, page, &mut cx).await {
                        return SessionEnd::Interrupted(why);
                    }
                }
                () = next_hint(hints), if resting && d.waiting_for_hint => {
                    d.recheck = Some(HELD_BACK_RECHECK);
                    d.rest_until = None;
                }
                () = sleep_until(rest), if resting && rest.is_some() => {
                    d.rest_until = None;
                    d.recheck = d
                        .recheck
                        .map(|r| r * 2)
                        .filter(|r| *r < self.config.poll_interval);
                }
            }
        }
    }

    /// Between two reads: releases an operator asked for, the hint subscription.
    async fn between_reads(
        &self,
        d: &mut Driver,
        cx: &mut SessionContext<'_>,
    ) -> Result<(), Interrupted> {
        if cx.hints.is_none() {
            *cx.hints = self.ports.hints.subscribe().await.ok();
        }
        if d.release_checked
            .is_none_or(|t| t.elapsed() >= RELEASE_POLL)
        {
            d.release_checked = Some(Instant::now());
            self.release_requested(cx.parked, cx.lease, cx.shutdown)
                .await?;
        }
        Ok(())
    }

    /// A page read: its events go to the publisher, or the session rests (idle, or after a
    /// failed read).
    async fn take_page(
        &self,
        d: &mut Driver,
        page: Result<FollowedPage, StoreError>,
        cx: &mut SessionContext<'_>,
    ) -> Result<(), Interrupted> {
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                self.note_store_error("read", &e);
                d.read_failures += 1;
                let delay = super::backoff::backoff_delay(&self.config, d.read_failures);
                d.rest_until = Some(Instant::now() + delay);
                return Ok(());
            }
        };
        d.read_failures = 0;
        self.stats.beat();
        let mut planned = d.ahead.plan(page);
        self.stats
            .read_ahead
            .store(d.ahead.len() as u64, Ordering::Relaxed);
        if planned.is_idle() {
            // The head is for the lag metric only; reading it costs a query, so at most once
            // per second, not every time the relay idles.
            if d.head_refreshed.is_none_or(|t| t.elapsed() >= HEAD_REFRESH) {
                self.refresh_head().await;
                d.head_refreshed = Some(Instant::now());
            }
            // Idle: wait for a hint or the poll interval. A hint means a commit, yet the read
            // after it can bring nothing new (beyond the rows read ahead of the horizon, events
            // wait for an older transaction still open, which may send no hint of its own when
            // it ends): after a hint that read nothing, read again soon, backing off (1, 2, 4…
            // ms) up to the poll interval.
            let wait = d.recheck.map_or(self.config.poll_interval, |r| {
                r.min(self.config.poll_interval)
            });
            d.rest_until = Some(Instant::now() + wait);
            d.waiting_for_hint = true;
            return Ok(());
        }
        d.recheck = None;
        let settled_to = planned.settled_to;
        let rows = std::mem::take(&mut planned.rows);
        let events = self
            .sort_page(rows, settled_to, cx.parked, cx.lease, cx.shutdown)
            .await?;
        let mut marked = false;
        for event in events {
            let cursor = event.cursor;
            if planned.is_ahead(cursor) {
                // The settled part ends before the first row above the horizon: the checkpoint
                // may pass it without waiting for those.
                if !marked && let Some(settled) = settled_to {
                    d.window.through(settled);
                }
                marked = true;
                d.ahead.handled(cursor);
            }
            let Some(input) = d.input.as_ref() else { break };
            if marked {
                d.window.sent_ahead(cursor);
            } else {
                d.window.sent(cursor);
            }
            if input.unbounded_send(event).is_err() {
                // The publisher is gone; the session ends with what is outstanding.
                d.window.abandoned();
                d.stop_feeding();
            }
        }
        if !marked && let Some(settled) = settled_to {
            d.window.through(settled);
        }
        if let Some(settled) = settled_to {
            d.read_cursor = settled;
        }
        d.advance(cx.acked);
        Ok(())
    }

    /// One event settled by the publisher.
    async fn take_outcome(
        &self,
        d: &mut Driver,
        Settled { event, result }: Settled,
        cx: &mut SessionContext<'_>,
    ) -> Result<(), Interrupted> {
        let cursor = event.cursor;
        match result {
            Ok(ack) => {
                self.acked(&event, ack);
                d.window.settled(cursor);
                if std::mem::take(&mut d.unblock) {
                    self.note_blocked(None);
                }
            }
            Err(e) if e.is_permanent() => {
                let raw = String::from_utf8_lossy(&event.encoded()).into_owned();
                let poison = parking::Poison::of(&event, e.to_string(), raw);
                self.park(poison, cx.parked, cx.lease, cx.shutdown).await?;
                d.window.settled(cursor);
            }
            Err(PublishError::NotAttempted) if cx.parked.contains(&event.stream_id) => {
                // Behind an event parked in this session: held, as a later read would.
                self.held_back(1);
                d.window.settled(cursor);
            }
            Err(error) => {
                d.window.abandoned();
                if d.failure.is_none() {
                    self.note_blocked(Some(&error));
                    d.failure = Some(error);
                    d.stop_feeding();
                }
            }
        }
        d.advance(cx.acked);
        Ok(())
    }
}

impl Driver {
    /// Stops handing events to the publisher: nothing more is read, what is out settles.
    fn stop_feeding(&mut self) {
        self.input = None;
        if let Some(reading) = self.reading.take() {
            reading.abort();
        }
    }

    /// Hands the new checkpoint, if any, to the saver.
    fn advance(&mut self, acked: &tokio::sync::watch::Sender<Cursor>) {
        if let Some(checkpoint) = self.window.advance() {
            acked.send_replace(checkpoint);
            self.progressed = true;
        }
    }

    fn end(&mut self) -> SessionEnd {
        match self.failure.take() {
            Some(error) => SessionEnd::Failed {
                error,
                progressed: self.progressed,
            },
            None => SessionEnd::Interrupted(Interrupted::Shutdown),
        }
    }
}

/// The read in flight; pending forever without one.
async fn join_read(
    reading: &mut Option<JoinHandle<Result<FollowedPage, StoreError>>>,
) -> Result<Result<FollowedPage, StoreError>, tokio::task::JoinError> {
    match reading.as_mut() {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// The next commit hint; pending forever without a subscription (dropped when it ends).
async fn next_hint(hints: &mut Option<BoxStream<'static, ()>>) {
    match hints.as_mut() {
        Some(h) => {
            if h.next().await.is_none() {
                *hints = None;
            }
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Relay {
    /// Logs a failed session before the backoff.
    pub(super) fn session_failed(&self, error: &PublishError, attempt: u32, delay: Duration) {
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("edupulse_relay_retries_total").increment(1);
        warn!(
            %error,
            retry_in_ms = delay.as_millis() as u64,
            attempt,
            "publish failed; publishing again from the checkpoint with the same event ids"
        );
    }
}
