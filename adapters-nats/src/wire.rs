//! What an event looks like on the broker: its subject, its headers, its payload.

use async_nats::HeaderMap;
use bytes::Bytes;
use edupulse_ports::{PublishError, RecordedEvent};

/// Header names, in one place. Every published event carries the `Edupulse-*` headers below, so a
/// consumer can route and filter without parsing the payload, and the CloudEvents `ce-*` headers
/// (binary content mode), so CloudEvents-aware consumers work unchanged.
pub mod headers {
    /// JetStream's deduplication key: the event id.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// The event type name (`LessonPublished`…).
    pub const EVENT_TYPE: &str = "Edupulse-Event-Type";
    /// The schema version of the payload.
    pub const SCHEMA_VERSION: &str = "Edupulse-Schema-Version";
    /// The event's stream (aggregate) id.
    pub const STREAM_ID: &str = "Edupulse-Stream-Id";
    /// The event's version in its stream, from 1.
    pub const STREAM_VERSION: &str = "Edupulse-Stream-Version";
    /// The event's global position in the store.
    pub const POSITION: &str = "Edupulse-Position";
    /// The payload's media type, always [`CONTENT_TYPE_JSON`].
    pub const CONTENT_TYPE: &str = "Content-Type";
    /// The value of [`CONTENT_TYPE`].
    pub const CONTENT_TYPE_JSON: &str = "application/json";
    /// W3C trace context, from the envelope's metadata (same name as in HTTP).
    pub const TRACEPARENT: &str = "traceparent";
    /// The correlation id from the envelope's metadata.
    pub const CORRELATION_ID: &str = "Edupulse-Correlation-Id";
    /// The causation id from the envelope's metadata.
    pub const CAUSATION_ID: &str = "Edupulse-Causation-Id";

    /// CloudEvents `specversion` (binary content mode; see the `cloudevents` module for the
    /// whole mapping).
    pub const CE_SPECVERSION: &str = "ce-specversion";
    /// CloudEvents `id`: the event id.
    pub const CE_ID: &str = "ce-id";
    /// CloudEvents `source`: [`crate::CE_SOURCE`].
    pub const CE_SOURCE: &str = "ce-source";
    /// CloudEvents `type`: `edupulse.<EventType>.v<schema version>` ([`crate::ce_type`]).
    pub const CE_TYPE: &str = "ce-type";
    /// CloudEvents `time`: the envelope's `occurred_at`.
    pub const CE_TIME: &str = "ce-time";
    /// CloudEvents `subject`: the stream (aggregate) id.
    pub const CE_SUBJECT: &str = "ce-subject";
    /// CloudEvents `dataschema`: the `$id` of the body's JSON Schema, for known event versions.
    pub const CE_DATASCHEMA: &str = "ce-dataschema";
    /// CloudEvents extension `streamversion`: the event's version in its stream.
    pub const CE_STREAMVERSION: &str = "ce-streamversion";
    /// CloudEvents extension `position`: the event's global position in the store.
    pub const CE_POSITION: &str = "ce-position";

    /// On a dead letter: why it was dead-lettered.
    pub const DLQ_REASON: &str = "Edupulse-Dlq-Reason";
    /// On a dead letter: the subject the message was consumed from.
    pub const DLQ_ORIGINAL_SUBJECT: &str = "Edupulse-Dlq-Original-Subject";
    /// On a dead letter: the message's sequence in the event stream.
    pub const DLQ_ORIGINAL_SEQUENCE: &str = "Edupulse-Dlq-Original-Sequence";
    /// On a dead letter: the original `Nats-Msg-Id` (the event id), when there was one.
    pub const DLQ_ORIGINAL_MSG_ID: &str = "Edupulse-Dlq-Original-Msg-Id";
    /// On a dead letter: how many times it had been delivered.
    pub const DLQ_DELIVERY_COUNT: &str = "Edupulse-Dlq-Delivery-Count";
    /// On a dead letter: the durable consumer that gave up on it.
    pub const DLQ_CONSUMER: &str = "Edupulse-Dlq-Consumer";
    /// On a dead letter: `true` when the payload was left out because the copy with its reason
    /// headers would exceed the server's maximum payload. The original stays in the event
    /// stream at [`DLQ_ORIGINAL_SEQUENCE`].
    pub const DLQ_PAYLOAD_OMITTED: &str = "Edupulse-Dlq-Payload-Omitted";
}

/// The subject of an event: `<prefix>.<event type>.<stream id>`.
///
/// Consumers filter by type with `<prefix>.LessonPublished.>` and by aggregate with
/// `<prefix>.*.<stream id>`.
///
/// # Errors
/// [`PublishError::Rejected`] when the event type cannot be a subject token (an unknown type
/// carrying `.`, `*`, `>` or spaces).
pub fn event_subject(prefix: &str, event: &RecordedEvent) -> Result<String, PublishError> {
    let event_type = event.envelope.event_type();
    if !is_subject_token(event_type) {
        return Err(PublishError::Rejected {
            reason: format!("event type {event_type:?} is not a valid subject token"),
        });
    }
    Ok(format!("{prefix}.{event_type}.{}", event.stream_id))
}

/// A consumer filter for every event of one type: `<prefix>.<event type>.*`.
pub fn type_filter(prefix: &str, event_type: &str) -> String {
    format!("{prefix}.{event_type}.*")
}

/// A consumer filter for every event of one stream (aggregate): `<prefix>.*.<stream id>`.
pub fn stream_filter(prefix: &str, stream: edupulse_domain::StreamId) -> String {
    format!("{prefix}.*.{stream}")
}

/// The subjects the event stream captures: `<prefix>.*.*`, exactly the event subjects.
pub fn stream_subjects(prefix: &str) -> Vec<String> {
    vec![format!("{prefix}.*.*")]
}

/// The subjects the dead-letter stream captures: `<dlq prefix>.>`.
pub fn dlq_stream_subjects(dlq_prefix: &str) -> Vec<String> {
    vec![format!("{dlq_prefix}.>")]
}

/// The header names as values built at compile time: a name given as `&str` is copied into a
/// new allocation for every message, and headers were the largest part of the relay's CPU per
/// event (in a profile).
mod names {
    use super::headers;
    use async_nats::header::HeaderName;

    pub(super) const MSG_ID: HeaderName = HeaderName::from_static(headers::MSG_ID);
    pub(super) const EVENT_TYPE: HeaderName = HeaderName::from_static(headers::EVENT_TYPE);
    pub(super) const SCHEMA_VERSION: HeaderName = HeaderName::from_static(headers::SCHEMA_VERSION);
    pub(super) const STREAM_ID: HeaderName = HeaderName::from_static(headers::STREAM_ID);
    pub(super) const STREAM_VERSION: HeaderName = HeaderName::from_static(headers::STREAM_VERSION);
    pub(super) const POSITION: HeaderName = HeaderName::from_static(headers::POSITION);
    pub(super) const CONTENT_TYPE: HeaderName = HeaderName::from_static(headers::CONTENT_TYPE);
    pub(super) const TRACEPARENT: HeaderName = HeaderName::from_static(headers::TRACEPARENT);
    pub(super) const CORRELATION_ID: HeaderName = HeaderName::from_static(headers::CORRELATION_ID);
    pub(super) const CAUSATION_ID: HeaderName = HeaderName::from_static(headers::CAUSATION_ID);
}

/// The headers of an event (see [`headers`]).
pub fn event_headers(event: &RecordedEvent) -> HeaderMap {
    let envelope = &event.envelope;
    let mut map = HeaderMap::new();
    // Every value here is an id, a number, a validated subject token, or a validated visible-
    // ASCII metadata value: none can hold a CR or LF (which would make HeaderValue panic).
    // Formatted once: the CloudEvents attributes repeat them.
    let ids = crate::cloudevents::Ids {
        id: envelope.id.to_string(),
        stream: event.stream_id.to_string(),
        version: event.stream_version.to_string(),
        position: event.position().to_string(),
    };
    map.insert(names::MSG_ID, ids.id.as_str());
    map.insert(names::EVENT_TYPE, envelope.event_type());
    map.insert(names::SCHEMA_VERSION, envelope.schema_version().to_string());
    map.insert(names::STREAM_ID, ids.stream.as_str());
    map.insert(names::STREAM_VERSION, ids.version.as_str());
    map.insert(names::POSITION, ids.position.as_str());
    map.insert(names::CONTENT_TYPE, headers::CONTENT_TYPE_JSON);
    if let Some(tp) = &envelope.metadata.traceparent {
        map.insert(names::TRACEPARENT, tp.as_str());
    }
    if let Some(id) = &envelope.metadata.correlation_id {
        map.insert(names::CORRELATION_ID, id.as_str());
    }
    if let Some(id) = &envelope.metadata.causation_id {
        map.insert(names::CAUSATION_ID, id.as_str());
    }
    crate::cloudevents::insert(&mut map, event, ids);
    map
}

/// The size NATS counts against `max_payload` for a message: the serialized header block
/// (`NATS/1.0\r\n`, one `Name: value\r\n` per value, `\r\n`) plus the payload.
pub fn wire_size(headers: &HeaderMap, payload_len: usize) -> usize {
    if headers.is_empty() {
        return payload_len;
    }
    let mut len = "NATS/1.0\r\n".len() + "\r\n".len();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        for value in values {
            let value: &str = value.as_ref();
            len += name.len() + ": ".len() + value.len() + "\r\n".len();
        }
    }
    len + payload_len
}

/// A message ready to send.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) subject: String,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
    pub(crate) size: usize,
}

/// Builds the message for `event`, checking its subject and its size against `max_bytes`.
pub(crate) fn outgoing(
    prefix: &str,
    max_bytes: usize,
    event: &RecordedEvent,
) -> Result<Outgoing, PublishError> {
    let subject = event_subject(prefix, event)?;
    let headers = event_headers(event);
    let payload = event.encoded();
    let size = wire_size(&headers, payload.len());
    if size > max_bytes {
        return Err(PublishError::TooLarge {
            size,
            max: max_bytes,
        });
    }
    Ok(Outgoing {
        subject,
        headers,
        payload,
        size,
    })
}

/// Makes free text (a handler's error message) safe as a header value: control characters become
/// spaces, and it is cut to at most `max` bytes on a character boundary.
pub(crate) fn header_text(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Whether `prefix` is one or more valid subject tokens joined by dots.
pub(crate) fn is_valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty() && prefix.split('.').all(is_subject_token)
}

/// Whether `token` can be one token of a subject: not empty, and none of `.` (the separator),
/// `*` and `>` (wildcards), whitespace or control characters. The store's event types
/// (identifiers) always are; the check guards this wire format against any other input.
pub(crate) fn is_subject_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .chars()
            .all(|c| !matches!(c, '.' | '*' | '>') && !c.is_whitespace() && !c.is_control())
}

/// Whether `name` can name a JetStream stream or consumer: 1 to 255 ASCII letters, digits, `_`
/// and `-` (no `.`, `*`, `>` or spaces, which the server refuses).
pub(crate) fn is_valid_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use edupulse_domain::{
        ContextId, DomainEvent, EventEnvelope, LessonPublished, LessonTitle, Metadata, StreamId,
        TraceParent, Uuid,
    };
    use edupulse_ports::Cursor;

    pub(crate) fn recorded(envelope: EventEnvelope, version: u64, position: u64) -> RecordedEvent {
        RecordedEvent {
            stream_id: envelope.stream_id(),
            envelope,
            stream_version: version,
            cursor: Cursor {
                commit: position,
                position,
            },
            recorded_at: chrono::Utc::now(),
            body: None,
        }
    }

    fn lesson() -> EventEnvelope {
        let stream = StreamId::new();
        EventEnvelope::new(LessonPublished {
            lesson_id: *stream.as_uuid(),
            author_id: Uuid::new_v4(),
            title: LessonTitle::new("Lifetimes").unwrap(),
        })
        .with_stream(stream)
    }

    #[test]
    fn subject_is_prefix_type_stream() {
        let event = recorded(lesson(), 3, 42);
        assert_eq!(
            event_subject("edu.events", &event).unwrap(),
            format!("edu.events.LessonPublished.{}", event.stream_id)
        );
        assert_eq!(stream_subjects("edu"), vec!["edu.*.*"]);
        assert_eq!(dlq_stream_subjects("edu-dlq"), vec!["edu-dlq.>"]);
    }

    #[test]
    fn unknown_type_that_is_not_a_token_is_rejected() {
        let unknown = |event_type: &str| {
            let json = serde_json::json!({
                "id": Uuid::new_v4(), "aggregate_id": null,
                "occurred_at": "2024-01-01T00:00:00Z", "version": 1, "metadata": {},
                "event": {"type": event_type, "payload": {}}
            });
            let envelope = EventEnvelope::decode(json.to_string().as_bytes()).unwrap();
            assert!(matches!(envelope.event, DomainEvent::Unknown(_)));
            envelope
        };
        let event = recorded(unknown("lesson.deleted"), 1, 1);
        assert!(matches!(
            event_subject("edu", &event),
            Err(PublishError::Rejected { .. })
        ));
        assert!(event_subject("edu", &recorded(unknown("LessonDeleted"), 1, 1)).is_ok());
    }

    #[test]
    fn headers_carry_identity_order_and_context() {
        let metadata = Metadata {
            correlation_id: Some(ContextId::new("req-7").unwrap()),
            causation_id: Some(ContextId::new("cmd-9").unwrap()),
            traceparent: Some(
                TraceParent::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                    .unwrap(),
            ),
            ..Metadata::default()
        };
        let event = recorded(lesson().with_metadata(metadata), 3, 42);
        let h = event_headers(&event);
        let get = |name: &str| h.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(get(headers::MSG_ID), Some(event.envelope.id.to_string()));
        assert_eq!(get(headers::EVENT_TYPE).as_deref(), Some("LessonPublished"));
        assert_eq!(get(headers::SCHEMA_VERSION).as_deref(), Some("1"));
        assert_eq!(get(headers::STREAM_ID), Some(event.stream_id.to_string()));
        assert_eq!(get(headers::STREAM_VERSION).as_deref(), Some("3"));
        assert_eq!(get(headers::POSITION).as_deref(), Some("42"));
        assert_eq!(
            get(headers::CONTENT_TYPE).as_deref(),
            Some("application/json")
        );
        assert_eq!(get(headers::CORRELATION_ID).as_deref(), Some("req-7"));
        assert_eq!(get(headers::CAUSATION_ID).as_deref(), Some("cmd-9"));
        assert!(get(headers::TRACEPARENT).unwrap().starts_with("00-4bf9"));

        let bare = event_headers(&recorded(lesson(), 1, 1));
        assert!(bare.get(headers::TRACEPARENT).is_none());
        assert!(bare.get(headers::CORRELATION_ID).is_none());
    }

    #[test]
    fn headers_carry_the_cloudevents_attributes() {
        let event = recorded(lesson(), 3, 42);
        let h = event_headers(&event);
        let get = |name: &str| h.get(name).map(|v| v.as_str().to_owned());
        let body: serde_json::Value = serde_json::from_slice(&event.envelope.encode()).unwrap();
        assert_eq!(get(headers::CE_SPECVERSION).as_deref(), Some("1.0"));
        assert_eq!(get(headers::CE_ID), Some(event.envelope.id.to_string()));
        assert_eq!(get(headers::CE_ID), get(headers::MSG_ID));
        assert_eq!(get(headers::CE_SOURCE).as_deref(), Some(crate::CE_SOURCE));
        assert_eq!(
            get(headers::CE_TYPE).as_deref(),
            Some("edupulse.LessonPublished.v1")
        );
        // The same text as the body's occurred_at, whatever its sub-second digits.
        assert_eq!(
            get(headers::CE_TIME).as_deref(),
            body["occurred_at"].as_str()
        );
        for nanos in [0, 120_000_000, 123_456_000, 123_456_789] {
            let at = chrono::DateTime::from_timestamp(1_714_560_000, nanos).unwrap();
            let event = recorded(lesson().with_occurred_at(at), 1, 1);
            let body: serde_json::Value = serde_json::from_slice(&event.envelope.encode()).unwrap();
            let h = event_headers(&event);
            assert_eq!(
                h.get(headers::CE_TIME).map(|v| v.as_str()),
                body["occurred_at"].as_str()
            );
        }
        assert_eq!(get(headers::CE_SUBJECT), Some(event.stream_id.to_string()));
        assert_eq!(
            get(headers::CE_DATASCHEMA).as_deref(),
            Some("https://schemas.edupulse.example/events/LessonPublished.v1.json")
        );
        assert_eq!(get(headers::CE_STREAMVERSION).as_deref(), Some("3"));
        assert_eq!(get(headers::CE_POSITION).as_deref(), Some("42"));
    }

    #[test]
    fn an_unknown_event_version_has_no_dataschema() {
        let json = serde_json::json!({
            "id": Uuid::new_v4(), "aggregate_id": null,
            "occurred_at": "2024-01-01T00:00:00Z", "version": 7, "metadata": {},
            "event": {"type": "LessonPublished", "payload": {}}
        });
        let envelope = EventEnvelope::decode(json.to_string().as_bytes()).unwrap();
        let h = event_headers(&recorded(envelope, 1, 1));
        assert!(h.get(headers::CE_DATASCHEMA).is_none());
        assert_eq!(
            h.get(headers::CE_TYPE).map(|v| v.as_str()),
            Some("edupulse.LessonPublished.v7")
        );
    }

    #[test]
    fn wire_size_counts_the_header_block() {
        let mut h = HeaderMap::new();
        assert_eq!(wire_size(&h, 10), 10);
        h.insert("A", "bc");
        // "NATS/1.0\r\n" (10) + "A: bc\r\n" (7) + "\r\n" (2)
        assert_eq!(wire_size(&h, 10), 29);
    }

    #[test]
    fn too_large_is_detected_before_sending() {
        let event = recorded(lesson(), 1, 1);
        let out = outgoing("edu", 1 << 20, &event).unwrap();
        assert_eq!(out.size, wire_size(&out.headers, out.payload.len()));
        match outgoing("edu", out.size - 1, &event) {
            Err(PublishError::TooLarge { size, max }) => {
                assert_eq!(size, out.size);
                assert_eq!(max, out.size - 1);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn header_text_is_safe() {
        assert_eq!(header_text("a\r\nb\tc", 100), "a  b c");
        assert_eq!(header_text("ééé", 5), "éé");
        assert!("x".repeat(5000).len() > header_text(&"x".repeat(5000), 1024).len());
    }

    #[test]
    fn names_and_prefixes() {
        assert!(is_valid_prefix("edupulse.events"));
        assert!(!is_valid_prefix("edupulse..events"));
        assert!(!is_valid_prefix("edu.>"));
        assert!(!is_valid_prefix(""));
        assert!(is_valid_name("EDUPULSE_EVENTS-1"));
        assert!(!is_valid_name("a.b"));
        assert!(!is_valid_name(""));
    }
}
