//! The projection store on PostgreSQL (migration `0008_projections.sql`): bucket positions,
//! applied versions, parked events, documents, workers and generations, next to the events.
//!
//! A unit ([`PgProjectionUnit`]) is one transaction. It starts by locking its bucket's row
//! (created on first use) and reading the position: units of one bucket run one at a time, and
//! the runner commits only when the position is still the one it read from, so a deposed worker
//! can never commit over its successor. The aggregates of a batch are locked and read in one
//! statement; applied versions, documents and parked events are kept in the unit and written by
//! one statement just before the COMMIT, with the bucket's new position. That statement also
//! proves the transaction healthy: in a transaction where anything failed it fails too, instead
//! of a COMMIT that would answer ROLLBACK (which sqlx reports as success).
//!
//! A unit that appended no event commits with `synchronous_commit = off`: it does not queue for
//! the WAL flush behind every appender, and a crash can only lose it whole (effects and position
//! together, read again from the broker). A unit that appended events waits for the flush.
//!
//! A unit sets `lock_timeout` and `idle_in_transaction_session_timeout` for its transaction to
//! the lease's time to live: a worker stuck with a bucket's row locked loses its session (and
//! the lock) about when its lease expires, and its successor waits no longer than that.
//!
//! Documents are `jsonb` rows keyed by projection, generation and key; readers use the view
//! `projection_active_documents` (the generation switched to). [`PgProjectionUnit::connection`]
//! gives projections with tables of their own the unit's transaction.

mod admin;
mod unit;

pub use unit::PgProjectionUnit;

use crate::PgEventStore;
use crate::error::map_sqlx;
use async_trait::async_trait;
use edupulse_domain::StreamId;
use edupulse_ports::StoreError;
use edupulse_ports::projection::{
    Bucket, ParkedAggregate, ProjectionId, ProjectionProgress, ProjectionStore, Skipped,
};
use sqlx::PgPool;
use std::time::Duration;

/// Locks the bucket's row (creating it on first use) and returns its position, with the unit's
/// timeouts set for the transaction.
const BEGIN_SQL: &str = r#"
WITH settings AS (
    SELECT set_config('lock_timeout', $4, true),
           set_config('idle_in_transaction_session_timeout', $4, true)
)
INSERT INTO projection_buckets AS b (projection, generation, bucket)
SELECT $1, $2, $3 FROM settings
ON CONFLICT (projection, generation, bucket) DO UPDATE SET updated_at = b.updated_at
RETURNING b.position
"#;

/// The projection store of a [`PgEventStore`]'s database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PgProjectionStore {
    pool: PgPool,
    max_event_bytes: usize,
    unit_timeout: Duration,
}

impl PgEventStore {
    /// The projection store on this store's database and pool (units emit events with this
    /// store's size limit, and time out after its lease's time to live).
    pub fn projections(&self) -> PgProjectionStore {
        PgProjectionStore {
            pool: self.pool.clone(),
            max_event_bytes: self.max_event_bytes,
            unit_timeout: self.lease.ttl(),
        }
    }
}

impl PgProjectionStore {
    /// The committed document `key` of `projection`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    pub async fn document(
        &self,
        projection: &ProjectionId,
        key: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        admin::document(&self.pool, projection, key).await
    }

    /// The committed documents of `projection` whose keys start with `prefix`, by key.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    pub async fn documents(
        &self,
        projection: &ProjectionId,
        prefix: &str,
    ) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        admin::documents(&self.pool, projection, prefix).await
    }
}

fn generation(projection: &ProjectionId) -> i32 {
    i32::try_from(projection.generation()).unwrap_or(i32::MAX)
}

fn timeout_setting(timeout: Duration) -> String {
    format!("{}ms", timeout.as_millis().max(1))
}

#[async_trait]
impl ProjectionStore for PgProjectionStore {
    type Unit = PgProjectionUnit;

    async fn begin(
        &self,
        projection: &ProjectionId,
        bucket: Bucket,
    ) -> Result<(PgProjectionUnit, u64), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_sqlx)?;
        let position: i64 = sqlx::query_scalar(BEGIN_SQL)
            .bind(projection.name())
            .bind(generation(projection))
            .bind(i32::from(bucket))
            .bind(timeout_setting(self.unit_timeout))
            .fetch_one(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        let position = crate::append::to_u64(position)?;
        let unit = PgProjectionUnit::new(tx, projection.clone(), bucket, self.max_event_bytes);
        Ok((unit, position))
    }

    async fn heartbeat(
        &self,
        projection: &ProjectionId,
        worker: &str,
        ttl: Duration,
    ) -> Result<u64, StoreError> {
        admin::heartbeat(&self.pool, projection, worker, ttl).await
    }

    async fn parked(&self, projection: &ProjectionId) -> Result<Vec<ParkedAggregate>, StoreError> {
        admin::parked(&self.pool, projection).await
    }

    async fn retry(&self, projection: &ProjectionId, stream: StreamId) -> Result<bool, StoreError> {
        admin::retry(&self.pool, projection, stream).await
    }

    async fn skip(
        &self,
        projection: &ProjectionId,
        stream: StreamId,
    ) -> Result<Skipped, StoreError> {
        admin::skip(&self.pool, projection, stream).await
    }

    async fn applied(
        &self,
        projection: &ProjectionId,
        stream: StreamId,
    ) -> Result<u64, StoreError> {
        admin::applied(&self.pool, projection, stream).await
    }

    async fn progress(&self, projection: &ProjectionId) -> Result<ProjectionProgress, StoreError> {
        admin::progress(&self.pool, projection).await
    }

    async fn active_generation(&self, name: &str) -> Result<Option<u32>, StoreError> {
        admin::active_generation(&self.pool, name).await
    }

    async fn activate(&self, projection: &ProjectionId) -> Result<(), StoreError> {
        admin::activate(&self.pool, projection).await
    }
}
