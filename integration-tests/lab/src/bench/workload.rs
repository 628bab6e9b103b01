//! The events every phase writes: the harness workload's one shape
//! ([`quiz_submission`](edupulse_integration_tests::workload::quiz_submission), a quiz submission
//! with request metadata), so that raw rows, raw messages, the seed's rows and the store's events
//! are all the same size.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use edupulse_domain::{StreamId, Uuid};
use edupulse_integration_tests::workload::quiz_submission;
use edupulse_ports::{Cursor, RecordedEvent};

/// One event, made once; raw phases reuse its columns and bytes with fresh ids.
pub(crate) struct Template {
    /// The event's type name.
    pub(crate) event_type: String,
    /// Its schema version.
    pub(crate) schema_version: i32,
    /// `metadata` as stored (the appender's text).
    pub(crate) metadata: String,
    /// `payload` as stored (the appender's text).
    pub(crate) payload: String,
    /// When it occurred.
    pub(crate) occurred_at: DateTime<Utc>,
    /// The encoded envelope (the NATS message payload).
    pub(crate) encoded: Bytes,
    /// The NATS headers the relay would send, `Nats-Msg-Id` included.
    pub(crate) headers: async_nats::HeaderMap,
    /// Message size on the wire (payload plus headers).
    pub(crate) wire_bytes: usize,
}

impl Template {
    /// The template, from one event of the workload's shape.
    pub(crate) fn new() -> Self {
        let stream = StreamId::new();
        let envelope = quiz_submission(stream, &mut rand::rng());
        let recorded = RecordedEvent {
            envelope: envelope.clone(),
            stream_id: stream,
            stream_version: 1,
            cursor: Cursor {
                commit: 1,
                position: 1,
            },
            recorded_at: Utc::now(),
            body: None,
        };
        let encoded = Bytes::from(envelope.encode());
        let headers = edupulse_nats::event_headers(&recorded);
        let wire_bytes = edupulse_nats::wire_size(&headers, encoded.len());
        Self {
            event_type: envelope.event_type().to_owned(),
            schema_version: i32::from(envelope.schema_version()),
            metadata: envelope.metadata_json(),
            payload: envelope.payload_json(),
            occurred_at: envelope.occurred_at,
            encoded,
            headers,
            wire_bytes,
        }
    }
}

/// Rows in columns, bound as arrays by one `INSERT … SELECT FROM unnest(…)`.
#[derive(Default)]
pub(crate) struct Rows {
    pub(crate) event_ids: Vec<Uuid>,
    pub(crate) stream_ids: Vec<Uuid>,
    pub(crate) versions: Vec<i64>,
    pub(crate) event_types: Vec<String>,
    pub(crate) schema_versions: Vec<i32>,
    pub(crate) occurred_at: Vec<DateTime<Utc>>,
    pub(crate) metadata: Vec<String>,
    pub(crate) payloads: Vec<String>,
}

impl Rows {
    /// Adds one row of the template's content with a fresh (time-ordered, like the store's) id.
    pub(crate) fn push(&mut self, t: &Template, stream: Uuid, version: i64) {
        self.event_ids.push(Uuid::now_v7());
        self.stream_ids.push(stream);
        self.versions.push(version);
        self.event_types.push(t.event_type.clone());
        self.schema_versions.push(t.schema_version);
        self.occurred_at.push(t.occurred_at);
        self.metadata.push(t.metadata.clone());
        self.payloads.push(t.payload.clone());
    }

    /// Number of rows.
    pub(crate) fn len(&self) -> usize {
        self.event_ids.len()
    }

    /// Binds the columns, in order, to `query` (`$1`…`$8`).
    pub(crate) fn bind(
        self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.event_ids)
            .bind(self.stream_ids)
            .bind(self.versions)
            .bind(self.event_types)
            .bind(self.schema_versions)
            .bind(self.occurred_at)
            .bind(self.metadata)
            .bind(self.payloads)
    }
}

/// The `unnest` of [`Rows::bind`]'s parameters, as `u(event_id, stream_id, version, event_type,
/// schema_version, occurred_at, metadata, payload)`.
pub(crate) const UNNEST: &str = "unnest($1::uuid[], $2::uuid[], $3::int8[], $4::text[], \
     $5::int4[], $6::timestamptz[], $7::text[]::json[], $8::text[]::json[]) \
     AS u(event_id, stream_id, version, event_type, schema_version, occurred_at, metadata, payload)";
