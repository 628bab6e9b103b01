//! Wire compatibility with the seed (`shared/seed/module_66.rs`).
//!
//! `seed` below holds the seed's own type definitions, unchanged but for visibility. The fixture
//! file `fixtures/seed_v1.jsonl` was written by these types (`cargo test -p edupulse-domain --test
//! seed_compat -- --ignored regenerate` rewrites it); the tests check both directions: seed bytes
//! decode with this crate, and what this crate writes decodes with the seed's types.

use edupulse_domain::{
    DomainEvent, EventEnvelope, LessonPublished, LessonTitle, Metadata, QuizSubmitted, Score,
    StreamId,
};
use uuid::Uuid;

#[allow(dead_code, missing_docs, unreachable_pub)]
mod seed {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "payload")]
    #[non_exhaustive]
    pub enum DomainEvent {
        LessonPublished {
            lesson_id: Uuid,
            author_id: Uuid,
            title: String,
        },
        QuizSubmitted {
            quiz_id: Uuid,
            student_id: Uuid,
            score: f32,
        },
        BadgeAwarded {
            badge_id: Uuid,
            recipient_id: Uuid,
        },
        PaymentProcessed {
            invoice_id: Uuid,
            user_id: Uuid,
            amount_cents: i64,
        },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct EventEnvelope {
        pub id: Uuid,
        pub aggregate_id: Option<Uuid>,
        pub occurred_at: DateTime<Utc>,
        pub version: u16,
        pub metadata: serde_json::Value,
        pub event: DomainEvent,
    }
}

const FIXTURE: &str = include_str!("fixtures/seed_v1.jsonl");

fn u(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_f5e4_0000_7000_8000_0000_0000_0000 | n)
}

fn seed_envelopes() -> Vec<seed::EventEnvelope> {
    use chrono::TimeZone;
    let at = |s| {
        chrono::Utc
            .timestamp_opt(1_714_560_000 + s, 123_456_789)
            .unwrap()
    };
    let env = |n, agg: Option<Uuid>, metadata, event| seed::EventEnvelope {
        id: u(n),
        aggregate_id: agg,
        occurred_at: at(n as i64),
        version: 1,
        metadata,
        event,
    };
    vec![
        env(
            1,
            Some(u(100)),
            serde_json::json!({}),
            seed::DomainEvent::LessonPublished {
                lesson_id: u(100),
                author_id: u(200),
                title: "Rust Ownership Deep Dive".into(),
            },
        ),
        env(
            2,
            Some(u(101)),
            serde_json::json!({"correlation_id": "req-7f3a", "actor": "user:ñandú", "ip": "203.0.113.9",
                "user_agent": "Mozilla/5.0 (X11; Linux) — 日本語 ✓"}),
            seed::DomainEvent::LessonPublished {
                lesson_id: u(101),
                author_id: u(201),
                title: "Les accents: é, è, ü — 日本語のレッスン 🦀".into(),
            },
        ),
        env(
            3,
            Some(u(300)),
            serde_json::json!({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "causation_id": "cmd-submit-42"}),
            seed::DomainEvent::QuizSubmitted {
                quiz_id: u(300),
                student_id: u(400),
                score: 87.5,
            },
        ),
        env(
            4,
            Some(u(301)),
            serde_json::json!({"nested": {"a": [1, 2, {"b": null}]}, "correlation_id": 12}),
            seed::DomainEvent::QuizSubmitted {
                quiz_id: u(301),
                student_id: u(401),
                score: 142.25,
            },
        ),
        env(
            5,
            None,
            serde_json::json!({}),
            seed::DomainEvent::BadgeAwarded {
                badge_id: u(500),
                recipient_id: u(600),
            },
        ),
        env(
            6,
            Some(u(700)),
            serde_json::json!(null),
            seed::DomainEvent::PaymentProcessed {
                invoice_id: u(700),
                user_id: u(800),
                amount_cents: 4_999,
            },
        ),
        env(
            7,
            Some(u(701)),
            serde_json::json!({"actor": "billing-service"}),
            seed::DomainEvent::PaymentProcessed {
                invoice_id: u(701),
                user_id: u(801),
                amount_cents: 9_223_372_036_854_775_807,
            },
        ),
    ]
}

#[test]
#[ignore = "rewrites the fixture file"]
fn regenerate() {
    // The seed's `to_bytes` is `serde_json::to_vec(self)`.
    let lines: Vec<String> = seed_envelopes()
        .iter()
        .map(|e| String::from_utf8(serde_json::to_vec(e).unwrap()).unwrap())
        .collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed_v1.jsonl");
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn fixture_is_what_the_seed_types_write() {
    let expected: Vec<seed::EventEnvelope> = seed_envelopes();
    let read: Vec<seed::EventEnvelope> = FIXTURE
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(read, expected);
}

#[test]
fn seed_envelopes_decode_and_reencode_for_seed_consumers() {
    for line in FIXTURE.lines() {
        let original: seed::EventEnvelope = serde_json::from_str(line).unwrap();
        let ours = EventEnvelope::decode(line.as_bytes()).unwrap();
        assert_eq!(*ours.id.as_uuid(), original.id);
        assert_eq!(ours.aggregate_id.map(Uuid::from), original.aggregate_id);
        assert_eq!(ours.occurred_at, original.occurred_at);
        assert!(ours.event.is_known());

        let back: seed::EventEnvelope = serde_json::from_slice(&ours.encode()).unwrap();
        // A null metadata is written back as an empty object, the seed's own default.
        let mut expected = original.clone();
        if expected.metadata.is_null() {
            expected.metadata = serde_json::json!({});
        }
        // Upcast QuizSubmitted is written as v2; the seed reads the version number as is.
        expected.version = ours.schema_version();
        assert_eq!(back, expected, "line {line}");
    }
}

#[test]
fn quiz_v1_is_upcast_with_documented_default() {
    let quizzes: Vec<EventEnvelope> = FIXTURE
        .lines()
        .map(|l| EventEnvelope::decode(l.as_bytes()).unwrap())
        .filter(|e| e.event_type() == "QuizSubmitted")
        .collect();
    let maxima: Vec<(f32, f32)> = quizzes
        .iter()
        .map(|e| match &e.event {
            DomainEvent::QuizSubmitted(q) => (q.score().value(), q.max_score().value()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(maxima, vec![(87.5, 100.0), (142.25, 142.25)]);
    assert!(quizzes.iter().all(|e| e.schema_version() == 2));
}

#[test]
fn metadata_is_typed_and_lossless() {
    let line = FIXTURE.lines().nth(1).unwrap();
    let env = EventEnvelope::decode(line.as_bytes()).unwrap();
    assert_eq!(
        env.metadata.correlation_id.as_ref().unwrap().as_str(),
        "req-7f3a"
    );
    assert_eq!(env.metadata.actor.as_ref().unwrap().as_str(), "user:ñandú");
    // correlation_id 12 is not a valid id: kept as an extra, written back unchanged.
    let line = FIXTURE.lines().nth(3).unwrap();
    let env = EventEnvelope::decode(line.as_bytes()).unwrap();
    assert!(env.metadata.correlation_id.is_none());
    assert_eq!(env.metadata.extra["correlation_id"], serde_json::json!(12));
}

#[test]
fn new_events_are_readable_by_seed_consumers() {
    let stream = StreamId::new();
    let events: Vec<EventEnvelope> = vec![
        EventEnvelope::new(LessonPublished {
            lesson_id: *stream.as_uuid(),
            author_id: Uuid::new_v4(),
            title: LessonTitle::new("Async Rust — pièges et astuces").unwrap(),
        })
        .with_stream(stream)
        .with_metadata(Metadata::default()),
        EventEnvelope::new(
            QuizSubmitted::new(
                Uuid::new_v4(),
                Uuid::new_v4(),
                Score::new(9.0).unwrap(),
                Score::new(10.0).unwrap(),
            )
            .unwrap(),
        ),
    ];
    for env in events {
        let seed: seed::EventEnvelope = serde_json::from_slice(&env.encode()).unwrap();
        assert_eq!(seed.id, *env.id.as_uuid());
        assert_eq!(seed.version, env.schema_version());
    }
}
