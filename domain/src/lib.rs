//! The EduPulse event model: what every team depends on, alone, to read and write domain events.
//!
//! This crate is pure: no I/O, no async runtime, no database or broker client. It holds the four
//! event kinds of the platform, the envelope that carries them, typed metadata, schema versioning
//! with upcasting, and the validation that makes invalid events impossible to build.
//!
//! # Design decisions
//!
//! - **Validated values.** Payload fields that carry rules ([`LessonTitle`], [`Score`],
//!   [`AmountCents`], …) are newtypes with private fields and fallible constructors. An event that
//!   exists is valid; decoding applies the same constructors, so bad bytes give a typed
//!   [`DecodeError`], never a half-valid value.
//! - **The seed's wire format is kept.** Envelopes serialize to the JSON the original sketch wrote:
//!   `{"id","aggregate_id","occurred_at","version","metadata","event":{"type","payload"}}`. Every
//!   seed-era envelope decodes, and what this crate writes decodes with the seed's own types
//!   (fixtures under `tests/fixtures/` prove both ways). New fields are only ever *added*.
//! - **`version` is the schema version of the event payload.** The seed wrote `1` everywhere, which
//!   is exactly schema version 1 of each event. A new version of an event is introduced by bumping
//!   its [`EventKind::SCHEMA_VERSION`] and teaching [`upcast`] how to lift the older payload; stored
//!   events are never rewritten. [`QuizSubmitted`] v2 (adding `max_score`) is the worked example.
//! - **Tolerant reader.** An event type this build does not know decodes to
//!   [`DomainEvent::Unknown`], keeping the raw type name, schema version and payload, so a consumer
//!   built against an older crate can skip or forward it.
//! - **Streams.** An event belongs to the stream of its aggregate ([`StreamId`], the seed's
//!   `aggregate_id`). The seed allowed events without an aggregate; such an event is its own
//!   single-event stream whose id is the event id ([`EventEnvelope::stream_id`]). It is ordered only
//!   by the global (commit) order of the store, and `aggregate_id` stays `null` on the wire.
//! - **Published contracts.** [`schemas`] generates the JSON Schemas (draft 2020-12) of the
//!   envelope and of every event type and version, from the struct that serializes the envelope
//!   and the payload types; they are committed under `schemas/` for consumers in other languages,
//!   and a published version's schema never changes in a way that breaks them (checked by the
//!   `schemas` test suite). Past payload shapes stay as frozen types ([`schemas::QuizSubmittedV1`]).
//! - **Untrusted input.** [`EventEnvelope::decode`] bounds the input size and the JSON nesting
//!   depth before parsing, and never panics (property-tested).

pub mod achievements;
mod body;
mod envelope;
mod error;
mod events;
mod ids;
mod metadata;
pub mod schemas;
mod upcast;
mod values;

pub use envelope::{
    DEFAULT_MAX_EVENT_BYTES, DecodeLimits, EventEnvelope, MAX_NESTING_DEPTH, RawEnvelope, RawEvent,
    StoredEnvelope, Unstorable,
};
pub use error::{DecodeError, ValidationError};
pub use events::{
    BadgeAwarded, DomainEvent, EventKind, LessonPublished, PaymentProcessed, QuizSubmitted,
    UnknownEvent, event_types,
};
pub use ids::{EventId, StreamId};
pub use metadata::{Actor, ContextId, Metadata, TraceParent};
pub use upcast::upcast;
/// Re-exported: payload fields are UUIDs, so teams need no direct dependency to build events.
pub use uuid::Uuid;
pub use values::{AmountCents, LessonTitle, Score};

/// What an append expects of the stream's current version: optimistic concurrency control.
///
/// Stream versions start at 1 for the first event of a stream and are contiguous.
///
/// ```
/// use edupulse_domain::ExpectedVersion;
/// // The first event of a new aggregate, then one appended after reading version 3.
/// let create = ExpectedVersion::NoStream;
/// let update = ExpectedVersion::Exact(3);
/// assert_ne!(create, update);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// Append whatever the stream's current version is.
    Any,
    /// The stream must not exist yet (no event was ever appended to it).
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose current version is `actual` (`None`: no stream) satisfies this
    /// expectation.
    pub fn accepts(self, actual: Option<u64>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual.is_none(),
            ExpectedVersion::Exact(n) => actual == Some(n),
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(n) => write!(f, "{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_version_accepts() {
        assert!(ExpectedVersion::Any.accepts(None));
        assert!(ExpectedVersion::Any.accepts(Some(3)));
        assert!(ExpectedVersion::NoStream.accepts(None));
        assert!(!ExpectedVersion::NoStream.accepts(Some(1)));
        assert!(ExpectedVersion::Exact(2).accepts(Some(2)));
        assert!(!ExpectedVersion::Exact(2).accepts(Some(3)));
        assert!(!ExpectedVersion::Exact(0).accepts(None));
    }
}
