//! Leases: a session-level advisory lock held on a dedicated connection, watched by a task.

use crate::error::{map_sqlx, unavailable};
use async_trait::async_trait;
use edupulse_ports::{Lease, StoreError};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};

/// First key of every lease's advisory lock ("EDUP"), so that our locks do not collide with the
/// advisory locks of other software in the same database.
const LEASE_NAMESPACE: i32 = 0x4544_5550;

/// Prefix of the `application_name` of a lease's connection; the rest is the holder.
const APPLICATION_PREFIX: &str = "edupulse-lease:";

/// PostgreSQL keeps `NAMEDATALEN - 1` bytes of an application name.
const MAX_APPLICATION_NAME: usize = 63;

/// The two keys of the advisory lock of lease `name`: our namespace, and a 31-bit FNV-1a hash of
/// the name (non-negative, so that it reads back unchanged from `pg_locks.objid`). Two names
/// colliding would share one lease: harmless for the few relay names a deployment has.
pub(crate) fn lease_keys(name: &str) -> (i32, i32) {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (LEASE_NAMESPACE, (hash & 0x7fff_ffff) as i32)
}

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

const TRY_LOCK_SQL: &str = "SELECT pg_try_advisory_lock($1, $2)";

/// Who holds the lock: the session in `pg_locks` (two-key advisory locks have `objsubid = 2`)
/// and its application name in `pg_stat_activity`.
const HOLDER_SQL: &str = "\
    SELECT a.application_name \
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
      AND l.classid = $1::int8::oid AND l.objid = $2::int8::oid \
    LIMIT 1";

pub(crate) struct LeaseTimings {
    pub(crate) connect_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
}

pub(crate) async fn try_acquire(
    options: &PgConnectOptions,
    name: &str,
    holder: &str,
    timings: &LeaseTimings,
) -> Result<Option<Box<dyn Lease>>, StoreError> {
    let (k1, k2) = lease_keys(name);
    // A dedicated connection, not a pooled one: the lock lives as long as this session, and
    // the pool could otherwise recycle the session (and the lock with it) behind our back.
    let options = options.clone().application_name(&application_name(holder));
    let mut conn = tokio::time::timeout(
        timings.connect_timeout,
        PgConnection::connect_with(&options),
    )
    .await
    .map_err(|_| unavailable("timed out connecting for a lease"))?
    .map_err(map_sqlx)?;
    let acquired: bool = sqlx::query_scalar(TRY_LOCK_SQL)
        .bind(k1)
        .bind(k2)
        .fetch_one(&mut conn)
        .await
        .map_err(map_sqlx)?;
    if !acquired {
        // Best effort: the session holds nothing, dropping it is enough.
        let _ = conn.close().await;
        return Ok(None);
    }
    let state = Arc::new(LeaseState {
        held: AtomicBool::new(true),
        notify: Notify::new(),
    });
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(watchdog(
        conn,
        state.clone(),
        stopped,
        timings.ping_interval,
        timings.ping_timeout,
    ));
    Ok(Some(Box::new(PgLease {
        state,
        stop: Some(stop),
    })))
}

pub(crate) async fn holder(pool: &PgPool, name: &str) -> Result<Option<String>, StoreError> {
    let (k1, k2) = lease_keys(name);
    let app: Option<Option<String>> = sqlx::query_scalar(HOLDER_SQL)
        .bind(i64::from(k1))
        .bind(i64::from(k2))
        .fetch_optional(pool)
        .await
        .map_err(map_sqlx)?;
    Ok(app.map(|app| {
        let app = app.unwrap_or_default();
        app.strip_prefix(APPLICATION_PREFIX)
            .map_or(app.clone(), str::to_owned)
    }))
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

/// Pings the lease's connection until the lease is dropped (then closes the session, which
/// releases the lock) or a ping fails or times out (then declares the lease lost at once: the
/// session may be gone and the lock with it, so the holder must stop acting).
async fn watchdog(
    mut conn: PgConnection,
    state: Arc<LeaseState>,
    mut stop: oneshot::Receiver<()>,
    interval: Duration,
    timeout: Duration,
) {
    loop {
        tokio::select! {
            _ = &mut stop => {
                state.lose();
                let _ = conn.close().await;
                return;
            }
            () = tokio::time::sleep(interval) => {}
        }
        let alive = matches!(tokio::time::timeout(timeout, conn.ping()).await, Ok(Ok(())));
        if !alive {
            tracing::warn!("lease connection failed its ping: the lease is lost");
            state.lose();
            // Dropping the connection closes the socket; the server then ends the session and
            // releases the lock if it had not already.
            return;
        }
    }
}

/// A held lease: dropping it closes its connection, which releases the lock.
struct PgLease {
    state: Arc<LeaseState>,
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
}

impl Drop for PgLease {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_non_negative() {
        let (a, b) = lease_keys("relay");
        assert_eq!((a, b), lease_keys("relay"));
        assert!(b >= 0 && a > 0);
        assert_ne!(lease_keys("relay").1, lease_keys("relay-2").1);
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
}
