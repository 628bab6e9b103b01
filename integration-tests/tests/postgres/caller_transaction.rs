//! Issue 5: appending inside the caller's own transaction.

use crate::support::{drain, event, events, read_exactly, store_on};
use edupulse_domain::{ExpectedVersion, StreamId};
use edupulse_integration_tests::{TestDb, fresh_database};
use edupulse_ports::{CommitHints, Cursor, EventAppender, EventReader, StoreError};
use edupulse_postgres::{PgEventStore, append_in_transaction};
use futures::StreamExt;
use sqlx::PgPool;
use std::time::Duration;

async fn setup() -> (TestDb, PgEventStore, PgPool) {
    let db = fresh_database().await;
    let store = store_on(&db).await;
    let pool = db.pool().await;
    sqlx::query("CREATE TABLE lessons (id uuid PRIMARY KEY, title text NOT NULL)")
        .execute(&pool)
        .await
        .expect("service table");
    (db, store, pool)
}

async fn lessons(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM lessons")
        .fetch_one(pool)
        .await
        .expect("count lessons")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_appends_and_hints_rollback_appends_nothing() {
    let (_db, store, pool) = setup().await;
    let mut hints = store.subscribe().await.expect("subscribe");

    // Rolled back: neither the row nor the event, and no hint.
    let stream = StreamId::new();
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO lessons VALUES ($1, 'draft')")
        .bind(stream.as_uuid())
        .execute(&mut *tx)
        .await
        .expect("own row");
    append_in_transaction(
        &mut tx,
        stream,
        ExpectedVersion::NoStream,
        events(stream, 2),
    )
    .await
    .expect("append");
    tx.rollback().await.expect("rollback");
    assert_eq!(lessons(&pool).await, 0);
    assert_eq!(store.stream_version(stream).await.expect("version"), None);
    assert!(drain(&store, Cursor::START, 10).await.0.is_empty());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), hints.next())
            .await
            .is_err(),
        "no hint for a rollback"
    );

    // Committed: both, readable by a follower, and the hint arrives after the commit only.
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO lessons VALUES ($1, 'published')")
        .bind(stream.as_uuid())
        .execute(&mut *tx)
        .await
        .expect("own row");
    let batch = events(stream, 2);
    let out = append_in_transaction(&mut tx, stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("append");
    assert_eq!(out.last_version(), 2);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), hints.next())
            .await
            .is_err(),
        "no hint before the commit"
    );
    assert!(
        drain(&store, Cursor::START, 10).await.0.is_empty(),
        "invisible before the commit"
    );
    tx.commit().await.expect("commit");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), hints.next())
            .await
            .expect("a hint after the commit"),
        Some(())
    );
    let (read, _) = read_exactly(&store, Cursor::START, 10, 2).await;
    let envelopes: Vec<_> = read.into_iter().map(|r| r.envelope).collect();
    assert_eq!(envelopes, batch);
    assert_eq!(lessons(&pool).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_is_typed_and_leaves_the_transaction_usable() {
    let (_db, store, pool) = setup().await;
    let stream = StreamId::new();
    store
        .append(stream, ExpectedVersion::NoStream, events(stream, 2))
        .await
        .expect("append");

    // Conflict, then roll back: the own row goes too.
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO lessons VALUES ($1, 'first try')")
        .bind(stream.as_uuid())
        .execute(&mut *tx)
        .await
        .expect("own row");
    match append_in_transaction(
        &mut tx,
        stream,
        ExpectedVersion::Exact(1),
        vec![event(stream)],
    )
    .await
    {
        Err(StoreError::Conflict {
            stream: s,
            expected,
            actual,
        }) => {
            assert_eq!(s, stream);
            assert_eq!(expected, ExpectedVersion::Exact(1));
            assert_eq!(actual, Some(2));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *tx)
        .await
        .expect("the transaction still works after a conflict");
    assert_eq!(one, 1);
    tx.rollback().await.expect("rollback");
    assert_eq!(lessons(&pool).await, 0);

    // Conflict on a concurrent writer's unique violation (the statement itself fails, in the
    // savepoint): the caller goes on and commits its own row, the event is not stored.
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO lessons VALUES ($1, 'second try')")
        .bind(stream.as_uuid())
        .execute(&mut *tx)
        .await
        .expect("own row");
    let mut other = pool.begin().await.expect("begin other");
    append_in_transaction(
        &mut other,
        stream,
        ExpectedVersion::Exact(2),
        vec![event(stream)],
    )
    .await
    .expect("the other writer appends v3");
    let racing = tokio::spawn(async move {
        let mut tx = tx;
        let result = append_in_transaction(
            &mut tx,
            stream,
            ExpectedVersion::Exact(2),
            vec![event(stream)],
        )
        .await;
        (tx, result)
    });
    // Let the racing insert block on the other writer's uncommitted v3, then commit it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    other.commit().await.expect("commit other");
    let (mut tx, result) = racing.await.expect("racing task");
    assert!(
        matches!(
            result,
            Err(StoreError::Conflict {
                actual: Some(3),
                ..
            })
        ),
        "{result:?}"
    );
    sqlx::query("UPDATE lessons SET title = 'kept' WHERE id = $1")
        .bind(stream.as_uuid())
        .execute(&mut *tx)
        .await
        .expect("a further statement after the conflict");
    tx.commit().await.expect("commit");
    assert_eq!(lessons(&pool).await, 1);
    assert_eq!(
        store.stream_version(stream).await.expect("version"),
        Some(3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_open_caller_transaction_holds_readers_back_but_nothing_is_skipped() {
    let (_db, store, pool) = setup().await;
    let stream = StreamId::new();

    // The caller's transaction gets its id first (its own write), and stays open.
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO lessons VALUES ($1, 'slow')")
        .bind(stream.as_uuid())
        .execute(&mut *tx)
        .await
        .expect("own row");

    // Meanwhile others append and commit: a follower must not get past the open transaction.
    let others: Vec<StreamId> = (0..5).map(|_| StreamId::new()).collect();
    for s in &others {
        store
            .append(*s, ExpectedVersion::NoStream, events(*s, 2))
            .await
            .expect("append");
    }
    let (before, cursor) = drain(&store, Cursor::START, 3).await;
    assert!(
        before.is_empty(),
        "events committed after an open transaction took its id are held back"
    );
    // (Which one is the oldest of the shared cluster depends on the other tests; the exact
    // report is checked on a cluster of its own, in `interleavings`.)
    assert!(
        store
            .oldest_open_transaction()
            .await
            .expect("status")
            .is_some(),
        "an open transaction is reported"
    );

    // The slow transaction appends to a stream another transaction extends meanwhile: its
    // event must still come before that stream's next one in the global order.
    let out = append_in_transaction(
        &mut tx,
        stream,
        ExpectedVersion::NoStream,
        vec![event(stream)],
    )
    .await
    .expect("append");
    assert_eq!(out.last_version(), 1);
    tx.commit().await.expect("commit");
    store
        .append(stream, ExpectedVersion::Exact(1), vec![event(stream)])
        .await
        .expect("append after it");

    let (after, _) = read_exactly(&store, cursor, 4, 5 * 2 + 2).await;
    let mine: Vec<u64> = after
        .iter()
        .filter(|e| e.stream_id == stream)
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(mine, vec![1, 2], "stream order holds in the global order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_in_a_transaction_are_replays_and_reused_ids_are_refused() {
    let (_db, store, pool) = setup().await;
    let stream = StreamId::new();
    let batch = events(stream, 2);
    let first = store
        .append(stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("append");

    let mut tx = pool.begin().await.expect("begin");
    let again = append_in_transaction(&mut tx, stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("replay");
    assert!(again.replayed);
    assert_eq!(again.events, first.events);
    let mut forged = event(stream);
    forged.id = batch[0].id;
    assert!(matches!(
        append_in_transaction(&mut tx, stream, ExpectedVersion::Any, vec![forged]).await,
        Err(StoreError::DuplicateEventId { event_id }) if event_id == batch[0].id
    ));
    tx.commit().await.expect("the transaction is still usable");
    assert_eq!(
        store.stream_version(stream).await.expect("version"),
        Some(2)
    );
}
