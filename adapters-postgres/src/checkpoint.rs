//! Relay checkpoints and dead letters.

use crate::append::to_u64;
use crate::error::map_sqlx;
use chrono::{DateTime, Utc};
use edupulse_ports::{Checkpoint, Cursor, RecordedEvent, StoreError};
use sqlx::PgPool;

/// The upsert keeps a checkpoint from moving backwards, atomically, whatever the number of relays
/// saving at once (only one should, but a lease can be lost late): the cursor only ever takes the
/// greater value; `updated_at` records the save either way ("when it was last saved", as the
/// port says, so a status shows a relay that is alive but idle as fresh).
const SAVE_SQL: &str = "\
    INSERT INTO relay_checkpoints AS c (name, commit_key, position, updated_at) \
    SELECT $1::text, $2::int8, $3::int8, clock_timestamp() \
    FROM (SELECT set_config('synchronous_commit', 'off', true)) AS asynchronous_commit \
    ON CONFLICT (name) DO UPDATE SET \
        commit_key = CASE WHEN (c.commit_key, c.position) < (excluded.commit_key, excluded.position) \
                          THEN excluded.commit_key ELSE c.commit_key END, \
        position   = CASE WHEN (c.commit_key, c.position) < (excluded.commit_key, excluded.position) \
                          THEN excluded.position ELSE c.position END, \
        updated_at = excluded.updated_at";

const LOAD_SQL: &str =
    "SELECT commit_key, position, updated_at FROM relay_checkpoints WHERE name = $1";

const DEAD_LETTER_SQL: &str = "\
    INSERT INTO relay_dead_letters (name, event_id, position, reason) VALUES ($1, $2, $3, $4) \
    ON CONFLICT (name, event_id) DO NOTHING";

const DEAD_LETTER_COUNT_SQL: &str = "SELECT count(*) FROM relay_dead_letters WHERE name = $1";

fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::InvalidInput {
        reason: format!("{value} is beyond the range the store keeps"),
    })
}

pub(crate) async fn load(pool: &PgPool, name: &str) -> Result<Option<Checkpoint>, StoreError> {
    let row: Option<(i64, i64, DateTime<Utc>)> = sqlx::query_as(LOAD_SQL)
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(map_sqlx)?;
    row.map(|(commit, position, updated_at)| {
        Ok(Checkpoint {
            cursor: Cursor {
                commit: to_u64(commit)?,
                position: to_u64(position)?,
            },
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
pub(crate) async fn save(pool: &PgPool, name: &str, cursor: Cursor) -> Result<(), StoreError> {
    sqlx::query(SAVE_SQL)
        .bind(name)
        .bind(to_i64(cursor.commit)?)
        .bind(to_i64(cursor.position)?)
        .execute(pool)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}

pub(crate) async fn record_dead_letter(
    pool: &PgPool,
    name: &str,
    event: &RecordedEvent,
    reason: &str,
) -> Result<(), StoreError> {
    sqlx::query(DEAD_LETTER_SQL)
        .bind(name)
        .bind(event.envelope.id.as_uuid())
        .bind(to_i64(event.position())?)
        .bind(reason)
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
