//! The events every phase writes: one realistic shape (a quiz submission with request metadata),
//! so that raw rows, raw messages, the seed's rows and the store's events are all the same size.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use edupulse_domain::{
    Actor, ContextId, EventEnvelope, Metadata, QuizSubmitted, Score, StreamId, TraceParent, Uuid,
};
use edupulse_ports::{Cursor, RecordedEvent};
use rand::Rng;
use serde_json::Value;

/// One event, made once; raw phases reuse its columns and bytes with fresh ids.
pub(crate) struct Template {
    /// The event's type name.
    pub(crate) event_type: String,
    /// Its schema version.
    pub(crate) schema_version: i32,
    /// `metadata` as stored.
    pub(crate) metadata: Value,
    /// `payload` as stored.
    pub(crate) payload: Value,
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
    /// The template, from one event made by [`event`].
    pub(crate) fn new() -> Self {
        let stream = StreamId::new();
        let envelope = event(stream, &mut rand::rng());
        let recorded = RecordedEvent {
            envelope: envelope.clone(),
            stream_id: stream,
            stream_version: 1,
            cursor: Cursor {
                commit: 1,
                position: 1,
            },
            recorded_at: Utc::now(),
        };
        let encoded = Bytes::from(envelope.encode());
        let headers = edupulse_nats::event_headers(&recorded);
        let wire_bytes = edupulse_nats::wire_size(&headers, encoded.len());
        Self {
            event_type: envelope.event_type().to_owned(),
            schema_version: i32::from(envelope.schema_version()),
            metadata: serde_json::to_value(&envelope.metadata).unwrap_or_default(),
            payload: envelope.event.payload(),
            occurred_at: envelope.occurred_at,
            encoded,
            headers,
            wire_bytes,
        }
    }
}

/// Request metadata as a service would attach it (correlation id, actor, W3C traceparent).
pub(crate) fn metadata(rng: &mut impl Rng) -> Metadata {
    let trace: u128 = rng.random::<u128>() | 1;
    let span: u64 = rng.random::<u64>() | 1;
    Metadata {
        correlation_id: ContextId::new(format!("req-{:016x}", rng.random::<u64>())).ok(),
        actor: Actor::new(format!("user:{}", Uuid::new_v4())).ok(),
        traceparent: TraceParent::new(format!("00-{trace:032x}-{span:016x}-01")).ok(),
        ..Metadata::default()
    }
}

/// A quiz submission to `stream`, with fresh ids and metadata.
pub(crate) fn event(stream: StreamId, rng: &mut impl Rng) -> EventEnvelope {
    let submission = Score::new(rng.random_range(0..=40) as f32 / 2.0)
        .and_then(|score| Score::new(20.0).map(|max| (score, max)))
        .and_then(|(score, max)| QuizSubmitted::new(*stream.as_uuid(), Uuid::new_v4(), score, max));
    let envelope = match submission {
        Ok(e) => EventEnvelope::new(e),
        // Unreachable with the values above; a badge keeps the bench going regardless.
        Err(_) => EventEnvelope::new(edupulse_domain::BadgeAwarded {
            badge_id: Uuid::new_v4(),
            recipient_id: *stream.as_uuid(),
        }),
    };
    envelope.with_stream(stream).with_metadata(metadata(rng))
}

/// `n` events to `stream`.
pub(crate) fn batch(stream: StreamId, n: usize, rng: &mut impl Rng) -> Vec<EventEnvelope> {
    (0..n).map(|_| event(stream, rng)).collect()
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
    pub(crate) metadata: Vec<Value>,
    pub(crate) payloads: Vec<Value>,
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
     $5::int4[], $6::timestamptz[], $7::jsonb[], $8::jsonb[]) \
     AS u(event_id, stream_id, version, event_type, schema_version, occurred_at, metadata, payload)";
