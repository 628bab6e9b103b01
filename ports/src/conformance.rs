//! The behaviour every [`EventStore`], [`CheckpointStore`], [`EventPublisher`],
//! [`EventConsumer`], [`LeaseProvider`], [`CommitHints`] and
//! [`ProjectionStore`](crate::projection::ProjectionStore) must have, as runnable checks.
//!
//! An adapter's test suite instantiates the kit with a factory for a fresh, empty store; each
//! check becomes its own test, so failures are named and the checks run in parallel:
//!
//! ```ignore
//! edupulse_ports::event_store_conformance!(my_adapter::fresh_store().await);
//! edupulse_ports::checkpoint_conformance!(my_adapter::fresh_store().await);
//! // Two publishers over one fresh, empty broker stream.
//! edupulse_ports::publisher_conformance!(my_adapter::fresh_publishers().await);
//! edupulse_ports::lease_conformance!(my_adapter::fresh_store().await);
//! edupulse_ports::hints_conformance!(my_adapter::fresh_store().await);
//! // A publisher and a consumer (acknowledgement wait of a few seconds) of one fresh stream.
//! edupulse_ports::consumer_conformance!(my_adapter::publisher_and_consumer().await);
//! ```
//!
//! The in-memory fakes and the real adapters (PostgreSQL, NATS) run the same kits.

use crate::{
    CheckpointStore, CommitHints, ConsumeError, Cursor, Delivery, DeliveryToken, EventConsumer,
    EventPublisher, EventStore, LeaseProvider, ParkedEvent, PublishError, RecordedEvent, Release,
    Settlement, StoreError,
};
use edupulse_domain::{
    DEFAULT_MAX_EVENT_BYTES, EventEnvelope, EventId, ExpectedVersion, LessonPublished, LessonTitle,
    Metadata, StreamId, Uuid,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

mod projection;
pub use projection::*;

/// A valid event for `stream`, distinct from every other one made here.
pub fn sample_event(stream: StreamId) -> EventEnvelope {
    let mut metadata = Metadata::default();
    metadata
        .extra
        .insert("note".into(), "conformance — ünïcode ✓".into());
    EventEnvelope::new(LessonPublished {
        lesson_id: *stream.as_uuid(),
        author_id: Uuid::new_v4(),
        title: LessonTitle::new(format!("Lesson {}", Uuid::new_v4()))
            .expect("a title of this form is valid"),
    })
    .with_stream(stream)
    .with_metadata(metadata)
}

/// `n` sample events for `stream`.
pub fn sample_events(stream: StreamId, n: usize) -> Vec<EventEnvelope> {
    (0..n).map(|_| sample_event(stream)).collect()
}

/// Follows `read_all` from the start in pages of `page` until every id in `wanted` was read.
///
/// An empty page does not mean nothing more was committed: a store may hold events back while an
/// older transaction is open (another test's, on a shared server). So this polls, up to 60 s.
async fn read_until<S: EventStore + ?Sized>(
    store: &S,
    page: usize,
    wanted: &HashSet<EventId>,
) -> Vec<RecordedEvent> {
    let mut all: Vec<RecordedEvent> = Vec::new();
    let mut cursor = Cursor::START;
    let mut missing = wanted.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !missing.is_empty() {
        let batch = store.read_all(cursor, page).await.expect("read_all");
        let Some(last) = batch.last() else {
            assert!(
                std::time::Instant::now() < deadline,
                "{} committed events never read",
                missing.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        for pair in batch.windows(2) {
            assert!(
                pair[0].cursor < pair[1].cursor,
                "read_all must be in cursor order"
            );
        }
        assert!(
            batch[0].cursor > cursor,
            "read_all must start after the cursor"
        );
        cursor = last.cursor;
        for e in &batch {
            missing.remove(&e.envelope.id);
        }
        all.extend(batch);
    }
    all
}

/// A new stream starts at version 1; versions are contiguous; events read back unchanged.
pub async fn append_and_read_back<S: EventStore + ?Sized>(store: &S) {
    let stream = StreamId::new();
    let events = sample_events(stream, 3);
    let out = store
        .append(stream, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("append");
    assert!(!out.replayed);
    assert_eq!(out.stream_id, stream);
    assert_eq!(
        out.events
            .iter()
            .map(|e| e.stream_version)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(out.last_version(), 3);
    let positions: HashSet<u64> = out.events.iter().map(|e| e.position).collect();
    assert_eq!(positions.len(), 3, "positions are unique");

    let read = store.read_stream(stream, 1, 10).await.expect("read_stream");
    assert_eq!(read.len(), 3);
    for ((r, e), a) in read.iter().zip(&events).zip(&out.events) {
        assert_eq!(&r.envelope, e, "an event reads back exactly as appended");
        assert_eq!(r.stream_id, stream);
        assert_eq!(r.stream_version, a.stream_version);
        assert_eq!(r.position(), a.position);
    }
    assert_eq!(
        store.stream_version(stream).await.expect("version"),
        Some(3)
    );
    assert_eq!(
        store
            .stream_version(StreamId::new())
            .await
            .expect("version"),
        None
    );
}

/// Every expected-version case: any, no stream, exact; conflicts carry the actual version.
pub async fn expected_versions<S: EventStore + ?Sized>(store: &S) {
    let stream = StreamId::new();
    let conflict = |r: Result<_, StoreError>| match r {
        Err(StoreError::Conflict {
            stream: s,
            expected,
            actual,
        }) => {
            assert_eq!(s, stream);
            (expected, actual)
        }
        other => panic!("expected a conflict, got {other:?}"),
    };
    let (expected, actual) = conflict(
        store
            .append(
                stream,
                ExpectedVersion::Exact(1),
                vec![sample_event(stream)],
            )
            .await,
    );
    assert_eq!((expected, actual), (ExpectedVersion::Exact(1), None));

    store
        .append(stream, ExpectedVersion::Any, vec![sample_event(stream)])
        .await
        .expect("any on a new stream");
    let (_, actual) = conflict(
        store
            .append(
                stream,
                ExpectedVersion::NoStream,
                vec![sample_event(stream)],
            )
            .await,
    );
    assert_eq!(actual, Some(1));
    store
        .append(stream, ExpectedVersion::Exact(1), sample_events(stream, 2))
        .await
        .expect("exact");
    let (expected, actual) = conflict(
        store
            .append(
                stream,
                ExpectedVersion::Exact(2),
                vec![sample_event(stream)],
            )
            .await,
    );
    assert_eq!((expected, actual), (ExpectedVersion::Exact(2), Some(3)));
    let out = store
        .append(stream, ExpectedVersion::Any, vec![sample_event(stream)])
        .await
        .expect("any on an existing stream");
    assert_eq!(out.last_version(), 4);
    let read = store.read_stream(stream, 1, 100).await.expect("read");
    assert_eq!(read.len(), 4, "conflicting appends stored nothing");
}

/// The same batch again is a replay; a reused id with other content is refused.
pub async fn idempotent_retries<S: EventStore + ?Sized>(store: &S) {
    let stream = StreamId::new();
    let events = sample_events(stream, 3);
    let first = store
        .append(stream, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("append");
    // The retry of an append whose outcome was unknown: same ids, same content, same expectation.
    let again = store
        .append(stream, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("replay");
    assert!(again.replayed);
    assert_eq!(again.events, first.events);
    assert_eq!(
        store.read_stream(stream, 1, 10).await.expect("read").len(),
        3
    );

    // Same id, different content.
    let mut forged = sample_event(stream);
    forged.id = events[0].id;
    match store
        .append(stream, ExpectedVersion::Any, vec![forged])
        .await
    {
        Err(StoreError::DuplicateEventId { event_id }) => assert_eq!(event_id, events[0].id),
        other => panic!("expected a duplicate id error, got {other:?}"),
    }
    // Same id in another stream.
    let other = StreamId::new();
    let mut moved = sample_event(other);
    moved.id = events[1].id;
    assert!(matches!(
        store.append(other, ExpectedVersion::Any, vec![moved]).await,
        Err(StoreError::DuplicateEventId { .. })
    ));
    // A batch mixing a stored event and a new one is not a retry of anything.
    let mixed = vec![events[2].clone(), sample_event(stream)];
    assert!(matches!(
        store.append(stream, ExpectedVersion::Any, mixed).await,
        Err(StoreError::DuplicateEventId { .. })
    ));
    assert_eq!(
        store.read_stream(stream, 1, 10).await.expect("read").len(),
        3
    );
    assert_eq!(store.stream_version(other).await.expect("version"), None);
}

/// Empty batches, foreign events, oversized events and zero limits are refused, storing nothing.
pub async fn invalid_input<S: EventStore + ?Sized>(store: &S) {
    let stream = StreamId::new();
    assert!(matches!(
        store.append(stream, ExpectedVersion::Any, vec![]).await,
        Err(StoreError::InvalidInput { .. })
    ));
    assert!(matches!(
        store
            .append(
                stream,
                ExpectedVersion::Any,
                vec![sample_event(StreamId::new())]
            )
            .await,
        Err(StoreError::InvalidInput { .. })
    ));
    let e = sample_event(stream);
    assert!(matches!(
        store
            .append(stream, ExpectedVersion::Any, vec![e.clone(), e])
            .await,
        Err(StoreError::InvalidInput { .. })
    ));
    let mut big = sample_event(stream);
    big.metadata
        .extra
        .insert("blob".into(), "x".repeat(DEFAULT_MAX_EVENT_BYTES).into());
    let big_id = big.id;
    match store
        .append(
            stream,
            ExpectedVersion::Any,
            vec![sample_event(stream), big],
        )
        .await
    {
        Err(StoreError::EventTooLarge {
            event_id,
            size,
            max,
        }) => {
            assert_eq!(event_id, big_id);
            assert!(size > max);
        }
        other => panic!("expected too large, got {other:?}"),
    }
    assert!(matches!(
        store.read_all(Cursor::START, 0).await,
        Err(StoreError::InvalidInput { .. })
    ));
    assert!(matches!(
        store.read_stream(stream, 1, 0).await,
        Err(StoreError::InvalidInput { .. })
    ));
    assert_eq!(store.stream_version(stream).await.expect("version"), None);
}

/// Standalone events (no aggregate) are single-event streams keyed by their own id.
pub async fn standalone_events<S: EventStore + ?Sized>(store: &S) {
    let mut event = sample_event(StreamId::new());
    event.aggregate_id = None;
    let stream = event.stream_id();
    assert_eq!(stream.as_uuid(), event.id.as_uuid());
    let out = store
        .append(stream, ExpectedVersion::NoStream, vec![event.clone()])
        .await
        .expect("append standalone");
    assert_eq!(out.last_version(), 1);
    let read = store.read_stream(stream, 1, 10).await.expect("read");
    assert_eq!(read[0].envelope, event);
    assert_eq!(read[0].envelope.aggregate_id, None);
}

/// Events of every kind for `stream`, with metadata and text that JSON spells in more than one
/// way (escapes, non-ASCII, numbers): for checks that bytes survive storage and publishing, such
/// as [`stored_bytes_are_the_envelope_encoding`].
pub fn every_kind_of_event(stream: StreamId) -> Vec<EventEnvelope> {
    use edupulse_domain::{AmountCents, BadgeAwarded, ContextId, PaymentProcessed, QuizSubmitted};
    let score = |v: f32| edupulse_domain::Score::new(v).expect("a valid score");
    let mut metadata = Metadata {
        correlation_id: ContextId::new("req-42").ok(),
        causation_id: ContextId::new(Uuid::new_v4().to_string()).ok(),
        ..Metadata::default()
    };
    metadata
        .extra
        .insert("z-last".into(), "\"quoted\" \\ ✓ 😀".into());
    metadata.extra.insert(
        "a-first".into(),
        serde_json::json!({"n": 1.5e3, "list": [1, null]}),
    );
    let events: Vec<edupulse_domain::DomainEvent> = vec![
        LessonPublished {
            lesson_id: *stream.as_uuid(),
            author_id: Uuid::new_v4(),
            title: LessonTitle::new("\"Quotes\", a \\ backslash, ünïcode, </script>, 😀")
                .expect("a valid title"),
        }
        .into(),
        QuizSubmitted::new(Uuid::new_v4(), Uuid::new_v4(), score(0.1), score(3.0))
            .expect("a valid submission")
            .into(),
        BadgeAwarded {
            badge_id: Uuid::new_v4(),
            recipient_id: Uuid::new_v4(),
        }
        .into(),
        PaymentProcessed {
            invoice_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            amount_cents: AmountCents::new(i64::MAX).expect("a valid amount"),
        }
        .into(),
    ];
    events
        .into_iter()
        .map(|e| {
            EventEnvelope::new(e)
                .with_stream(stream)
                .with_metadata(metadata.clone())
        })
        .collect()
}

/// Appends one standalone event (no aggregate: its stream is its own id) and returns it.
///
/// # Panics
/// When the append fails.
pub async fn append_standalone<S: crate::EventAppender + ?Sized>(store: &S) -> EventEnvelope {
    let mut standalone = sample_event(StreamId::new());
    standalone.aggregate_id = None;
    store
        .append(
            standalone.stream_id(),
            ExpectedVersion::NoStream,
            vec![standalone.clone()],
        )
        .await
        .expect("append standalone");
    standalone
}

/// What a follower hands the broker ([`RecordedEvent::encoded`]) is, byte for byte, the
/// envelope's encoding of the event as appended, on every read path: consumers receive exactly
/// what they always have, whether or not the store keeps the bytes.
pub async fn stored_bytes_are_the_envelope_encoding<S: EventStore + ?Sized>(store: &S) {
    let stream = StreamId::new();
    let events = every_kind_of_event(stream);
    store
        .append(stream, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("append");
    let standalone = append_standalone(store).await;
    let expected: HashMap<EventId, Vec<u8>> = events
        .iter()
        .chain([&standalone])
        .map(|e| (e.id, e.encode()))
        .collect();
    let same = |how: &str, read: &RecordedEvent| {
        let want = &expected[&read.envelope.id];
        assert_eq!(
            String::from_utf8_lossy(&read.encoded()),
            String::from_utf8_lossy(want),
            "{how}: the bytes of event {} are not its encoding",
            read.envelope.id
        );
    };
    for read in store.read_stream(stream, 1, 10).await.expect("read_stream") {
        same("read_stream", &read);
    }
    let wanted: HashSet<EventId> = expected.keys().copied().collect();
    for read in read_until(store, 100, &wanted).await {
        if wanted.contains(&read.envelope.id) {
            same("read_all", &read);
        }
    }
    let mut seen = HashSet::new();
    let mut cursor = Cursor::START;
    while seen.len() < wanted.len() {
        let page = store
            .follow_visible(cursor, 100)
            .await
            .expect("follow_visible");
        for row in &page.rows {
            if let crate::FollowedRow::Event(read) = row
                && wanted.contains(&read.envelope.id)
            {
                same("follow_visible", read);
                seen.insert(read.envelope.id);
            }
        }
        match page.rows.last() {
            Some(last) => cursor = last.cursor(),
            None => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

/// Stream reads page by version; global reads page by cursor and see everything exactly once.
pub async fn paging_and_global_order<S: EventStore + ?Sized>(store: &S) {
    let streams: Vec<StreamId> = (0..4).map(|_| StreamId::new()).collect();
    let mut appended = Vec::new();
    for round in 0..5 {
        for s in &streams {
            let out = store
                .append(*s, ExpectedVersion::Any, sample_events(*s, 1 + round % 3))
                .await
                .expect("append");
            appended.extend(out.events.iter().map(|e| e.id));
        }
    }
    let s = streams[0];
    let total = store
        .stream_version(s)
        .await
        .expect("version")
        .expect("exists");
    let mut version = 1;
    let mut seen = 0;
    while version <= total {
        let page = store.read_stream(s, version, 2).await.expect("page");
        assert!(!page.is_empty() && page.len() <= 2);
        assert_eq!(page[0].stream_version, version);
        version = page.last().map_or(version, |e| e.stream_version + 1);
        seen += page.len() as u64;
    }
    assert_eq!(seen, total);

    let wanted: HashSet<EventId> = appended.iter().copied().collect();
    // Other tests may share the store: keep only this test's events, in the order read.
    let all: Vec<RecordedEvent> = read_until(store, 3, &wanted)
        .await
        .into_iter()
        .filter(|e| wanted.contains(&e.envelope.id))
        .collect();
    assert_eq!(all.len(), appended.len());
    let ids: Vec<EventId> = all.iter().map(|e| e.envelope.id).collect();
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event read twice");
    for id in &appended {
        assert!(unique.contains(id), "every appended event is read");
    }
    // Per-stream order holds in the global order.
    let mut last: HashMap<StreamId, u64> = HashMap::new();
    for e in &all {
        let prev = last.insert(e.stream_id, e.stream_version).unwrap_or(0);
        assert_eq!(e.stream_version, prev + 1, "stream order in global order");
    }

    let head = store.head().await.expect("head");
    let max_position = all.iter().map(RecordedEvent::position).max().unwrap_or(0);
    assert!(head.last_position >= max_position);

    // Replay ranges by position.
    let (lo, hi) = (all[0].position(), all[4].position());
    let range = store.read_positions(lo, hi, 100).await.expect("range");
    assert!(range.iter().all(|e| (lo..=hi).contains(&e.position())));
    assert!(range.len() >= 2);
    let limited = store.read_positions(lo, hi, 1).await.expect("range");
    assert_eq!(limited.len(), 1);
}

/// A follower beyond the horizon ([`crate::EventReader::follow_visible`] with a [`crate::ReadAhead`], as
/// the relay follows) while writers append concurrently: every event handed out exactly once, each
/// stream in order, pages in cursor order with their settled rows first, and the checkpoint ends
/// at the last event once everything is settled.
pub async fn following_beyond_the_horizon<S: EventStore + 'static>(store: Arc<S>) {
    const WRITERS: usize = 4;
    const APPENDS: usize = 25;
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = StreamId::new();
                let mut ids = Vec::new();
                for round in 0..APPENDS {
                    let out = store
                        .append(
                            stream,
                            ExpectedVersion::Any,
                            sample_events(stream, 1 + round % 2),
                        )
                        .await
                        .expect("append");
                    ids.extend(out.events.iter().map(|e| e.id));
                }
                ids
            })
        })
        .collect();
    let mut wanted: HashSet<EventId> = HashSet::new();
    let mut writing = writers;
    let mut ahead = crate::ReadAhead::new(3);
    let mut cursor = Cursor::START;
    let mut seen: HashSet<EventId> = HashSet::new();
    let mut last: HashMap<StreamId, u64> = HashMap::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if writing.iter().all(tokio::task::JoinHandle::is_finished) {
            for writer in writing.drain(..) {
                wanted.extend(writer.await.expect("writer"));
            }
        }
        let page = store
            .follow_visible(cursor, 7)
            .await
            .expect("follow_visible");
        assert!(
            page.settled <= page.rows.len(),
            "settled rows are rows of the page"
        );
        assert!(
            page.rows.windows(2).all(|w| w[0].cursor() < w[1].cursor()),
            "follow_visible is in cursor order"
        );
        assert!(
            page.rows.first().is_none_or(|r| r.cursor() > cursor),
            "follow_visible starts after the cursor"
        );
        let planned = ahead.plan(page);
        for row in &planned.rows {
            let crate::FollowedRow::Event(e) = row else {
                panic!("a valid append reads back undecodable");
            };
            if planned.is_ahead(e.cursor) {
                ahead.handled(e.cursor);
            }
            assert!(seen.insert(e.envelope.id), "event handed out twice");
            let previous = last.insert(e.stream_id, e.stream_version).unwrap_or(0);
            assert_eq!(
                e.stream_version,
                previous + 1,
                "stream order beyond the horizon"
            );
        }
        if let Some(settled) = planned.settled_to {
            cursor = settled;
        }
        let done =
            writing.is_empty() && wanted.iter().all(|id| seen.contains(id)) && ahead.is_empty();
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "committed events never followed"
        );
        if planned.is_idle() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// 16 writers race on one stream with exact expected versions: exactly one wins each version,
/// versions are contiguous, nothing is lost.
pub async fn concurrent_writers_on_one_stream<S: EventStore + 'static>(store: Arc<S>) {
    const WRITERS: usize = 16;
    const PER_WRITER: usize = 10;
    let stream = StreamId::new();
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut conflicts = 0u64;
            while mine.len() < PER_WRITER {
                let current = store.stream_version(stream).await.expect("version");
                let expected = current.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                let event = sample_event(stream);
                match store.append(stream, expected, vec![event.clone()]).await {
                    Ok(out) => {
                        assert_eq!(out.last_version(), current.unwrap_or(0) + 1);
                        mine.push((event.id, out.last_version()));
                    }
                    Err(StoreError::Conflict { actual, .. }) => {
                        assert_ne!(actual, current, "a conflict reports a different version");
                        conflicts += 1;
                    }
                    Err(e) if e.is_retryable() => {}
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
            (mine, conflicts)
        }));
    }
    let mut won: HashMap<u64, EventId> = HashMap::new();
    for task in tasks {
        let (mine, _) = task.await.expect("writer");
        for (id, version) in mine {
            assert!(
                won.insert(version, id).is_none(),
                "version {version} won twice"
            );
        }
    }
    let total = (WRITERS * PER_WRITER) as u64;
    let read = store.read_stream(stream, 1, 10_000).await.expect("read");
    assert_eq!(read.len() as u64, total, "nothing lost, nothing extra");
    for (i, e) in read.iter().enumerate() {
        assert_eq!(e.stream_version, i as u64 + 1, "contiguous versions");
        assert_eq!(won.get(&e.stream_version), Some(&e.envelope.id));
    }
}

/// Checkpoints load what was saved and never move backwards (cursor and broker sequence).
pub async fn checkpoints<S: CheckpointStore + EventStore + ?Sized>(store: &S) {
    let name = format!("conformance-{}", Uuid::new_v4());
    assert_eq!(store.load(&name).await.expect("load"), None);
    let c1 = Cursor {
        commit: 10,
        position: 7,
    };
    store.save(&name, c1, 5).await.expect("save");
    assert_eq!(
        store
            .load(&name)
            .await
            .expect("load")
            .expect("saved")
            .cursor,
        c1
    );
    let c0 = Cursor {
        commit: 9,
        position: 8,
    };
    store.save(&name, c0, 3).await.expect("save lower");
    let kept = store.load(&name).await.expect("load").expect("saved");
    assert_eq!(
        (kept.cursor, kept.broker_sequence),
        (c1, 5),
        "neither the cursor nor the broker sequence moves backwards"
    );
    let c2 = Cursor {
        commit: 10,
        position: 9,
    };
    store.save(&name, c2, 9).await.expect("save");
    assert_eq!(
        store
            .load(&name)
            .await
            .expect("load")
            .expect("saved")
            .cursor,
        c2
    );
}

/// Parked streams: the first parked event of a stream stays; a release is requested once per
/// stream and a failed release (parking again) clears it with the new reason; unparking forgets.
pub async fn parked_streams<S: CheckpointStore + ?Sized>(store: &S) {
    let name = format!("conformance-{}", Uuid::new_v4());
    let parked = |stream: StreamId, version: u64, reason: &str| ParkedEvent {
        stream_id: stream,
        stream_version: version,
        event_id: EventId::new(),
        cursor: Cursor {
            commit: version,
            position: version,
        },
        reason: reason.to_owned(),
        raw: "{\"metadata\":{},\"payload\":[[[]]]}".to_owned(),
        parked_at: chrono::Utc::now(),
        release: None,
    };
    let (a, b) = (StreamId::new(), StreamId::new());
    assert!(store.parked(&name).await.expect("list").is_empty());
    assert!(
        !store
            .request_release(&name, a, Release::Retry)
            .await
            .expect("release of a stream not parked")
    );
    let first = parked(a, 3, "cannot be decoded");
    store.park(&name, &first).await.expect("park");
    store
        .park(&name, &parked(a, 5, "later event"))
        .await
        .expect("park again");
    store
        .park(&name, &parked(b, 1, "too large"))
        .await
        .expect("park");
    let list = store.parked(&name).await.expect("list");
    assert_eq!(list.len(), 2);
    let of_a = list.iter().find(|p| p.stream_id == a).expect("a parked");
    assert_eq!(
        (of_a.event_id, of_a.stream_version, of_a.reason.as_str()),
        (first.event_id, 3, "cannot be decoded"),
        "the first parked event of a stream stays"
    );
    assert_eq!(of_a.raw, first.raw, "the stored bytes are kept as given");
    assert!(
        store
            .request_release(&name, a, Release::Skip)
            .await
            .expect("release")
    );
    let requested = store.parked(&name).await.expect("list");
    let of_a = requested
        .iter()
        .find(|p| p.stream_id == a)
        .expect("a parked");
    assert_eq!(of_a.release, Some(Release::Skip));
    // The release failed: parked again with the new reason, the request cleared.
    store
        .park(&name, &parked(a, 3, "release failed: still refused"))
        .await
        .expect("park after a failed release");
    let again = store.parked(&name).await.expect("list");
    let of_a = again.iter().find(|p| p.stream_id == a).expect("a parked");
    assert_eq!(
        (of_a.release, of_a.reason.as_str(), of_a.event_id),
        (None, "release failed: still refused", first.event_id)
    );
    store.unpark(&name, a).await.expect("unpark");
    let left: Vec<StreamId> = store
        .parked(&name)
        .await
        .expect("list")
        .iter()
        .map(|p| p.stream_id)
        .collect();
    assert_eq!(left, vec![b]);
}

/// An event as a store would hand it to a publisher: `version` of its stream, at `position`.
pub fn recorded(envelope: EventEnvelope, version: u64, position: u64) -> RecordedEvent {
    RecordedEvent {
        stream_id: envelope.stream_id(),
        envelope,
        stream_version: version,
        cursor: Cursor {
            commit: position,
            position,
        },
        recorded_at: chrono::Utc::now(),
        body: None,
    }
}

/// `streams` streams of `versions` events each, interleaved as a store's commit order would.
fn publishable(streams: usize, versions: u64) -> Vec<RecordedEvent> {
    let ids: Vec<StreamId> = (0..streams).map(|_| StreamId::new()).collect();
    let mut events = Vec::new();
    for version in 1..=versions {
        for stream in &ids {
            let position = events.len() as u64 + 1;
            events.push(recorded(sample_event(*stream), version, position));
        }
    }
    events
}

/// An event of `stream` whose type cannot name it on any wire (not an identifier): every
/// publisher refuses it for good.
fn uncarriable(stream: StreamId) -> EventEnvelope {
    let json = serde_json::json!({
        "id": Uuid::new_v4(), "aggregate_id": stream, "occurred_at": "2024-01-01T00:00:00Z",
        "version": 1, "metadata": {}, "event": {"type": "lesson.deleted", "payload": {}}
    });
    EventEnvelope::decode(json.to_string().as_bytes()).expect("a valid envelope")
}

/// [`EventPublisher`]: every event is stored once, whoever publishes it and however often.
///
/// `a` and `b` publish to the same, empty broker stream, as two processes would (a relay and
/// its successor, or a relay and a replay): `b` knows nothing of what `a` did. Publishing again
/// reports every event as a duplicate with its original sequence, and the broker's last version
/// of each stream is the last one published.
pub async fn each_event_once_whoever_publishes_it<P: EventPublisher + ?Sized>(a: &P, b: &P) {
    let events = publishable(3, 4);
    let first = a.publish(&events).await;
    assert_eq!(first.len(), events.len(), "one result per event");
    let sequences: Vec<u64> = first
        .iter()
        .map(|r| {
            let ack = r.as_ref().expect("published");
            assert!(!ack.duplicate, "a first publish stores");
            ack.sequence
        })
        .collect();
    let distinct: HashSet<u64> = sequences.iter().copied().collect();
    assert_eq!(distinct.len(), events.len(), "one sequence per event");
    for (publisher, who) in [(a, "the same publisher"), (b, "another publisher")] {
        let again = publisher.publish(&events).await;
        for ((result, sequence), event) in again.iter().zip(&sequences).zip(&events) {
            let ack = result.as_ref().expect("published again");
            assert!(
                ack.duplicate,
                "{who}: event {} stored twice",
                event.envelope.id
            );
            assert_eq!(
                ack.sequence, *sequence,
                "{who}: a duplicate has its original's sequence"
            );
        }
    }
    for stream in events.iter().map(|e| e.stream_id).collect::<HashSet<_>>() {
        assert_eq!(b.last_version(stream).await.expect("last version"), Some(4));
    }
    assert_eq!(
        a.last_version(StreamId::new()).await.expect("last version"),
        None
    );
}

/// [`EventPublisher::publish_stream`]: events fed over time (in two bursts, the second sent once
/// the first has started settling, as a relay's pages arrive) each settle exactly once; every
/// stream's acknowledgements come in version order with growing broker sequences; an event
/// refused for good mid-stream stops its own stream, even for events fed after the refusal, and
/// no other.
pub async fn streaming_keeps_each_stream_in_order<P: EventPublisher + ?Sized>(publisher: &P) {
    use futures::StreamExt;
    let bad = StreamId::new();
    let mut first = publishable(4, 3);
    let refused = recorded(uncarriable(bad), 2, 1000);
    first.insert(0, recorded(sample_event(bad), 1, 999));
    first.push(refused.clone());
    let mut second = publishable(4, 2);
    second.push(recorded(sample_event(bad), 3, 1001));
    let total = first.len() + second.len();
    let (input, events) = futures::channel::mpsc::unbounded();
    let (settled_tx, mut settled) = futures::channel::mpsc::unbounded();
    for event in first {
        input.unbounded_send(event).expect("publisher listening");
    }
    let feed_then_collect = async {
        let mut outcomes = Vec::new();
        let mut second = Some(second);
        while let Some(outcome) = settled.next().await {
            if let Some(burst) = second.take() {
                for event in burst {
                    input.unbounded_send(event).expect("publisher listening");
                }
                input.close_channel();
            }
            outcomes.push(outcome);
        }
        outcomes
    };
    let ((), outcomes) = futures::join!(
        publisher.publish_stream(events.boxed(), settled_tx),
        feed_then_collect
    );
    assert_eq!(outcomes.len(), total, "every event settles once");
    let ids: HashSet<EventId> = outcomes.iter().map(|o| o.event.envelope.id).collect();
    assert_eq!(ids.len(), total, "no event settles twice");
    let mut last: HashMap<StreamId, (u64, u64)> = HashMap::new();
    for outcome in &outcomes {
        let event = &outcome.event;
        if event.stream_id == bad {
            match event.stream_version {
                1 => assert!(outcome.result.is_ok(), "before the refusal: {outcome:?}"),
                2 => assert!(
                    outcome
                        .result
                        .as_ref()
                        .is_err_and(PublishError::is_permanent),
                    "refused for good: {outcome:?}"
                ),
                _ => assert!(
                    matches!(outcome.result, Err(PublishError::NotAttempted)),
                    "fed after a refusal in its stream: {outcome:?}"
                ),
            }
            continue;
        }
        let ack = outcome.result.as_ref().expect("other streams are stored");
        let (version, sequence) = last.get(&event.stream_id).copied().unwrap_or((0, 0));
        assert_eq!(
            event.stream_version,
            version + 1,
            "acknowledged in stream order"
        );
        assert!(ack.sequence > sequence, "stored in stream order");
        last.insert(event.stream_id, (event.stream_version, ack.sequence));
    }
}

/// [`EventPublisher`]: an event refused for good stops only its own stream. The later events of
/// its stream are [`PublishError::NotAttempted`] (storing them would break the stream's order),
/// every other stream is stored.
pub async fn a_refused_event_stops_only_its_stream<P: EventPublisher + ?Sized>(publisher: &P) {
    let (bad, good) = (StreamId::new(), StreamId::new());
    let events = vec![
        recorded(sample_event(bad), 1, 1),
        recorded(sample_event(good), 1, 2),
        recorded(uncarriable(bad), 2, 3),
        recorded(sample_event(good), 2, 4),
        recorded(sample_event(bad), 3, 5),
        recorded(sample_event(good), 3, 6),
    ];
    let results = publisher.publish(&events).await;
    assert!(results[0].is_ok() && results[1].is_ok());
    assert!(
        results[2].as_ref().is_err_and(PublishError::is_permanent),
        "refused for good: {:?}",
        results[2]
    );
    assert!(results[3].is_ok());
    assert!(
        matches!(results[4], Err(PublishError::NotAttempted)),
        "after a refusal in its stream: {:?}",
        results[4]
    );
    assert!(results[5].is_ok());
    assert_eq!(publisher.last_version(bad).await.expect("last"), Some(1));
    assert_eq!(publisher.last_version(good).await.expect("last"), Some(3));
}

/// Instantiates the [`EventPublisher`] checks, each a `#[tokio::test]`. The argument is an
/// expression (it may `.await`) giving two publishers over one fresh, empty broker stream.
#[macro_export]
macro_rules! publisher_conformance {
    ($pair:expr) => {
        mod publisher_conformance {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn each_event_once_whoever_publishes_it() {
                let (a, b) = $pair;
                $crate::conformance::each_event_once_whoever_publishes_it(&a, &b).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_refused_event_stops_only_its_stream() {
                let (a, _) = $pair;
                $crate::conformance::a_refused_event_stops_only_its_stream(&a).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn streaming_keeps_each_stream_in_order() {
                let (a, _) = $pair;
                $crate::conformance::streaming_keeps_each_stream_in_order(&a).await;
            }
        }
    };
}

/// [`LeaseProvider`]: one holder at a time, shown by `holder`; a dropped lease can be taken
/// again (at once or once it expired) with a greater epoch; names are independent.
pub async fn one_holder_at_a_time<L: LeaseProvider + ?Sized>(leases: &L) {
    let name = format!("conformance-{}", Uuid::new_v4());
    let first = leases
        .try_acquire(&name, "first")
        .await
        .expect("try")
        .expect("a free lease is taken");
    assert!(first.is_held());
    assert!(
        leases
            .try_acquire(&name, "second")
            .await
            .expect("try")
            .is_none(),
        "a held lease is not taken"
    );
    assert_eq!(
        leases.holder(&name).await.expect("holder").as_deref(),
        Some("first")
    );
    let other = format!("{name}-other");
    assert!(
        leases
            .try_acquire(&other, "third")
            .await
            .expect("try")
            .is_some(),
        "names are independent"
    );
    let first_epoch = first.epoch();
    drop(first);
    // Released on drop, or at worst expired: within a generous bound either way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let second = loop {
        if let Some(lease) = leases.try_acquire(&name, "second").await.expect("try") {
            break lease;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a dropped lease is never free again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        second.epoch() > first_epoch,
        "a takeover has a greater epoch"
    );
    assert_eq!(
        leases.holder(&name).await.expect("holder").as_deref(),
        Some("second")
    );
}

/// [`LeaseProvider`]: of many concurrent takers of a free lease, exactly one wins.
pub async fn one_winner_among_concurrent_takers<L: LeaseProvider + 'static>(leases: Arc<L>) {
    let name = format!("conformance-{}", Uuid::new_v4());
    let takers: Vec<_> = (0..8)
        .map(|i| {
            let (leases, name) = (leases.clone(), name.clone());
            tokio::spawn(async move { leases.try_acquire(&name, &format!("taker {i}")).await })
        })
        .collect();
    let mut won = Vec::new();
    for taker in takers {
        if let Some(lease) = taker.await.expect("taker").expect("try") {
            won.push(lease);
        }
    }
    assert_eq!(won.len(), 1, "exactly one taker holds the lease");
}

/// [`CommitHints`]: a subscriber hears about a commit soon after it (hints are lossy and carry
/// nothing, but a commit is never followed by silence).
pub async fn a_hint_follows_a_commit<S: CommitHints + EventStore + ?Sized>(store: &S) {
    use futures::StreamExt;
    let mut hints = store.subscribe().await.expect("subscribe");
    let stream = StreamId::new();
    store
        .append(
            stream,
            ExpectedVersion::NoStream,
            vec![sample_event(stream)],
        )
        .await
        .expect("append");
    let hint = tokio::time::timeout(std::time::Duration::from_secs(10), hints.next()).await;
    assert!(
        matches!(hint, Ok(Some(()))),
        "no hint within 10 s of a commit"
    );
}

/// Instantiates the [`CommitHints`] check as a `#[tokio::test]`; the argument gives a store.
#[macro_export]
macro_rules! hints_conformance {
    ($factory:expr) => {
        mod hints_conformance {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_hint_follows_a_commit() {
                $crate::conformance::a_hint_follows_a_commit(&$factory).await;
            }
        }
    };
}

/// Receives until `wanted` deliveries arrived (or 30 s passed), settling none.
async fn receive<C: EventConsumer + ?Sized>(consumer: &mut C, wanted: usize) -> Vec<Delivery> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < wanted && std::time::Instant::now() < deadline {
        got.extend(
            consumer
                .next_batch(wanted - got.len(), std::time::Duration::from_millis(200))
                .await
                .expect("next batch"),
        );
    }
    assert_eq!(got.len(), wanted, "deliveries within 30 s");
    got
}

/// [`EventConsumer`]: an acknowledged delivery never comes back, a retried one comes back as the
/// next attempt, a dead-lettered one never comes back; an unknown token is refused.
pub async fn ack_retry_and_dead_letter<P, C>(publisher: &P, consumer: &mut C)
where
    P: EventPublisher + ?Sized,
    C: EventConsumer + ?Sized,
{
    let events = publishable(3, 1);
    assert!(publisher.publish(&events).await.iter().all(Result::is_ok));
    let first = receive(consumer, 3).await;
    assert!(
        first
            .iter()
            .all(|d| d.attempt == 1 && d.stream_version == Some(1))
    );
    let id = |d: &Delivery| d.envelope.id;
    let (acked, retried, dead) = (id(&first[0]), id(&first[1]), id(&first[2]));
    let settle = [
        Settlement::Ack,
        Settlement::Retry {
            delay: std::time::Duration::from_millis(100),
        },
        Settlement::DeadLetter {
            reason: "conformance: given up".into(),
        },
    ];
    for (delivery, settlement) in first.iter().zip(settle) {
        consumer
            .settle(delivery.token, settlement)
            .await
            .expect("settle");
    }
    let again = receive(consumer, 1).await;
    assert_eq!(id(&again[0]), retried, "only the retried event comes back");
    assert_eq!(again[0].attempt, 2);
    consumer
        .settle(again[0].token, Settlement::Ack)
        .await
        .expect("ack");
    let quiet = consumer
        .next_batch(10, std::time::Duration::from_millis(500))
        .await
        .expect("next batch");
    assert!(
        quiet.iter().all(|d| id(d) != acked && id(d) != dead),
        "an acknowledged or dead-lettered event came back"
    );
    assert!(matches!(
        consumer
            .settle(DeliveryToken::new(u64::MAX), Settlement::Ack)
            .await,
        Err(ConsumeError::UnknownDelivery)
    ));
}

/// [`EventConsumer`]: a delivery left unsettled (its acknowledgement lost) is delivered again.
/// The consumer must wait at most a few seconds for an acknowledgement.
pub async fn redelivery_after_a_lost_ack<P, C>(publisher: &P, consumer: &mut C)
where
    P: EventPublisher + ?Sized,
    C: EventConsumer + ?Sized,
{
    let events = publishable(1, 1);
    assert!(publisher.publish(&events).await.iter().all(Result::is_ok));
    let first = receive(consumer, 1).await;
    let again = receive(consumer, 1).await;
    assert_eq!(again[0].envelope.id, first[0].envelope.id);
    assert!(again[0].attempt > first[0].attempt);
    consumer
        .settle(again[0].token, Settlement::Ack)
        .await
        .expect("ack");
}

/// Instantiates the [`EventConsumer`] checks, each a `#[tokio::test]`. The argument is an
/// expression (it may `.await`) giving a publisher and a consumer of one fresh, empty broker
/// stream; the consumer waits at most a few seconds for an acknowledgement.
#[macro_export]
macro_rules! consumer_conformance {
    ($pair:expr) => {
        mod consumer_conformance {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ack_retry_and_dead_letter() {
                let (publisher, mut consumer) = $pair;
                $crate::conformance::ack_retry_and_dead_letter(&publisher, &mut consumer).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redelivery_after_a_lost_ack() {
                let (publisher, mut consumer) = $pair;
                $crate::conformance::redelivery_after_a_lost_ack(&publisher, &mut consumer).await;
            }
        }
    };
}

/// Instantiates the [`LeaseProvider`] checks, each a `#[tokio::test]`. The argument is an
/// expression (it may `.await`) giving a lease provider.
#[macro_export]
macro_rules! lease_conformance {
    ($factory:expr) => {
        mod lease_conformance {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn one_holder_at_a_time() {
                $crate::conformance::one_holder_at_a_time(&$factory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn one_winner_among_concurrent_takers() {
                $crate::conformance::one_winner_among_concurrent_takers(::std::sync::Arc::new(
                    $factory,
                ))
                .await;
            }
        }
    };
}

/// Instantiates every [`EventStore`] check as its own `#[tokio::test]`. The argument is an
/// expression (it may `.await`) giving a fresh store for each test.
#[macro_export]
macro_rules! event_store_conformance {
    ($factory:expr) => {
        mod event_store_conformance {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn append_and_read_back() {
                $crate::conformance::append_and_read_back(&$factory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn expected_versions() {
                $crate::conformance::expected_versions(&$factory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn idempotent_retries() {
                $crate::conformance::idempotent_retries(&$factory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn invalid_input() {
                $crate::conformance::invalid_input(&$factory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone_events() {
                $crate::conformance::standalone_events(&$factory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn stored_bytes_are_the_envelope_encoding() {
                $crate::conformance::stored_bytes_are_the_envelope_encoding(&$factory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn paging_and_global_order() {
                $crate::conformance::paging_and_global_order(&$factory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn following_beyond_the_horizon() {
                $crate::conformance::following_beyond_the_horizon(::std::sync::Arc::new($factory))
                    .await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_writers_on_one_stream() {
                $crate::conformance::concurrent_writers_on_one_stream(::std::sync::Arc::new(
                    $factory,
                ))
                .await;
            }
        }
    };
}

/// Instantiates the [`CheckpointStore`] checks as a `#[tokio::test]`, like
/// [`event_store_conformance!`].
#[macro_export]
macro_rules! checkpoint_conformance {
    ($factory:expr) => {
        mod checkpoint_conformance {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn checkpoints() {
                $crate::conformance::checkpoints(&$factory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn parked_streams() {
                $crate::conformance::parked_streams(&$factory).await;
            }
        }
    };
}
