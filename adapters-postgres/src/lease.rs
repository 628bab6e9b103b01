//! Leases: a row of `leases` (migration 0003) that expires unless its holder renews it, and a
//! keeper task per held lease that renews it and gives it up on time.
//!
//! Taking a lease is one statement on a pooled connection: insert the row, or take it over when
//! it has expired (epoch + 1). Renewals go through a connection of the keeper's own, replaced
//! whenever an attempt fails or takes longer than the renew interval, so a dead connection
//! costs one attempt, not the lease. The keeper's deadline ([`Schedule`]) does not depend on any
//! connection: when it passes without a successful renewal, the lease is lost, whatever the
//! network is doing.

use crate::config::LeaseConfig;
use crate::error::{internal, map_sqlx, unavailable};
use async_trait::async_trait;
use edupulse_ports::{Lease, StoreError};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// Prefix of the `application_name` of a keeper's connection; the rest is the holder.
const APPLICATION_PREFIX: &str = "edupulse-lease:";

/// PostgreSQL keeps `NAMEDATALEN - 1` bytes of an application name.
const MAX_APPLICATION_NAME: usize = 63;

/// After a failed renewal, the next attempt comes after this fraction of the renew interval.
const RETRY_DIVISOR: u32 = 4;

/// `application_name` showing the holder: PostgreSQL keeps printable ASCII only, and 63 bytes.
fn application_name(holder: &str) -> String {
    let mut name = APPLICATION_PREFIX.to_owned();
    name.extend(
        holder
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .take(MAX_APPLICATION_NAME - APPLICATION_PREFIX.len()),
    );
    name
}

/// Takes the row if it is absent or expired; returns the new epoch, or no row when the lease is
/// held. Concurrent takers serialize on the row (`ON CONFLICT` locks it) and the `WHERE` is
/// re-checked on the version the winner wrote, so exactly one of them gets a row back. The clock
/// is `clock_timestamp()`, not `now()`: a taker that waited for the row lock must compare with
/// the time it decides, not the time its statement started.
const ACQUIRE_SQL: &str = "\
    INSERT INTO leases AS l (name, holder, epoch, acquired_at, expires_at) \
    VALUES ($1, $2, 1, clock_timestamp(), clock_timestamp() + $3::bigint * interval '1 millisecond') \
    ON CONFLICT (name) DO UPDATE \
        SET holder = EXCLUDED.holder, epoch = l.epoch + 1, \
            acquired_at = EXCLUDED.acquired_at, expires_at = EXCLUDED.expires_at \
        WHERE l.expires_at <= clock_timestamp() \
    RETURNING epoch";

/// Extends the holder's tenure `(name, epoch)` if it has not expired.
const RENEW_SQL: &str = "\
    UPDATE leases SET expires_at = clock_timestamp() + $3::bigint * interval '1 millisecond' \
    WHERE name = $1 AND epoch = $2 AND expires_at > clock_timestamp()";

/// Ends the holder's tenure now; the row (and its epoch) stays, so epochs never repeat.
const RELEASE_SQL: &str = "\
    UPDATE leases SET expires_at = clock_timestamp() \
    WHERE name = $1 AND epoch = $2 AND expires_at > clock_timestamp()";

const HOLDER_SQL: &str =
    "SELECT holder FROM leases WHERE name = $1 AND expires_at > clock_timestamp()";

/// Connection settings of the keepers.
pub(crate) struct KeeperSettings {
    /// The store's connect options (URL, TLS, session keepalives).
    pub(crate) options: PgConnectOptions,
    /// Longest wait for a new connection (also bounded by the attempt's time), and for the
    /// statement taking a lease.
    pub(crate) connect_timeout: Duration,
    /// The lease timings.
    pub(crate) config: LeaseConfig,
}

pub(crate) async fn try_acquire(
    pool: &PgPool,
    settings: KeeperSettings,
    name: &str,
    holder: &str,
) -> Result<Option<Box<dyn Lease>>, StoreError> {
    let ttl_ms = millis(settings.config.ttl());
    let mut conn = pool.acquire().await.map_err(map_sqlx)?;
    // The holder's clock starts before the statement is sent: the server's expiry is measured
    // from a later instant, so the holder's deadline always comes first.
    let sent = Instant::now();
    let statement = sqlx::query_scalar(ACQUIRE_SQL)
        .bind(name)
        .bind(holder)
        .bind(ttl_ms)
        .fetch_optional(&mut *conn);
    // Bounded: on a connection gone silent the statement would wait for TCP to give up. If it
    // did take the row, nobody holds the lease until it expires.
    let epoch: Option<i64> = tokio::time::timeout(settings.connect_timeout, statement)
        .await
        .map_err(|_| unavailable("timed out taking a lease"))?
        .map_err(map_sqlx)?;
    drop(conn);
    let Some(epoch) = epoch else {
        return Ok(None);
    };
    let epoch = u64::try_from(epoch).map_err(|_| internal("a lease epoch is negative"))?;
    let schedule = Schedule::new(settings.config, sent);
    let state = Arc::new(LeaseState {
        held: AtomicBool::new(true),
        notify: Notify::new(),
    });
    let tenure = Tenure {
        name: name.to_owned(),
        epoch,
    };
    let renewer = Renewer {
        options: settings
            .options
            .clone()
            .application_name(&application_name(holder)),
        connect_timeout: settings.connect_timeout,
        ttl_ms,
        tenure: tenure.clone(),
        conn: None,
    };
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(keep(renewer, state.clone(), stopped, schedule));
    tracing::info!(lease = %tenure.name, epoch, "lease taken");
    Ok(Some(Box::new(PgLease {
        state,
        epoch,
        stop: Some(stop),
    })))
}

pub(crate) async fn holder(pool: &PgPool, name: &str) -> Result<Option<String>, StoreError> {
    sqlx::query_scalar(HOLDER_SQL)
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(map_sqlx)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// When the holder renews and when it must give up, on its own monotonic clock.
///
/// The deadline is `ttl - safety_margin` after the *sending* of the last renewal (or of the
/// takeover) that succeeded; the server set that renewal's expiry `ttl` after *receiving* it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    config: LeaseConfig,
    deadline: Instant,
    next_attempt: Instant,
}

impl Schedule {
    /// The schedule of a lease taken by a statement sent at `sent`.
    pub(crate) fn new(config: LeaseConfig, sent: Instant) -> Self {
        Self {
            config,
            deadline: sent + config.holding_budget(),
            next_attempt: sent + config.renew_interval(),
        }
    }

    /// A renewal sent at `sent` succeeded. A late answer never moves the deadline back.
    pub(crate) fn renewed(&mut self, sent: Instant) {
        self.deadline = self.deadline.max(sent + self.config.holding_budget());
        self.next_attempt = sent + self.config.renew_interval();
    }

    /// An attempt failed at `now`: try again soon, with a fresh connection.
    pub(crate) fn failed(&mut self, now: Instant) {
        self.next_attempt = now + self.config.renew_interval() / RETRY_DIVISOR;
    }

    /// When the holder must have stopped acting.
    #[cfg(test)]
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// When to send the next renewal (never after the deadline).
    pub(crate) fn next_attempt(&self) -> Instant {
        self.next_attempt.min(self.deadline)
    }

    /// How long an attempt started at `now` may take: at most a renew interval (a stuck
    /// connection is replaced in time for another attempt), never past the deadline.
    pub(crate) fn attempt_timeout(&self, now: Instant) -> Duration {
        self.config
            .renew_interval()
            .min(self.deadline.saturating_duration_since(now))
    }

    /// Whether the lease must be considered lost at `now`.
    pub(crate) fn is_expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }
}

/// A holder's tenure: the lease's name and the epoch it was taken at.
#[derive(Debug, Clone)]
struct Tenure {
    name: String,
    epoch: u64,
}

impl Tenure {
    fn epoch_param(&self) -> i64 {
        // Epochs come from a bigint column, so they fit.
        i64::try_from(self.epoch).unwrap_or(i64::MAX)
    }
}

/// What a renewal found.
enum Renewal {
    /// Extended by a TTL.
    Renewed,
    /// The row expired or was taken over: the lease is gone for good.
    Gone,
}

/// The keeper's connection and statements.
struct Renewer {
    options: PgConnectOptions,
    connect_timeout: Duration,
    ttl_ms: i64,
    tenure: Tenure,
    conn: Option<PgConnection>,
}

impl Renewer {
    async fn connection(&mut self) -> Result<&mut PgConnection, StoreError> {
        if self.conn.is_none() {
            let conn = tokio::time::timeout(
                self.connect_timeout,
                PgConnection::connect_with(&self.options),
            )
            .await
            .map_err(|_| unavailable("timed out connecting to renew a lease"))?
            .map_err(map_sqlx)?;
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| internal("the lease connection vanished"))
    }

    async fn renew(&mut self) -> Result<Renewal, StoreError> {
        let (name, epoch, ttl_ms) = (
            self.tenure.name.clone(),
            self.tenure.epoch_param(),
            self.ttl_ms,
        );
        let conn = self.connection().await?;
        let done = sqlx::query(RENEW_SQL)
            .bind(name)
            .bind(epoch)
            .bind(ttl_ms)
            .execute(conn)
            .await
            .map_err(map_sqlx)?;
        Ok(if done.rows_affected() == 1 {
            Renewal::Renewed
        } else {
            Renewal::Gone
        })
    }

    async fn release(&mut self) -> Result<(), StoreError> {
        let (name, epoch) = (self.tenure.name.clone(), self.tenure.epoch_param());
        let conn = self.connection().await?;
        sqlx::query(RELEASE_SQL)
            .bind(name)
            .bind(epoch)
            .execute(conn)
            .await
            .map_err(map_sqlx)?;
        Ok(())
    }

    /// Drops the connection (a failed or stuck attempt leaves it in an unknown state).
    fn reset(&mut self) {
        self.conn = None;
    }

    /// Releases the lease and closes the connection, best effort, within `limit`.
    async fn release_and_close(mut self, limit: Duration) {
        match tokio::time::timeout(limit, self.release()).await {
            Ok(Ok(())) => {
                if let Some(conn) = self.conn.take() {
                    // Best effort: the release is done, the session has nothing left to keep.
                    let _ = conn.close().await;
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "could not release the lease; it expires"),
            Err(_) => tracing::debug!("timed out releasing the lease; it expires"),
        }
    }
}

struct LeaseState {
    held: AtomicBool,
    notify: Notify,
}

impl LeaseState {
    fn lose(&self) {
        self.held.store(false, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// Renews the lease on schedule until it is dropped (then releases it) or its deadline passes
/// without a successful renewal, or a renewal finds it gone (then declares it lost at once, and
/// releases it in case the server still has it, so a successor need not wait for the expiry).
async fn keep(
    mut renewer: Renewer,
    state: Arc<LeaseState>,
    mut stop: oneshot::Receiver<()>,
    mut schedule: Schedule,
) {
    let release_limit = schedule.config.renew_interval();
    let (name, epoch) = (renewer.tenure.name.clone(), renewer.tenure.epoch);
    loop {
        tokio::select! {
            // A send or the sender's drop: the lease was dropped either way.
            _ = &mut stop => {
                state.lose();
                renewer.release_and_close(release_limit).await;
                return;
            }
            () = tokio::time::sleep_until(schedule.next_attempt()) => {}
        }
        let sent = Instant::now();
        if schedule.is_expired(sent) {
            tracing::warn!(lease = %name, epoch, "lease not renewed in time: lost");
            break;
        }
        let attempt = tokio::time::timeout(schedule.attempt_timeout(sent), renewer.renew());
        tokio::select! {
            _ = &mut stop => {
                state.lose();
                renewer.reset();
                renewer.release_and_close(release_limit).await;
                return;
            }
            outcome = attempt => match outcome {
                Ok(Ok(Renewal::Renewed)) => schedule.renewed(sent),
                Ok(Ok(Renewal::Gone)) => {
                    tracing::warn!(lease = %name, epoch, "lease expired or taken over: lost");
                    break;
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = %name, epoch, error = %e, "lease renewal failed");
                    renewer.reset();
                    schedule.failed(Instant::now());
                }
                Err(_) => {
                    tracing::warn!(lease = %name, epoch, "lease renewal timed out");
                    renewer.reset();
                    schedule.failed(Instant::now());
                }
            }
        }
    }
    state.lose();
    renewer.release_and_close(release_limit).await;
}

/// A held lease: dropping it stops the keeper, which releases it.
struct PgLease {
    state: Arc<LeaseState>,
    epoch: u64,
    stop: Option<oneshot::Sender<()>>,
}

#[async_trait]
impl Lease for PgLease {
    async fn lost(&self) {
        loop {
            // Registered before the check, so a loss between the check and the wait is seen.
            let notified = self.state.notify.notified();
            if !self.state.held.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    fn is_held(&self) -> bool {
        self.state.held.load(Ordering::SeqCst)
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Drop for PgLease {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The keeper may be gone already (lease lost): nothing left to stop then.
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ttl_ms: u64, renew_ms: u64, margin_ms: u64) -> LeaseConfig {
        let ms = Duration::from_millis;
        LeaseConfig::with_timings(ms(ttl_ms), ms(renew_ms), ms(margin_ms)).expect("valid")
    }

    #[test]
    fn application_names_fit() {
        let name = application_name(&"é".repeat(100));
        assert!(name.len() <= MAX_APPLICATION_NAME);
        assert!(name.is_ascii());
        assert_eq!(
            application_name("host-1 pid 42"),
            "edupulse-lease:host-1 pid 42"
        );
    }

    #[test]
    fn the_holder_gives_up_a_margin_before_the_server_expiry() {
        let t0 = Instant::now();
        let s = Schedule::new(config(10_000, 3_000, 2_000), t0);
        // The server's expiry is at least ttl after t0 (it received the statement later).
        assert_eq!(s.deadline(), t0 + Duration::from_secs(8));
        assert_eq!(s.next_attempt(), t0 + Duration::from_secs(3));
        assert!(!s.is_expired(t0 + Duration::from_millis(7_999)));
        assert!(s.is_expired(t0 + Duration::from_secs(8)));
    }

    #[test]
    fn the_deadline_counts_from_when_the_renewal_was_sent() {
        let t0 = Instant::now();
        let mut s = Schedule::new(config(10_000, 3_000, 2_000), t0);
        let sent = t0 + Duration::from_secs(3);
        // The answer took 4 s: the deadline is still 8 s after sending, not after answering.
        s.renewed(sent);
        assert_eq!(s.deadline(), sent + Duration::from_secs(8));
        assert_eq!(s.next_attempt(), sent + Duration::from_secs(3));
        // A late answer to an older renewal never moves the deadline back.
        s.renewed(t0 + Duration::from_secs(1));
        assert_eq!(s.deadline(), sent + Duration::from_secs(8));
    }

    #[test]
    fn failures_retry_sooner_but_never_past_the_deadline() {
        let t0 = Instant::now();
        let mut s = Schedule::new(config(10_000, 3_000, 2_000), t0);
        let at = t0 + Duration::from_secs(3);
        s.failed(at);
        assert_eq!(s.next_attempt(), at + Duration::from_millis(750));
        // An attempt may take a renew interval, or what is left before the deadline.
        assert_eq!(s.attempt_timeout(at), Duration::from_secs(3));
        let late = t0 + Duration::from_millis(7_500);
        assert_eq!(s.attempt_timeout(late), Duration::from_millis(500));
        s.failed(late);
        assert_eq!(s.next_attempt(), s.deadline());
        assert_eq!(s.attempt_timeout(s.deadline()), Duration::ZERO);
    }

    #[test]
    fn silence_loses_the_lease_within_the_budget() {
        // Every attempt from the first renewal on hangs until its timeout: the holder gives up
        // exactly at the deadline, before the server's expiry (ttl after t0).
        let t0 = Instant::now();
        let mut s = Schedule::new(config(10_000, 3_000, 2_000), t0);
        let mut now = s.next_attempt();
        let mut attempts = 0;
        while !s.is_expired(now) {
            attempts += 1;
            now += s.attempt_timeout(now);
            s.failed(now);
            now = now.max(s.next_attempt());
        }
        assert_eq!(now, t0 + Duration::from_secs(8));
        assert!(attempts >= 2, "{attempts} attempts");
    }
}
