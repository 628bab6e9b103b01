//! Leases (exclusive, visible, lost at once with their connection) and commit hints.

use crate::support::{events, store_on};
use edupulse_domain::{ExpectedVersion, StreamId};
use edupulse_integration_tests::fresh_database;
use edupulse_ports::{CommitHints, EventAppender, LeaseProvider};
use futures::StreamExt;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_exclusive_shows_its_holder_and_is_released_on_drop() {
    let db = fresh_database().await;
    let store = store_on(&db).await;
    let other = store_on(&db).await;

    let lease = store
        .try_acquire("relay", "relay-a host-1")
        .await
        .expect("acquire")
        .expect("free");
    assert!(lease.is_held());
    assert!(
        other
            .try_acquire("relay", "relay-b host-2")
            .await
            .expect("acquire")
            .is_none(),
        "held by relay-a"
    );
    assert_eq!(
        other.holder("relay").await.expect("holder").as_deref(),
        Some("relay-a host-1")
    );
    // Another name is another lease.
    let second = other
        .try_acquire("relay-2", "relay-b host-2")
        .await
        .expect("acquire")
        .expect("another name is free");
    assert_eq!(other.holder("nobody").await.expect("holder"), None);

    drop(lease);
    let deadline = Instant::now() + Duration::from_secs(5);
    let taken = loop {
        if let Some(lease) = other
            .try_acquire("relay", "relay-b host-2")
            .await
            .expect("acquire")
        {
            break lease;
        }
        assert!(Instant::now() < deadline, "released after drop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        store.holder("relay").await.expect("holder").as_deref(),
        Some("relay-b host-2")
    );
    drop((taken, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_lease_connection_is_detected_at_once() {
    let db = fresh_database().await;
    let store = store_on(&db).await;
    let lease = store
        .try_acquire("relay", "doomed-relay")
        .await
        .expect("acquire")
        .expect("free");
    let pid: i32 = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'edupulse-lease:doomed-relay'",
    )
    .fetch_one(store.pool())
    .await
    .expect("the lease's backend");
    let killed = Instant::now();
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(store.pool())
        .await
        .expect("terminate");
    assert!(terminated);
    tokio::time::timeout(Duration::from_secs(3), lease.lost())
        .await
        .expect("lost() resolves within 3 s");
    eprintln!("lease loss detected in {:?}", killed.elapsed());
    assert!(!lease.is_held());
    // The lock went with the session: another holder can take it.
    assert!(
        store
            .try_acquire("relay", "successor")
            .await
            .expect("acquire")
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_arrive_after_commits_and_end_with_the_connection() {
    let db = fresh_database().await;
    let store = store_on(&db).await;
    let mut hints = store.subscribe().await.expect("subscribe");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), hints.next())
            .await
            .is_err(),
        "no hint without a commit"
    );
    let stream = StreamId::new();
    store
        .append(stream, ExpectedVersion::NoStream, events(stream, 3))
        .await
        .expect("append");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), hints.next())
            .await
            .expect("a hint"),
        Some(())
    );

    // The listener's session ends: the hint stream ends, so the follower subscribes again.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .execute(store.pool())
    .await
    .expect("terminate the listener");
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while hints.next().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "the hint stream ends when its connection dies");
}

/// The store's own appends send their hint after committing (not from the trigger, see migration
/// 0002), coalesced: a follower that reads on each hint must still see the last commit, whatever
/// the path (lone caller, group statement).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_hint_follows_the_last_commit_of_concurrent_appends() {
    let db = fresh_database().await;
    let store = std::sync::Arc::new(store_on(&db).await);
    let mut hints = store.subscribe().await.expect("subscribe");
    let follower = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut cursor = edupulse_ports::Cursor::START;
            let mut seen = 0usize;
            // Reads on each hint only; stops once hints have been quiet for a while.
            while let Ok(Some(())) =
                tokio::time::timeout(Duration::from_millis(1500), hints.next()).await
            {
                let (page, next) = crate::support::drain(&*store, cursor, 500).await;
                seen += page.len();
                cursor = next;
            }
            seen
        })
    };
    let mut writers = Vec::new();
    for _ in 0..32 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for _ in 0..10 {
                let stream = StreamId::new();
                store
                    .append(stream, ExpectedVersion::NoStream, events(stream, 2))
                    .await
                    .expect("append");
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    assert_eq!(follower.await.expect("follower"), 32 * 10 * 2);
}
