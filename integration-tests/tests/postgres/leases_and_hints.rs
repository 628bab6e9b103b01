//! Leases (exclusive, visible, expiring unless renewed, fenced by epochs, released on drop) and
//! commit hints.

use crate::support::{config, events, store_on};
use edupulse_domain::{ExpectedVersion, StreamId};
use edupulse_integration_tests::postgres::{PG_PASSWORD, PG_USER};
use edupulse_integration_tests::{Forwarder, TestDb, fresh_database, shared_postgres};
use edupulse_ports::{CommitHints, EventAppender, LeaseProvider};
use edupulse_postgres::{LeaseConfig, PgEventStore};
use futures::StreamExt;
use std::time::{Duration, Instant};

/// Short lease timings, so expiry tests take seconds: TTL 2 s, renewed every 500 ms, given up
/// 400 ms before it expires.
fn short_lease() -> LeaseConfig {
    LeaseConfig::with_timings(
        Duration::from_millis(2000),
        Duration::from_millis(500),
        Duration::from_millis(400),
    )
    .expect("valid timings")
}

/// A store with short leases, reaching `db` on `port` of 127.0.0.1 (the server's, or a
/// forwarder's).
async fn short_lease_store(db: &TestDb, port: u16) -> PgEventStore {
    let url = format!(
        "postgres://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/{}",
        db.name()
    );
    let mut config = config(&url);
    config.lease = short_lease();
    PgEventStore::connect(&config)
        .await
        .expect("connect the store")
}

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

    // Released on drop: taken again long before the 10 s TTL would have freed it.
    let first_epoch = lease.epoch();
    drop(lease);
    let dropped = Instant::now();
    let taken = loop {
        if let Some(lease) = other
            .try_acquire("relay", "relay-b host-2")
            .await
            .expect("acquire")
        {
            break lease;
        }
        assert!(
            dropped.elapsed() < Duration::from_secs(3),
            "released on drop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("lease released and taken again in {:?}", dropped.elapsed());
    assert!(taken.epoch() > first_epoch, "a takeover has a later epoch");
    assert_eq!(
        store.holder("relay").await.expect("holder").as_deref(),
        Some("relay-b host-2")
    );
    drop((taken, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takers_of_a_free_lease_get_it_once() {
    let db = fresh_database().await;
    let stores: Vec<PgEventStore> = futures::future::join_all((0..8).map(|_| store_on(&db))).await;
    let attempts = stores
        .iter()
        .enumerate()
        .map(|(i, s)| async move { s.try_acquire("contended", &format!("taker-{i}")).await });
    let won: Vec<_> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .filter_map(|r| r.expect("acquire"))
        .collect();
    assert_eq!(won.len(), 1, "exactly one taker wins");
    assert_eq!(won[0].epoch(), 1, "the first tenure of a name");
}

/// The holder's path to the server goes silent (a forwarder that drops everything, while the
/// server still sees a healthy connection, as behind docker-proxy or a pooler): the holder gives
/// up before the lease expires, and a successor takes it once it has expired, with the next
/// epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_holder_loses_the_lease_before_a_successor_takes_it_over() {
    let db = fresh_database().await;
    let pg = shared_postgres().await;
    let path = Forwarder::start(pg.port()).await;
    let holder = short_lease_store(&db, path.port()).await;
    let successor = short_lease_store(&db, pg.port()).await;

    let lease = holder
        .try_acquire("relay", "silent-holder")
        .await
        .expect("acquire")
        .expect("free");
    // Renewed: still held well past its TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(lease.is_held(), "renewed while the path works");
    assert!(
        successor
            .try_acquire("relay", "successor")
            .await
            .expect("acquire")
            .is_none(),
        "a renewed lease is not free"
    );

    path.silence();
    let silenced = Instant::now();
    let taker = tokio::spawn(async move {
        loop {
            if let Some(lease) = successor
                .try_acquire("relay", "successor")
                .await
                .expect("acquire")
            {
                return (Instant::now(), lease, successor);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    tokio::time::timeout(Duration::from_secs(3), lease.lost())
        .await
        .expect("lost() resolves within the TTL");
    let lost = Instant::now();
    assert!(!lease.is_held());
    let (taken, next, successor) = tokio::time::timeout(Duration::from_secs(5), taker)
        .await
        .expect("taken over within the TTL and a bit")
        .expect("taker task");
    eprintln!(
        "silent holder: gave up after {:?}, taken over after {:?}",
        lost - silenced,
        taken - silenced
    );
    assert!(
        lost < taken,
        "the holder gives up before the successor takes over"
    );
    assert!(taken - silenced <= Duration::from_secs(2) + Duration::from_millis(500));
    assert_eq!(next.epoch(), lease.epoch() + 1, "the takeover's epoch");
    assert_eq!(
        successor.holder("relay").await.expect("holder").as_deref(),
        Some("successor")
    );
}

/// A renewal connection that dies costs one attempt, not the lease: the keeper reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_renewal_connection_is_replaced_and_the_lease_kept() {
    let db = fresh_database().await;
    let pg = shared_postgres().await;
    let store = short_lease_store(&db, pg.port()).await;
    let lease = store
        .try_acquire("relay", "sturdy-relay")
        .await
        .expect("acquire")
        .expect("free");
    let started = Instant::now();
    let terminated = loop {
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() \
               AND application_name = 'edupulse-lease:sturdy-relay'",
        )
        .fetch_all(store.pool())
        .await
        .expect("terminate the keeper's backend");
        if killed.contains(&true) {
            break Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the keeper connects for its first renewal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        lease.is_held(),
        "held {:?} after its connection died",
        terminated.elapsed()
    );
    assert_eq!(
        store.holder("relay").await.expect("holder").as_deref(),
        Some("sturdy-relay")
    );
}

/// The store's sessions carry its TCP keepalive settings, so the server drops the session of a
/// vanished client (one it sees directly) in seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_sessions_ask_the_server_for_quick_tcp_timeouts() {
    let db = fresh_database().await;
    let store = store_on(&db).await;
    let mut settings = Vec::new();
    for name in [
        "tcp_keepalives_idle",
        "tcp_keepalives_interval",
        "tcp_keepalives_count",
        "tcp_user_timeout",
    ] {
        // In the setting's base unit (seconds, or milliseconds for the user timeout).
        let value: String = sqlx::query_scalar("SELECT setting FROM pg_settings WHERE name = $1")
            .bind(name)
            .fetch_one(store.pool())
            .await
            .expect("read the setting");
        settings.push(value);
    }
    assert_eq!(settings, ["5", "2", "3", "10000"]);
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
/// the path (lone caller, group statement). On a container of its own: commit-safe reads wait
/// for every open write transaction of the cluster, and another test's transaction on the shared
/// one can hold the last events back after the last hint (the relay re-reads for that reason;
/// this follower reads on hints only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_hint_follows_the_last_commit_of_concurrent_appends() {
    let isolated = crate::support::Isolated::start(true).await;
    let store = std::sync::Arc::new(isolated.store().clone());
    let mut hints = store.subscribe().await.expect("subscribe");
    let writers_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = {
        let store = store.clone();
        let writers_done = writers_done.clone();
        tokio::spawn(async move {
            let mut cursor = edupulse_ports::Cursor::START;
            let mut seen = 0usize;
            // Reads on each hint only; stops once the writers are done and hints have been
            // quiet for a while (on a loaded machine the first hint can take a while).
            loop {
                match tokio::time::timeout(Duration::from_millis(1500), hints.next()).await {
                    Ok(Some(())) => {
                        let (page, next) = crate::support::drain(&*store, cursor, 500).await;
                        seen += page.len();
                        cursor = next;
                    }
                    Ok(None) => break,
                    Err(_) if writers_done.load(std::sync::atomic::Ordering::SeqCst) => break,
                    Err(_) => {}
                }
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
    writers_done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(follower.await.expect("follower"), 32 * 10 * 2);
}
