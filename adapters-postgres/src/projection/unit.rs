//! One unit of a projection: a transaction that keeps its writes until the commit.

use super::generation;
use crate::append::{self, Isolation, to_u64};
use crate::error::{internal, map_sqlx};
use crate::hints::HintMode;
use async_trait::async_trait;
use bytes::Bytes;
use edupulse_domain::{EventEnvelope, ExpectedVersion, StreamId, Uuid};
use edupulse_ports::projection::{
    AggregateProgress, Bucket, BucketEvent, ParkReason, ParkedProjectionEvent, ProjectionId,
    ProjectionUnit,
};
use edupulse_ports::{AppendOutcome, StoreError, validate_batch};
use sqlx::{PgConnection, Postgres, Row, Transaction};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Locks and reads the aggregates of a batch (rows of other buckets are never asked for, and
/// the bucket's lock keeps other units away from these: no lock order to get wrong).
const LOCK_AGGREGATES_SQL: &str = r#"
SELECT a.stream_id, a.applied,
       CASE WHEN a.parked THEN
           (SELECT min(p.stream_version) FROM projection_parked p
            WHERE p.projection = a.projection AND p.generation = a.generation
              AND p.stream_id = a.stream_id)
       END AS first_parked
FROM projection_aggregates a
WHERE a.projection = $1 AND a.generation = $2 AND a.stream_id = ANY($3::uuid[])
FOR UPDATE OF a
"#;

/// Takes one aggregate's parked events back (the aggregate row is locked by the unit).
const TAKE_PARKED_SQL: &str = r#"
DELETE FROM projection_parked
WHERE projection = $1 AND generation = $2 AND stream_id = $3
RETURNING stream_id, stream_version, bucket, body, reason
"#;

/// Serialises the units that use one document, whether or not its row exists yet (a row lock
/// cannot lock a row that is not there: two units would both start from nothing and the second
/// would overwrite the first). Held until the unit ends; a deadlock between two units (40P01)
/// is reported as `Unavailable`, and the runner runs the unit again.
const LOCK_DOCUMENT_SQL: &str = "SELECT pg_advisory_xact_lock(hashtextextended(format('projection-document/%s/%s/%s', $1, $2, $3), 0))";

/// Run after [`LOCK_DOCUMENT_SQL`], in a statement of its own: its snapshot then sees what
/// the unit that held the lock committed.
const LOAD_SQL: &str = r#"
SELECT document::text
FROM projection_documents
WHERE projection = $1 AND generation = $2 AND key = $3
FOR UPDATE
"#;

/// Takes the parked events of the aggregates of bucket `$3` flagged for a retry: they are no
/// longer parked, and their events come back to be applied or parked again.
const TAKE_RETRIES_SQL: &str = r#"
WITH flagged AS (
    UPDATE projection_aggregates a
    SET retry = false, parked = false
    WHERE a.projection = $1 AND a.generation = $2 AND a.retry AND a.parked
      AND a.stream_id IN (SELECT p.stream_id FROM projection_parked p
                          WHERE p.projection = $1 AND p.generation = $2 AND p.bucket = $3)
    RETURNING a.stream_id
)
DELETE FROM projection_parked p
USING flagged f
WHERE p.projection = $1 AND p.generation = $2 AND p.stream_id = f.stream_id
RETURNING p.stream_id, p.stream_version, p.bucket, p.body, p.reason
"#;

/// Writes what the unit kept (aggregates, documents, parked events) and moves the bucket, in one
/// statement; it returns a row only if the bucket's row is there (it is: the unit locked it).
///
/// `$16` is the transaction's `synchronous_commit`: `off` for a unit that appended no event. Its
/// COMMIT then does not wait for the WAL flush (which every appender and every other unit
/// queues for); a crash may lose such a unit, but whole: its effects with its position, so the
/// bucket is read again from the position before it and nothing is applied twice or lost. A
/// unit that appended events waits for the flush, since the relay may publish them at once.
const COMMIT_SQL: &str = r#"
WITH durability AS (
    SELECT set_config('synchronous_commit', $16, true)
), aggregates AS (
    INSERT INTO projection_aggregates AS a (projection, generation, stream_id, applied, parked)
    SELECT $1, $2, u.stream_id, u.applied, u.parked
    FROM unnest($6::uuid[], $7::int8[], $8::bool[]) AS u(stream_id, applied, parked)
    ON CONFLICT (projection, generation, stream_id)
        DO UPDATE SET applied = excluded.applied, parked = excluded.parked
    RETURNING 1
), documents AS (
    INSERT INTO projection_documents AS d (projection, generation, key, document)
    SELECT $1, $2, u.key, u.document::jsonb
    FROM unnest($9::text[], $10::text[]) AS u(key, document)
    ON CONFLICT (projection, generation, key) DO UPDATE SET document = excluded.document
    RETURNING 1
), parked AS (
    INSERT INTO projection_parked (projection, generation, stream_id, stream_version, bucket,
                                   body, reason)
    SELECT $1, $2, u.stream_id, u.stream_version, $3, u.body, u.reason
    FROM unnest($11::uuid[], $12::int8[], $13::bytea[], $14::text[])
        AS u(stream_id, stream_version, body, reason)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
UPDATE projection_buckets
SET position = $4, pending = $5, applied = applied + $15, updated_at = clock_timestamp()
FROM durability
WHERE projection = $1 AND generation = $2 AND bucket = $3
RETURNING (SELECT count(*) FROM aggregates) AS aggregates,
          (SELECT count(*) FROM documents) AS documents,
          (SELECT count(*) FROM parked) AS parked
"#;

/// A row of `projection_parked` as the port's type.
pub(super) fn parked_event(
    row: &sqlx::postgres::PgRow,
) -> Result<ParkedProjectionEvent, StoreError> {
    let bucket: i32 = row.try_get("bucket").map_err(map_sqlx)?;
    let body: Vec<u8> = row.try_get("body").map_err(map_sqlx)?;
    Ok(ParkedProjectionEvent {
        stream: StreamId::from_uuid(row.try_get("stream_id").map_err(map_sqlx)?),
        bucket: Bucket::try_from(bucket)
            .map_err(|_| internal(format!("bucket {bucket} out of range")))?,
        version: to_u64(row.try_get("stream_version").map_err(map_sqlx)?)?,
        body: Bytes::from(body),
        reason: row.try_get("reason").map_err(map_sqlx)?,
    })
}

/// An aggregate as the unit knows it.
#[derive(Debug, Clone, Copy, Default)]
struct Aggregate {
    progress: AggregateProgress,
    changed: bool,
}

/// An event parked in this unit, written at commit.
struct Parking {
    stream: StreamId,
    version: u64,
    body: Bytes,
    reason: String,
}

/// A unit of [`super::PgProjectionStore`]: one transaction, holding its bucket's row lock.
/// Dropped without a commit, it rolls back.
pub struct PgProjectionUnit {
    tx: Transaction<'static, Postgres>,
    projection: ProjectionId,
    bucket: Bucket,
    max_event_bytes: usize,
    aggregates: HashMap<StreamId, Aggregate>,
    documents: HashMap<String, Option<serde_json::Value>>,
    saved: BTreeMap<String, String>,
    parking: Vec<Parking>,
    parked_keys: HashSet<(StreamId, u64)>,
    /// Versions newly applied in this unit, over all aggregates.
    applied: u64,
    /// Whether the unit appended events (its commit then waits for the WAL flush).
    appended: bool,
}

impl PgProjectionUnit {
    pub(super) fn new(
        tx: Transaction<'static, Postgres>,
        projection: ProjectionId,
        bucket: Bucket,
        max_event_bytes: usize,
    ) -> Self {
        Self {
            tx,
            projection,
            bucket,
            max_event_bytes,
            aggregates: HashMap::new(),
            documents: HashMap::new(),
            saved: BTreeMap::new(),
            parking: Vec::new(),
            parked_keys: HashSet::new(),
            applied: 0,
            appended: false,
        }
    }

    /// The unit's transaction, for projections that keep tables of their own: what they write
    /// there commits with the unit's progress, or not at all.
    pub fn connection(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    async fn read_aggregates(&mut self, streams: &[Uuid]) -> Result<(), StoreError> {
        let rows = sqlx::query(LOCK_AGGREGATES_SQL)
            .bind(self.projection.name())
            .bind(generation(&self.projection))
            .bind(streams)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_sqlx)?;
        for stream in streams {
            self.aggregates
                .entry(StreamId::from_uuid(*stream))
                .or_default();
        }
        for row in rows {
            let stream: Uuid = row.try_get("stream_id").map_err(map_sqlx)?;
            let applied = to_u64(row.try_get("applied").map_err(map_sqlx)?)?;
            let first_parked: Option<i64> = row.try_get("first_parked").map_err(map_sqlx)?;
            self.aggregates.insert(
                StreamId::from_uuid(stream),
                Aggregate {
                    progress: AggregateProgress {
                        applied,
                        parked: first_parked.map(to_u64).transpose()?,
                    },
                    changed: false,
                },
            );
        }
        Ok(())
    }

    fn entry(&mut self, stream: StreamId) -> &mut Aggregate {
        let aggregate = self.aggregates.entry(stream).or_default();
        aggregate.changed = true;
        aggregate
    }
}

#[async_trait]
impl ProjectionUnit for PgProjectionUnit {
    async fn aggregate(&mut self, stream: StreamId) -> Result<AggregateProgress, StoreError> {
        if !self.aggregates.contains_key(&stream) {
            self.read_aggregates(&[*stream.as_uuid()]).await?;
        }
        Ok(self
            .aggregates
            .get(&stream)
            .map(|a| a.progress)
            .unwrap_or_default())
    }

    async fn lock_aggregates(&mut self, streams: &[StreamId]) -> Result<(), StoreError> {
        let unknown: Vec<Uuid> = streams
            .iter()
            .filter(|s| !self.aggregates.contains_key(s))
            .map(|s| *s.as_uuid())
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        self.read_aggregates(&unknown).await
    }

    async fn record_applied(&mut self, stream: StreamId, version: u64) -> Result<(), StoreError> {
        let aggregate = self.entry(stream);
        let before = aggregate.progress.applied;
        aggregate.progress.applied = before.max(version);
        self.applied += version.saturating_sub(before);
        Ok(())
    }

    async fn park(
        &mut self,
        event: &BucketEvent,
        _bucket: Bucket,
        reason: &ParkReason,
    ) -> Result<(), StoreError> {
        let progress = &mut self.entry(event.stream).progress;
        progress.parked = Some(
            progress
                .parked
                .map_or(event.version, |v| v.min(event.version)),
        );
        if self.parked_keys.insert((event.stream, event.version)) {
            self.parking.push(Parking {
                stream: event.stream,
                version: event.version,
                body: event.body.clone(),
                reason: reason.to_string(),
            });
        }
        Ok(())
    }

    async fn take_retries(
        &mut self,
        bucket: Bucket,
    ) -> Result<Vec<ParkedProjectionEvent>, StoreError> {
        let rows = sqlx::query(TAKE_RETRIES_SQL)
            .bind(self.projection.name())
            .bind(generation(&self.projection))
            .bind(i32::from(bucket))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_sqlx)?;
        let mut taken = Vec::with_capacity(rows.len());
        for row in &rows {
            let event = parked_event(row)?;
            // Read again (already locked by the statement) when next asked about.
            self.aggregates.remove(&event.stream);
            taken.push(event);
        }
        taken.sort_by_key(|p| (*p.stream.as_uuid(), p.version));
        Ok(taken)
    }

    async fn take_parked(
        &mut self,
        stream: StreamId,
    ) -> Result<Vec<ParkedProjectionEvent>, StoreError> {
        let rows = sqlx::query(TAKE_PARKED_SQL)
            .bind(self.projection.name())
            .bind(generation(&self.projection))
            .bind(stream.as_uuid())
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_sqlx)?;
        let mut taken = rows
            .iter()
            .map(parked_event)
            .collect::<Result<Vec<_>, _>>()?;
        let bucket = self.bucket;
        let (mine, others): (Vec<Parking>, Vec<Parking>) = std::mem::take(&mut self.parking)
            .into_iter()
            .partition(|p| p.stream == stream);
        self.parking = others;
        for p in mine {
            self.parked_keys.remove(&(p.stream, p.version));
            taken.push(ParkedProjectionEvent {
                stream,
                bucket,
                version: p.version,
                body: p.body,
                reason: p.reason,
            });
        }
        taken.sort_by_key(|p| p.version);
        let aggregate = self.entry(stream);
        aggregate.progress.parked = None;
        Ok(taken)
    }

    async fn load(&mut self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        if let Some(document) = self.documents.get(key) {
            return Ok(document.clone());
        }
        sqlx::query(LOCK_DOCUMENT_SQL)
            .bind(self.projection.name())
            .bind(generation(&self.projection))
            .bind(key)
            .execute(&mut *self.tx)
            .await
            .map_err(map_sqlx)?;
        let text: Option<String> = sqlx::query_scalar(LOAD_SQL)
            .bind(self.projection.name())
            .bind(generation(&self.projection))
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_sqlx)?;
        let document = text
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| internal(format!("document {key}: {e}")))?;
        self.documents.insert(key.to_owned(), document.clone());
        Ok(document)
    }

    async fn save(&mut self, key: &str, document: serde_json::Value) -> Result<(), StoreError> {
        self.saved.insert(key.to_owned(), document.to_string());
        self.documents.insert(key.to_owned(), Some(document));
        Ok(())
    }

    async fn emit(
        &mut self,
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<EventEnvelope>,
    ) -> Result<AppendOutcome, StoreError> {
        validate_batch(stream, &events, self.max_event_bytes)?;
        // The unit's COMMIT is what makes the events visible: the trigger hints the relay then.
        let outcome = append::append_batch(
            &mut self.tx,
            stream,
            expected,
            &events,
            Isolation::Savepoint,
            HintMode::AtCommit,
        )
        .await?;
        self.appended |= !outcome.replayed;
        Ok(outcome)
    }

    async fn commit(mut self, position: u64, pending: u64) -> Result<(), StoreError> {
        let changed: Vec<(Uuid, i64, bool)> = self
            .aggregates
            .iter()
            .filter(|(_, a)| a.changed)
            .map(|(stream, a)| {
                let applied = i64::try_from(a.progress.applied).unwrap_or(i64::MAX);
                (*stream.as_uuid(), applied, a.progress.parked.is_some())
            })
            .collect();
        let (keys, documents): (Vec<&str>, Vec<&str>) = self
            .saved
            .iter()
            .map(|(k, d)| (k.as_str(), d.as_str()))
            .unzip();
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let row = sqlx::query(COMMIT_SQL)
            .bind(self.projection.name())
            .bind(generation(&self.projection))
            .bind(i32::from(self.bucket))
            .bind(to_i64(position))
            .bind(to_i64(pending))
            .bind(changed.iter().map(|c| c.0).collect::<Vec<_>>())
            .bind(changed.iter().map(|c| c.1).collect::<Vec<_>>())
            .bind(changed.iter().map(|c| c.2).collect::<Vec<_>>())
            .bind(keys)
            .bind(documents)
            .bind(
                self.parking
                    .iter()
                    .map(|p| *p.stream.as_uuid())
                    .collect::<Vec<_>>(),
            )
            .bind(
                self.parking
                    .iter()
                    .map(|p| to_i64(p.version))
                    .collect::<Vec<_>>(),
            )
            .bind(
                self.parking
                    .iter()
                    .map(|p| p.body.to_vec())
                    .collect::<Vec<_>>(),
            )
            .bind(
                self.parking
                    .iter()
                    .map(|p| p.reason.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(to_i64(self.applied))
            .bind(if self.appended { "on" } else { "off" })
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_sqlx)?;
        if row.is_none() {
            return Err(internal(format!(
                "bucket {} of {} vanished during its unit",
                self.bucket, self.projection
            )));
        }
        self.tx.commit().await.map_err(map_sqlx)
    }
}
