//! The JSON Schemas (draft 2020-12) of the wire format: the envelope, and the envelope of every
//! event type and schema version this build knows. They are generated from the domain types with
//! `schemars` and committed under `schemas/` at the repository root, where the schemas test suite
//! of this crate checks that they match the code and that no existing event version changed in
//! a way that breaks a consumer.
//!
//! - Each file is self-contained (no reference to another file), so a consumer in any language
//!   loads one file per event version and validates the message body, the whole envelope, with
//!   any draft 2020-12 validator.
//! - Each schema's `$id` is [`SCHEMA_BASE_URI`] followed by its path under `schemas/`. The
//!   CloudEvents `dataschema` attribute the NATS adapter sends is that `$id`, so a consumer finds
//!   the schema of a message by looking up the header in the committed files.
//! - The schemas describe what this build writes and still reads: the seed's v1 envelopes (null
//!   metadata, v1 payloads) validate too.

mod envelope;
mod history;
mod values;

pub use history::QuizSubmittedV1;

use crate::events::{BadgeAwarded, LessonPublished, PaymentProcessed, QuizSubmitted};
use crate::{EventKind, event_types};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::Value;

/// Where the schemas' `$id`s start: the path of a schema under `schemas/` follows it.
pub const SCHEMA_BASE_URI: &str = "https://schemas.edupulse.example/";

/// The path, under `schemas/`, of the envelope schema (any event type).
pub const ENVELOPE_SCHEMA_PATH: &str = "envelope.json";

/// One schema file: where it goes under `schemas/`, and its content.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaDocument {
    /// The path under `schemas/`, with `/` separators.
    pub path: String,
    /// The schema.
    pub schema: Value,
}

impl SchemaDocument {
    /// The file's text as committed: pretty-printed JSON with a final newline, so that diffs
    /// stay readable and the comparison is byte for byte.
    pub fn to_file_text(&self) -> String {
        let mut text =
            serde_json::to_string_pretty(&self.schema).expect(crate::events::INFALLIBLE_JSON);
        text.push('\n');
        text
    }
}

/// The path under `schemas/` of the schema of `event_type` at schema `version`.
///
/// ```
/// use edupulse_domain::schemas::event_schema_path;
/// assert_eq!(event_schema_path("QuizSubmitted", 2), "events/QuizSubmitted.v2.json");
/// ```
pub fn event_schema_path(event_type: &str, version: u16) -> String {
    format!("events/{event_type}.v{version}.json")
}

/// The `$id` of the schema of `event_type` at schema `version`, if this build knows that
/// version: what the CloudEvents `dataschema` attribute carries.
///
/// ```
/// use edupulse_domain::schemas::event_schema_uri;
/// assert_eq!(
///     event_schema_uri("LessonPublished", 1).as_deref(),
///     Some("https://schemas.edupulse.example/events/LessonPublished.v1.json"),
/// );
/// assert_eq!(event_schema_uri("LessonPublished", 9), None);
/// ```
pub fn event_schema_uri(event_type: &str, version: u16) -> Option<String> {
    let known = DomainEventVersions::all()
        .iter()
        .any(|v| v.event_type == event_type && v.version == version);
    known.then(|| {
        format!(
            "{SCHEMA_BASE_URI}{}",
            event_schema_path(event_type, version)
        )
    })
}

/// Every event type and schema version with a schema, in a stable order: each type's history
/// from version 1 to the version this build writes.
pub fn event_versions() -> impl Iterator<Item = (&'static str, u16)> {
    DomainEventVersions::all()
        .iter()
        .map(|v| (v.event_type, v.version))
}

/// The envelope schema: any event type, any payload.
pub fn envelope_schema() -> Value {
    envelope::generic(&mut generator())
}

/// The schema of an envelope carrying `event_type` at schema `version`, if this build knows it.
pub fn event_schema(event_type: &str, version: u16) -> Option<Value> {
    let entry = DomainEventVersions::all()
        .iter()
        .find(|v| v.event_type == event_type && v.version == version)?;
    Some((entry.schema)(&mut generator()))
}

/// Every schema file: the envelope, then every event version of [`event_versions`].
pub fn schema_documents() -> Vec<SchemaDocument> {
    let mut documents = vec![SchemaDocument {
        path: ENVELOPE_SCHEMA_PATH.to_owned(),
        schema: envelope_schema(),
    }];
    for entry in DomainEventVersions::all() {
        documents.push(SchemaDocument {
            path: event_schema_path(entry.event_type, entry.version),
            schema: (entry.schema)(&mut generator()),
        });
    }
    documents
}

/// Draft 2020-12, describing what serialization writes.
fn generator() -> SchemaGenerator {
    SchemaGenerator::new(SchemaSettings::draft2020_12().for_serialize())
}

/// One event version and how to build its schema.
struct DomainEventVersions {
    event_type: &'static str,
    version: u16,
    schema: fn(&mut SchemaGenerator) -> Value,
}

impl DomainEventVersions {
    /// The catalogue. A new schema version of an event adds a line here (its payload type is the
    /// current struct; the previous shape moves to `history` as a frozen type), next to the
    /// upcaster step that lifts it.
    fn all() -> &'static [DomainEventVersions] {
        const CATALOGUE: &[DomainEventVersions] = &[
            current::<LessonPublished>(),
            DomainEventVersions {
                event_type: event_types::QUIZ_SUBMITTED,
                version: 1,
                schema: |g| envelope::of::<QuizSubmittedV1>(g, event_types::QUIZ_SUBMITTED, 1),
            },
            current::<QuizSubmitted>(),
            current::<BadgeAwarded>(),
            current::<PaymentProcessed>(),
        ];
        CATALOGUE
    }
}

/// The entry of an event type's current version.
const fn current<E: EventKind + JsonSchema>() -> DomainEventVersions {
    DomainEventVersions {
        event_type: E::EVENT_TYPE,
        version: E::SCHEMA_VERSION,
        schema: |g| envelope::of::<E>(g, E::EVENT_TYPE, E::SCHEMA_VERSION),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DomainEvent;

    #[test]
    fn every_type_has_a_schema_for_each_version_up_to_the_current_one() {
        for name in event_types::ALL {
            let current = DomainEvent::current_version_of(name).unwrap();
            let versions: Vec<u16> = event_versions()
                .filter(|(t, _)| *t == name)
                .map(|(_, v)| v)
                .collect();
            assert_eq!(versions, (1..=current).collect::<Vec<_>>(), "{name}");
        }
        assert_eq!(event_versions().count(), schema_documents().len() - 1);
    }

    #[test]
    fn ids_are_the_base_and_the_path() {
        for document in schema_documents() {
            assert_eq!(
                document.schema["$id"],
                format!("{SCHEMA_BASE_URI}{}", document.path)
            );
            assert!(document.to_file_text().ends_with("}\n"));
        }
    }
}
