//! What runs outside units: heartbeats, the parked aggregates and what operators do with them,
//! progress, generations, and reading documents.

use super::generation;
use super::unit::parked_event;
use crate::append::to_u64;
use crate::error::{internal, map_sqlx};
use edupulse_domain::StreamId;
use edupulse_ports::StoreError;
use edupulse_ports::projection::{ParkedAggregate, ProjectionId, ProjectionProgress, Skipped};
use sqlx::{PgPool, Row};
use std::time::Duration;

/// Renews the worker's row, forgets workers gone for an hour, and counts the live ones.
const HEARTBEAT_SQL: &str = r#"
WITH beat AS (
    INSERT INTO projection_workers AS w (projection, generation, worker, expires_at)
    VALUES ($1, $2, $3, clock_timestamp() + $4::int8 * interval '1 millisecond')
    ON CONFLICT (projection, generation, worker) DO UPDATE SET expires_at = excluded.expires_at
    RETURNING 1
), forgotten AS (
    DELETE FROM projection_workers
    WHERE projection = $1 AND generation = $2
      AND expires_at < clock_timestamp() - interval '1 hour'
)
SELECT 1 + count(*) FROM projection_workers
WHERE projection = $1 AND generation = $2 AND worker <> $3 AND expires_at > clock_timestamp()
"#;

const PARKED_SQL: &str = r#"
SELECT p.stream_id, a.applied, a.retry, p.stream_version, p.bucket, p.body, p.reason
FROM projection_parked p
JOIN projection_aggregates a USING (projection, generation, stream_id)
WHERE p.projection = $1 AND p.generation = $2
ORDER BY p.stream_id, p.stream_version
"#;

const RETRY_SQL: &str = r#"
UPDATE projection_aggregates SET retry = true
WHERE projection = $1 AND generation = $2 AND stream_id = $3 AND parked
RETURNING 1
"#;

const FIRST_PARKED_SQL: &str = r#"
SELECT bucket, stream_version FROM projection_parked
WHERE projection = $1 AND generation = $2 AND stream_id = $3
ORDER BY stream_version
LIMIT 1
"#;

/// Taken in the same order as units take them (bucket, then aggregate): no deadlock with one.
const LOCK_BUCKET_SQL: &str = r#"
SELECT 1 FROM projection_buckets
WHERE projection = $1 AND generation = $2 AND bucket = $3
FOR UPDATE
"#;

const LOCK_AGGREGATE_SQL: &str = r#"
SELECT applied FROM projection_aggregates
WHERE projection = $1 AND generation = $2 AND stream_id = $3
FOR UPDATE
"#;

const DROP_PARKED_SQL: &str = r#"
DELETE FROM projection_parked
WHERE projection = $1 AND generation = $2 AND stream_id = $3 AND stream_version = $4
"#;

/// Counts versions up to `$4` as applied, asks for a retry, and counts the skipped versions in
/// the bucket's progress.
const SKIP_SQL: &str = r#"
WITH aggregate AS (
    UPDATE projection_aggregates a
    SET applied = greatest(a.applied, $4), retry = true,
        parked = EXISTS (SELECT 1 FROM projection_parked p
                         WHERE p.projection = $1 AND p.generation = $2 AND p.stream_id = $3)
    WHERE a.projection = $1 AND a.generation = $2 AND a.stream_id = $3
    RETURNING 1
)
UPDATE projection_buckets
SET applied = applied + $6
WHERE projection = $1 AND generation = $2 AND bucket = $5 AND EXISTS (SELECT 1 FROM aggregate)
"#;

const APPLIED_SQL: &str = r#"
SELECT applied FROM projection_aggregates
WHERE projection = $1 AND generation = $2 AND stream_id = $3
"#;

const PROGRESS_SQL: &str = r#"
SELECT
    (SELECT coalesce(sum(applied), 0)::int8 FROM projection_buckets
     WHERE projection = $1 AND generation = $2) AS applied,
    (SELECT coalesce(sum(pending), 0)::int8 FROM projection_buckets
     WHERE projection = $1 AND generation = $2) AS pending,
    (SELECT count(DISTINCT stream_id) FROM projection_parked
     WHERE projection = $1 AND generation = $2) AS parked_aggregates,
    (SELECT count(*) FROM projection_parked
     WHERE projection = $1 AND generation = $2) AS parked_events,
    (SELECT count(*) FROM projection_workers
     WHERE projection = $1 AND generation = $2 AND expires_at > clock_timestamp()) AS workers
"#;

const ACTIVE_SQL: &str = "SELECT generation FROM projection_generations WHERE name = $1";

const ACTIVATE_SQL: &str = r#"
INSERT INTO projection_generations (name, generation) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET generation = excluded.generation, switched_at = clock_timestamp()
"#;

const DOCUMENT_SQL: &str = r#"
SELECT document::text FROM projection_documents
WHERE projection = $1 AND generation = $2 AND key = $3
"#;

/// Keys from `$3` (inclusive) up to the first key not starting with it: `starts_with` on an
/// index range, whatever the characters of the prefix.
const DOCUMENTS_SQL: &str = r#"
SELECT key, document::text FROM projection_documents
WHERE projection = $1 AND generation = $2 AND key >= $3 AND starts_with(key, $3)
ORDER BY key
"#;

pub(super) async fn heartbeat(
    pool: &PgPool,
    projection: &ProjectionId,
    worker: &str,
    ttl: Duration,
) -> Result<u64, StoreError> {
    let live: i64 = sqlx::query_scalar(HEARTBEAT_SQL)
        .bind(projection.name())
        .bind(generation(projection))
        .bind(worker)
        .bind(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
        .fetch_one(pool)
        .await
        .map_err(map_sqlx)?;
    to_u64(live)
}

pub(super) async fn parked(
    pool: &PgPool,
    projection: &ProjectionId,
) -> Result<Vec<ParkedAggregate>, StoreError> {
    let rows = sqlx::query(PARKED_SQL)
        .bind(projection.name())
        .bind(generation(projection))
        .fetch_all(pool)
        .await
        .map_err(map_sqlx)?;
    let mut parked: Vec<ParkedAggregate> = Vec::new();
    for row in rows {
        let event = parked_event(&row)?;
        let stream = event.stream;
        match parked.last_mut() {
            Some(aggregate) if aggregate.stream == stream => aggregate.events.push(event),
            _ => parked.push(ParkedAggregate {
                stream,
                applied: to_u64(row.try_get("applied").map_err(map_sqlx)?)?,
                events: vec![event],
                retry_requested: row.try_get("retry").map_err(map_sqlx)?,
            }),
        }
    }
    Ok(parked)
}

pub(super) async fn retry(
    pool: &PgPool,
    projection: &ProjectionId,
    stream: StreamId,
) -> Result<bool, StoreError> {
    let flagged = sqlx::query(RETRY_SQL)
        .bind(projection.name())
        .bind(generation(projection))
        .bind(stream.as_uuid())
        .fetch_optional(pool)
        .await
        .map_err(map_sqlx)?;
    Ok(flagged.is_some())
}

/// The first parked event of a stream: its bucket and version.
async fn first_parked(
    conn: &mut sqlx::PgConnection,
    projection: &ProjectionId,
    stream: StreamId,
) -> Result<Option<(i32, i64)>, StoreError> {
    let row = sqlx::query(FIRST_PARKED_SQL)
        .bind(projection.name())
        .bind(generation(projection))
        .bind(stream.as_uuid())
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    row.map(|row| {
        Ok((
            row.try_get("bucket").map_err(map_sqlx)?,
            row.try_get("stream_version").map_err(map_sqlx)?,
        ))
    })
    .transpose()
}

pub(super) async fn skip(
    pool: &PgPool,
    projection: &ProjectionId,
    stream: StreamId,
) -> Result<Skipped, StoreError> {
    let (name, generation) = (projection.name(), generation(projection));
    let mut tx = pool.begin().await.map_err(map_sqlx)?;
    let Some((bucket, _)) = first_parked(&mut tx, projection, stream).await? else {
        return Ok(Skipped::NothingParked);
    };
    sqlx::query(LOCK_BUCKET_SQL)
        .bind(name)
        .bind(generation)
        .bind(bucket)
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
    let applied: Option<i64> = sqlx::query_scalar(LOCK_AGGREGATE_SQL)
        .bind(name)
        .bind(generation)
        .bind(stream.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_sqlx)?;
    // Read again under the locks: a unit may have retried the aggregate meanwhile.
    let (Some(applied), Some((_, first))) =
        (applied, first_parked(&mut tx, projection, stream).await?)
    else {
        return Ok(Skipped::NothingParked);
    };
    let (until, skipped) = if first > applied + 1 {
        (
            first - 1,
            Skipped::Gap {
                until: to_u64(first - 1)?,
            },
        )
    } else {
        sqlx::query(DROP_PARKED_SQL)
            .bind(name)
            .bind(generation)
            .bind(stream.as_uuid())
            .bind(first)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        (
            first,
            Skipped::Event {
                version: to_u64(first)?,
            },
        )
    };
    sqlx::query(SKIP_SQL)
        .bind(name)
        .bind(generation)
        .bind(stream.as_uuid())
        .bind(until)
        .bind(bucket)
        .bind((until - applied).max(0))
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
    tx.commit().await.map_err(map_sqlx)?;
    Ok(skipped)
}

pub(super) async fn applied(
    pool: &PgPool,
    projection: &ProjectionId,
    stream: StreamId,
) -> Result<u64, StoreError> {
    let applied: Option<i64> = sqlx::query_scalar(APPLIED_SQL)
        .bind(projection.name())
        .bind(generation(projection))
        .bind(stream.as_uuid())
        .fetch_optional(pool)
        .await
        .map_err(map_sqlx)?;
    applied.map_or(Ok(0), to_u64)
}

pub(super) async fn progress(
    pool: &PgPool,
    projection: &ProjectionId,
) -> Result<ProjectionProgress, StoreError> {
    let row = sqlx::query(PROGRESS_SQL)
        .bind(projection.name())
        .bind(generation(projection))
        .fetch_one(pool)
        .await
        .map_err(map_sqlx)?;
    let get = |column: &str| -> Result<u64, StoreError> {
        to_u64(row.try_get(column).map_err(map_sqlx)?)
    };
    Ok(ProjectionProgress {
        applied: get("applied")?,
        parked_aggregates: get("parked_aggregates")?,
        parked_events: get("parked_events")?,
        pending: get("pending")?,
        workers: get("workers")?,
    })
}

pub(super) async fn active_generation(
    pool: &PgPool,
    name: &str,
) -> Result<Option<u32>, StoreError> {
    let generation: Option<i32> = sqlx::query_scalar(ACTIVE_SQL)
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(map_sqlx)?;
    generation
        .map(|g| u32::try_from(g).map_err(|_| internal(format!("generation {g} out of range"))))
        .transpose()
}

pub(super) async fn activate(pool: &PgPool, projection: &ProjectionId) -> Result<(), StoreError> {
    sqlx::query(ACTIVATE_SQL)
        .bind(projection.name())
        .bind(generation(projection))
        .execute(pool)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}

fn parse(key: &str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| internal(format!("document {key}: {e}")))
}

pub(super) async fn document(
    pool: &PgPool,
    projection: &ProjectionId,
    key: &str,
) -> Result<Option<serde_json::Value>, StoreError> {
    let text: Option<String> = sqlx::query_scalar(DOCUMENT_SQL)
        .bind(projection.name())
        .bind(generation(projection))
        .bind(key)
        .fetch_optional(pool)
        .await
        .map_err(map_sqlx)?;
    text.map(|text| parse(key, &text)).transpose()
}

pub(super) async fn documents(
    pool: &PgPool,
    projection: &ProjectionId,
    prefix: &str,
) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
    let rows = sqlx::query(DOCUMENTS_SQL)
        .bind(projection.name())
        .bind(generation(projection))
        .bind(prefix)
        .fetch_all(pool)
        .await
        .map_err(map_sqlx)?;
    rows.into_iter()
        .map(|row| {
            let key: String = row.try_get("key").map_err(map_sqlx)?;
            let text: String = row.try_get(1).map_err(map_sqlx)?;
            let document = parse(&key, &text)?;
            Ok((key, document))
        })
        .collect()
}
