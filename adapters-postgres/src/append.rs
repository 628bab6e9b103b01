//! Appending one batch to one stream: the single-statement append, and how its failures become
//! conflicts, replays or duplicate-id errors.

use crate::error::{UniqueViolation, internal, map_sqlx, unavailable, unique_violation};
use crate::hints::HintMode;
use chrono::{DateTime, Utc};
use edupulse_domain::{EventEnvelope, ExpectedVersion, StreamId, Uuid};
use edupulse_ports::{AppendOutcome, AppendedEvent, StoreError};
use serde_json::Value;
use sqlx::{Connection, PgConnection, Row};

/// How many times an append with [`ExpectedVersion::Any`] is retried when another writer takes
/// the next version between our read of the head and our insert. Each retry reads a fresh head
/// (READ COMMITTED), so more than a few means a pathological hot stream.
const ANY_RETRIES: usize = 16;

/// One statement: read the stream's head, check the expectation, insert the whole batch.
///
/// - The head is the row with the highest version (index `events_stream_version_key`).
/// - `accepted` has one row when the expectation holds and none otherwise, so a mismatch inserts
///   nothing and is reported without an error (no aborted transaction, no savepoint needed).
/// - `commit_key` is the transaction id, raised to the previous event's key: per-stream order then
///   holds in the global (commit_key, position) order even when the appending transaction got its
///   id before the previous event's transaction did (see the crate docs).
/// - `ORDER BY u.ord` makes positions follow versions inside the batch.
const APPEND_SQL: &str = r#"
WITH head AS (
    SELECT e.stream_version, e.commit_key
    FROM events e
    WHERE e.stream_id = $1
    ORDER BY e.stream_version DESC
    LIMIT 1
), target AS (
    SELECT (SELECT stream_version FROM head) AS version,
           (SELECT commit_key FROM head) AS commit_key
), accepted AS (
    SELECT t.version, t.commit_key
    FROM target t
    WHERE CASE $2::int2
        WHEN 0 THEN true
        WHEN 1 THEN t.version IS NULL
        ELSE t.version = $3::int8
    END
), inserted AS (
    INSERT INTO events (commit_key, event_id, stream_id, stream_version, aggregate_id,
                        event_type, schema_version, occurred_at, metadata, payload)
    SELECT greatest(pg_current_xact_id()::text::int8, a.commit_key), u.event_id, $1,
           coalesce(a.version, 0) + u.ord, u.aggregate_id,
           u.event_type, u.schema_version, u.occurred_at, u.metadata, u.payload
    FROM accepted a
    CROSS JOIN unnest($4::uuid[], $5::uuid[], $6::text[], $7::int4[], $8::timestamptz[],
                      $9::jsonb[], $10::jsonb[])
        WITH ORDINALITY AS u(event_id, aggregate_id, event_type, schema_version, occurred_at,
                             metadata, payload, ord)
    -- Who sends the commit hint (see HintMode): set before the statement's trigger runs.
    CROSS JOIN (SELECT set_config('edupulse.hint_after_commit', $11::text, true)) AS hint
    ORDER BY u.ord
    RETURNING position, stream_version
)
SELECT (SELECT version FROM target) AS head,
       coalesce((SELECT array_agg(position ORDER BY stream_version) FROM inserted),
                '{}'::int8[]) AS positions
"#;

/// For each event of a batch (in order): whether its id is stored, where, and whether the stored
/// event has the same content. jsonb equality is semantic (key order and number spelling do not
/// matter), which is what "the same event" means.
const LOOKUP_IDS_SQL: &str = r#"
SELECT e.position, e.stream_version,
       (e.stream_id = $2
        AND e.aggregate_id IS NOT DISTINCT FROM u.aggregate_id
        AND e.event_type = u.event_type
        AND e.schema_version = u.schema_version
        AND e.metadata = u.metadata
        AND e.payload = u.payload) AS same
FROM unnest($1::uuid[], $3::uuid[], $4::text[], $5::int4[], $6::jsonb[], $7::jsonb[])
    WITH ORDINALITY AS u(event_id, aggregate_id, event_type, schema_version, metadata, payload, ord)
LEFT JOIN events e ON e.event_id = u.event_id
ORDER BY u.ord
"#;

pub(crate) const STREAM_VERSION_SQL: &str =
    "SELECT max(stream_version) FROM events WHERE stream_id = $1";

/// A batch in columns, as the statements bind it (one array per column).
#[derive(Debug, Default)]
pub(crate) struct Columns {
    pub(crate) event_ids: Vec<Uuid>,
    pub(crate) aggregate_ids: Vec<Option<Uuid>>,
    pub(crate) event_types: Vec<String>,
    pub(crate) schema_versions: Vec<i32>,
    pub(crate) occurred_at: Vec<DateTime<Utc>>,
    pub(crate) metadata: Vec<Value>,
    pub(crate) payloads: Vec<Value>,
}

impl Columns {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            event_ids: Vec::with_capacity(n),
            aggregate_ids: Vec::with_capacity(n),
            event_types: Vec::with_capacity(n),
            schema_versions: Vec::with_capacity(n),
            occurred_at: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
        }
    }

    pub(crate) fn of(events: &[EventEnvelope]) -> Self {
        let mut columns = Self::with_capacity(events.len());
        for e in events {
            columns.push(e);
        }
        columns
    }

    pub(crate) fn push(&mut self, e: &EventEnvelope) {
        self.event_ids.push(*e.id.as_uuid());
        self.aggregate_ids
            .push(e.aggregate_id.map(|s| *s.as_uuid()));
        self.event_types.push(e.event_type().to_owned());
        self.schema_versions.push(i32::from(e.schema_version()));
        self.occurred_at.push(e.occurred_at);
        self.metadata.push(Value::Object(e.metadata.to_json()));
        self.payloads.push(e.event.payload());
    }
}

/// `ExpectedVersion` as the statements encode it: a kind (0 any, 1 no stream, 2 exact) and the
/// exact version (a version beyond `i64` can never match: -1 never does either).
pub(crate) fn encode_expected(expected: ExpectedVersion) -> (i16, i64) {
    match expected {
        ExpectedVersion::Any => (0, 0),
        ExpectedVersion::NoStream => (1, 0),
        ExpectedVersion::Exact(n) => (2, i64::try_from(n).unwrap_or(-1)),
    }
}

pub(crate) fn to_u64(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| internal(format!("negative value {value} in the store")))
}

/// What the single statement did.
enum Attempt {
    Appended(Vec<AppendedEvent>),
    /// The expectation did not hold; nothing was inserted. The head as the statement saw it.
    Rejected {
        head: Option<u64>,
    },
}

async fn run_append_statement(
    conn: &mut PgConnection,
    stream: StreamId,
    expected: ExpectedVersion,
    columns: &Columns,
    hint: HintMode<'_>,
) -> Result<Result<Attempt, StoreError>, sqlx::Error> {
    let (kind, exact) = encode_expected(expected);
    let row = sqlx::query(APPEND_SQL)
        .bind(stream.as_uuid())
        .bind(kind)
        .bind(exact)
        .bind(&columns.event_ids)
        .bind(&columns.aggregate_ids)
        .bind(&columns.event_types)
        .bind(&columns.schema_versions)
        .bind(&columns.occurred_at)
        .bind(&columns.metadata)
        .bind(&columns.payloads)
        .bind(hint.setting())
        .fetch_one(&mut *conn)
        .await?;
    let head: Option<i64> = row.try_get("head")?;
    let positions: Vec<i64> = row.try_get("positions")?;
    Ok(decode_attempt(head, &positions, &columns.event_ids))
}

fn decode_attempt(
    head: Option<i64>,
    positions: &[i64],
    ids: &[Uuid],
) -> Result<Attempt, StoreError> {
    let head = head.map(to_u64).transpose()?;
    if positions.is_empty() {
        return Ok(Attempt::Rejected { head });
    }
    if positions.len() != ids.len() {
        return Err(internal(format!(
            "append stored {} of {} events",
            positions.len(),
            ids.len()
        )));
    }
    let first = head.unwrap_or(0) + 1;
    let events = positions
        .iter()
        .zip(ids)
        .enumerate()
        .map(|(i, (&position, &id))| {
            Ok(AppendedEvent {
                id: id.into(),
                stream_version: first + i as u64,
                position: to_u64(position)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(Attempt::Appended(events))
}

/// Appends one validated batch on `conn`.
///
/// With `savepoint`, the statement runs in a nested transaction (a SAVEPOINT when `conn` is in a
/// transaction, else BEGIN/COMMIT), so that a unique violation leaves the caller's transaction
/// usable; without, it runs as one autocommit statement (one round trip), and with
/// [`HintMode::AfterCommit`] its hint is sent once it returns, committed. In a transaction of
/// the store's own, the store sends the hint after its commit.
pub(crate) async fn append_batch(
    conn: &mut PgConnection,
    stream: StreamId,
    expected: ExpectedVersion,
    events: &[EventEnvelope],
    savepoint: bool,
    hint: HintMode<'_>,
) -> Result<AppendOutcome, StoreError> {
    let columns = Columns::of(events);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = if savepoint {
            let mut nested = conn.begin().await.map_err(map_sqlx)?;
            let result = run_append_statement(&mut nested, stream, expected, &columns, hint).await;
            match &result {
                Ok(Ok(Attempt::Appended(_))) => nested.commit().await.map_err(map_sqlx)?,
                _ => nested.rollback().await.map_err(map_sqlx)?,
            }
            result
        } else {
            run_append_statement(conn, stream, expected, &columns, hint).await
        };
        match result {
            Ok(Ok(Attempt::Appended(events))) => {
                if let (false, HintMode::AfterCommit(hints)) = (savepoint, hint) {
                    hints.committed();
                }
                return Ok(AppendOutcome {
                    stream_id: stream,
                    events,
                    replayed: false,
                });
            }
            Ok(Ok(Attempt::Rejected { head })) => {
                return conflict_or_replay(conn, stream, expected, head, &columns).await;
            }
            Ok(Err(e)) => return Err(e),
            Err(error) => match unique_violation(&error) {
                // Another writer took the next version after our statement read the head.
                Some(UniqueViolation::StreamVersion) => {
                    if expected == ExpectedVersion::Any && attempt <= ANY_RETRIES {
                        continue;
                    }
                    if expected == ExpectedVersion::Any {
                        return Err(unavailable(format!(
                            "stream {stream}: {ANY_RETRIES} concurrent appends won the race in a row"
                        )));
                    }
                    let actual = stream_version(conn, stream).await?;
                    return conflict_or_replay(conn, stream, expected, actual, &columns).await;
                }
                Some(UniqueViolation::EventId) => {
                    return match lookup_ids(conn, stream, &columns).await? {
                        Some(resolved) => resolved,
                        // The clashing event is no longer visible: its writer rolled back. Try again.
                        None if attempt <= ANY_RETRIES => continue,
                        None => Err(unavailable(
                            "event ids kept clashing with rolled-back appends",
                        )),
                    };
                }
                None => return Err(map_sqlx(error)),
            },
        }
    }
}

/// The expectation failed (`actual` is the stream's version): a conflict, unless the batch's ids
/// are already stored, in which case it is a replay of an earlier append or a reuse of ids.
pub(crate) async fn conflict_or_replay(
    conn: &mut PgConnection,
    stream: StreamId,
    expected: ExpectedVersion,
    actual: Option<u64>,
    columns: &Columns,
) -> Result<AppendOutcome, StoreError> {
    match lookup_ids(conn, stream, columns).await? {
        Some(resolved) => resolved,
        None => Err(StoreError::Conflict {
            stream,
            expected,
            actual,
        }),
    }
}

/// `None` when none of the batch's ids is stored; else the replay (every id stored, same stream,
/// same content) or the duplicate-id error.
async fn lookup_ids(
    conn: &mut PgConnection,
    stream: StreamId,
    columns: &Columns,
) -> Result<Option<Result<AppendOutcome, StoreError>>, StoreError> {
    let rows = sqlx::query(LOOKUP_IDS_SQL)
        .bind(&columns.event_ids)
        .bind(stream.as_uuid())
        .bind(&columns.aggregate_ids)
        .bind(&columns.event_types)
        .bind(&columns.schema_versions)
        .bind(&columns.metadata)
        .bind(&columns.payloads)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let position: Option<i64> = row.try_get("position").map_err(map_sqlx)?;
        let version: Option<i64> = row.try_get("stream_version").map_err(map_sqlx)?;
        let same: Option<bool> = row.try_get("same").map_err(map_sqlx)?;
        found.push((position, version, same.unwrap_or(false)));
    }
    if found.iter().all(|(position, _, _)| position.is_none()) {
        return Ok(None);
    }
    let ids = &columns.event_ids;
    if found.iter().all(|(p, _, same)| p.is_some() && *same) {
        let mut events = Vec::with_capacity(found.len());
        for ((position, version, _), id) in found.iter().zip(ids) {
            events.push(AppendedEvent {
                id: (*id).into(),
                stream_version: to_u64(version.unwrap_or_default())?,
                position: to_u64(position.unwrap_or_default())?,
            });
        }
        return Ok(Some(Ok(AppendOutcome {
            stream_id: stream,
            events,
            replayed: true,
        })));
    }
    // Name an id used by a different event if there is one, else any stored id of the batch (a
    // batch mixing stored and new events is not a retry of anything).
    let clash = found
        .iter()
        .zip(ids)
        .find(|((p, _, same), _)| p.is_some() && !same)
        .or_else(|| found.iter().zip(ids).find(|((p, _, _), _)| p.is_some()))
        .map(|(_, id)| *id)
        .unwrap_or_default();
    Ok(Some(Err(StoreError::DuplicateEventId {
        event_id: clash.into(),
    })))
}

pub(crate) async fn stream_version(
    conn: &mut PgConnection,
    stream: StreamId,
) -> Result<Option<u64>, StoreError> {
    let version: Option<i64> = sqlx::query_scalar(STREAM_VERSION_SQL)
        .bind(stream.as_uuid())
        .fetch_one(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    version.map(to_u64).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_versions_encode() {
        assert_eq!(encode_expected(ExpectedVersion::Any), (0, 0));
        assert_eq!(encode_expected(ExpectedVersion::NoStream), (1, 0));
        assert_eq!(encode_expected(ExpectedVersion::Exact(7)), (2, 7));
        assert_eq!(encode_expected(ExpectedVersion::Exact(u64::MAX)), (2, -1));
    }

    #[test]
    fn attempts_decode() {
        let ids = [Uuid::from_u128(1), Uuid::from_u128(2)];
        assert!(matches!(
            decode_attempt(Some(3), &[], &ids),
            Ok(Attempt::Rejected { head: Some(3) })
        ));
        let Ok(Attempt::Appended(events)) = decode_attempt(Some(3), &[10, 11], &ids) else {
            panic!("appended")
        };
        assert_eq!(events[0].stream_version, 4);
        assert_eq!(events[1].position, 11);
        assert!(decode_attempt(None, &[10], &ids).is_err());
    }
}
