use crate::{DecodeError, DomainEvent, EventId, Metadata, StreamId, UnknownEvent, upcast};
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The largest encoded envelope accepted by default, in bytes: below NATS's default 1 MiB
/// `max_payload`, with room for the headers, so an event that can be stored can be published.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1_000_000;

/// The deepest JSON nesting accepted by default. The envelope itself uses three levels; the rest is
/// for metadata extras and unknown payloads.
pub const MAX_NESTING_DEPTH: usize = 64;

/// Bounds applied before parsing untrusted bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest input, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of JSON arrays and objects.
    pub max_depth: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_depth: MAX_NESTING_DEPTH,
        }
    }
}

/// An event with what reliable delivery needs: identity, stream, time, schema version, metadata.
///
/// Build one with [`EventEnvelope::new`] and the `with_*` methods:
///
/// ```
/// use edupulse_domain::{EventEnvelope, LessonPublished, LessonTitle, StreamId};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let lesson = StreamId::new();
/// let event = LessonPublished {
///     lesson_id: *lesson.as_uuid(),
///     author_id: uuid::Uuid::new_v4(),
///     title: LessonTitle::new("Ownership, borrowing and lifetimes")?,
/// };
/// let envelope = EventEnvelope::new(event).with_stream(lesson);
/// let bytes = envelope.encode();
/// assert_eq!(EventEnvelope::decode(&bytes)?, envelope);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EventEnvelope {
    /// Unique id of the event; the broker's deduplication key.
    pub id: EventId,
    /// The aggregate's stream, or `None` for a standalone event (see [`EventEnvelope::stream_id`]).
    pub aggregate_id: Option<StreamId>,
    /// When the fact happened (set by the producer; never used for ordering).
    pub occurred_at: DateTime<Utc>,
    /// Context: correlation, causation, actor, trace.
    pub metadata: Metadata,
    /// The event itself.
    pub event: DomainEvent,
}

impl EventEnvelope {
    /// Wraps an event with a new v7 id, no stream, the current time and empty metadata.
    ///
    /// The time is truncated to microseconds, the precision stores keep (PostgreSQL's
    /// `timestamptz`), so an envelope reads back equal to what was appended.
    pub fn new(event: impl Into<DomainEvent>) -> Self {
        Self {
            id: EventId::new(),
            aggregate_id: None,
            occurred_at: Utc::now().trunc_subsecs(6),
            metadata: Metadata::default(),
            event: event.into(),
        }
    }

    /// Sets the aggregate stream.
    pub fn with_stream(mut self, stream: StreamId) -> Self {
        self.aggregate_id = Some(stream);
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the id (for example to make a retried command idempotent).
    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = id;
        self
    }

    /// Sets when the event occurred.
    pub fn with_occurred_at(mut self, at: DateTime<Utc>) -> Self {
        self.occurred_at = at;
        self
    }

    /// The stream the event is stored in: its aggregate, or for a standalone event a stream of its
    /// own whose id is the event id.
    pub fn stream_id(&self) -> StreamId {
        self.aggregate_id
            .unwrap_or_else(|| StreamId::from_uuid(*self.id.as_uuid()))
    }

    /// The stable event type name.
    pub fn event_type(&self) -> &str {
        self.event.event_type()
    }

    /// The schema version of the payload (the wire's `version`).
    pub fn schema_version(&self) -> u16 {
        self.event.schema_version()
    }

    /// Compact JSON in the seed's format.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&self.wire()).expect(crate::events::INFALLIBLE_JSON)
    }

    /// The length of [`EventEnvelope::encode`]'s output, without building it: for size checks
    /// on the append path, where the bytes themselves are not needed.
    pub fn encoded_len(&self) -> usize {
        struct Counter(usize);
        impl std::io::Write for Counter {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut counter = Counter(0);
        serde_json::to_writer(&mut counter, &self.wire()).expect(crate::events::INFALLIBLE_JSON);
        counter.0
    }

    /// The wire form (the seed's field names and nesting).
    fn wire(&self) -> Wire<'_> {
        Wire {
            id: self.id,
            aggregate_id: self.aggregate_id,
            occurred_at: self.occurred_at,
            version: self.schema_version(),
            metadata: &self.metadata,
            event: WireEvent {
                event_type: self.event_type(),
                payload: PayloadRef(&self.event),
            },
        }
    }

    /// Decodes untrusted bytes with the default [`DecodeLimits`].
    ///
    /// # Errors
    /// Every [`DecodeError`] variant; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_with(bytes, DecodeLimits::default())
    }

    /// Decodes untrusted bytes, bounded by `limits`.
    ///
    /// # Errors
    /// [`DecodeError::TooLarge`] and [`DecodeError::TooDeep`] before parsing;
    /// [`DecodeError::Malformed`] for anything that is not an envelope; the others for an event
    /// that breaks its schema or rules.
    pub fn decode_with(bytes: &[u8], limits: DecodeLimits) -> Result<Self, DecodeError> {
        RawEnvelope::decode_with(bytes, limits)?.into_envelope()
    }
}

impl Serialize for EventEnvelope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.wire().serialize(s)
    }
}

impl<'de> Deserialize<'de> for EventEnvelope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawEnvelope::deserialize(d)?
            .into_envelope()
            .map_err(serde::de::Error::custom)
    }
}

/// The wire form. Its field docs are the descriptions of the published JSON Schemas
/// (`crate::schemas`), which are derived from this struct.
#[derive(Serialize, schemars::JsonSchema)]
#[schemars(
    title = "EventEnvelope",
    description = "An EduPulse event envelope: the body of every message, in the seed's JSON wire format."
)]
pub(crate) struct Wire<'a> {
    /// Unique id of the event (a UUID, v7 for new events); the broker's deduplication key.
    id: EventId,
    /// The aggregate the event belongs to, its stream; `null` for a standalone event, whose
    /// stream id is then its own `id`.
    aggregate_id: Option<StreamId>,
    /// When the fact happened, set by the producer (RFC 3339, UTC); never used for ordering.
    occurred_at: DateTime<Utc>,
    /// The schema version of `event.payload`, from 1.
    #[schemars(range(min = 1))]
    version: u16,
    /// Context of the event.
    metadata: &'a Metadata,
    /// The event: its type name and payload.
    event: WireEvent<'a>,
}

/// The event carried by an envelope.
#[derive(Serialize, schemars::JsonSchema)]
#[schemars(inline)]
struct WireEvent<'a> {
    /// The stable event type name: 1 to 64 ASCII letters, digits, `_` or `-`.
    #[serde(rename = "type")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    event_type: &'a str,
    /// The payload, in the shape of the envelope's `version` of this event type.
    payload: PayloadRef<'a>,
}

/// Serializes an event's payload straight from its typed value: no intermediate JSON tree on the
/// relay's hot path (every published event is encoded once).
pub(crate) struct PayloadRef<'a>(pub(crate) &'a DomainEvent);

/// In the envelope schema, any payload: the schema of each event type and version replaces it
/// with the payload's own (`crate::schemas`).
impl schemars::JsonSchema for PayloadRef<'_> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Payload".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "The event's payload; its shape is given by the schema of the event type and version (events/<type>.v<version>.json)."
        })
    }
}

impl Serialize for PayloadRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_payload(s)
    }
}

/// An envelope as it is on the wire, before upcasting and validation.
///
/// Stores and brokers that keep the parts in separate columns or headers rebuild an envelope from
/// this with [`RawEnvelope::into_envelope`], which applies the same rules as [`EventEnvelope::decode`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawEnvelope {
    /// Event id.
    pub id: Uuid,
    /// Aggregate id, if any.
    #[serde(default)]
    pub aggregate_id: Option<Uuid>,
    /// When it occurred.
    pub occurred_at: DateTime<Utc>,
    /// Schema version of the payload.
    pub version: u16,
    /// Metadata, any JSON.
    #[serde(default)]
    pub metadata: Value,
    /// The event type and payload.
    pub event: RawEvent,
}

/// The `event` member of a [`RawEnvelope`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawEvent {
    /// The event type name.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload.
    #[serde(default)]
    pub payload: Value,
}

impl RawEnvelope {
    /// Parses untrusted bytes into the raw form, bounded by `limits`.
    ///
    /// # Errors
    /// [`DecodeError::TooLarge`], [`DecodeError::TooDeep`], [`DecodeError::Malformed`].
    pub fn decode_with(bytes: &[u8], limits: DecodeLimits) -> Result<Self, DecodeError> {
        if bytes.len() > limits.max_bytes {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                max: limits.max_bytes,
            });
        }
        if nesting_depth(bytes) > limits.max_depth {
            return Err(DecodeError::TooDeep {
                max: limits.max_depth,
            });
        }
        serde_json::from_slice(bytes).map_err(DecodeError::Malformed)
    }

    /// Upcasts and validates into an [`EventEnvelope`]. Unknown types and newer schema versions
    /// become [`DomainEvent::Unknown`].
    ///
    /// # Errors
    /// [`DecodeError::Payload`], [`DecodeError::UnsupportedVersion`].
    pub fn into_envelope(self) -> Result<EventEnvelope, DecodeError> {
        let RawEvent {
            event_type,
            payload,
        } = self.event;
        let (version, payload) = upcast(&event_type, self.version, payload)?;
        let current = DomainEvent::current_version_of(&event_type);
        let event = match (current == Some(version), &current) {
            (true, _) => match DomainEvent::decode_current(&event_type, payload) {
                Some(Ok(event)) => event,
                Some(Err(source)) => return Err(payload_error(event_type, version, source)),
                None => unreachable_unknown(event_type, version),
            },
            _ => DomainEvent::Unknown(UnknownEvent {
                event_type,
                schema_version: version,
                payload,
            }),
        };
        Ok(assemble(
            self.id,
            self.aggregate_id,
            self.occurred_at,
            self.metadata,
            event,
        ))
    }
}

/// An envelope as a store keeps it: columns, with the metadata and the payload as JSON text.
///
/// [`StoredEnvelope::into_envelope`] applies the rules of [`RawEnvelope::into_envelope`] and gives
/// the same result, but a known type at its current schema version (nearly every stored event)
/// is decoded straight from the text into its type, without first building a
/// `serde_json::Value` tree: that tree was the largest single cost of reading events in a profile.
#[derive(Debug, Clone, Copy)]
pub struct StoredEnvelope<'a> {
    /// Event id.
    pub id: Uuid,
    /// Aggregate id, if any.
    pub aggregate_id: Option<Uuid>,
    /// When it occurred.
    pub occurred_at: DateTime<Utc>,
    /// Schema version of the payload.
    pub version: u16,
    /// The event type name.
    pub event_type: &'a str,
    /// The metadata, as JSON text.
    pub metadata: &'a str,
    /// The payload, as JSON text.
    pub payload: &'a str,
}

impl StoredEnvelope<'_> {
    /// Upcasts and validates into an [`EventEnvelope`], as [`RawEnvelope::into_envelope`].
    ///
    /// # Errors
    /// [`DecodeError::Malformed`] when the metadata or the payload is not JSON; otherwise as
    /// [`RawEnvelope::into_envelope`].
    pub fn into_envelope(self) -> Result<EventEnvelope, DecodeError> {
        self.decode().map(|(envelope, _)| envelope)
    }

    /// The envelope, and whether its payload is the stored text's own (a known type at its
    /// current version, decoded straight from it) or came through the general path.
    pub(crate) fn decode(self) -> Result<(EventEnvelope, PayloadSource), DecodeError> {
        let metadata: Value =
            serde_json::from_str(self.metadata).map_err(DecodeError::Malformed)?;
        if DomainEvent::current_version_of(self.event_type) == Some(self.version)
            && let Some(Ok(event)) = DomainEvent::decode_current_str(self.event_type, self.payload)
        {
            let envelope = assemble(
                self.id,
                self.aggregate_id,
                self.occurred_at,
                metadata,
                event,
            );
            return Ok((envelope, PayloadSource::StoredText));
        }
        // Older versions (upcasting works on the tree), unknown types, and payloads that fail:
        // the general path, so that errors are exactly those of `RawEnvelope`.
        RawEnvelope {
            id: self.id,
            aggregate_id: self.aggregate_id,
            occurred_at: self.occurred_at,
            version: self.version,
            metadata,
            event: RawEvent {
                event_type: self.event_type.to_owned(),
                payload: serde_json::from_str(self.payload).map_err(DecodeError::Malformed)?,
            },
        }
        .into_envelope()
        .map(|envelope| (envelope, PayloadSource::Converted))
    }
}

/// Where a decoded envelope's payload stands against the stored text
/// ([`StoredEnvelope::decode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PayloadSource {
    /// Decoded straight from the stored text: a known type at its current version, so the text
    /// is this payload's JSON.
    StoredText,
    /// Upcast from an older version, or an unknown type kept as a tree.
    Converted,
}

/// The envelope of a decoded event, from its wire parts (shared by the raw and stored paths).
fn assemble(
    id: Uuid,
    aggregate_id: Option<Uuid>,
    occurred_at: DateTime<Utc>,
    metadata: Value,
    event: DomainEvent,
) -> EventEnvelope {
    EventEnvelope {
        id: EventId::from_uuid(id),
        aggregate_id: aggregate_id.map(StreamId::from_uuid),
        occurred_at,
        metadata: Metadata::from_json(metadata),
        event,
    }
}

// `decode_current` knows exactly the types `current_version_of` knows; should they ever disagree,
// keep the event as unknown rather than fail.
fn unreachable_unknown(event_type: String, schema_version: u16) -> DomainEvent {
    DomainEvent::Unknown(UnknownEvent {
        event_type,
        schema_version,
        payload: Value::Null,
    })
}

/// Validation failures surface from serde as custom errors; report them as [`DecodeError::Payload`]
/// carrying the message, since the typed rule is not recoverable through serde.
fn payload_error(event_type: String, version: u16, source: serde_json::Error) -> DecodeError {
    DecodeError::Payload {
        event_type,
        version,
        source,
    }
}

/// Why an event cannot be stored: something the relay, the broker or a consumer could not carry.
/// One set of rules, applied by every store at append, so that whatever is stored can be
/// published and decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unstorable {
    /// The event type is not an identifier: 1 to 64 ASCII letters, digits, `_` or `-` (it names
    /// the event on every transport, in subjects and headers).
    #[error("event type {0:?} is not 1 to 64 ASCII letters, digits, `_` or `-`")]
    EventType(String),
    /// The encoded event nests arrays and objects deeper than decoders accept.
    #[error("the event nests {depth} levels deep; at most {max} are accepted")]
    TooDeep {
        /// Its depth.
        depth: usize,
        /// The limit ([`MAX_NESTING_DEPTH`]).
        max: usize,
    },
    /// A string holds U+0000, which PostgreSQL's `jsonb` refuses and C consumers truncate at.
    #[error("a string holds the NUL character (U+0000)")]
    NulCharacter,
}

impl EventEnvelope {
    /// Checks the rules of [`Unstorable`] and returns the event's encoded size.
    ///
    /// ```
    /// use edupulse_domain::{EventEnvelope, LessonPublished, LessonTitle, Unstorable, Uuid};
    /// let ok = EventEnvelope::new(LessonPublished {
    ///     lesson_id: Uuid::new_v4(),
    ///     author_id: Uuid::new_v4(),
    ///     title: LessonTitle::new("Ownership").unwrap(),
    /// });
    /// assert_eq!(ok.check_storable(), Ok(ok.encoded_len()));
    /// ```
    ///
    /// # Errors
    /// The first rule broken.
    pub fn check_storable(&self) -> Result<usize, Unstorable> {
        let event_type = self.event_type();
        if !crate::event_types::is_identifier(event_type) {
            return Err(Unstorable::EventType(event_type.to_owned()));
        }
        let bytes = self.encode();
        let scan = scan(&bytes);
        if scan.depth > MAX_NESTING_DEPTH {
            return Err(Unstorable::TooDeep {
                depth: scan.depth,
                max: MAX_NESTING_DEPTH,
            });
        }
        if scan.nul {
            return Err(Unstorable::NulCharacter);
        }
        Ok(bytes.len())
    }
}

/// What one pass over encoded JSON found.
struct Scan {
    depth: usize,
    nul: bool,
}

/// Nesting depth and NUL escapes (`\u0000`) of JSON `bytes`, in one pass without parsing.
fn scan(bytes: &[u8]) -> Scan {
    let (mut depth, mut max, mut in_string, mut escaped, mut nul) =
        (0usize, 0, false, false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, b'u') => {
                    nul |= bytes.get(i + 1..i + 5) == Some(b"0000".as_slice());
                    escaped = false;
                }
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Scan { depth: max, nul }
}

/// The deepest nesting of arrays and objects in `bytes`, without parsing (strings are skipped).
fn nesting_depth(bytes: &[u8]) -> usize {
    scan(bytes).depth
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        AmountCents, BadgeAwarded, LessonPublished, LessonTitle, PaymentProcessed, QuizSubmitted,
        Score,
    };
    use proptest::prelude::*;
    use serde_json::json;

    fn seed_json(event: Value, version: u16) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "id": "0190f5e4-7a1b-7c3d-8e4f-a1b2c3d4e5f6",
            "aggregate_id": null,
            "occurred_at": "2024-05-01T12:00:00.123456789Z",
            "version": version,
            "metadata": {},
            "event": event
        }))
        .unwrap()
    }

    #[test]
    fn unknown_types_are_kept_and_forwarded_unchanged() {
        let bytes = seed_json(
            json!({"type": "CourseArchived", "payload": {"x": [1, "é"]}}),
            3,
        );
        let env = EventEnvelope::decode(&bytes).unwrap();
        let DomainEvent::Unknown(u) = &env.event else {
            panic!("expected unknown")
        };
        assert_eq!((u.event_type(), u.schema_version()), ("CourseArchived", 3));
        let again: Value = serde_json::from_slice(&env.encode()).unwrap();
        assert_eq!(again, serde_json::from_slice::<Value>(&bytes).unwrap());
    }

    #[test]
    fn storable_rules_are_checked_on_the_encoded_event() {
        let unknown = |event_type: &str, payload: Value| {
            let json = serde_json::json!({
                "id": Uuid::new_v4(), "aggregate_id": null,
                "occurred_at": "2024-01-01T00:00:00Z", "version": 1, "metadata": {},
                "event": {"type": event_type, "payload": payload}
            });
            EventEnvelope::decode(json.to_string().as_bytes()).unwrap()
        };
        assert!(
            unknown("CourseArchived", serde_json::json!({"a": 1}))
                .check_storable()
                .is_ok()
        );
        assert_eq!(
            unknown("course.archived", serde_json::json!({})).check_storable(),
            Err(Unstorable::EventType("course.archived".into()))
        );
        assert_eq!(
            unknown("X", serde_json::json!({"s": "a\u{0}b"})).check_storable(),
            Err(Unstorable::NulCharacter)
        );
        // A backslash followed by the text u0000 is not a NUL.
        assert!(
            unknown("X", serde_json::json!({"s": "\\u0000"}))
                .check_storable()
                .is_ok()
        );
        let mut deep = serde_json::json!(1);
        for _ in 0..MAX_NESTING_DEPTH {
            deep = serde_json::json!([deep]);
        }
        // Built through the library (decoding would refuse it): a metadata extra nested deep.
        let mut built = unknown("X", serde_json::json!({}));
        built.metadata.extra.insert("deep".into(), deep);
        assert!(matches!(
            built.check_storable(),
            Err(Unstorable::TooDeep { .. })
        ));
    }

    #[test]
    fn invalid_events_give_typed_errors() {
        let bytes = seed_json(
            json!({"type": "LessonPublished", "payload": {
            "lesson_id": Uuid::nil(), "author_id": Uuid::nil(), "title": ""}}),
            1,
        );
        assert!(matches!(
            EventEnvelope::decode(&bytes),
            Err(DecodeError::Payload { version: 1, .. })
        ));
        let bytes = seed_json(
            json!({"type": "PaymentProcessed", "payload": {
            "invoice_id": Uuid::nil(), "user_id": Uuid::nil(), "amount_cents": -1}}),
            1,
        );
        assert!(EventEnvelope::decode(&bytes).is_err());
        assert!(matches!(
            EventEnvelope::decode(b"{\"id\":"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            EventEnvelope::decode(&[0xff, 0xfe]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn encoded_len_matches_encode() {
        let bytes = seed_json(json!({"type": "CourseArchived", "payload": {"x": "é✓"}}), 3);
        let env = EventEnvelope::decode(&bytes).unwrap();
        assert_eq!(env.encoded_len(), env.encode().len());
    }

    #[test]
    fn limits_are_enforced_before_parsing() {
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(matches!(
            EventEnvelope::decode(deep.as_bytes()),
            Err(DecodeError::TooDeep { max: 64 })
        ));
        // Brackets inside strings do not count.
        assert_eq!(nesting_depth(br#"{"a":"[[[[\"[[["}"#), 1);
        let big = vec![b' '; DEFAULT_MAX_EVENT_BYTES + 1];
        assert!(matches!(
            EventEnvelope::decode(&big),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    fn uuid_strategy() -> impl Strategy<Value = Uuid> {
        any::<u128>().prop_map(Uuid::from_u128)
    }

    fn event_strategy() -> impl Strategy<Value = DomainEvent> {
        let title = "[^\\p{Cc}]{1,200}"
            .prop_filter_map("valid title", |t: String| LessonTitle::new(t).ok());
        let score = 0.0f32..1e6;
        prop_oneof![
            (uuid_strategy(), uuid_strategy(), title).prop_map(|(l, a, title)| {
                LessonPublished {
                    lesson_id: l,
                    author_id: a,
                    title,
                }
                .into()
            }),
            (uuid_strategy(), uuid_strategy(), score.clone(), score).prop_map(|(q, s, a, b)| {
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                QuizSubmitted::new(q, s, Score::new(lo).unwrap(), Score::new(hi).unwrap())
                    .unwrap()
                    .into()
            }),
            (uuid_strategy(), uuid_strategy()).prop_map(|(b, r)| BadgeAwarded {
                badge_id: b,
                recipient_id: r
            }
            .into()),
            (uuid_strategy(), uuid_strategy(), 0i64..).prop_map(|(i, u, c)| {
                PaymentProcessed {
                    invoice_id: i,
                    user_id: u,
                    amount_cents: AmountCents::new(c).unwrap(),
                }
                .into()
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_event_kind_round_trips(
            event in event_strategy(),
            stream in proptest::option::of(uuid_strategy()),
            secs in 0i64..4_000_000_000,
            nanos in 0u32..1_000_000_000,
            actor in proptest::option::of("[a-zA-Z0-9:é ]{1,40}"),
            extra in proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,20}", 0..4),
        ) {
            let mut metadata = Metadata {
                actor: actor.and_then(|a| crate::Actor::new(a).ok()),
                ..Metadata::default()
            };
            for (k, v) in extra {
                if !["correlation_id", "causation_id", "actor", "traceparent"].contains(&k.as_str()) {
                    metadata.extra.insert(k, Value::String(v));
                }
            }
            let mut env = EventEnvelope::new(event)
                .with_metadata(metadata)
                .with_occurred_at(DateTime::from_timestamp(secs, nanos).unwrap());
            env.aggregate_id = stream.map(StreamId::from_uuid);
            let decoded = EventEnvelope::decode(&env.encode()).unwrap();
            prop_assert_eq!(decoded, env);
        }

        #[test]
        fn stored_parts_decode_as_the_raw_envelope_does(
            event in event_strategy(),
            version_shift in -1i32..=1,
            mangled in proptest::option::of("\\PC{0,30}"),
        ) {
            let env = EventEnvelope::new(event);
            let wire: RawEnvelope = serde_json::from_slice(&env.encode()).unwrap();
            let version = u16::try_from(i32::from(wire.version) + version_shift).unwrap_or(0);
            let payload = mangled.unwrap_or_else(|| wire.event.payload.to_string());
            let metadata = wire.metadata.to_string();
            let stored = StoredEnvelope {
                id: wire.id,
                aggregate_id: wire.aggregate_id,
                occurred_at: wire.occurred_at,
                version,
                event_type: &wire.event.event_type,
                metadata: &metadata,
                payload: &payload,
            }
            .into_envelope();
            let raw = serde_json::from_str::<Value>(&payload)
                .map_err(DecodeError::Malformed)
                .and_then(|payload| {
                    RawEnvelope {
                        version,
                        event: RawEvent { payload, ..wire.event.clone() },
                        ..wire.clone()
                    }
                    .into_envelope()
                });
            prop_assert_eq!(format!("{stored:?}"), format!("{raw:?}"));
        }

        #[test]
        fn the_body_from_stored_parts_is_the_encoding(
            event in event_strategy(),
            stream in proptest::option::of(uuid_strategy()),
            secs in 0i64..4_000_000_000,
            micros in 0u32..1_000_000,
            extra in proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,20}", 0..4),
        ) {
            let mut env = EventEnvelope::new(event)
                .with_occurred_at(DateTime::from_timestamp(secs, micros * 1000).unwrap());
            env.aggregate_id = stream.map(StreamId::from_uuid);
            env.metadata.correlation_id = crate::ContextId::new("c-1".to_owned()).ok();
            env.metadata.extra = extra.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            let (payload, metadata) = (env.payload_json(), env.metadata_json());
            let (decoded, body) = StoredEnvelope {
                id: *env.id.as_uuid(),
                aggregate_id: env.aggregate_id.map(|s| *s.as_uuid()),
                occurred_at: env.occurred_at,
                version: env.schema_version(),
                event_type: env.event_type(),
                metadata: &metadata,
                payload: &payload,
            }
            .into_envelope_and_body()
            .unwrap();
            prop_assert_eq!(String::from_utf8(body).unwrap(), String::from_utf8(env.encode()).unwrap());
            prop_assert_eq!(decoded, env);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = EventEnvelope::decode(&bytes);
        }

        #[test]
        fn decoding_mutated_envelopes_never_panics(
            event in event_strategy(),
            cut in 0usize..400,
            flip in any::<u8>(),
            at in 0usize..400,
        ) {
            let mut bytes = EventEnvelope::new(event).encode();
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] ^= flip;
                bytes.truncate(bytes.len().saturating_sub(cut % bytes.len()));
            }
            let _ = EventEnvelope::decode(&bytes);
        }
    }
}
