//! Parsing events given on the command line or as NDJSON: one JSON object per line.
//!
//! Two shapes are accepted, so existing exports and hand-written lines both work:
//! - a full envelope in the wire format (`{"id","aggregate_id","occurred_at","version","metadata",
//!   "event":{"type","payload"}}`), as `read` prints it and as the seed wrote it;
//! - a short form: `{"type": "...", "payload": {...}, "stream": "<uuid>", "metadata": {...}}`,
//!   where `id`, `occurred_at` and `version` default to a new id, now and the current schema version.
//!
//! Either may carry `"expected_version"`: `"any"` (default), `"no_stream"`, or a number.

use chrono::{SubsecRound, Utc};
use edupulse_domain::{
    DecodeError, DecodeLimits, DomainEvent, EventEnvelope, EventId, ExpectedVersion, RawEnvelope,
    RawEvent,
};
use serde_json::{Map, Value};
use thiserror::Error;

/// One event to append, parsed and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendRequest {
    /// The event.
    pub envelope: EventEnvelope,
    /// The expectation on its stream.
    pub expected: ExpectedVersion,
}

/// Why a line could not be turned into an event.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum InputError {
    /// Not JSON, too large, too deep, or an envelope that fails to decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// JSON, but not an object of either accepted shape.
    #[error("{0}")]
    Shape(String),
    /// The event type is not known to this build: appending it would store data nobody validated.
    #[error(
        "unknown event type {0:?} (known: LessonPublished, QuizSubmitted, BadgeAwarded, PaymentProcessed)"
    )]
    UnknownType(String),
}

fn shape(msg: impl Into<String>) -> InputError {
    InputError::Shape(msg.into())
}

/// Parses one line (or a `--json` argument).
///
/// # Errors
/// [`InputError`] explaining what is wrong; never panics, whatever the bytes.
pub fn parse_line(line: &[u8]) -> Result<AppendRequest, InputError> {
    let limits = DecodeLimits::default();
    // Reuse the envelope decoder's bounds (size, depth) before parsing anything.
    if line.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge {
            size: line.len(),
            max: limits.max_bytes,
        }
        .into());
    }
    let value: Value = match RawEnvelope::decode_with(line, limits) {
        Ok(raw) => return finish_full(raw, line),
        Err(DecodeError::Malformed(_)) => serde_json::from_slice(line)
            .map_err(|e| InputError::Decode(DecodeError::Malformed(e)))?,
        Err(other) => return Err(other.into()),
    };
    let Value::Object(mut map) = value else {
        return Err(shape("expected a JSON object"));
    };
    let expected = take_expected(&mut map)?;
    let event_type = match map.remove("type") {
        Some(Value::String(t)) => t,
        Some(_) => return Err(shape("\"type\" must be a string")),
        None => {
            return Err(shape(
                "missing \"type\" (or a full envelope with \"event\")",
            ));
        }
    };
    let Some(current) = DomainEvent::current_version_of(&event_type) else {
        return Err(InputError::UnknownType(event_type));
    };
    let stream = match map.remove("stream") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            s.parse::<edupulse_domain::Uuid>()
                .map_err(|e| shape(format!("\"stream\" is not a UUID: {e}")))?,
        ),
        Some(_) => return Err(shape("\"stream\" must be a UUID string")),
    };
    let id = match map.remove("id") {
        None | Some(Value::Null) => *EventId::new().as_uuid(),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|e| shape(format!("\"id\" is not a UUID: {e}")))?,
        Some(_) => return Err(shape("\"id\" must be a UUID string")),
    };
    let version = match map.remove("version") {
        None => current,
        Some(v) => v
            .as_u64()
            .and_then(|v| u16::try_from(v).ok())
            .ok_or_else(|| shape("\"version\" must be a small positive integer"))?,
    };
    let raw = RawEnvelope {
        id,
        aggregate_id: stream,
        occurred_at: Utc::now().trunc_subsecs(6),
        version,
        metadata: map.remove("metadata").unwrap_or(Value::Null),
        event: RawEvent {
            event_type,
            payload: map.remove("payload").unwrap_or(Value::Null),
        },
    };
    if let Some(key) = map.keys().next() {
        return Err(shape(format!("unexpected field {key:?}")));
    }
    let envelope = raw.into_envelope()?;
    Ok(AppendRequest { envelope, expected })
}

fn finish_full(raw: RawEnvelope, line: &[u8]) -> Result<AppendRequest, InputError> {
    let expected = match serde_json::from_slice::<Map<String, Value>>(line) {
        Ok(mut map) => take_expected(&mut map)?,
        Err(_) => ExpectedVersion::Any,
    };
    let envelope = raw.into_envelope()?;
    if !envelope.event.is_known() {
        return Err(InputError::UnknownType(envelope.event_type().to_owned()));
    }
    Ok(AppendRequest { envelope, expected })
}

fn take_expected(map: &mut Map<String, Value>) -> Result<ExpectedVersion, InputError> {
    parse_expected_value(map.remove("expected_version").as_ref())
}

fn parse_expected_value(value: Option<&Value>) -> Result<ExpectedVersion, InputError> {
    match value {
        None | Some(Value::Null) => Ok(ExpectedVersion::Any),
        Some(Value::String(s)) => parse_expected(s).map_err(shape),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(ExpectedVersion::Exact)
            .ok_or_else(|| shape("\"expected_version\" must be a non-negative integer")),
        Some(_) => Err(shape(
            "\"expected_version\" must be \"any\", \"no_stream\" or a number",
        )),
    }
}

/// Parses `any`, `no_stream` (or `none`), or a version number.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_expected(s: &str) -> Result<ExpectedVersion, String> {
    match s {
        "any" => Ok(ExpectedVersion::Any),
        "no_stream" | "none" | "no-stream" => Ok(ExpectedVersion::NoStream),
        n => n.parse().map(ExpectedVersion::Exact).map_err(|_| {
            format!("expected version {s:?} is not \"any\", \"no_stream\" or a number")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_form() {
        let stream = edupulse_domain::Uuid::new_v4();
        let line = format!(
            r#"{{"type":"PaymentProcessed","stream":"{stream}","expected_version":3,
               "payload":{{"invoice_id":"{stream}","user_id":"{stream}","amount_cents":1200}},
               "metadata":{{"correlation_id":"req-1"}}}}"#
        );
        let req = parse_line(line.as_bytes()).unwrap();
        assert_eq!(req.expected, ExpectedVersion::Exact(3));
        assert_eq!(*req.envelope.stream_id().as_uuid(), stream);
        assert_eq!(
            req.envelope.metadata.correlation_id.unwrap().as_str(),
            "req-1"
        );
    }

    #[test]
    fn full_envelope_and_seed_fixture_lines() {
        let fixture = include_str!("../../domain/tests/fixtures/seed_v1.jsonl");
        for line in fixture.lines() {
            let req = parse_line(line.as_bytes()).unwrap();
            assert_eq!(req.expected, ExpectedVersion::Any);
        }
    }

    #[test]
    fn bad_lines_give_clear_errors() {
        let cases: [&[u8]; 8] = [
            b"not json",
            b"[1,2]",
            b"{\"type\":\"Nope\",\"payload\":{}}",
            b"{\"type\":\"BadgeAwarded\",\"payload\":{\"badge_id\":1}}",
            b"{\"type\":\"BadgeAwarded\",\"stream\":\"x\"}",
            b"{\"type\":\"BadgeAwarded\",\"expected_version\":-1}",
            b"\xff\xfe",
            b"{\"type\":\"BadgeAwarded\",\"extra\":1,\"payload\":{}}",
        ];
        for case in cases {
            let err = parse_line(case).unwrap_err();
            assert!(!err.to_string().is_empty());
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(
            parse_line(deep.as_bytes()),
            Err(InputError::Decode(DecodeError::TooDeep { .. }))
        ));
    }

    #[test]
    fn expected_forms() {
        assert_eq!(parse_expected("any"), Ok(ExpectedVersion::Any));
        assert_eq!(parse_expected("none"), Ok(ExpectedVersion::NoStream));
        assert_eq!(parse_expected("12"), Ok(ExpectedVersion::Exact(12)));
        assert!(parse_expected("-1").is_err());
    }
}
