//! The AsyncAPI 3.0 document of the JetStream side, generated from this crate's own layout: the
//! subjects of [`crate::event_subject`] and [`crate::stream_subjects`], the dead-letter subjects,
//! every header name of [`crate::headers`], and the payload schemas of
//! `edupulse_domain::schemas` by reference (relative to the document, which sits beside them in
//! `schemas/`). The committed copy is `schemas/asyncapi.json`, for the default names (stream
//! `EDUPULSE_EVENTS`, prefix `edupulse`); this module's tests check that it is what the code
//! generates (`EDUPULSE_BLESS=1 cargo test -p edupulse-nats asyncapi` rewrites it), that the
//! headers it lists are exactly those published and the subjects those used, and that it is a
//! valid AsyncAPI 3.0 document.

use crate::NatsConfig;
use crate::cloudevents::{SOURCE, SPEC_VERSION};
use crate::wire::headers;
use edupulse_domain::schemas::{ENVELOPE_SCHEMA_PATH, event_schema_path, event_versions};
use serde_json::{Map, Value, json};

/// The media type of the payload schemas: JSON Schema draft 2020-12.
const SCHEMA_FORMAT: &str = "application/schema+json;version=draft-2020-12";

/// When a header is on a published event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    /// On every event.
    Always,
    /// When the envelope's metadata has the value.
    FromMetadata,
    /// When this build has a schema for the event's type and version.
    KnownVersion,
}

/// Every header of a published event: name, presence, description. The tests hold this list
/// against what [`crate::event_headers`] produces.
pub(crate) const EVENT_HEADERS: &[(&str, Presence, &str)] = &[
    (
        headers::MSG_ID,
        Presence::Always,
        "JetStream's deduplication key: the event id.",
    ),
    (
        headers::EVENT_TYPE,
        Presence::Always,
        "The event type name, as the body's event.type.",
    ),
    (
        headers::SCHEMA_VERSION,
        Presence::Always,
        "The payload's schema version, as the body's version.",
    ),
    (
        headers::STREAM_ID,
        Presence::Always,
        "The stream (aggregate) id: aggregate_id, or the event id for a standalone event.",
    ),
    (
        headers::STREAM_VERSION,
        Presence::Always,
        "The event's version in its stream, from 1, without gaps: apply version n+1 after n.",
    ),
    (
        headers::POSITION,
        Presence::Always,
        "The event's global position in the store.",
    ),
    (
        headers::CONTENT_TYPE,
        Presence::Always,
        "Always application/json; also the CloudEvents datacontenttype.",
    ),
    (
        headers::TRACEPARENT,
        Presence::FromMetadata,
        "W3C Trace Context of the request that caused the event (metadata.traceparent).",
    ),
    (
        headers::CORRELATION_ID,
        Presence::FromMetadata,
        "metadata.correlation_id.",
    ),
    (
        headers::CAUSATION_ID,
        Presence::FromMetadata,
        "metadata.causation_id.",
    ),
    (
        headers::CE_SPECVERSION,
        Presence::Always,
        "CloudEvents specversion.",
    ),
    (
        headers::CE_ID,
        Presence::Always,
        "CloudEvents id: the event id.",
    ),
    (
        headers::CE_SOURCE,
        Presence::Always,
        "CloudEvents source, the same for every event of the backbone.",
    ),
    (
        headers::CE_TYPE,
        Presence::Always,
        "CloudEvents type: edupulse.<EventType>.v<schema version>.",
    ),
    (
        headers::CE_TIME,
        Presence::Always,
        "CloudEvents time: the body's occurred_at, the same text.",
    ),
    (
        headers::CE_SUBJECT,
        Presence::Always,
        "CloudEvents subject: the stream (aggregate) id.",
    ),
    (
        headers::CE_DATASCHEMA,
        Presence::KnownVersion,
        "CloudEvents dataschema: the $id of the body's JSON Schema (the files beside this document).",
    ),
    (
        headers::CE_STREAMVERSION,
        Presence::Always,
        "CloudEvents extension: the event's version in its stream (as Edupulse-Stream-Version).",
    ),
    (
        headers::CE_POSITION,
        Presence::Always,
        "CloudEvents extension: the event's global position in the store (as Edupulse-Position).",
    ),
];

/// The headers a dead letter adds to the original's (which it keeps, except `Nats-*` ones).
const DEAD_LETTER_HEADERS: &[(&str, bool, &str)] = &[
    (
        headers::MSG_ID,
        true,
        "<consumer>:<stream>:<sequence>: deduplicates a dead letter written twice.",
    ),
    (
        headers::DLQ_REASON,
        true,
        "Why the consumer gave up, at most 1024 bytes, control characters replaced by spaces.",
    ),
    (
        headers::DLQ_ORIGINAL_SUBJECT,
        true,
        "The subject the message was consumed from.",
    ),
    (
        headers::DLQ_ORIGINAL_SEQUENCE,
        true,
        "The message's sequence in the event stream.",
    ),
    (
        headers::DLQ_ORIGINAL_MSG_ID,
        false,
        "The original Nats-Msg-Id (the event id), when there was one.",
    ),
    (
        headers::DLQ_DELIVERY_COUNT,
        true,
        "How many times the message had been delivered.",
    ),
    (
        headers::DLQ_CONSUMER,
        true,
        "The durable consumer that gave up on it.",
    ),
    (
        headers::DLQ_PAYLOAD_OMITTED,
        false,
        "true when the payload was left out because the copy would exceed the server's maximum payload; the original stays in the event stream.",
    ),
];

/// The AsyncAPI 3.0 document of the stream, subjects and headers for `config`'s names.
pub fn asyncapi_document(config: &NatsConfig) -> Value {
    let prefix = &config.subject_prefix;
    let dlq_prefix = config.dlq_subject_prefix();
    let mut channel_messages = Map::new();
    let mut components_messages = Map::new();
    for (event_type, version) in event_versions() {
        let key = format!("{event_type}.v{version}");
        channel_messages.insert(
            key.clone(),
            json!({ "$ref": format!("#/components/messages/{key}") }),
        );
        components_messages.insert(
            key,
            json!({
                "name": event_type,
                "title": format!("{event_type} v{version}"),
                "summary": format!("A {event_type} event, payload schema version {version}."),
                "contentType": headers::CONTENT_TYPE_JSON,
                "headers": { "$ref": "#/components/schemas/EventHeaders" },
                "payload": {
                    "schemaFormat": SCHEMA_FORMAT,
                    "schema": { "$ref": format!("./{}", event_schema_path(event_type, version)) }
                }
            }),
        );
    }
    components_messages.insert(
        "DeadLetter".into(),
        json!({
            "name": "DeadLetter",
            "title": "Dead letter",
            "summary": "A copy of an event a durable consumer gave up on, with the reason.",
            "description": "The body is the original message's (an envelope), or empty when Edupulse-Dlq-Payload-Omitted is true. The original's headers are kept, except the Nats-* ones.",
            "headers": { "$ref": "#/components/schemas/DeadLetterHeaders" },
            "payload": {
                "schemaFormat": SCHEMA_FORMAT,
                "schema": { "$ref": format!("./{ENVELOPE_SCHEMA_PATH}") }
            }
        }),
    );
    let event_messages: Vec<Value> = channel_messages
        .keys()
        .map(|key| json!({ "$ref": format!("#/channels/events/messages/{key}") }))
        .collect();
    let types: Vec<&str> = {
        let mut types: Vec<&str> = event_versions().map(|(t, _)| t).collect();
        types.dedup();
        types
    };
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "EduPulse event backbone",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Domain events published to NATS JetStream by the EduPulse relay, at least once, deduplicated by event id (Nats-Msg-Id), in per-stream order. The JetStream stream {stream} captures {subjects}; its dead-letter stream {dlq_stream} captures {dlq_subjects}. Every message carries CloudEvents {SPEC_VERSION} attributes in binary content mode (ce-* headers, source {SOURCE}); the body is the event envelope, described by the JSON Schemas beside this document.",
                stream = config.stream_name,
                subjects = crate::stream_subjects(prefix).join(", "),
                dlq_stream = config.dlq_stream_name(),
                dlq_subjects = crate::dlq_stream_subjects(&dlq_prefix).join(", "),
            ),
        },
        "defaultContentType": headers::CONTENT_TYPE_JSON,
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "A NATS server with JetStream (set NATS_URL); the stream and subject prefix are settings (EDUPULSE_NATS_STREAM, EDUPULSE_SUBJECT_PREFIX)."
            }
        },
        "channels": {
            "events": {
                "address": format!("{prefix}.{{eventType}}.{{streamId}}"),
                "title": "Events",
                "description": format!("Every event, on its type's and stream's subject; JetStream stream {}. Filter by type with {prefix}.<EventType>.* and by aggregate with {prefix}.*.<stream id>.", config.stream_name),
                "parameters": {
                    "eventType": {
                        "description": "The event type name (others may appear: a tolerant consumer skips types it does not know).",
                        "examples": types,
                    },
                    "streamId": { "description": "The stream (aggregate) id, a lowercase hyphenated UUID." }
                },
                "messages": channel_messages,
            },
            "deadLetters": {
                "address": format!("{dlq_prefix}.{{consumer}}.{{eventType}}.{{streamId}}"),
                "title": "Dead letters",
                "description": format!("Events a durable consumer gave up on; JetStream stream {}.", config.dlq_stream_name()),
                "parameters": {
                    "consumer": { "description": "The durable consumer's name." },
                    "eventType": { "description": "The event type name." },
                    "streamId": { "description": "The stream (aggregate) id." }
                },
                "messages": { "DeadLetter": { "$ref": "#/components/messages/DeadLetter" } }
            }
        },
        "operations": {
            "publishEvents": {
                "action": "send",
                "title": "The relay publishes committed events",
                "description": "Each message is published with Nats-Msg-Id and Nats-Expected-Last-Subject-Sequence (the per-subject fence) and its acknowledgement awaited.",
                "channel": { "$ref": "#/channels/events" },
                "messages": event_messages,
            },
            "consumeEvents": {
                "action": "receive",
                "title": "Projections consume events",
                "description": "Durable pull consumers with explicit acknowledgement. A redelivered message can come after later ones: order by the stream version header.",
                "channel": { "$ref": "#/channels/events" },
                "messages": event_messages,
            },
            "deadLetter": {
                "action": "send",
                "title": "A consumer dead-letters an event",
                "description": "The copy is acknowledged by the dead-letter stream before the original is terminated.",
                "channel": { "$ref": "#/channels/deadLetters" },
                "messages": [ { "$ref": "#/channels/deadLetters/messages/DeadLetter" } ]
            }
        },
        "components": {
            "messages": components_messages,
            "schemas": {
                "EventHeaders": headers_schema(
                    "The headers of every published event.",
                    EVENT_HEADERS.iter().map(|(name, presence, description)| {
                        (*name, *presence == Presence::Always, *description)
                    }),
                ),
                "DeadLetterHeaders": headers_schema(
                    "The headers a dead letter adds to the original's.",
                    DEAD_LETTER_HEADERS.iter().copied(),
                ),
            }
        }
    })
}

/// A header map's schema: `(name, required, description)`, every value a string.
fn headers_schema<'a>(
    description: &str,
    entries: impl Iterator<Item = (&'a str, bool, &'a str)>,
) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (name, is_required, text) in entries {
        let mut schema = json!({ "type": "string", "description": text });
        match name {
            headers::CE_SPECVERSION => schema["const"] = SPEC_VERSION.into(),
            headers::CE_SOURCE => schema["const"] = SOURCE.into(),
            headers::CONTENT_TYPE => schema["const"] = headers::CONTENT_TYPE_JSON.into(),
            _ => {}
        }
        properties.insert(name.to_owned(), schema);
        if is_required {
            required.push(name);
        }
    }
    json!({
        "type": "object",
        "description": description,
        "properties": properties,
        "required": required,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use edupulse_domain::{
        ContextId, EventEnvelope, LessonPublished, LessonTitle, Metadata, StreamId, TraceParent,
        Uuid,
    };
    use edupulse_ports::{Cursor, RecordedEvent};
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    fn schemas_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")
    }

    fn default_config() -> NatsConfig {
        NatsConfig::new(["nats://localhost:4222"], "EDUPULSE_EVENTS", "edupulse")
    }

    fn document_text() -> String {
        let mut text = serde_json::to_string_pretty(&asyncapi_document(&default_config()))
            .expect("a JSON value serializes");
        text.push('\n');
        text
    }

    fn recorded(metadata: Metadata) -> RecordedEvent {
        let stream = StreamId::new();
        let envelope = EventEnvelope::new(LessonPublished {
            lesson_id: *stream.as_uuid(),
            author_id: Uuid::new_v4(),
            title: LessonTitle::new("Lifetimes").expect("a valid title"),
        })
        .with_stream(stream)
        .with_metadata(metadata);
        RecordedEvent {
            stream_id: stream,
            envelope,
            stream_version: 2,
            cursor: Cursor {
                commit: 7,
                position: 7,
            },
            recorded_at: chrono::Utc::now(),
            body: None,
        }
    }

    fn names(event: &RecordedEvent) -> BTreeSet<String> {
        crate::event_headers(event)
            .iter()
            .map(|(name, _)| name.to_string())
            .collect()
    }

    #[test]
    fn the_committed_document_is_what_the_code_generates() {
        let path = schemas_dir().join("asyncapi.json");
        let text = document_text();
        if std::env::var_os("EDUPULSE_BLESS").is_some() {
            std::fs::write(&path, &text).expect("write schemas/asyncapi.json");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "schemas/asyncapi.json differs from what the code generates; regenerate it with: \
             EDUPULSE_BLESS=1 cargo test -p edupulse-nats asyncapi"
        );
    }

    #[test]
    fn the_document_is_valid_asyncapi_3_0() {
        use roas_asyncapi::v3_0::Document;
        use roas_asyncapi::validation::Validate;
        let document: Document = serde_json::from_str(&document_text())
            .unwrap_or_else(|e| panic!("not an AsyncAPI 3.0 document: {e}"));
        document
            .validate(Default::default())
            .unwrap_or_else(|e| panic!("{e}"));

        // The validator has teeth: an operation on a channel that does not exist is refused.
        let mut broken = asyncapi_document(&default_config());
        broken["operations"]["deadLetter"]["channel"]["$ref"] = "#/channels/nowhere".into();
        let broken: Document = serde_json::from_value(broken).expect("still parses");
        assert!(broken.validate(Default::default()).is_err());
    }

    #[test]
    fn the_documented_headers_are_exactly_the_published_ones() {
        let documented = |keep: fn(Presence) -> bool| -> BTreeSet<String> {
            EVENT_HEADERS
                .iter()
                .filter(|(_, presence, _)| keep(*presence))
                .map(|(name, _, _)| name.to_lowercase())
                .collect()
        };
        let lower = |set: BTreeSet<String>| -> BTreeSet<String> {
            set.iter().map(|n| n.to_lowercase()).collect()
        };
        let full = Metadata {
            correlation_id: Some(ContextId::new("req-1").expect("valid")),
            causation_id: Some(ContextId::new("cmd-1").expect("valid")),
            traceparent: Some(
                TraceParent::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                    .expect("valid"),
            ),
            ..Metadata::default()
        };
        assert_eq!(lower(names(&recorded(full))), documented(|_| true));
        assert_eq!(
            lower(names(&recorded(Metadata::default()))),
            documented(|p| p != Presence::FromMetadata)
        );
    }

    #[test]
    fn the_documented_subjects_are_the_published_ones() {
        let config = default_config();
        let document = asyncapi_document(&config);
        let address = |channel: &str| {
            document["channels"][channel]["address"]
                .as_str()
                .expect("an address")
                .to_owned()
        };
        let event = recorded(Metadata::default());
        let events = address("events");
        assert_eq!(
            events
                .replace("{eventType}", event.envelope.event_type())
                .replace("{streamId}", &event.stream_id.to_string()),
            crate::event_subject(&config.subject_prefix, &event).expect("a valid subject")
        );
        assert_eq!(
            vec![
                events
                    .replace("{eventType}", "*")
                    .replace("{streamId}", "*")
            ],
            crate::stream_subjects(&config.subject_prefix)
        );
        let dead_letters = address("deadLetters");
        assert!(dead_letters.ends_with(".{consumer}.{eventType}.{streamId}"));
        assert_eq!(
            vec![dead_letters.replace(".{consumer}.{eventType}.{streamId}", ".>")],
            crate::dlq_stream_subjects(&config.dlq_subject_prefix())
        );
    }

    #[test]
    fn every_payload_reference_is_a_committed_schema() {
        let document = asyncapi_document(&default_config());
        let messages = document["components"]["messages"]
            .as_object()
            .expect("messages");
        for (key, message) in messages {
            let reference = message["payload"]["schema"]["$ref"]
                .as_str()
                .expect("a reference");
            let path = schemas_dir().join(reference.trim_start_matches("./"));
            assert!(path.is_file(), "{key}: {} is missing", path.display());
        }
        assert_eq!(messages.len(), event_versions().count() + 1);
    }
}
