//! The JSON Schemas under `schemas/` (repository root) against the code and the wire.
//!
//! - The committed files are exactly what `edupulse_domain::schemas` generates. After a change
//!   to an event type, regenerate them with
//!   `EDUPULSE_BLESS=1 cargo test -p edupulse-domain --test schemas` and commit them.
//! - A change to the schema of an existing event version is refused, blessed or not, when it
//!   could break a consumer or a stored event (`compat`): that change needs a new version and an
//!   upcaster. With `EDUPULSE_SCHEMA_BASELINE=<dir>` (CI sets it to the schemas of the main
//!   branch), the check also runs against that older copy, so that a schema rewritten and blessed
//!   on a branch is still compared with what was published.
//! - The schemas describe the real wire format: the seed's corpus and envelopes encoded by this
//!   crate validate; what the domain refuses to decode, they refuse too.

mod compat;

use edupulse_domain::schemas::{self, SchemaDocument};
use edupulse_domain::{
    AmountCents, BadgeAwarded, ContextId, EventEnvelope, LessonPublished, LessonTitle, Metadata,
    PaymentProcessed, QuizSubmitted, Score, StreamId, TraceParent, Uuid,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const SEED: &str = include_str!("../fixtures/seed_v1.jsonl");
const BLESS: &str = "EDUPULSE_BLESS";
const BASELINE: &str = "EDUPULSE_SCHEMA_BASELINE";
const REGENERATE: &str = "EDUPULSE_BLESS=1 cargo test -p edupulse-domain --test schemas";

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

fn read_json(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The committed schema at `relative` (under `schemas/`).
fn committed(relative: &str) -> Value {
    read_json(&schemas_dir().join(relative))
        .unwrap_or_else(|| panic!("schemas/{relative} is missing; run {REGENERATE}"))
}

/// Breaking changes from the schema at `relative` under `dir`, if there is one, to `document`.
fn breaking_against(dir: &Path, document: &SchemaDocument) -> Vec<String> {
    match read_json(&dir.join(&document.path)) {
        Some(old) => compat::breaking_changes(&old, &document.schema)
            .into_iter()
            .map(|change| format!("{}{change}", document.path))
            .collect(),
        None => Vec::new(),
    }
}

#[test]
fn committed_schemas_are_what_the_code_generates() {
    let bless = std::env::var_os(BLESS).is_some();
    let baseline = std::env::var_os(BASELINE).map(PathBuf::from);
    let dir = schemas_dir();
    let documents = schemas::schema_documents();
    let mut breaking = Vec::new();
    let mut stale = Vec::new();
    for document in &documents {
        let path = dir.join(&document.path);
        let text = document.to_file_text();
        breaking.extend(breaking_against(&dir, document));
        if let Some(baseline) = &baseline {
            breaking.extend(breaking_against(baseline, document));
        }
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(document.path.clone());
        }
    }
    // An event version that is no longer generated was removed: consumers and stored events
    // still have it.
    let generated: Vec<&str> = documents.iter().map(|d| d.path.as_str()).collect();
    let mut dirs = vec![dir.join("events")];
    dirs.extend(baseline.iter().map(|b| b.join("events")));
    for events in dirs {
        for entry in std::fs::read_dir(&events).into_iter().flatten().flatten() {
            let name = format!("events/{}", entry.file_name().to_string_lossy());
            if !generated.contains(&name.as_str()) {
                breaking.push(format!("{name}: this event version is no longer generated"));
            }
        }
    }
    assert!(
        breaking.is_empty(),
        "breaking changes to published event versions (introduce a new version with an upcaster \
         instead):\n  {}",
        breaking.join("\n  ")
    );
    if bless {
        for document in &documents {
            let path = dir.join(&document.path);
            std::fs::create_dir_all(path.parent().expect("a file in schemas/"))
                .expect("create schemas/");
            std::fs::write(&path, document.to_file_text()).expect("write schema");
        }
        return;
    }
    assert!(
        stale.is_empty(),
        "these files under schemas/ differ from what the code generates: {stale:?}\n\
         regenerate them with: {REGENERATE}"
    );
}

/// The validator of the committed schema at `relative`, asserting formats (uuid, date-time)
/// too; built once per file.
fn validator(relative: &str) -> &'static jsonschema::Validator {
    static VALIDATORS: OnceLock<HashMap<String, jsonschema::Validator>> = OnceLock::new();
    let validators = VALIDATORS.get_or_init(|| {
        schemas::schema_documents()
            .into_iter()
            .map(|document| {
                let validator = jsonschema::options()
                    .should_validate_formats(true)
                    .build(&committed(&document.path))
                    .unwrap_or_else(|e| {
                        panic!("schemas/{} is not a valid schema: {e}", document.path)
                    });
                (document.path, validator)
            })
            .collect()
    });
    validators
        .get(relative)
        .unwrap_or_else(|| panic!("no schema {relative}"))
}

/// Validates a message body against the envelope schema and its event version's schema.
fn check_body(body: &Value) -> Result<(), String> {
    let event_type = body["event"]["type"].as_str().ok_or("no event.type")?;
    let version = body["version"].as_u64().ok_or("no version")?;
    let version = u16::try_from(version).map_err(|e| e.to_string())?;
    for relative in [
        schemas::ENVELOPE_SCHEMA_PATH.to_owned(),
        schemas::event_schema_path(event_type, version),
    ] {
        let errors: Vec<String> = validator(&relative)
            .iter_errors(body)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        if !errors.is_empty() {
            return Err(format!("{relative}: {errors:?}"));
        }
    }
    Ok(())
}

#[test]
fn the_seed_corpus_validates() {
    for line in SEED.lines() {
        let body: Value = serde_json::from_str(line).unwrap();
        check_body(&body).unwrap_or_else(|e| panic!("{line}\n{e}"));
        // And what this crate writes back (QuizSubmitted upcast to v2) too.
        let ours = EventEnvelope::decode(line.as_bytes()).unwrap();
        check_body(&serde_json::from_slice(&ours.encode()).unwrap())
            .unwrap_or_else(|e| panic!("re-encoded {line}\n{e}"));
    }
}

#[test]
fn the_schemas_refuse_what_the_domain_refuses() {
    let valid: Value = serde_json::from_str(SEED.lines().next().unwrap()).unwrap();
    check_body(&valid).unwrap();
    let broken = |edit: fn(&mut Value)| {
        let mut body = valid.clone();
        edit(&mut body);
        assert!(
            EventEnvelope::decode(body.to_string().as_bytes()).is_err(),
            "{body}"
        );
        assert!(check_body(&body).is_err(), "{body}");
    };
    broken(|b| b["event"]["payload"]["title"] = json!(""));
    broken(|b| b["event"]["payload"]["title"] = json!("two\nlines"));
    broken(|b| b["event"]["payload"]["title"] = json!("x".repeat(201)));
    broken(|b| b["event"]["payload"]["lesson_id"] = json!("not-a-uuid"));
    broken(|b| b["event"]["payload"]["author_id"] = json!(null));
    broken(|b| b["occurred_at"] = json!("yesterday"));
    broken(|b| b["id"] = json!(42));

    let mut payment: Value = serde_json::from_str(SEED.lines().nth(5).unwrap()).unwrap();
    check_body(&payment).unwrap();
    payment["event"]["payload"]["amount_cents"] = json!(-1);
    assert!(check_body(&payment).is_err());
    payment["event"]["payload"]["amount_cents"] = json!(1.5);
    assert!(check_body(&payment).is_err());

    // A v2 quiz without its maximum is not a v2 quiz.
    let mut quiz: Value = serde_json::from_str(SEED.lines().nth(2).unwrap()).unwrap();
    quiz["version"] = json!(2);
    assert!(check_body(&quiz).is_err());
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn event() -> impl Strategy<Value = EventEnvelope> {
    let title =
        "[^\\p{Cc}]{1,200}".prop_filter_map("valid title", |t: String| LessonTitle::new(t).ok());
    let score = 0.0f32..1e6;
    prop_oneof![
        (uuid(), uuid(), title).prop_map(|(lesson_id, author_id, title)| {
            EventEnvelope::new(LessonPublished {
                lesson_id,
                author_id,
                title,
            })
        }),
        (uuid(), uuid(), score.clone(), score).prop_map(|(q, s, a, b)| {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            EventEnvelope::new(
                QuizSubmitted::new(
                    q,
                    s,
                    Score::new(lo).expect("a non-negative finite score"),
                    Score::new(hi).expect("a non-negative finite score"),
                )
                .expect("the score is the lower of the two"),
            )
        }),
        (uuid(), uuid()).prop_map(|(badge_id, recipient_id)| {
            EventEnvelope::new(BadgeAwarded {
                badge_id,
                recipient_id,
            })
        }),
        (uuid(), uuid(), 0i64..).prop_map(|(invoice_id, user_id, cents)| {
            EventEnvelope::new(PaymentProcessed {
                invoice_id,
                user_id,
                amount_cents: AmountCents::new(cents).expect("a non-negative amount"),
            })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn encoded_envelopes_validate(
        envelope in event(),
        stream in proptest::option::of(uuid()),
        secs in 0i64..4_000_000_000,
        nanos in 0u32..1_000_000_000,
        with_metadata in any::<bool>(),
    ) {
        let mut envelope = envelope
            .with_occurred_at(chrono::DateTime::from_timestamp(secs, nanos).unwrap());
        envelope.aggregate_id = stream.map(StreamId::from_uuid);
        if with_metadata {
            envelope = envelope.with_metadata(Metadata {
                correlation_id: Some(ContextId::new("req-1").unwrap()),
                traceparent: Some(TraceParent::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap()),
                ..Metadata::default()
            });
        }
        let body: Value = serde_json::from_slice(&envelope.encode()).unwrap();
        prop_assert!(check_body(&body).is_ok(), "{:?}", check_body(&body));
    }
}
