//! A CI-sized property run over the NDJSON parser (`edupulse_app::input::parse_line`) and the
//! envelope decoder (`EventEnvelope::decode`) with structured but hostile JSON: envelope-shaped
//! objects whose fields have the wrong types, huge numbers, lone surrogates, NUL, deep arrays,
//! and bytes spliced in. Whatever the input: an error or a value, never a panic.

use edupulse_app::input::parse_line;
use edupulse_domain::{EventEnvelope, MAX_NESTING_DEPTH};
use proptest::prelude::*;

/// Scalars chosen to break naive code.
fn hostile_scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("1e400".to_owned()),
        Just("-1e400".to_owned()),
        Just("-0".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("-9223372036854775809".to_owned()),
        Just("123456789012345678901234567890.5e-400".to_owned()),
        Just(r#""\u0000""#.to_owned()),
        Just(r#""\ud800""#.to_owned()),
        Just(r#""\udfff\ud800""#.to_owned()),
        Just(r#""2024-02-30T25:61:61Z""#.to_owned()),
        Just(r#""00000000-0000-0000-0000-000000000000""#.to_owned()),
        Just(r#""LessonPublished""#.to_owned()),
        Just(r#""QuizSubmitted""#.to_owned()),
        Just(r#""BadgeAwarded""#.to_owned()),
        Just(r#""PaymentProcessed""#.to_owned()),
        Just(r#""Lesson.Published >""#.to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| serde_json::to_string(&f).unwrap_or_else(|_| "0".into())),
        any::<u128>().prop_map(|n| format!("\"{}\"", uuid_like(n))),
        ".{0,40}".prop_map(|s| serde_json::Value::String(s).to_string()),
        (0usize..300).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        (0usize..200).prop_map(|n| format!("{}1{}", "[".repeat(n), "]".repeat(n))),
    ]
}

fn uuid_like(n: u128) -> String {
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

const KEYS: [&str; 16] = [
    "type",
    "payload",
    "stream",
    "id",
    "version",
    "metadata",
    "expected_version",
    "event",
    "aggregate_id",
    "occurred_at",
    "lesson_id",
    "title",
    "score",
    "amount_cents",
    "traceparent",
    "correlation_id",
];

/// JSON text: hostile scalars nested in arrays and objects keyed by the envelope's field names.
fn hostile_json() -> impl Strategy<Value = String> {
    hostile_scalar().prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((prop::sample::select(&KEYS[..]), inner), 0..8).prop_map(
                |fields| {
                    let body: Vec<String> = fields
                        .into_iter()
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect();
                    format!("{{{}}}", body.join(","))
                }
            ),
        ]
    })
}

/// An envelope-shaped object whose fields are hostile values (or valid ones, sometimes).
fn hostile_envelope() -> impl Strategy<Value = String> {
    (
        hostile_json(),
        hostile_json(),
        hostile_json(),
        hostile_json(),
        hostile_json(),
        hostile_json(),
        any::<u128>(),
    )
        .prop_map(|(id, at, version, metadata, event_type, payload, n)| {
            let id = if n % 3 == 0 {
                format!("\"{}\"", uuid_like(n))
            } else {
                id
            };
            format!(
                r#"{{"id":{id},"aggregate_id":null,"occurred_at":{at},"version":{version},"metadata":{metadata},"event":{{"type":{event_type},"payload":{payload}}}}}"#
            )
        })
}

/// Bytes: JSON text with arbitrary bytes spliced in (NUL, invalid UTF-8, truncation).
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![hostile_json(), hostile_envelope()],
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<u8>(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(text, at, splice, truncate)| {
            let mut bytes = text.into_bytes();
            let at = at.index(bytes.len() + 1);
            if truncate {
                bytes.truncate(at);
            }
            let at = at.min(bytes.len());
            bytes.splice(at..at, splice);
            bytes
        })
}

fn cases() -> u32 {
    2000 * crate::workload::soak_factor()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn parser_and_decoder_never_panic_on_hostile_json(text in hostile_json()) {
        let _ = parse_line(text.as_bytes());
        let _ = EventEnvelope::decode(text.as_bytes());
    }

    #[test]
    fn parser_and_decoder_never_panic_on_hostile_envelopes(text in hostile_envelope()) {
        let _ = parse_line(text.as_bytes());
        if let Ok(envelope) = EventEnvelope::decode(text.as_bytes()) {
            // Whatever decodes re-encodes and decodes to the same value.
            let again = EventEnvelope::decode(&envelope.encode());
            prop_assert_eq!(again.ok(), Some(envelope));
        }
    }

    #[test]
    fn parser_and_decoder_never_panic_on_hostile_bytes(bytes in hostile_bytes()) {
        let _ = parse_line(&bytes);
        let _ = EventEnvelope::decode(&bytes);
    }
}

#[test]
fn nesting_at_and_beyond_the_limit() {
    for depth in [
        MAX_NESTING_DEPTH - 3,
        MAX_NESTING_DEPTH,
        MAX_NESTING_DEPTH + 1,
        100_000,
    ] {
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let line = format!(r#"{{"type":"BadgeAwarded","metadata":{{"x":{deep}}},"payload":{{}}}}"#);
        let _ = parse_line(line.as_bytes());
        let _ = EventEnvelope::decode(line.as_bytes());
    }
}
