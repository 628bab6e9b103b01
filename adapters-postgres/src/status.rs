//! What an operator needs when the relay lags: the oldest transaction holding back the horizon.

use crate::error::map_sqlx;
use edupulse_ports::StoreError;
use sqlx::PgPool;
use std::time::Duration;

/// A transaction that holds a transaction id, and so holds back commit-safe reads until it ends.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OpenTransaction {
    /// Backend process id (`pg_stat_activity.pid`); `None` for a prepared (two-phase)
    /// transaction, which no session owns.
    pub pid: Option<i32>,
    /// How long the transaction has been open. Zero when PostgreSQL hides it: the session
    /// belongs to another role and the caller's role lacks `pg_read_all_stats` (grant it, or
    /// `pg_monitor`, to the role running `status`).
    pub age: Duration,
    /// `application_name` of the session (the global id of a prepared transaction).
    pub application_name: String,
    /// Session state (`active`, `idle in transaction`, …; `prepared` for a prepared one);
    /// empty when hidden, as for `age`.
    pub state: String,
    /// Database the session is connected to.
    pub database: Option<String>,
    /// The transaction id (32 bits, as `pg_stat_activity.backend_xid` shows it).
    pub xid: u64,
}

/// Every backend and prepared transaction with an xid, oldest first. Transaction ids are
/// cluster-wide, so other databases of the cluster count too; read-only transactions have no xid
/// and never hold readers back.
const OLDEST_SQL: &str = "\
    SELECT pid, age_seconds, application_name, state, database, xid FROM ( \
        SELECT a.pid, extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS age_seconds, \
               coalesce(a.application_name, '') AS application_name, \
               coalesce(a.state, '') AS state, a.datname::text AS database, \
               a.backend_xid::text::int8 AS xid, age(a.backend_xid) AS xid_age \
        FROM pg_stat_activity a WHERE a.backend_xid IS NOT NULL \
        UNION ALL \
        SELECT NULL, extract(epoch FROM clock_timestamp() - p.prepared)::float8, p.gid, \
               'prepared', p.database::text, p.transaction::text::int8, age(p.transaction) \
        FROM pg_prepared_xacts p \
    ) t ORDER BY xid_age DESC LIMIT 1";

pub(crate) async fn oldest_open_transaction(
    pool: &PgPool,
) -> Result<Option<OpenTransaction>, StoreError> {
    type Row = (
        Option<i32>,
        Option<f64>,
        String,
        String,
        Option<String>,
        i64,
    );
    let row: Option<Row> = sqlx::query_as(OLDEST_SQL)
        .fetch_optional(pool)
        .await
        .map_err(map_sqlx)?;
    Ok(row.map(
        |(pid, age, application_name, state, database, xid)| OpenTransaction {
            pid,
            age: Duration::from_secs_f64(age.unwrap_or(0.0).max(0.0)),
            application_name,
            state,
            database,
            xid: u64::try_from(xid).unwrap_or(0),
        },
    ))
}
