//! Concurrency under relay load: 16 writers racing on one stream with expected versions, and
//! caller transactions committing out of order (some held open, some rolled back).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use edupulse_domain::{EventEnvelope, ExpectedVersion, StreamId};
use edupulse_integration_tests::{fresh_database, shared_nats};
use edupulse_ports::{EventAppender, EventReader, StoreError};
use futures::StreamExt;

use crate::checker::History;
use crate::workload::{Pace, Run, Workload, event, soak_factor};

const WRITERS: usize = 16;

/// Appends one event at a time to `stream` until `wins` of them are committed, always
/// expecting the version last seen. A conflict means another writer won that version: this
/// event was not committed; decide again with the actual version.
async fn contend(
    store: Arc<dyn EventAppender>,
    history: Arc<History>,
    run: String,
    stream: StreamId,
    wins: usize,
) -> Vec<u64> {
    let mut known: Option<u64> = None;
    let mut won = Vec::new();
    let mut i = 0;
    while won.len() < wins {
        i += 1;
        let events: Vec<EventEnvelope> = vec![event(stream, &run, i)];
        let expected = known.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        history.attempt(&events);
        loop {
            match store.append(stream, expected, events.clone()).await {
                Ok(outcome) => {
                    history.acknowledged(&outcome);
                    known = Some(outcome.last_version());
                    won.push(outcome.last_version());
                    break;
                }
                Err(StoreError::Conflict { actual, .. }) => {
                    history.conflict();
                    history.not_committed(&events);
                    known = actual;
                    break;
                }
                // Ambiguous: retry the same event with the same expectation (a replay if it
                // committed, a conflict if another writer has the version).
                Err(e) if e.is_retryable() => {
                    history.ambiguous(&events);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("append: {e:?}"),
            }
        }
    }
    won
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_writers_on_one_stream_each_version_won_once() {
    let db = fresh_database().await;
    let nats = shared_nats().await;
    let run = Run::start("one_stream_16", db.url(), vec![nats.url()]).await;
    let relay = run.spawn_relay().await;
    let stream = StreamId::new();
    let per_writer = 20 * soak_factor() as usize;

    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            tokio::spawn(contend(
                run.backbone.store.clone(),
                run.history.clone(),
                run.name.clone(),
                stream,
                per_writer,
            ))
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        versions.extend(task.await.expect("writer"));
    }
    versions.sort_unstable();
    let n = (WRITERS * per_writer) as u64;
    assert_eq!(
        versions,
        (1..=n).collect::<Vec<_>>(),
        "exactly one writer wins each version, versions contiguous"
    );
    // The store agrees: the stream holds exactly the acknowledged events, in version order.
    let stored = run
        .backbone
        .store
        .read_stream(stream, 1, n as usize + 10)
        .await
        .expect("read");
    let acknowledged = run.history.acknowledged_versions();
    assert_eq!(stored.len() as u64, n);
    for (i, e) in stored.iter().enumerate() {
        assert_eq!(e.stream_version, i as u64 + 1);
        assert_eq!(
            acknowledged.get(&e.envelope.id),
            Some(&(stream, e.stream_version)),
            "stored event {} was acknowledged with its version",
            e.envelope.id
        );
    }

    let conflicts = run.history.conflicts();
    let mut figures = run.finish("16_writers_one_stream", &HashSet::new()).await;
    Run::stop_relay(relay).await;
    figures.notes = format!("{conflicts} conflicts (losers re-decided), {n} versions contiguous");
    figures.report_and_check();
    assert!(conflicts > 0, "16 writers on one stream must conflict");
}

/// One caller transaction: maybe takes a transaction id early (as writing its own tables
/// would), appends, stays open for a random while (sometimes long), then commits or rolls back.
async fn caller_transaction(run: Arc<(Run, Vec<StreamId>)>, k: usize) -> bool {
    let (run, streams) = &*run;
    let store = &run.backbone.store;
    let stream = streams[rand::random_range(0..streams.len())];
    let events: Vec<EventEnvelope> = (0..rand::random_range(1..=3))
        .map(|i| event(stream, &run.name, i))
        .collect();
    let early_xid = rand::random_bool(0.5);
    let (pause_before, hold) = (
        rand::random_range(0..100u64),
        if k.is_multiple_of(15) {
            // Long-open: holds back the commit horizon of the whole cluster meanwhile.
            rand::random_range(800..1500u64)
        } else {
            rand::random_range(0..150u64)
        },
    );
    let rollback = rand::random_bool(0.2);
    run.history.attempt(&events);

    let mut tx = store.pool().begin().await.expect("begin");
    if early_xid {
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut *tx)
            .await
            .expect("xid");
    }
    tokio::time::sleep(Duration::from_millis(pause_before)).await;
    let outcome = match store
        .append_in_transaction(&mut tx, stream, ExpectedVersion::Any, events.clone())
        .await
    {
        Ok(outcome) => outcome,
        Err(e) => {
            // Whatever the error, the transaction is not committed.
            eprintln!("faults: caller transaction append failed: {e}");
            let _ = tx.rollback().await;
            run.history.not_committed(&events);
            return false;
        }
    };
    tokio::time::sleep(Duration::from_millis(hold)).await;
    if rollback {
        tx.rollback().await.expect("rollback");
        run.history.not_committed(&events);
        return false;
    }
    match tx.commit().await {
        Ok(()) => {
            run.history.acknowledged(&outcome);
            true
        }
        Err(e) => {
            // The commit may have happened before the connection broke.
            eprintln!("faults: commit failed: {e}");
            run.history.ambiguous(&events);
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_commits_under_relay_load() {
    let db = fresh_database().await;
    let nats = shared_nats().await;
    let run = Run::start("out_of_order", db.url(), vec![nats.url()]).await;
    let relay = run.spawn_relay().await;
    // Background load on other streams while the transactions interleave.
    let writers = run.writers(Workload {
        writers: 2,
        pace: Pace::Closed {
            pause: Duration::from_millis(20),
        },
        ..Workload::default()
    });
    let transactions = 150 * soak_factor() as usize;
    let shared = Arc::new((run, (0..6).map(|_| StreamId::new()).collect::<Vec<_>>()));
    let results: Vec<bool> = futures::stream::iter(0..transactions)
        .map(|k| caller_transaction(shared.clone(), k))
        .buffer_unordered(8)
        .collect()
        .await;
    let committed = results.iter().filter(|&&c| c).count();
    let Ok((run, _)) = Arc::try_unwrap(shared) else {
        panic!("transactions still running")
    };
    writers.join().await;

    let mut figures = run.finish("out_of_order_commits", &HashSet::new()).await;
    Run::stop_relay(relay).await;
    figures.notes = format!(
        "{transactions} caller transactions, {committed} committed, the rest rolled back (never delivered)"
    );
    figures.report_and_check();
    assert!(committed > 0 && committed < transactions);
}
