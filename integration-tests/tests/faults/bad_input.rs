//! Bad input: malformed JSON, unknown event types, invalid UTF-8, deep nesting, events too
//! large for the store or for the broker, and strings exactly at the size limits.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use edupulse_app::input::{InputError, parse_line};
use edupulse_domain::{
    ContextId, DEFAULT_MAX_EVENT_BYTES, DecodeError, EventEnvelope, ExpectedVersion,
    LessonPublished, LessonTitle, MAX_NESTING_DEPTH, Metadata, StreamId, Uuid,
};
use edupulse_integration_tests::{fresh_database, shared_nats, unique_name};
use edupulse_ports::{CheckpointStore, EventAppender, EventReader, Release, StoreError};

use crate::checker::lock;
use crate::workload::{
    RUN_KEY, Run, Until, Workload, append_until_acknowledged, event, nats_config, pg_config,
    wait_parked,
};

/// An event of `stream` carrying `bytes` bytes of metadata.
fn padded(stream: StreamId, run: &str, bytes: usize) -> EventEnvelope {
    let mut e = event(stream, run, 0);
    e.metadata
        .extra
        .insert("blob".to_owned(), "x".repeat(bytes).into());
    e
}

#[test]
fn bad_lines_are_refused_with_the_right_error() {
    let stream = Uuid::new_v4();
    let badge = |payload: &str| {
        format!(r#"{{"type":"BadgeAwarded","stream":"{stream}","payload":{payload}}}"#)
    };
    let valid = badge(&format!(
        r#"{{"badge_id":"{}","recipient_id":"{stream}"}}"#,
        Uuid::new_v4()
    ));
    assert!(
        parse_line(valid.as_bytes()).is_ok(),
        "the control line parses"
    );

    // Malformed JSON, in several ways.
    for line in [
        &b"{"[..],
        b"",
        b"{\"type\":\"BadgeAwarded\",}",
        b"{\"type\":\"BadgeAwarded\" \"payload\":{}}",
        b"nul\0l",
        &valid.as_bytes()[..valid.len() - 1],
    ] {
        let err = parse_line(line).expect_err("malformed");
        assert!(
            matches!(err, InputError::Decode(DecodeError::Malformed(_))),
            "{line:?}: {err:?}"
        );
    }
    // Unknown event type: refused, named.
    let unknown = format!(r#"{{"type":"CourseDeleted","stream":"{stream}","payload":{{}}}}"#);
    match parse_line(unknown.as_bytes()) {
        Err(InputError::UnknownType(t)) => assert_eq!(t, "CourseDeleted"),
        other => panic!("{other:?}"),
    }
    // Invalid UTF-8 inside a string, and as the whole line.
    let mut invalid = valid.clone().into_bytes();
    let at = invalid.iter().position(|&b| b == b'B').expect("a B");
    invalid[at] = 0xff;
    for line in [
        invalid.as_slice(),
        b"\xc3\x28",
        b"{\"type\":\"\xed\xa0\x80\"}",
    ] {
        assert!(
            matches!(
                parse_line(line),
                Err(InputError::Decode(DecodeError::Malformed(_)))
            ),
            "{line:?}"
        );
    }
    // Deep nesting, in the payload and in the metadata: refused before parsing.
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    for line in [
        badge(&deep(MAX_NESTING_DEPTH + 10)),
        format!(
            r#"{{"type":"BadgeAwarded","metadata":{{"x":{}}},"payload":{{}}}}"#,
            deep(10_000)
        ),
    ] {
        assert!(
            matches!(
                parse_line(line.as_bytes()),
                Err(InputError::Decode(DecodeError::TooDeep { .. }))
            ),
            "{}",
            &line[..60]
        );
    }
    // Too large for the decoder: refused before parsing.
    let huge = badge(&format!(r#""{}""#, "x".repeat(DEFAULT_MAX_EVENT_BYTES)));
    assert!(matches!(
        parse_line(huge.as_bytes()),
        Err(InputError::Decode(DecodeError::TooLarge { .. }))
    ));
    // Well-formed JSON of the wrong shape or types.
    for line in [
        "[]".to_owned(),
        "42".to_owned(),
        r#"{"type":7}"#.to_owned(),
        badge(r#"{"badge_id":1e400,"recipient_id":null}"#),
        badge(r#""not an object""#),
        format!(r#"{{"type":"BadgeAwarded","stream":"{stream}","expected_version":-1}}"#),
    ] {
        assert!(parse_line(line.as_bytes()).is_err(), "{line}");
    }
}

#[test]
fn strings_at_the_size_limits() {
    // Characters, not bytes: 200 four-byte characters are a valid title; one more is not.
    let max = "🦀".repeat(LessonTitle::MAX_CHARS);
    assert_eq!(
        LessonTitle::new(max.clone())
            .expect("title at the limit")
            .as_str(),
        max
    );
    assert!(LessonTitle::new(format!("{max}a")).is_err());
    let id = "c".repeat(ContextId::MAX_LEN);
    assert!(ContextId::new(id.clone()).is_ok());
    assert!(ContextId::new(format!("{id}c")).is_err());
    assert!(ContextId::new("é".repeat(ContextId::MAX_LEN / 2)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_is_refused_before_commit() {
    let db = fresh_database().await;
    let store = edupulse_postgres::PgEventStore::connect(&pg_config(db.url()))
        .await
        .expect("connect");
    let stream = StreamId::new();
    let small = event(stream, "too_large", 1);
    let big = padded(stream, "too_large", DEFAULT_MAX_EVENT_BYTES + 1);
    let big_id = big.id;
    for batch in [vec![big.clone()], vec![small, big]] {
        match store.append(stream, ExpectedVersion::Any, batch).await {
            Err(StoreError::EventTooLarge {
                event_id,
                size,
                max,
            }) => {
                assert_eq!(event_id, big_id);
                assert!(size > max && max == DEFAULT_MAX_EVENT_BYTES);
            }
            other => panic!("expected EventTooLarge, got {other:?}"),
        }
    }
    // Nothing stored: not the big event, not the small one of its batch.
    assert!(
        store
            .read_stream(stream, 1, 10)
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(store.head().await.expect("head").last_position, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_smaller_than_the_store_parks_the_stream_and_the_rest_flows() {
    let db = fresh_database().await;
    let nats = shared_nats().await;
    let name = unique_name("dead_letters");
    let mut config = nats_config(vec![nats.url()], &name);
    // The store accepts up to 1 MB, the broker 64 KiB: an event in between is a poison event.
    config.max_message_bytes = 64 * 1024;
    let run = Run::start_with(name, pg_config(db.url()), config).await;
    let relay = run.spawn_relay().await;
    let writers = run.writers(Workload {
        writers: 2,
        until: Until::AppendsPerWriter(60),
        ..Workload::default()
    });
    // Three poison events between the others, each followed by a normal one in its stream.
    let mut poison = HashSet::new();
    for _ in 0..3 {
        let stream = StreamId::new();
        let big = padded(stream, &run.name, 100 * 1024);
        poison.insert(big.id);
        let after = event(stream, &run.name, 2);
        for (expected, e) in [
            (ExpectedVersion::NoStream, big),
            (ExpectedVersion::Exact(1), after),
        ] {
            append_until_acknowledged(
                &*run.backbone.store,
                &run.history,
                stream,
                expected,
                vec![e],
                Duration::from_secs(30),
            )
            .await
            .expect("the store accepts it");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    writers.finish().await;

    let store = run.backbone.store.clone();
    let stats = relay.stats.clone();
    let name = run.name.clone();
    // Each poison event parks its stream, with its bytes and the broker's reason.
    let parked = wait_parked(&*store, &name, 3).await;
    let recorded: HashSet<_> = parked.iter().map(|p| p.event_id).collect();
    assert_eq!(
        recorded, poison,
        "each poison event is parked, nothing else"
    );
    assert!(parked.iter().all(|p| p.raw.len() > 100 * 1024));
    // An operator leaves the poison events out: what waited behind them follows, in order.
    for p in &parked {
        assert!(
            store
                .request_release(&name, p.stream_id, Release::Skip)
                .await
                .expect("release")
        );
    }
    // The checker expects the poison events' versions to be skipped, nothing else.
    let mut figures = run.finish("broker_max_payload_parked", &poison).await;
    Run::stop_relay(relay).await;
    assert!(store.parked(&name).await.expect("parked").is_empty());
    assert_eq!(stats.snapshot().parked, 3);
    figures.notes =
        "3 events above the broker's limit parked their streams; released with --skip".into();
    figures.report_and_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strings_at_the_limits_travel_intact() {
    let db = fresh_database().await;
    let nats = shared_nats().await;
    let run = Run::start("at_limits", db.url(), vec![nats.url()]).await;
    lock(&run.consumed).envelopes = Some(HashMap::new());
    let relay = run.spawn_relay().await;

    let stream = StreamId::new();
    let mut metadata = Metadata {
        correlation_id: Some(ContextId::new("r".repeat(ContextId::MAX_LEN)).expect("id")),
        causation_id: Some(ContextId::new("~".repeat(ContextId::MAX_LEN)).expect("id")),
        ..Metadata::default()
    };
    metadata
        .extra
        .insert(RUN_KEY.to_owned(), run.name.clone().into());
    let titles = [
        "🦀".repeat(LessonTitle::MAX_CHARS),
        "a".repeat(LessonTitle::MAX_CHARS),
        "日本語".repeat(LessonTitle::MAX_CHARS / 3),
    ];
    let envelopes: Vec<EventEnvelope> = titles
        .iter()
        .map(|t| {
            EventEnvelope::new(LessonPublished {
                lesson_id: *stream.as_uuid(),
                author_id: Uuid::new_v4(),
                title: LessonTitle::new(t.clone()).expect("title at the limit"),
            })
            .with_stream(stream)
            .with_metadata(metadata.clone())
        })
        .collect();
    // And one just under the store's size limit.
    let mut near = padded(stream, &run.name, 0);
    let overhead = near.encode().len();
    near.metadata.extra.insert(
        "blob".to_owned(),
        "x".repeat(DEFAULT_MAX_EVENT_BYTES - overhead).into(),
    );
    assert_eq!(near.encode().len(), DEFAULT_MAX_EVENT_BYTES);
    let mut all = envelopes.clone();
    all.push(near);
    append_until_acknowledged(
        &*run.backbone.store,
        &run.history,
        stream,
        ExpectedVersion::NoStream,
        all.clone(),
        Duration::from_secs(30),
    )
    .await
    .expect("appended");
    let stored = run
        .backbone
        .store
        .read_stream(stream, 1, 10)
        .await
        .expect("read");
    let consumed = run.consumed.clone();
    let mut figures = run.finish("strings_at_limits", &HashSet::new()).await;
    Run::stop_relay(relay).await;
    let received = lock(&consumed).envelopes.take().unwrap_or_default();
    for (appended, stored) in all.iter().zip(&stored) {
        assert_eq!(&stored.envelope, appended, "stored intact");
        assert_eq!(
            received.get(&appended.id),
            Some(appended),
            "delivered intact"
        );
    }
    figures.notes = "titles of 200 chars (4-byte too), ids of 128 bytes, a 1 MB event".into();
    figures.report_and_check();
}
