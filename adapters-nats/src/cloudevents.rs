//! CloudEvents 1.0 in binary content mode: every published event also carries its CloudEvents
//! attributes as `ce-*` headers, so a CloudEvents-aware consumer (an SDK, a bridge, a router)
//! reads the stream unchanged. The body stays the seed-compatible envelope, byte for byte: the
//! CloudEvents `data` is the whole envelope.
//!
//! | attribute | header | value |
//! |---|---|---|
//! | `specversion` | `ce-specversion` | `1.0` |
//! | `id` | `ce-id` | the event id (as `Nats-Msg-Id` and the body's `id`) |
//! | `source` | `ce-source` | [`SOURCE`], the same for every event of the backbone: ids are globally unique UUIDs, so `source` + `id` is unique |
//! | `type` | `ce-type` | `edupulse.<EventType>.v<schema version>` ([`ce_type`]): a new schema version is a new type, as it needs its own handling |
//! | `time` | `ce-time` | the body's `occurred_at`, the same RFC 3339 text |
//! | `subject` | `ce-subject` | the stream (aggregate) id, as the subject's last token |
//! | `dataschema` | `ce-dataschema` | the `$id` of the committed JSON Schema of the body (`schemas/events/<EventType>.v<version>.json`); absent for an event type or version this build does not know |
//! | `datacontenttype` | `Content-Type` | `application/json`, the header the message always had (as in the HTTP binding's binary mode) |
//! | `streamversion` (extension) | `ce-streamversion` | the event's version in its stream, from 1 (as `Edupulse-Stream-Version`) |
//! | `position` (extension) | `ce-position` | the event's global position in the store (as `Edupulse-Position`) |
//!
//! The two extensions let a consumer that reads only CloudEvents attributes check per-stream
//! order; [`crate::NatsConsumer`] reads the `Edupulse-*` headers and falls back to them.
//! Every value is ASCII without spaces, quotes or `%`, so none needs the bindings'
//! percent-encoding, and none can hold a CR or LF.

use crate::wire::headers;
use async_nats::HeaderMap;
use async_nats::header::HeaderName;
use chrono::{DateTime, SecondsFormat, Utc};
use edupulse_ports::RecordedEvent;

/// The CloudEvents version of the attributes.
pub const SPEC_VERSION: &str = "1.0";

/// The `source` of every event the backbone publishes.
pub const SOURCE: &str = "urn:edupulse:event-backbone";

/// The CloudEvents `type` of an event: `edupulse.<event type>.v<schema version>`.
///
/// ```
/// assert_eq!(edupulse_nats::ce_type("QuizSubmitted", 2), "edupulse.QuizSubmitted.v2");
/// ```
pub fn ce_type(event_type: &str, schema_version: u16) -> String {
    format!("edupulse.{event_type}.v{schema_version}")
}

/// The CloudEvents `time` of an instant: RFC 3339 as the envelope writes `occurred_at`.
pub(crate) fn ce_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

mod names {
    use super::{HeaderName, headers};

    pub(super) const SPECVERSION: HeaderName = HeaderName::from_static(headers::CE_SPECVERSION);
    pub(super) const ID: HeaderName = HeaderName::from_static(headers::CE_ID);
    pub(super) const SOURCE: HeaderName = HeaderName::from_static(headers::CE_SOURCE);
    pub(super) const TYPE: HeaderName = HeaderName::from_static(headers::CE_TYPE);
    pub(super) const TIME: HeaderName = HeaderName::from_static(headers::CE_TIME);
    pub(super) const SUBJECT: HeaderName = HeaderName::from_static(headers::CE_SUBJECT);
    pub(super) const DATASCHEMA: HeaderName = HeaderName::from_static(headers::CE_DATASCHEMA);
    pub(super) const STREAM_VERSION: HeaderName =
        HeaderName::from_static(headers::CE_STREAMVERSION);
    pub(super) const POSITION: HeaderName = HeaderName::from_static(headers::CE_POSITION);
}

/// The values the `Edupulse-*` headers and the CloudEvents attributes share, formatted once.
pub(crate) struct Ids {
    /// The event id.
    pub(crate) id: String,
    /// The stream id.
    pub(crate) stream: String,
    /// The version in the stream.
    pub(crate) version: String,
    /// The global position.
    pub(crate) position: String,
}

/// Adds the CloudEvents attributes of `event` to `map`; `ids` are its values already formatted.
pub(crate) fn insert(map: &mut HeaderMap, event: &RecordedEvent, ids: Ids) {
    let envelope = &event.envelope;
    let (event_type, version) = (envelope.event_type(), envelope.schema_version());
    map.insert(names::SPECVERSION, SPEC_VERSION);
    map.insert(names::ID, ids.id);
    map.insert(names::SOURCE, SOURCE);
    map.insert(names::TYPE, ce_type(event_type, version));
    map.insert(names::TIME, ce_time(envelope.occurred_at));
    map.insert(names::SUBJECT, ids.stream);
    if let Some(uri) = edupulse_domain::schemas::event_schema_uri(event_type, version) {
        map.insert(names::DATASCHEMA, uri);
    }
    map.insert(names::STREAM_VERSION, ids.version);
    map.insert(names::POSITION, ids.position);
}
