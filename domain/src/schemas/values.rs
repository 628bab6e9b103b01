//! The schemas of the validated values: each states in JSON Schema the rule its constructor
//! enforces, so a consumer's validator refuses what this crate would refuse to decode.

use crate::{AmountCents, LessonTitle, Metadata, Score};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use std::borrow::Cow;

impl JsonSchema for LessonTitle {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "LessonTitle".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A lesson title: 1 to 200 characters, not blank, no control characters.",
            "type": "string",
            "minLength": 1,
            "maxLength": LessonTitle::MAX_CHARS,
            // Control characters are Unicode's Cc category, as `char::is_control`.
            "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
        })
    }
}

impl JsonSchema for Score {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Score".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A finite, non-negative number (a 32-bit float).",
            "type": "number",
            "minimum": 0
        })
    }
}

impl JsonSchema for AmountCents {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "AmountCents".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An amount of money in cents, never negative (a 64-bit integer).",
            "type": "integer",
            "format": "int64",
            "minimum": 0,
            "maximum": i64::MAX
        })
    }
}

/// The well-known keys are documented but not typed: a well-known key whose value did not
/// validate when it was read (the seed accepted any JSON) is kept and written back unchanged,
/// and the seed wrote `null` for no metadata.
impl JsonSchema for Metadata {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Metadata".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Context of the event: the well-known keys below and any other key (extras, kept as written). Always an object when written by this backbone, with the well-known keys valid when present; `null` in some envelopes written by the seed, and a well-known key that was invalid when read is carried unchanged.",
            "type": ["object", "null"],
            "properties": {
                "correlation_id": {
                    "description": "Relates the messages of one user request or workflow: 1 to 128 visible ASCII characters (also sent as the Edupulse-Correlation-Id header)."
                },
                "causation_id": {
                    "description": "The command or event that caused this one: 1 to 128 visible ASCII characters (also sent as the Edupulse-Causation-Id header)."
                },
                "actor": {
                    "description": "Who caused the event (a user id, a service name): one line of 1 to 256 characters."
                },
                "traceparent": {
                    "description": "The W3C Trace Context traceparent (version 00) of the request that caused the event (also sent as the traceparent header)."
                }
            }
        })
    }
}
