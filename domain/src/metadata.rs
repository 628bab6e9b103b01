use crate::ValidationError;
use crate::values::check_text;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// An identifier that relates messages: a correlation id (one per user request or workflow) or a
/// causation id (the command or event that caused this one).
///
/// 1 to 128 visible ASCII characters, so it travels unchanged in NATS headers and log lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ContextId(String);

impl ContextId {
    /// The longest id accepted.
    pub const MAX_LEN: usize = 128;

    /// Validates an id.
    ///
    /// # Errors
    /// [`ValidationError::Empty`], [`ValidationError::TooLong`] or [`ValidationError::Malformed`]
    /// (a character outside visible ASCII).
    pub fn new(id: impl Into<String>) -> Result<Self, ValidationError> {
        let id = id.into();
        if id.is_empty() {
            return Err(ValidationError::Empty {
                field: "context id",
            });
        }
        if id.len() > Self::MAX_LEN {
            return Err(ValidationError::TooLong {
                field: "context id",
                len: id.len(),
                max: Self::MAX_LEN,
            });
        }
        if !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ValidationError::Malformed {
                field: "context id",
                reason: "only visible ASCII characters are allowed",
            });
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContextId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who caused the event: a user id, a service name. 1 to 256 characters, one line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Actor(String);

impl Actor {
    /// Validates an actor.
    ///
    /// # Errors
    /// As [`crate::LessonTitle::new`], with a limit of 256 characters.
    pub fn new(actor: impl Into<String>) -> Result<Self, ValidationError> {
        let actor = actor.into();
        check_text("actor", &actor, 256)?;
        Ok(Self(actor))
    }

    /// The actor as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A W3C Trace Context `traceparent` (`00-<trace id>-<parent id>-<flags>`), carried from the
/// request that caused the event into the broker's headers, so a trace spans the whole path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct TraceParent(String);

impl TraceParent {
    /// Validates a traceparent of version `00` (lowercase hex, non-zero ids).
    ///
    /// # Errors
    /// [`ValidationError::Malformed`].
    pub fn new(value: impl Into<String>) -> Result<Self, ValidationError> {
        let value = value.into();
        let malformed = |reason| ValidationError::Malformed {
            field: "traceparent",
            reason,
        };
        let parts: Vec<&str> = value.split('-').collect();
        let [version, trace_id, parent_id, flags] = parts.as_slice() else {
            return Err(malformed("expected four dash-separated fields"));
        };
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if *version != "00" {
            return Err(malformed("only version 00 is supported"));
        }
        if !hex(trace_id, 32) || trace_id.bytes().all(|b| b == b'0') {
            return Err(malformed(
                "trace id must be 32 lowercase hex digits, not all zero",
            ));
        }
        if !hex(parent_id, 16) || parent_id.bytes().all(|b| b == b'0') {
            return Err(malformed(
                "parent id must be 16 lowercase hex digits, not all zero",
            ));
        }
        if !hex(flags, 2) {
            return Err(malformed("flags must be 2 lowercase hex digits"));
        }
        Ok(Self(value))
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Context carried with an event: typed well-known fields plus free-form extras.
///
/// On the wire this is one flat JSON object (as in the seed). A well-known key whose value does not
/// validate is kept, untouched, among the extras: reading old data never fails on metadata.
///
/// ```
/// use edupulse_domain::{ContextId, Metadata, TraceParent};
/// let metadata = Metadata {
///     correlation_id: Some(ContextId::new("req-42").unwrap()),
///     traceparent: Some(
///         TraceParent::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap(),
///     ),
///     ..Metadata::default()
/// };
/// let json = metadata.to_json();
/// assert_eq!(json["correlation_id"], "req-42");
/// assert_eq!(Metadata::from_json(json.into()), metadata);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    /// Correlation id (`correlation_id`).
    pub correlation_id: Option<ContextId>,
    /// Causation id (`causation_id`).
    pub causation_id: Option<ContextId>,
    /// Who caused the event (`actor`).
    pub actor: Option<Actor>,
    /// W3C trace context (`traceparent`).
    pub traceparent: Option<TraceParent>,
    /// Everything else (ip, user agent, …).
    pub extra: Map<String, Value>,
}

const CORRELATION_ID: &str = "correlation_id";
const CAUSATION_ID: &str = "causation_id";
const ACTOR: &str = "actor";
const TRACEPARENT: &str = "traceparent";

impl Metadata {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.correlation_id.is_none()
            && self.causation_id.is_none()
            && self.actor.is_none()
            && self.traceparent.is_none()
            && self.extra.is_empty()
    }

    /// The flat JSON object written on the wire: exactly what [`Serialize`] writes, so the rules
    /// (which keys, a typed value over an extra of the same key) live in one place.
    pub fn to_json(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            // Serialize always writes an object of strings and JSON values: never reached.
            _ => Map::new(),
        }
    }

    /// Reads metadata from any JSON value. `null` is empty metadata; a value that is not an object
    /// (the seed allowed any) is kept under the extra key `value`.
    pub fn from_json(value: Value) -> Self {
        let mut extra = match value {
            Value::Null => return Self::default(),
            Value::Object(map) => map,
            other => {
                let mut map = Map::new();
                map.insert("value".to_owned(), other);
                return Self {
                    extra: map,
                    ..Self::default()
                };
            }
        };
        fn take<T>(
            extra: &mut Map<String, Value>,
            key: &str,
            parse: impl Fn(String) -> Result<T, ValidationError>,
        ) -> Option<T> {
            let Some(Value::String(s)) = extra.get(key) else {
                return None;
            };
            let parsed = parse(s.clone()).ok()?;
            extra.remove(key);
            Some(parsed)
        }
        Self {
            correlation_id: take(&mut extra, CORRELATION_ID, ContextId::new),
            causation_id: take(&mut extra, CAUSATION_ID, ContextId::new),
            actor: take(&mut extra, ACTOR, Actor::new),
            traceparent: take(&mut extra, TRACEPARENT, TraceParent::new),
            extra,
        }
    }
}

impl Serialize for Metadata {
    /// Writes the flat object: the extras and the typed keys, merged in sorted key order (the
    /// order of a `serde_json::Map`), a typed value winning over an extra of the same key.
    /// Written directly rather than through a map: cloning the extras into a map for every event
    /// was a measurable part of the relay's CPU in a profile.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // The well-known keys in sorted order; a typed value wins over an extra of the same key.
        let typed = [
            (ACTOR, self.actor.as_ref().map(Actor::as_str)),
            (
                CAUSATION_ID,
                self.causation_id.as_ref().map(ContextId::as_str),
            ),
            (
                CORRELATION_ID,
                self.correlation_id.as_ref().map(ContextId::as_str),
            ),
            (
                TRACEPARENT,
                self.traceparent.as_ref().map(TraceParent::as_str),
            ),
        ];
        let mut typed = typed
            .into_iter()
            .filter_map(|(key, value)| value.map(|v| (key, v)))
            .peekable();
        let mut map = s.serialize_map(None)?;
        for (key, value) in &self.extra {
            let mut shadowed = false;
            while let Some((typed_key, typed_value)) = typed.next_if(|(k, _)| *k <= key.as_str()) {
                shadowed |= typed_key == key;
                map.serialize_entry(typed_key, typed_value)?;
            }
            if !shadowed {
                map.serialize_entry(key, value)?;
            }
        }
        for (key, value) in typed {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::from_json(Value::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        #[test]
        fn serialized_metadata_is_exactly_to_json(
            extra in proptest::collection::btree_map(
                prop_oneof![
                    Just("actor".to_owned()),
                    Just("causation_id".to_owned()),
                    Just("correlation_id".to_owned()),
                    Just("traceparent".to_owned()),
                    "[a-z_]{1,15}",
                ],
                "\\PC{0,12}",
                0..6,
            ),
            actor in proptest::option::of("[a-z:]{1,10}"),
            correlation in proptest::option::of("[a-z0-9-]{1,10}"),
            causation in proptest::option::of("[a-z0-9-]{1,10}"),
        ) {
            let mut metadata = Metadata {
                actor: actor.and_then(|a| Actor::new(a).ok()),
                correlation_id: correlation.and_then(|c| ContextId::new(c).ok()),
                causation_id: causation.and_then(|c| ContextId::new(c).ok()),
                traceparent: TraceParent::new(
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
                )
                .ok(),
                ..Metadata::default()
            };
            for (k, v) in extra {
                metadata.extra.insert(k, Value::String(v));
            }
            prop_assert_eq!(
                serde_json::to_string(&metadata).unwrap(),
                serde_json::to_string(&metadata.to_json()).unwrap()
            );
        }
    }

    #[test]
    fn well_known_fields_are_typed_and_extras_kept() {
        let m = Metadata::from_json(json!({
            "correlation_id": "req-42",
            "actor": "user:émilie",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ip": "10.0.0.1",
            "causation_id": 17
        }));
        assert_eq!(m.correlation_id.as_ref().unwrap().as_str(), "req-42");
        assert_eq!(m.actor.as_ref().unwrap().as_str(), "user:émilie");
        assert!(m.traceparent.is_some());
        assert!(m.causation_id.is_none());
        assert_eq!(m.extra["causation_id"], json!(17));
        assert_eq!(m.extra["ip"], json!("10.0.0.1"));
        let back = Metadata::from_json(Value::Object(m.to_json()));
        assert_eq!(back, m);
    }

    #[test]
    fn non_object_metadata_is_kept() {
        assert!(Metadata::from_json(Value::Null).is_empty());
        let m = Metadata::from_json(json!([1, 2]));
        assert_eq!(m.extra["value"], json!([1, 2]));
    }

    #[test]
    fn traceparent_is_validated() {
        assert!(
            TraceParent::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_ok()
        );
        assert!(
            TraceParent::new("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_err()
        );
        assert!(
            TraceParent::new("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_err()
        );
        assert!(TraceParent::new("garbage").is_err());
        assert!(ContextId::new("has space").is_err());
        assert!(ContextId::new("x".repeat(129)).is_err());
    }
}
