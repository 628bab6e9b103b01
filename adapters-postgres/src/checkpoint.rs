//! Relay checkpoints and dead letters.

use crate::append::to_u64;
use crate::error::map_sqlx;
use chrono::{DateTime, Utc};
use edupulse_domain::{EventId, StreamId, Uuid};
use edupulse_ports::{Checkpoint, Cursor, ParkedEvent, Release, StoreError};
use sqlx::PgPool;

/// The upsert keeps a checkpoint from moving backwards, atomically, whatever the number of relays
/// saving at once (only one should, but a lease can be lost late): the cursor only ever takes the
/// greater value; `updated_at` records the save either way ("when it was last saved", as the
/// port says, so a status shows a relay that is alive but idle as fresh).
const SAVE_SQL: &str = "\
    INSERT INTO relay_checkpoints AS c (name, commit_key, position, broker_sequence, updated_at) \
    SELECT $1::text, $2::int8, $3::int8, $4::int8, clock_timestamp() \
    FROM (SELECT set_config('synchronous_commit', 'off', true)) AS asynchronous_commit \
    ON CONFLICT (name) DO UPDATE SET \
        commit_key = CASE WHEN (c.commit_key, c.position) < (excluded.commit_key, excluded.position) \
                          THEN excluded.commit_key ELSE c.commit_key END, \
        position   = CASE WHEN (c.commit_key, c.position) < (excluded.commit_key, excluded.position) \
                          THEN excluded.position ELSE c.position END, \
        broker_sequence = GREATEST(c.broker_sequence, excluded.broker_sequence), \
        updated_at = excluded.updated_at";

const LOAD_SQL: &str = "SELECT commit_key, position, broker_sequence, updated_at FROM relay_checkpoints WHERE name = $1";

const DEAD_LETTER_COUNT_SQL: &str = "SELECT count(*) FROM relay_dead_letters WHERE name = $1";

/// The first parked event of a stream stays. Parking a stream again while a release is requested
/// means the release failed: the new reason is kept and the request cleared.
const PARK_SQL: &str = "\
    INSERT INTO relay_parked_streams AS p \
        (name, stream_id, stream_version, event_id, commit_key, position, reason, raw) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
    ON CONFLICT (name, stream_id) DO UPDATE SET reason = excluded.reason, release = NULL \
    WHERE p.release IS NOT NULL";

const PARKED_SQL: &str = "\
    SELECT stream_id, stream_version, event_id, commit_key, position, reason, raw, parked_at, \
           release \
    FROM relay_parked_streams WHERE name = $1 ORDER BY parked_at, stream_id";

const RELEASE_SQL: &str =
    "UPDATE relay_parked_streams SET release = $3 WHERE name = $1 AND stream_id = $2";

const UNPARK_SQL: &str = "DELETE FROM relay_parked_streams WHERE name = $1 AND stream_id = $2";

type ParkedRow = (
    Uuid,
    i64,
    Uuid,
    i64,
    i64,
    String,
    String,
    DateTime<Utc>,
    Option<String>,
);

fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::InvalidInput {
        reason: format!("{value} is beyond the range the store keeps"),
    })
}

pub(crate) async fn load(pool: &PgPool, name: &str) -> Result<Option<Checkpoint>, StoreError> {
    let row: Option<(i64, i64, i64, DateTime<Utc>)> = sqlx::query_as(LOAD_SQL)
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(map_sqlx)?;
    row.map(|(commit, position, broker_sequence, updated_at)| {
        Ok(Checkpoint {
            cursor: Cursor {
                commit: to_u64(commit)?,
                position: to_u64(position)?,
            },
            broker_sequence: to_u64(broker_sequence)?,
            updated_at,
        })
    })
    .transpose()
}

/// Saves with an asynchronous commit, in one statement.
///
/// Why asynchronous: the save's transaction has an id, and while it is open no reader can read
/// past it (the snapshot horizon of `read_all`): a synchronous commit keeps it open for a WAL
/// flush, so every relay save would hold back every event committed meanwhile by that long. An
/// asynchronous commit ends at once; a PostgreSQL crash can then lose the last fraction of a
/// second of saves, which only means re-publishing those events (deduplicated by the broker), as
/// the port allows.
///
/// Why one statement: `set_config(…, true)` lasts until the end of the statement's own
/// (implicit) transaction, commit included. An explicit BEGIN / SET LOCAL / upsert / COMMIT took
/// four round trips, and the transaction id stayed open between the upsert and the COMMIT for as
/// long as the relay's task took to send it.
pub(crate) async fn save(
    pool: &PgPool,
    name: &str,
    cursor: Cursor,
    broker_sequence: u64,
) -> Result<(), StoreError> {
    sqlx::query(SAVE_SQL)
        .bind(name)
        .bind(to_i64(cursor.commit)?)
        .bind(to_i64(cursor.position)?)
        .bind(to_i64(broker_sequence)?)
        .execute(pool)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}

pub(crate) async fn dead_letter_count(pool: &PgPool, name: &str) -> Result<u64, StoreError> {
    let count: i64 = sqlx::query_scalar(DEAD_LETTER_COUNT_SQL)
        .bind(name)
        .fetch_one(pool)
        .await
        .map_err(map_sqlx)?;
    to_u64(count)
}

pub(crate) async fn park(pool: &PgPool, name: &str, event: &ParkedEvent) -> Result<(), StoreError> {
    sqlx::query(PARK_SQL)
        .bind(name)
        .bind(event.stream_id.as_uuid())
        .bind(to_i64(event.stream_version)?)
        .bind(event.event_id.as_uuid())
        .bind(to_i64(event.cursor.commit)?)
        .bind(to_i64(event.cursor.position)?)
        .bind(&event.reason)
        .bind(&event.raw)
        .execute(pool)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}

pub(crate) async fn parked(pool: &PgPool, name: &str) -> Result<Vec<ParkedEvent>, StoreError> {
    let rows: Vec<ParkedRow> = sqlx::query_as(PARKED_SQL)
        .bind(name)
        .fetch_all(pool)
        .await
        .map_err(map_sqlx)?;
    rows.into_iter()
        .map(
            |(stream, version, event, commit, position, reason, raw, parked_at, release)| {
                Ok(ParkedEvent {
                    stream_id: StreamId::from_uuid(stream),
                    stream_version: to_u64(version)?,
                    event_id: EventId::from_uuid(event),
                    cursor: Cursor {
                        commit: to_u64(commit)?,
                        position: to_u64(position)?,
                    },
                    reason,
                    raw,
                    parked_at,
                    release: release.as_deref().and_then(Release::from_name),
                })
            },
        )
        .collect()
}

pub(crate) async fn request_release(
    pool: &PgPool,
    name: &str,
    stream: StreamId,
    release: Release,
) -> Result<bool, StoreError> {
    let done = sqlx::query(RELEASE_SQL)
        .bind(name)
        .bind(stream.as_uuid())
        .bind(release.as_str())
        .execute(pool)
        .await
        .map_err(map_sqlx)?;
    Ok(done.rows_affected() > 0)
}

pub(crate) async fn unpark(pool: &PgPool, name: &str, stream: StreamId) -> Result<(), StoreError> {
    sqlx::query(UNPARK_SQL)
        .bind(name)
        .bind(stream.as_uuid())
        .execute(pool)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}
