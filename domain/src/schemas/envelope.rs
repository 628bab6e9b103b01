//! The envelope's schema, derived from the struct that serializes it (`crate::envelope::Wire`),
//! then narrowed for one event type and version.

use super::SCHEMA_BASE_URI;
use crate::envelope::Wire;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Value, json};

/// The envelope of any event.
pub(super) fn generic(generator: &mut SchemaGenerator) -> Value {
    let schema = generator.root_schema_for::<Wire<'static>>();
    finish(
        schema.to_value(),
        super::ENVELOPE_SCHEMA_PATH,
        "EduPulse event envelope",
        "The body of every EduPulse event message, for any event type and version. The schema of each event type and version (events/<type>.v<version>.json) narrows `version`, `event.type` and `event.payload`.",
    )
}

/// The envelope of `event_type` at `version`, whose payload is `P`.
pub(super) fn of<P: JsonSchema>(
    generator: &mut SchemaGenerator,
    event_type: &str,
    version: u16,
) -> Value {
    let mut schema = generator.root_schema_for::<Wire<'static>>().to_value();
    let payload = generator.subschema_for::<P>().to_value();
    let properties = &mut schema["properties"];
    properties["version"] = json!({
        "description": "The schema version of the payload.",
        "const": version,
    });
    let event = &mut properties["event"]["properties"];
    event["type"] = json!({ "description": "The event type name.", "const": event_type });
    event["payload"] = payload;
    // The payload's definitions were added to the generator after the root schema was taken.
    let definitions = generator.take_definitions(true);
    if !definitions.is_empty() {
        schema["$defs"] = Value::Object(definitions);
    }
    finish(
        schema,
        &super::event_schema_path(event_type, version),
        &format!("{event_type} v{version}"),
        &format!(
            "An EduPulse envelope carrying a {event_type} event, payload schema version {version}."
        ),
    )
}

/// Sets the document's `$id`, title and description (serde_json writes the keys sorted).
fn finish(mut schema: Value, path: &str, title: &str, description: &str) -> Value {
    if let Value::Object(body) = &mut schema {
        body.insert("$id".into(), format!("{SCHEMA_BASE_URI}{path}").into());
        body.insert("title".into(), title.into());
        body.insert("description".into(), description.into());
    }
    schema
}
