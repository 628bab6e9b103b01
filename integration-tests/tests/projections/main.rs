//! The projection suite: projection workers on the real wiring (PostgreSQL projection store,
//! NATS bucket stream, the relay feeding it) broken on purpose while writers append. The probe
//! projection (`edupulse_integration_tests::projections::Probe`) records every version it
//! applies, in its unit, so each run counts what was applied, applied twice (must be 0), out of
//! order (0), never applied (exactly what an operator skipped) and parked (exactly the poison
//! events and what waits behind them).
//!
//! - a worker process killed with `SIGKILL` mid-run: the other process takes its buckets over;
//! - workers racing for the same buckets: sets started together and restarted over and over;
//! - NATS paused mid-run: reads time out, buckets are read again from the committed positions;
//! - events stored twice by the broker (an operator's forced replay): the copies are passed
//!   over, the aggregates go on;
//! - a poison event in the middle of one aggregate: only that aggregate waits, retry re-parks
//!   it, skip lets the rest through;
//! - a rebuild during live traffic: generation 2 from scratch beside generation 1, both agree,
//!   then readers switch;
//! - least privilege: the achievements projection runs, and awards badges, as an
//!   `edupulse_projector` login, which is refused everything else.
//!
//! Each test prints one row and appends it to `target/projections-report.md`.

mod support;

use std::time::{Duration, Instant};

use edupulse_domain::{ExpectedVersion, StreamId};
use edupulse_integration_tests::projections::{POISON_KEY, Probe, applications};
use edupulse_ports::projection::ProjectionStore;
use edupulse_ports::{EventAppender, EventPublisher, EventReader};
use support::{BUCKETS, Row, Run};
use tokio::process::Command;

/// Not a test: the body of the worker process the SIGKILL test starts. Does nothing unless
/// started by it.
#[test]
#[ignore = "run by the suite itself as a child process"]
fn projection_child_process() {
    let (Ok(pg), Ok(nats), Ok(name)) = (
        std::env::var(CHILD_PG),
        std::env::var(CHILD_NATS),
        std::env::var(CHILD_NAME),
    ) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let backbone = edupulse_app::wiring::Backbone::connect(
            &support::pg_config(&pg),
            support::nats_config(vec![nats], &name),
        )
        .await
        .expect("connect");
        let feed = backbone.feed(BUCKETS).await.expect("feed");
        let projection = edupulse_ports::projection::ProjectionId::new("probe", 1).expect("name");
        let running = edupulse_app::wiring::spawn_workers(
            &backbone,
            &projection,
            std::sync::Arc::new(Probe),
            feed,
            2,
            &support::runner_config("child"),
        );
        running.wait().await;
    });
}

const CHILD_PG: &str = "EDUPULSE_PROJECTIONS_CHILD_PG";
const CHILD_NATS: &str = "EDUPULSE_PROJECTIONS_CHILD_NATS";
const CHILD_NAME: &str = "EDUPULSE_PROJECTIONS_CHILD_NAME";

fn spawn_child(run: &Run) -> tokio::process::Child {
    let exe = std::env::current_exe().expect("the test binary");
    Command::new(exe)
        .args([
            "--exact",
            "projection_child_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_PG, &run.pg_url)
        .env(CHILD_NATS, run.backbone.nats.servers.join(","))
        .env(CHILD_NAME, &run.name)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the worker process")
}

/// The expectation of an append after version `version`.
fn expected_after(version: u64) -> ExpectedVersion {
    match version {
        0 => ExpectedVersion::NoStream,
        v => ExpectedVersion::Exact(v),
    }
}

/// Waits until `check` holds (polling), up to `limit`; how long it took.
async fn until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_process_killed_mid_run_hands_its_buckets_over() {
    let run = Run::start("proj-kill", None).await;
    let projection = run.probe(1);
    let mut child = spawn_child(&run);
    let local = run.workers(&projection, "local", 1);
    let writers = run.writers(3_000, 600.0);
    // Kill once the child holds buckets and has applied some events.
    until(
        "the child applies events",
        Duration::from_secs(60),
        async || {
            let progress = run.store.progress(&projection).await.expect("progress");
            progress.applied > 500 && progress.workers >= 3
        },
    )
    .await;
    child.kill().await.expect("SIGKILL the worker process");
    let killed = Instant::now();
    until(
        "the local worker takes every bucket",
        Duration::from_secs(30),
        async || {
            local
                .stats
                .iter()
                .map(|s| s.snapshot().buckets_held)
                .sum::<u64>()
                == u64::from(BUCKETS)
        },
    )
    .await;
    let recovered = killed.elapsed();
    Run::finish_writers(writers).await;
    run.caught_up(&projection).await;
    let mut row = Row::judge("worker process SIGKILLed mid-run", &run, &projection, 0, 0).await;
    row.recovered = Some(recovered);
    row.report();
    assert!(
        recovered < Duration::from_secs(10),
        "buckets taken over in {recovered:?}"
    );
    local.stop().await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_racing_for_the_same_buckets_apply_each_event_once() {
    let run = Run::start("proj-race", None).await;
    let projection = run.probe(1);
    let writers = run.writers(3_000, 800.0);
    let steady = run.workers(&projection, "steady", 2);
    // Sets that start together and stop again, over and over: every start races the others
    // for free buckets, every stop hands buckets back mid-stream.
    for round in 0..6 {
        let churn = run.workers(&projection, &format!("churn-{round}"), 3);
        tokio::time::sleep(Duration::from_millis(700)).await;
        churn.stop().await;
    }
    Run::finish_writers(writers).await;
    let took = run.caught_up(&projection).await;
    let mut row = Row::judge(
        "workers racing for buckets (6 rounds)",
        &run,
        &projection,
        0,
        0,
    )
    .await;
    row.recovered = Some(took);
    row.report();
    steady.stop().await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_broker_only_delays_the_projection() {
    let nats = edupulse_integration_tests::start_nats().await;
    let run = Run::start("proj-pause", Some(vec![nats.url()])).await;
    let projection = run.probe(1);
    let workers = run.workers(&projection, "w", 2);
    let writers = run.writers(2_000, 500.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.pause().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    nats.unpause().await;
    let resumed = Instant::now();
    Run::finish_writers(writers).await;
    run.caught_up(&projection).await;
    let mut row = Row::judge("NATS paused 6 s mid-run", &run, &projection, 0, 0).await;
    row.recovered = Some(resumed.elapsed());
    row.report();
    workers.stop().await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_parks_its_aggregate_and_nothing_else() {
    let run = Run::start("proj-poison", None).await;
    let projection = run.probe(1);
    let workers = run.workers(&projection, "w", 2);
    let writers = run.writers(1_500, 600.0);
    // One aggregate: v1 fine, v2 poison, v3 and v4 fine (they must wait behind v2).
    let stream = StreamId::new();
    for i in 1..=4u64 {
        let mut event = edupulse_integration_tests::sample_event(stream, i);
        if i == 2 {
            event
                .metadata
                .extra
                .insert(POISON_KEY.to_owned(), true.into());
        }
        let outcome = run
            .backbone
            .store
            .append(stream, expected_after(i - 1), vec![event])
            .await
            .expect("append");
        run.history.acknowledged(&outcome);
    }
    Run::finish_writers(writers).await;
    until(
        "the poison aggregate parks",
        Duration::from_secs(60),
        async || {
            run.store
                .parked(&projection)
                .await
                .expect("parked")
                .first()
                .is_some_and(|a| a.events.len() == 3)
        },
    )
    .await;
    let others: Vec<(StreamId, u64)> = run
        .acknowledged()
        .into_iter()
        .filter(|(s, _)| *s != stream)
        .collect();
    edupulse_app::projection::wait_until_versions_applied(
        &*run.store,
        &projection,
        others,
        Duration::from_secs(120),
    )
    .await
    .expect("every other aggregate is applied");
    let parked = run.store.parked(&projection).await.expect("parked");
    assert_eq!(parked.len(), 1, "only the poisoned aggregate: {parked:?}");
    assert_eq!(parked[0].stream, stream);
    assert_eq!(parked[0].applied, 1);
    let versions: Vec<u64> = parked[0].events.iter().map(|e| e.version).collect();
    assert_eq!(versions, [2, 3, 4]);
    assert!(
        parked[0].events[0].reason.contains("poison"),
        "{:?}",
        parked[0].events[0]
    );
    let row = Row::judge(
        "poison event mid-aggregate (parked)",
        &run,
        &projection,
        3,
        0,
    )
    .await;
    row.report();

    // A retry applies them again: the poison fails again and parks the same three.
    assert!(run.store.retry(&projection, stream).await.expect("retry"));
    until("the retry ran", Duration::from_secs(30), async || {
        run.store
            .parked(&projection)
            .await
            .expect("parked")
            .first()
            .is_some_and(|a| !a.retry_requested && a.events.len() == 3)
    })
    .await;
    // A skip gives the poison up: v3 and v4 follow, in order.
    assert_eq!(
        run.store.skip(&projection, stream).await.expect("skip"),
        edupulse_ports::projection::Skipped::Event { version: 2 }
    );
    until(
        "the aggregate is applied after the skip",
        Duration::from_secs(30),
        async || {
            run.store
                .applied(&projection, stream)
                .await
                .expect("applied")
                == 4
        },
    )
    .await;
    let (_, by_stream) = applications(&run.store, &projection).await;
    assert_eq!(by_stream[&stream], [1, 3, 4]);
    let row = Row::judge(
        "poison event mid-aggregate (skipped)",
        &run,
        &projection,
        0,
        1,
    )
    .await;
    row.report();
    workers.stop().await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_during_live_traffic_agrees_with_the_serving_generation() {
    let run = Run::start("proj-rebuild", None).await;
    let (first, second) = (run.probe(1), run.probe(2));
    run.store.activate(&first).await.expect("activate");
    let serving = run.workers(&first, "g1", 2);
    let writers = run.writers(3_000, 600.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = run.store.progress(&first).await.expect("progress").applied;
    let rebuild = run.workers(&second, "g2", 2);
    Run::finish_writers(writers).await;
    let took = run.caught_up(&second).await;
    run.caught_up(&first).await;
    let after = run.store.progress(&first).await.expect("progress").applied;
    assert!(
        after > before,
        "generation 1 kept serving during the rebuild"
    );
    let (_, old) = applications(&run.store, &first).await;
    let (_, new) = applications(&run.store, &second).await;
    assert_eq!(old, new, "both generations applied the same versions");
    run.store.activate(&second).await.expect("switch");
    assert_eq!(
        run.store.active_generation("probe").await.expect("active"),
        Some(2)
    );
    let mut row = Row::judge(
        "rebuild (generation 2) under live traffic",
        &run,
        &second,
        0,
        0,
    )
    .await;
    row.recovered = Some(took);
    row.report();
    serving.stop().await;
    rebuild.stop().await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_the_broker_holds_twice_are_applied_once() {
    // A short duplicate window: past it, the broker stores a copy again.
    let window = Duration::from_secs(1);
    let run = Run::start_with("proj-replay", None, window).await;
    let projection = run.probe(1);
    let workers = run.workers(&projection, "w", 2);
    let writers = run.writers(1_000, 800.0);
    Run::finish_writers(writers).await;
    run.caught_up(&projection).await;
    // A forced replay stores each stream's last version again: the feed delivers it twice.
    let mut last: std::collections::HashMap<StreamId, edupulse_ports::RecordedEvent> =
        std::collections::HashMap::new();
    let mut cursor = edupulse_ports::Cursor::START;
    loop {
        let page = run
            .backbone
            .store
            .read_all(cursor, 1_000)
            .await
            .expect("read");
        let Some(tail) = page.last() else { break };
        cursor = tail.cursor;
        for event in page {
            last.insert(event.stream_id, event);
        }
    }
    tokio::time::sleep(window * 2).await;
    let publisher = run.backbone.publisher();
    let replayed: Vec<StreamId> = last.keys().copied().take(50).collect();
    for stream in &replayed {
        let ack = publisher
            .republish(&last[stream])
            .await
            .expect("republished");
        assert!(!ack.duplicate, "stored a second time");
    }
    // Then a next version of each: it must be applied after the copy is passed over.
    for stream in &replayed {
        let version = last[stream].stream_version;
        let event = edupulse_integration_tests::sample_event(*stream, version + 1);
        let outcome = run
            .backbone
            .store
            .append(*stream, expected_after(version), vec![event])
            .await
            .expect("append");
        run.history.acknowledged(&outcome);
    }
    run.caught_up(&projection).await;
    let passed_over: u64 = workers.stats.iter().map(|s| s.snapshot().passed_over).sum();
    assert!(
        passed_over >= replayed.len() as u64,
        "the copies were passed over ({passed_over})"
    );
    let row = Row::judge(
        "50 events stored twice by the broker (replay --force)",
        &run,
        &projection,
        0,
        0,
    )
    .await;
    row.report();
    workers.stop().await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projector_login_runs_the_achievements_projection_and_nothing_else() {
    use edupulse_app::wiring::{Shipped, spawn_shipped};
    use edupulse_domain::DomainEvent;
    use sqlx::Connection;
    let run = Run::start("proj-role", None).await;
    let url = run.login_in("edupulse_projector").await;
    let projector = edupulse_app::wiring::Backbone::connect(
        &support::pg_config(&url),
        run.backbone.nats.clone(),
    )
    .await
    .expect("the projector's login connects");
    let feed = projector.feed(BUCKETS).await.expect("feed");
    let workers = spawn_shipped(
        &projector,
        Shipped::Achievements,
        1,
        feed,
        2,
        &support::runner_config("projector"),
    )
    .expect("workers");
    let writers = run.edupulse_writers(3_000);
    Run::finish_writers(writers).await;
    let projection = Shipped::Achievements.id(1).expect("id");
    run.caught_up(&projection).await;
    let events = edupulse_integration_tests::projections::stored_events(&*run.backbone.store).await;
    let badges = events
        .iter()
        .filter(|e| {
            matches!(e.event, DomainEvent::BadgeAwarded(_)) && e.metadata.causation_id.is_some()
        })
        .count();
    assert!(badges > 0, "the projector's login appended badges");
    workers.stop().await;

    // Everything else is refused with SQLSTATE 42501 (insufficient_privilege).
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    for sql in [
        "DELETE FROM events",
        "UPDATE relay_checkpoints SET position = 0",
        "INSERT INTO relay_parked_streams (name, stream_id, stream_version, event_id, commit_key, position, reason, raw) VALUES ('x', gen_random_uuid(), 1, gen_random_uuid(), 1, 1, 'r', 'r')",
        "DELETE FROM projection_documents",
    ] {
        let code = match sqlx::query(sql).execute(&mut conn).await {
            Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
            other => panic!("{sql}: {other:?}"),
        };
        assert_eq!(code.as_deref(), Some("42501"), "{sql}");
    }
    let row = Row::judge_without_probe(
        "achievements as an edupulse_projector login",
        &run,
        &projection,
    )
    .await;
    row.report();
    run.stop().await;
}
