//! Reads: one stream forward, all events in commit-safe order, ranges by position.

use crate::append::to_u64;
use crate::error::{internal, map_sqlx};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use edupulse_domain::EventId;
use edupulse_domain::{StoredEnvelope, StreamId, Uuid};
use edupulse_ports::{
    Cursor, FollowedPage, FollowedRow, RecordedEvent, StoreError, StoreHead, UndecodableRow,
};
use sqlx::PgPool;
use std::sync::LazyLock;

/// Metadata and payload come as JSON text, decoded straight into their types by
/// [`StoredEnvelope`]; the `json` columns keep the text as the appender wrote it, so the payload's
/// text is also the wire body's ([`StoredEnvelope::into_envelope_and_body`]).
const COLUMNS: &str = "position, commit_key, event_id, stream_id, stream_version, aggregate_id, \
                       event_type, schema_version, occurred_at, recorded_at, \
                       metadata::text AS metadata, payload::text AS payload";

/// The commit-safe read. Only rows below the snapshot's xmin are returned: every transaction
/// with an id below it has finished (committed rows are visible to this snapshot, rolled-back
/// ones never will be), and every transaction still running writes keys at or above it. So
/// nothing can ever appear below a cursor this query returned. The bound is evaluated once per
/// statement and used as an index bound on (commit_key, position).
pub(crate) static READ_ALL_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM events \
         WHERE (commit_key, position) > ($1, $2) \
           AND commit_key < pg_snapshot_xmin(pg_current_snapshot())::text::int8 \
         ORDER BY commit_key, position LIMIT $3"
    )
});

/// The commit-safe read and what is committed beyond it: every visible row after the cursor,
/// flagged `settled` below the snapshot's xmin (the bound of [`READ_ALL_SQL`]). Settled rows come
/// first: they are exactly the ones with the smaller `commit_key`.
static READ_VISIBLE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS}, commit_key < horizon.xmin AS settled \
         FROM events, \
              (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8 AS xmin) AS horizon \
         WHERE (commit_key, position) > ($1, $2) \
         ORDER BY commit_key, position LIMIT $3"
    )
});

static READ_STREAM_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM events WHERE stream_id = $1 AND stream_version >= $2 \
         ORDER BY stream_version LIMIT $3"
    )
});

static READ_POSITIONS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM events WHERE position BETWEEN $1 AND $2 \
         ORDER BY position LIMIT $3"
    )
});

/// `events` counts exactly while the table is small (positions up to 10 000) and is the
/// planner's estimate beyond (the last position when the table was never analysed). The relay
/// reads the head every second while idle, for its lag gauge: a `count(*)` there scanned the
/// whole table each time (8 ms at 300k rows, measured, on the relay's path).
const HEAD_SQL: &str = "\
    WITH last AS (SELECT coalesce((SELECT max(position) FROM events), 0) AS position) \
    SELECT last.position AS last_position, \
           CASE WHEN last.position <= 10000 THEN (SELECT count(*) FROM events) \
                ELSE (SELECT CASE WHEN c.reltuples < 0 THEN last.position \
                                  ELSE c.reltuples::int8 END \
                      FROM pg_class c WHERE c.oid = 'events'::regclass) \
           END AS events \
    FROM last";

#[derive(sqlx::FromRow)]
struct EventRow {
    position: i64,
    commit_key: i64,
    event_id: Uuid,
    stream_id: Uuid,
    stream_version: i64,
    aggregate_id: Option<Uuid>,
    event_type: String,
    schema_version: i32,
    occurred_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
    metadata: String,
    payload: String,
}

/// A row of [`READ_VISIBLE_SQL`].
#[derive(sqlx::FromRow)]
struct VisibleRow {
    #[sqlx(flatten)]
    row: EventRow,
    settled: bool,
}

impl EventRow {
    /// The row as an event, or whole with the reason it cannot be one.
    fn into_followed(self) -> Result<FollowedRow, StoreError> {
        let cursor = Cursor {
            commit: to_u64(self.commit_key)?,
            position: to_u64(self.position)?,
        };
        let (event_id, stream_id, stream_version) = (
            EventId::from_uuid(self.event_id),
            StreamId::from_uuid(self.stream_id),
            to_u64(self.stream_version)?,
        );
        Ok(match self.to_recorded() {
            Ok(event) => FollowedRow::Event(event),
            Err(e) => {
                let reason = match &e {
                    StoreError::Corrupted { source, .. } => source.to_string(),
                    other => other.to_string(),
                };
                // Built only for the rare row that does not decode: the whole stored content.
                let raw = format!(
                    "{{\"metadata\":{},\"payload\":{}}}",
                    self.metadata, self.payload
                );
                FollowedRow::Undecodable(UndecodableRow {
                    event_id,
                    stream_id,
                    stream_version,
                    cursor,
                    event_type: self.event_type,
                    raw,
                    reason,
                })
            }
        })
    }

    /// The row as an event; the texts are only borrowed (the envelope and its body are built
    /// from them).
    fn to_recorded(&self) -> Result<RecordedEvent, StoreError> {
        let position = to_u64(self.position)?;
        let version = u16::try_from(self.schema_version).map_err(|_| {
            internal(format!(
                "schema version {} out of range at position {position}",
                self.schema_version
            ))
        })?;
        let stored = StoredEnvelope {
            id: self.event_id,
            aggregate_id: self.aggregate_id,
            occurred_at: self.occurred_at,
            version,
            event_type: &self.event_type,
            metadata: &self.metadata,
            payload: &self.payload,
        };
        let (envelope, body) = stored
            .into_envelope_and_body()
            .map_err(|source| StoreError::Corrupted { position, source })?;
        Ok(RecordedEvent {
            envelope,
            stream_id: StreamId::from_uuid(self.stream_id),
            stream_version: to_u64(self.stream_version)?,
            cursor: Cursor {
                commit: to_u64(self.commit_key)?,
                position,
            },
            recorded_at: self.recorded_at,
            body: Some(Bytes::from(body)),
        })
    }
}

fn check_limit(limit: usize) -> Result<i64, StoreError> {
    if limit == 0 {
        return Err(StoreError::InvalidInput {
            reason: "limit must be at least 1".into(),
        });
    }
    Ok(i64::try_from(limit).unwrap_or(i64::MAX))
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn decode_rows(rows: Vec<EventRow>) -> Result<Vec<RecordedEvent>, StoreError> {
    rows.iter().map(EventRow::to_recorded).collect()
}

pub(crate) async fn read_stream(
    pool: &PgPool,
    stream: StreamId,
    from_version: u64,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let limit = check_limit(limit)?;
    let rows = sqlx::query_as::<_, EventRow>(&READ_STREAM_SQL)
        .bind(stream.as_uuid())
        .bind(clamp(from_version))
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(map_sqlx)?;
    decode_rows(rows)
}

pub(crate) async fn read_all(
    pool: &PgPool,
    after: Cursor,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    decode_rows(read_all_rows(pool, after, limit).await?)
}

/// The rows of the commit-safe read ([`READ_ALL_SQL`]), not yet decoded.
async fn read_all_rows(
    pool: &PgPool,
    after: Cursor,
    limit: usize,
) -> Result<Vec<EventRow>, StoreError> {
    let limit = check_limit(limit)?;
    sqlx::query_as::<_, EventRow>(&READ_ALL_SQL)
        .bind(clamp(after.commit))
        .bind(clamp(after.position))
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(map_sqlx)
}

pub(crate) async fn follow(
    pool: &PgPool,
    after: Cursor,
    limit: usize,
) -> Result<Vec<FollowedRow>, StoreError> {
    let rows = read_all_rows(pool, after, limit).await?;
    rows.into_iter().map(EventRow::into_followed).collect()
}

pub(crate) async fn follow_visible(
    pool: &PgPool,
    after: Cursor,
    limit: usize,
) -> Result<FollowedPage, StoreError> {
    let limit = check_limit(limit)?;
    let rows = sqlx::query_as::<_, VisibleRow>(&READ_VISIBLE_SQL)
        .bind(clamp(after.commit))
        .bind(clamp(after.position))
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(map_sqlx)?;
    // The settled rows are a prefix (ordered by commit key, settled below a bound on it).
    let settled = rows.iter().take_while(|r| r.settled).count();
    Ok(FollowedPage {
        rows: rows
            .into_iter()
            .map(|r| r.row.into_followed())
            .collect::<Result<_, _>>()?,
        settled,
    })
}

pub(crate) async fn read_positions(
    pool: &PgPool,
    from: u64,
    to: u64,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let limit = check_limit(limit)?;
    let rows = sqlx::query_as::<_, EventRow>(&READ_POSITIONS_SQL)
        .bind(clamp(from))
        .bind(clamp(to))
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(map_sqlx)?;
    decode_rows(rows)
}

pub(crate) async fn head(pool: &PgPool) -> Result<StoreHead, StoreError> {
    let (last_position, events): (i64, Option<i64>) = sqlx::query_as(HEAD_SQL)
        .fetch_one(pool)
        .await
        .map_err(map_sqlx)?;
    Ok(StoreHead {
        last_position: to_u64(last_position)?,
        events: to_u64(events.unwrap_or_default())?,
    })
}
