//! The behaviour every [`ProjectionStore`] must have. Each check uses projection names of its
//! own, so the checks can share one store.

use super::sample_event;
use crate::projection::{
    BucketEvent, ParkReason, ProjectionId, ProjectionStore, ProjectionUnit, Skipped,
};
use crate::{EventReader, StoreError};
use bytes::Bytes;
use edupulse_domain::{ExpectedVersion, StreamId, Uuid};
use std::sync::Arc;
use std::time::Duration;

fn fresh_projection() -> ProjectionId {
    let name = format!("kit-{}", Uuid::new_v4().simple());
    ProjectionId::new(name, 1).expect("a valid name")
}

/// A message of `stream` at `version`, as a feed would hand it.
pub fn bucket_event(stream: StreamId, version: u64, sequence: u64) -> BucketEvent {
    let envelope = sample_event(stream);
    BucketEvent {
        stream,
        version,
        sequence,
        body: Bytes::from(envelope.encode()),
        event: Ok(envelope),
    }
}

/// A unit commits its applied versions, documents, parked events and the bucket's position
/// together, and a unit dropped without a commit leaves nothing.
pub async fn a_unit_commits_all_or_nothing<S: ProjectionStore + ?Sized>(store: &S) {
    let projection = fresh_projection();
    let (applied, parked) = (StreamId::new(), StreamId::new());
    let document = serde_json::json!({"seen": 1, "note": "ünïcode ✓"});
    for commit in [false, true] {
        let (mut unit, position) = store.begin(&projection, 0).await.expect("begin");
        assert_eq!(position, 0, "nothing committed yet");
        assert_eq!(unit.aggregate(applied).await.expect("aggregate").applied, 0);
        unit.record_applied(applied, 1).await.expect("record");
        unit.save("doc/1", document.clone()).await.expect("save");
        assert_eq!(
            unit.load("doc/1").await.expect("load"),
            Some(document.clone())
        );
        let failed = ParkReason::Failed("poison".into());
        unit.park(&bucket_event(parked, 1, 2), 0, &failed)
            .await
            .expect("park");
        assert_eq!(
            unit.aggregate(parked).await.expect("aggregate").parked,
            Some(1)
        );
        if commit {
            unit.commit(2, 5).await.expect("commit");
        }
    }
    let (mut unit, position) = store.begin(&projection, 0).await.expect("begin");
    assert_eq!(position, 2, "the committed position");
    let progress = unit.aggregate(applied).await.expect("aggregate");
    assert_eq!((progress.applied, progress.parked), (1, None));
    assert_eq!(
        unit.aggregate(parked).await.expect("aggregate").parked,
        Some(1)
    );
    assert_eq!(unit.load("doc/1").await.expect("load"), Some(document));
    assert_eq!(unit.load("doc/2").await.expect("load"), None);
    drop(unit);
    let list = store.parked(&projection).await.expect("parked");
    assert_eq!(list.len(), 1, "one parked aggregate: {list:?}");
    assert_eq!(list[0].stream, parked);
    assert_eq!(list[0].events.len(), 1);
    assert_eq!(list[0].events[0].version, 1);
    assert!(list[0].events[0].reason.contains("poison"));
    let progress = store.progress(&projection).await.expect("progress");
    assert_eq!(
        (
            progress.applied,
            progress.parked_aggregates,
            progress.parked_events,
            progress.pending
        ),
        (1, 1, 1, 5)
    );
    assert_eq!(
        store.applied(&projection, applied).await.expect("applied"),
        1
    );
    assert_eq!(
        store.applied(&projection, parked).await.expect("applied"),
        0
    );
}

/// Two units of one bucket never run at once: the second begins once the first ended, and
/// sees its position. Units of other buckets do not wait.
pub async fn units_of_a_bucket_run_one_at_a_time<S>(store: Arc<S>)
where
    S: ProjectionStore + 'static,
{
    let projection = fresh_projection();
    let (first, _) = store.begin(&projection, 3).await.expect("begin");
    let waiting = tokio::spawn({
        let (store, projection) = (store.clone(), projection.clone());
        async move {
            let (unit, position) = store.begin(&projection, 3).await.expect("begin");
            drop(unit);
            position
        }
    });
    let (other, position) =
        tokio::time::timeout(Duration::from_secs(10), store.begin(&projection, 4))
            .await
            .expect("another bucket does not wait")
            .expect("begin");
    assert_eq!(position, 0);
    drop(other);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a second unit of the bucket began while the first ran"
    );
    first.commit(9, 0).await.expect("commit");
    let seen = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the second unit begins once the first committed")
        .expect("task");
    assert_eq!(seen, 9, "it sees the first unit's position");
}

/// Units of different buckets that load the same document never both start from what was
/// there before: the second waits for the first (and sees its write) or fails with
/// `Unavailable` (and is run again), even when the document did not exist yet.
pub async fn a_loaded_document_is_the_units_until_it_ends<S>(store: Arc<S>)
where
    S: ProjectionStore + 'static,
{
    let projection = fresh_projection();
    let (mut first, _) = store.begin(&projection, 0).await.expect("begin");
    assert_eq!(first.load("shared").await.expect("load"), None);
    let second = tokio::spawn({
        let (store, projection) = (store.clone(), projection.clone());
        async move {
            let (mut unit, _) = store.begin(&projection, 1).await.expect("begin");
            unit.load("shared").await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    first
        .save("shared", serde_json::json!(1))
        .await
        .expect("save");
    first.commit(1, 0).await.expect("commit");
    let seen = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second load ends")
        .expect("task");
    match seen {
        Ok(document) => assert_eq!(
            document,
            Some(serde_json::json!(1)),
            "the first unit's write"
        ),
        Err(error) => assert!(error.is_retryable(), "{error:?}"),
    }
}

/// `lock_aggregates` reads several aggregates at once, as `aggregate` reads each.
pub async fn aggregates_are_read_in_one_go<S: ProjectionStore + ?Sized>(store: &S) {
    let projection = fresh_projection();
    let streams: Vec<StreamId> = (0..5).map(|_| StreamId::new()).collect();
    let (mut unit, _) = store.begin(&projection, 0).await.expect("begin");
    for (version, stream) in (1u64..).zip(&streams[..4]) {
        unit.record_applied(*stream, version).await.expect("record");
    }
    unit.commit(4, 0).await.expect("commit");
    let (mut unit, _) = store.begin(&projection, 0).await.expect("begin");
    unit.lock_aggregates(&streams).await.expect("lock");
    for (version, stream) in (1u64..).zip(&streams) {
        let expected = if version <= 4 { version } else { 0 };
        assert_eq!(
            unit.aggregate(*stream).await.expect("aggregate").applied,
            expected
        );
    }
}

/// A retry gives a parked aggregate's events back, in version order, to its bucket's next
/// unit; the aggregate is then no longer parked.
pub async fn a_retry_gives_parked_events_back_in_order<S: ProjectionStore + ?Sized>(store: &S) {
    let projection = fresh_projection();
    let stream = StreamId::new();
    let (mut unit, _) = store.begin(&projection, 1).await.expect("begin");
    unit.record_applied(stream, 1).await.expect("record");
    unit.park(&bucket_event(stream, 3, 3), 1, &ParkReason::Behind)
        .await
        .expect("park");
    unit.park(
        &bucket_event(stream, 2, 2),
        1,
        &ParkReason::Failed("bug".into()),
    )
    .await
    .expect("park");
    unit.commit(3, 0).await.expect("commit");
    assert!(
        !store
            .retry(&projection, StreamId::new())
            .await
            .expect("retry")
    );
    assert!(store.retry(&projection, stream).await.expect("retry"));
    let list = store.parked(&projection).await.expect("parked");
    assert!(list[0].retry_requested);
    assert_eq!(list[0].applied, 1);
    let versions: Vec<u64> = list[0].events.iter().map(|e| e.version).collect();
    assert_eq!(versions, [2, 3], "parked events by version");

    let (mut unit, _) = store.begin(&projection, 2).await.expect("begin");
    assert!(
        unit.take_retries(2).await.expect("take").is_empty(),
        "another bucket's"
    );
    drop(unit);
    let (mut unit, _) = store.begin(&projection, 1).await.expect("begin");
    let taken = unit.take_retries(1).await.expect("take");
    let versions: Vec<u64> = taken.iter().map(|e| e.version).collect();
    assert_eq!(versions, [2, 3]);
    assert!(taken.iter().all(|e| e.stream == stream && e.bucket == 1));
    let progress = unit.aggregate(stream).await.expect("aggregate");
    assert_eq!((progress.applied, progress.parked), (1, None));
    unit.record_applied(stream, 3).await.expect("record");
    unit.commit(3, 0).await.expect("commit");
    assert!(store.parked(&projection).await.expect("parked").is_empty());
    let progress = store.progress(&projection).await.expect("progress");
    assert_eq!((progress.applied, progress.parked_events), (3, 0));
}

/// `take_parked` gives one aggregate's parked events back in version order, those parked in
/// the same unit included, and the aggregate is no longer parked, once the unit commits.
pub async fn parked_events_can_be_taken_back_in_a_unit<S: ProjectionStore + ?Sized>(store: &S) {
    let projection = fresh_projection();
    let (stream, other) = (StreamId::new(), StreamId::new());
    let (mut unit, _) = store.begin(&projection, 0).await.expect("begin");
    unit.record_applied(stream, 1).await.expect("record");
    let early = ParkReason::Early { waiting_for: 2 };
    unit.park(&bucket_event(stream, 3, 3), 0, &early)
        .await
        .expect("park");
    unit.park(&bucket_event(other, 2, 4), 0, &early)
        .await
        .expect("park");
    unit.commit(4, 0).await.expect("commit");
    let (mut unit, _) = store.begin(&projection, 0).await.expect("begin");
    assert_eq!(
        unit.aggregate(stream).await.expect("aggregate").parked,
        Some(3)
    );
    unit.park(&bucket_event(stream, 4, 5), 0, &ParkReason::Behind)
        .await
        .expect("park");
    let taken = unit.take_parked(stream).await.expect("take");
    let versions: Vec<u64> = taken.iter().map(|e| e.version).collect();
    assert_eq!(versions, [3, 4], "by version, this unit's too");
    assert_eq!(
        unit.aggregate(stream).await.expect("aggregate").parked,
        None
    );
    unit.record_applied(stream, 4).await.expect("record");
    unit.commit(5, 0).await.expect("commit");
    let list = store.parked(&projection).await.expect("parked");
    assert_eq!(list.len(), 1, "only the other aggregate: {list:?}");
    assert_eq!(list[0].stream, other);
    assert_eq!(
        store.applied(&projection, stream).await.expect("applied"),
        4
    );
}

/// A skip gives up the gap an aggregate waits on, or its first parked event, counts it as
/// applied, and asks for the rest to be applied again.
pub async fn a_skip_gives_up_a_gap_or_an_event<S: ProjectionStore + ?Sized>(store: &S) {
    let projection = fresh_projection();
    let stream = StreamId::new();
    assert_eq!(
        store.skip(&projection, stream).await.expect("skip"),
        Skipped::NothingParked
    );
    let (mut unit, _) = store.begin(&projection, 0).await.expect("begin");
    unit.record_applied(stream, 1).await.expect("record");
    let early = ParkReason::Early { waiting_for: 2 };
    unit.park(&bucket_event(stream, 3, 1), 0, &early)
        .await
        .expect("park");
    unit.park(&bucket_event(stream, 4, 2), 0, &ParkReason::Behind)
        .await
        .expect("park");
    unit.commit(2, 0).await.expect("commit");

    assert_eq!(
        store.skip(&projection, stream).await.expect("skip"),
        Skipped::Gap { until: 2 }
    );
    let (mut unit, _) = store.begin(&projection, 0).await.expect("begin");
    let taken = unit.take_retries(0).await.expect("take");
    assert_eq!(taken.len(), 2, "the skip asks for a retry");
    assert_eq!(unit.aggregate(stream).await.expect("aggregate").applied, 2);
    unit.park(
        &bucket_event(stream, 3, 1),
        0,
        &ParkReason::Failed("bug".into()),
    )
    .await
    .expect("park");
    unit.park(&bucket_event(stream, 4, 2), 0, &ParkReason::Behind)
        .await
        .expect("park");
    unit.commit(2, 0).await.expect("commit");

    assert_eq!(
        store.skip(&projection, stream).await.expect("skip"),
        Skipped::Event { version: 3 }
    );
    let list = store.parked(&projection).await.expect("parked");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].applied, 3);
    assert_eq!(list[0].events.len(), 1);
    assert_eq!(list[0].events[0].version, 4);
    assert!(list[0].retry_requested);
    assert_eq!(
        store.progress(&projection).await.expect("progress").applied,
        3
    );
}

/// A heartbeat counts the workers alive (itself included); a silent worker stops counting once
/// its time to live has passed.
pub async fn heartbeats_count_live_workers<S: ProjectionStore + ?Sized>(store: &S) {
    let projection = fresh_projection();
    let long = Duration::from_secs(30);
    assert_eq!(
        store.heartbeat(&projection, "a", long).await.expect("beat"),
        1
    );
    let short = Duration::from_millis(300);
    assert_eq!(
        store
            .heartbeat(&projection, "b", short)
            .await
            .expect("beat"),
        2
    );
    assert_eq!(
        store.heartbeat(&projection, "a", long).await.expect("beat"),
        2
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        store.heartbeat(&projection, "a", long).await.expect("beat"),
        1
    );
    assert_eq!(
        store.progress(&projection).await.expect("progress").workers,
        1
    );
    let other = projection.next_generation();
    assert_eq!(store.heartbeat(&other, "a", long).await.expect("beat"), 1);
}

/// Generations keep apart: a new generation starts from nothing, and readers use the one
/// switched to.
pub async fn generations_are_apart<S: ProjectionStore + ?Sized>(store: &S) {
    let first = fresh_projection();
    let second = first.next_generation();
    let (mut unit, _) = store.begin(&first, 0).await.expect("begin");
    unit.save("doc", serde_json::json!(1)).await.expect("save");
    unit.record_applied(StreamId::new(), 1)
        .await
        .expect("record");
    unit.commit(1, 0).await.expect("commit");
    let (mut unit, position) = store.begin(&second, 0).await.expect("begin");
    assert_eq!(position, 0);
    assert_eq!(unit.load("doc").await.expect("load"), None);
    drop(unit);
    assert_eq!(store.progress(&second).await.expect("progress").applied, 0);
    let name = first.name();
    assert_eq!(store.active_generation(name).await.expect("active"), None);
    store.activate(&first).await.expect("activate");
    assert_eq!(
        store.active_generation(name).await.expect("active"),
        Some(1)
    );
    store.activate(&second).await.expect("activate");
    assert_eq!(
        store.active_generation(name).await.expect("active"),
        Some(2)
    );
}

/// Events emitted in a unit are in the event store once it commits; emitting the same events
/// again is a replay, and a refused emit (a conflict) leaves the unit usable.
pub async fn emitted_events_commit_with_the_unit<S, E>(store: &S, events: &E)
where
    S: ProjectionStore + ?Sized,
    E: EventReader + ?Sized,
{
    let projection = fresh_projection();
    let stream = StreamId::new();
    let event = sample_event(stream);
    let (mut unit, _) = store.begin(&projection, 0).await.expect("begin");
    let outcome = unit
        .emit(stream, ExpectedVersion::NoStream, vec![event.clone()])
        .await
        .expect("emit");
    assert!(!outcome.replayed);
    unit.commit(1, 0).await.expect("commit");
    let stored = events.read_stream(stream, 1, 10).await.expect("read");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].envelope.id, event.id);

    let (mut unit, _) = store.begin(&projection, 0).await.expect("begin");
    let again = unit
        .emit(stream, ExpectedVersion::NoStream, vec![event])
        .await
        .expect("the same event again");
    assert!(again.replayed, "a replay");
    let other = unit
        .emit(
            stream,
            ExpectedVersion::NoStream,
            vec![sample_event(stream)],
        )
        .await;
    assert!(
        matches!(other, Err(StoreError::Conflict { .. })),
        "another event where none is expected: {other:?}"
    );
    unit.save("after", serde_json::json!(true))
        .await
        .expect("save");
    unit.commit(2, 0).await.expect("the unit still commits");
    let (mut unit, position) = store.begin(&projection, 0).await.expect("begin");
    assert_eq!(position, 2);
    assert_eq!(
        unit.load("after").await.expect("load"),
        Some(serde_json::json!(true))
    );
    assert_eq!(
        events.read_stream(stream, 1, 10).await.expect("read").len(),
        1
    );
}

/// Instantiates the [`ProjectionStore`] kit: `$factory` gives a `(projection store, event
/// store)` pair, the second behind a pointer (`Arc`), whose units emit into that event store.
#[macro_export]
macro_rules! projection_store_conformance {
    ($factory:expr) => {
        mod projection_store_conformance {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_unit_commits_all_or_nothing() {
                let (store, _events) = $factory;
                $crate::conformance::a_unit_commits_all_or_nothing(&store).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn units_of_a_bucket_run_one_at_a_time() {
                let (store, _events) = $factory;
                $crate::conformance::units_of_a_bucket_run_one_at_a_time(::std::sync::Arc::new(
                    store,
                ))
                .await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_loaded_document_is_the_units_until_it_ends() {
                let (store, _events) = $factory;
                $crate::conformance::a_loaded_document_is_the_units_until_it_ends(
                    ::std::sync::Arc::new(store),
                )
                .await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn aggregates_are_read_in_one_go() {
                let (store, _events) = $factory;
                $crate::conformance::aggregates_are_read_in_one_go(&store).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_retry_gives_parked_events_back_in_order() {
                let (store, _events) = $factory;
                $crate::conformance::a_retry_gives_parked_events_back_in_order(&store).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn parked_events_can_be_taken_back_in_a_unit() {
                let (store, _events) = $factory;
                $crate::conformance::parked_events_can_be_taken_back_in_a_unit(&store).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_skip_gives_up_a_gap_or_an_event() {
                let (store, _events) = $factory;
                $crate::conformance::a_skip_gives_up_a_gap_or_an_event(&store).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn heartbeats_count_live_workers() {
                let (store, _events) = $factory;
                $crate::conformance::heartbeats_count_live_workers(&store).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn generations_are_apart() {
                let (store, _events) = $factory;
                $crate::conformance::generations_are_apart(&store).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn emitted_events_commit_with_the_unit() {
                let (store, events) = $factory;
                $crate::conformance::emitted_events_commit_with_the_unit(&store, &*events).await;
            }
        }
    };
}
