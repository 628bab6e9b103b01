//! Appending one batch to one stream: the single-statement append, and how its failures become
//! conflicts, replays or duplicate-id errors.

use crate::error::{UniqueViolation, internal, map_sqlx, unavailable, unique_violation};
use crate::hints::HintMode;
use chrono::{DateTime, Utc};
use edupulse_domain::{EventEnvelope, ExpectedVersion, StreamId, Uuid};
use edupulse_ports::{AppendOutcome, AppendedEvent, StoreError};
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
                      $9::text[]::json[], $10::text[]::json[])
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
/// event has the same content. The texts are compared as jsonb, whose equality is semantic (key
/// order, spacing and number spelling do not matter), which is what "the same event" means.
const LOOKUP_IDS_SQL: &str = r#"
SELECT e.position, e.stream_version,
       (e.stream_id = $2
        AND e.aggregate_id IS NOT DISTINCT FROM u.aggregate_id
        AND e.event_type = u.event_type
        AND e.schema_version = u.schema_version
        AND e.metadata::jsonb = u.metadata
        AND e.payload::jsonb = u.payload) AS same
FROM unnest($1::uuid[], $3::uuid[], $4::text[], $5::int4[], $6::text[]::jsonb[],
            $7::text[]::jsonb[])
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
    /// As [`EventEnvelope::metadata_json`] writes it.
    pub(crate) metadata: Vec<String>,
    /// As [`EventEnvelope::payload_json`] writes it: the `json` column keeps this text, and the
    /// relay sends it on as it is.
    pub(crate) payloads: Vec<String>,
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
        self.metadata.push(e.metadata_json());
        self.payloads.push(e.payload_json());
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
    Refused(Refusal),
}

/// Why the statement inserted nothing.
enum Refusal {
    /// The expectation did not hold. The head as the statement saw it.
    Rejected { head: Option<u64> },
    /// A unique constraint stopped the insert (the statement failed).
    Clashed(UniqueViolation),
}

async fn run_append_statement(
    conn: &mut PgConnection,
    stream: StreamId,
    expected: ExpectedVersion,
    columns: &Columns,
    hint: HintMode<'_>,
) -> Result<Attempt, StoreError> {
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
        .await;
    let row = match row {
        Ok(row) => row,
        Err(error) => {
            return match unique_violation(&error) {
                Some(clash) => Ok(Attempt::Refused(Refusal::Clashed(clash))),
                None => Err(map_sqlx(error)),
            };
        }
    };
    let head: Option<i64> = row.try_get("head").map_err(map_sqlx)?;
    let positions: Vec<i64> = row.try_get("positions").map_err(map_sqlx)?;
    decode_attempt(head, &positions, &columns.event_ids)
}

fn decode_attempt(
    head: Option<i64>,
    positions: &[i64],
    ids: &[Uuid],
) -> Result<Attempt, StoreError> {
    let head = head.map(to_u64).transpose()?;
    if positions.is_empty() {
        return Ok(Attempt::Refused(Refusal::Rejected { head }));
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

/// Where an attempt of an append ended.
enum Step {
    /// The call's answer.
    Done(Result<AppendOutcome, StoreError>),
    /// Try the statement again (see [`retry_or_give_up`]).
    Retry,
}

/// One append call, as its attempts see it.
struct Call<'a> {
    stream: StreamId,
    expected: ExpectedVersion,
    columns: &'a Columns,
    hint: HintMode<'a>,
    /// 1 for the first attempt.
    attempt: usize,
}

/// How an append's statements relate to the transaction around them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isolation {
    /// Each statement commits on its own.
    Autocommit,
    /// Each attempt runs in a savepoint of the transaction the connection is in.
    Savepoint,
}

/// Appends one validated batch on `conn`.
///
/// With [`Isolation::Autocommit`], every statement runs on its own (autocommit): an append reported as
/// appended is committed, and with [`HintMode::AfterCommit`] its hint is sent at once.
///
/// With [`Isolation::Savepoint`], `conn` is in a transaction (or gets one, BEGIN/COMMIT, when it is not), and
/// every statement of the append, the lookups that resolve a refusal included, runs inside a
/// savepoint of it: any failure of the append (a conflict, a unique violation, a cancelled
/// statement, a timeout) is rolled back to that savepoint and leaves the transaction as it was.
/// Only the savepoint commands themselves run in the enclosing transaction; when one of those
/// fails, the transaction is aborted, and its COMMIT will answer ROLLBACK, which sqlx reports as
/// success: whoever commits it must prove it healthy first (the group commit does, see
/// `group::one_by_one`). The hint is then the committer's to send.
pub(crate) async fn append_batch(
    conn: &mut PgConnection,
    stream: StreamId,
    expected: ExpectedVersion,
    events: &[EventEnvelope],
    isolation: Isolation,
    hint: HintMode<'_>,
) -> Result<AppendOutcome, StoreError> {
    let columns = Columns::of(events);
    let mut call = Call {
        stream,
        expected,
        columns: &columns,
        hint,
        attempt: 0,
    };
    loop {
        call.attempt += 1;
        let step = if isolation == Isolation::Savepoint {
            attempt_in_savepoint(conn, &call).await
        } else {
            attempt_alone(conn, &call).await
        };
        match step {
            Step::Done(result) => return result,
            Step::Retry => continue,
        }
    }
}

/// One attempt, each statement committing on its own.
async fn attempt_alone(conn: &mut PgConnection, call: &Call<'_>) -> Step {
    let attempt = run_append_statement(conn, call.stream, call.expected, call.columns, call.hint);
    match attempt.await {
        Ok(Attempt::Appended(events)) => {
            if let HintMode::AfterCommit(hints) = call.hint {
                hints.committed();
            }
            Step::Done(Ok(appended(call.stream, events)))
        }
        Ok(Attempt::Refused(refusal)) => resolve(conn, call, refusal).await,
        Err(error) => Step::Done(Err(error)),
    }
}

/// One attempt in a savepoint of the transaction `conn` is in.
async fn attempt_in_savepoint(conn: &mut PgConnection, call: &Call<'_>) -> Step {
    let mut nested = match conn.begin().await {
        Ok(nested) => nested,
        Err(error) => return Step::Done(Err(map_sqlx(error))),
    };
    let attempt = run_append_statement(
        &mut nested,
        call.stream,
        call.expected,
        call.columns,
        call.hint,
    );
    let step = match attempt.await {
        Ok(Attempt::Appended(events)) => {
            return match nested.commit().await {
                Ok(()) => Step::Done(Ok(appended(call.stream, events))),
                Err(error) => Step::Done(Err(map_sqlx(error))),
            };
        }
        // The statement succeeded and inserted nothing: its savepoint serves the lookups.
        Ok(Attempt::Refused(refusal @ Refusal::Rejected { .. })) => {
            resolve(&mut nested, call, refusal).await
        }
        // A unique violation aborted the savepoint: the lookups need one of their own.
        Ok(Attempt::Refused(refusal)) => {
            if let Err(error) = nested.rollback().await {
                return Step::Done(Err(map_sqlx(error)));
            }
            if let Some(step) = retry_or_give_up(call, &refusal) {
                return step;
            }
            let mut nested = match conn.begin().await {
                Ok(nested) => nested,
                Err(error) => return Step::Done(Err(map_sqlx(error))),
            };
            let step = resolve(&mut nested, call, refusal).await;
            return match nested.rollback().await {
                Ok(()) => step,
                Err(error) => Step::Done(Err(map_sqlx(error))),
            };
        }
        Err(error) => Step::Done(Err(error)),
    };
    // Nothing to keep: a refusal wrote nothing, a failure is undone.
    match nested.rollback().await {
        Ok(()) => step,
        Err(error) => Step::Done(Err(map_sqlx(error))),
    }
}

/// The outcomes of a refusal that need no lookup: another writer took the next version of a
/// stream appended to at any version (try again, a bounded number of times).
fn retry_or_give_up(call: &Call<'_>, refusal: &Refusal) -> Option<Step> {
    if !matches!(refusal, Refusal::Clashed(UniqueViolation::StreamVersion))
        || call.expected != ExpectedVersion::Any
    {
        return None;
    }
    if call.attempt <= ANY_RETRIES {
        return Some(Step::Retry);
    }
    Some(Step::Done(Err(unavailable(format!(
        "stream {}: {ANY_RETRIES} concurrent appends won the race in a row",
        call.stream
    )))))
}

/// Resolves a refusal of the statement by looking the stream and the batch's ids up: a conflict,
/// a replay, a duplicate id, or another attempt.
async fn resolve(conn: &mut PgConnection, call: &Call<'_>, refusal: Refusal) -> Step {
    if let Some(step) = retry_or_give_up(call, &refusal) {
        return step;
    }
    let (stream, expected, columns) = (call.stream, call.expected, call.columns);
    match refusal {
        Refusal::Rejected { head } => {
            Step::Done(conflict_or_replay(conn, stream, expected, head, columns).await)
        }
        // Another writer took the next version after our statement read the head.
        Refusal::Clashed(UniqueViolation::StreamVersion) => {
            match stream_version(conn, stream).await {
                Ok(actual) => {
                    Step::Done(conflict_or_replay(conn, stream, expected, actual, columns).await)
                }
                Err(error) => Step::Done(Err(error)),
            }
        }
        Refusal::Clashed(UniqueViolation::EventId) => match lookup_ids(conn, stream, columns).await
        {
            Ok(Some(resolved)) => Step::Done(resolved),
            // The clashing event is no longer visible: its writer rolled back. Try again.
            Ok(None) if call.attempt <= ANY_RETRIES => Step::Retry,
            Ok(None) => Step::Done(Err(unavailable(
                "event ids kept clashing with rolled-back appends",
            ))),
            Err(error) => Step::Done(Err(error)),
        },
    }
}

fn appended(stream_id: StreamId, events: Vec<AppendedEvent>) -> AppendOutcome {
    AppendOutcome {
        stream_id,
        events,
        replayed: false,
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
            Ok(Attempt::Refused(Refusal::Rejected { head: Some(3) }))
        ));
        let Ok(Attempt::Appended(events)) = decode_attempt(Some(3), &[10, 11], &ids) else {
            panic!("appended")
        };
        assert_eq!(events[0].stream_version, 4);
        assert_eq!(events[1].position, 11);
        assert!(decode_attempt(None, &[10], &ids).is_err());
    }
}
