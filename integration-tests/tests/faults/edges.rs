//! The edges of the guarantees: a relay down for longer than the broker's duplicate window, a
//! paused relay waking up after its successor took over, a row the relay cannot decode in the
//! middle of a run, a broker stream that refuses every write, a broker that lost what it had
//! acknowledged.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use edupulse_app::commands::broker_status;
use edupulse_app::relay::ReplayMode;
use edupulse_domain::{EventId, ExpectedVersion, StreamId, Uuid};
use edupulse_integration_tests::{fresh_database, sample_event, shared_nats, unique_name};
use edupulse_ports::{
    AppendOutcome, AppendedEvent, CheckpointStore, EventAppender, EventReader, Release,
};
use tokio_util::sync::CancellationToken;

use crate::checker::lock;
use crate::child::{kill_9, spawn_relay_process};
use crate::relay::{wait_active, wait_holder};
use crate::workload::{
    Batch, Pace, Run, Until, Workload, append_until_acknowledged, event, nats_config, pg_config,
    wait_parked, within,
};

/// Nesting far beyond what the decoders accept (the store refuses it at append; a row written
/// by hand or by an older build can still hold it).
fn too_deep_payload() -> String {
    format!("{{\"deep\":{}1{}}}", "[".repeat(400), "]".repeat(400))
}

/// Waits until the consumer has seen `n` more distinct events than `since`.
async fn wait_flowing(run: &Run, since: usize, n: usize) {
    within("events flowing", Duration::from_secs(60), async {
        while lock(&run.consumed).distinct() < since + n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_down_longer_than_the_duplicate_window_stores_nothing_twice() {
    let db = fresh_database().await;
    let nats = shared_nats().await;
    let name = unique_name("downtime");
    let mut config = nats_config(vec![nats.url()], &name);
    // A short window, so that the downtime below outlasts it by far.
    config.duplicate_window = Duration::from_secs(1);
    let run = Run::start_with(name, pg_config(db.url()), config.clone()).await;
    let writers = run.writers(Workload {
        until: Until::AppendsPerWriter(400),
        pace: Pace::Closed {
            pause: Duration::from_millis(5),
        },
        ..Workload::default()
    });
    // A relay process killed mid-publishing: everything it had acknowledged since its last
    // checkpoint save is published again by the next relay.
    let mut first = spawn_relay_process(db.url(), &config, &run.name);
    let seen = lock(&run.consumed).distinct();
    wait_flowing(&run, seen, 300).await;
    kill_9(&mut first).await;
    let down = Instant::now();
    // Down 4 s, four times the window: the broker no longer remembers any id.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let relay = run.spawn_relay().await;
    let stats = relay.stats.clone();
    writers.finish().await;
    let recovery = run.caught_up_since(down).await;
    let mut figures = run.finish("relay_down_4s_window_1s", &HashSet::new()).await;
    Run::stop_relay(relay).await;
    figures.recovery = recovery;
    figures.notes = format!(
        "the restarted relay found {} events already in the broker (refused by the fence)",
        stats.snapshot().duplicates
    );
    figures.report_and_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_row_parks_its_stream_and_every_other_stream_flows() {
    let db = fresh_database().await;
    let nats = shared_nats().await;
    let run = Run::start("poison_row", db.url(), vec![nats.url()]).await;
    let relay = run.spawn_relay().await;
    // About 10 000 events over 32 streams.
    let writers = run.writers(Workload {
        until: Until::AppendsPerWriter(1_000),
        batch: Batch::UpTo(4),
        pace: Pace::Closed {
            pause: Duration::from_millis(2),
        },
        ..Workload::default()
    });
    let seen = lock(&run.consumed).distinct();
    wait_flowing(&run, seen, 2_000).await;

    // Version 1 of a stream, written by hand, that no decoder accepts; then versions 2 and 3
    // through the store. The checker knows the poison as committed and left out on purpose,
    // and 2 and 3 as acknowledged appends.
    let stream = StreamId::new();
    let poison = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO events (commit_key, event_id, stream_id, stream_version, aggregate_id, \
                             event_type, schema_version, occurred_at, payload) \
         VALUES (pg_current_xact_id()::text::int8, $1, $2, 1, $2, 'QuizSubmitted', 1, now(), \
                 $3::jsonb)",
    )
    .bind(poison)
    .bind(stream.as_uuid())
    .bind(too_deep_payload())
    .execute(run.backbone.store.pool())
    .await
    .expect("a hand-written row");
    let parked_at = Instant::now();
    run.history.acknowledged(&AppendOutcome {
        stream_id: stream,
        events: vec![AppendedEvent {
            id: EventId::from_uuid(poison),
            stream_version: 1,
            position: 0,
        }],
        replayed: false,
    });
    let mut held = Vec::new();
    for version in 2..=3 {
        let e = event(stream, &run.name, version);
        held.push(e.id);
        append_until_acknowledged(
            &*run.backbone.store,
            &run.history,
            stream,
            ExpectedVersion::Exact(version - 1),
            vec![e],
            Duration::from_secs(30),
        )
        .await
        .expect("appended behind the poison");
    }
    let parked = wait_parked(&*run.backbone.store, &run.name, 1).await;
    assert_eq!(parked[0].event_id, EventId::from_uuid(poison));
    assert!(parked[0].raw.contains("[[[["), "the stored bytes are kept");
    // Every other stream keeps flowing while the stream is parked.
    let since = lock(&run.consumed).distinct();
    wait_flowing(&run, since, 500).await;
    let flowing_after = parked_at.elapsed();
    writers.finish().await;
    let recovery = run.caught_up_since(parked_at).await;

    // The operator leaves the poison out: versions 2 and 3 follow, in order, once each.
    assert!(
        run.backbone
            .store
            .request_release(&run.name, stream, Release::Skip)
            .await
            .expect("release")
    );
    within("the release", Duration::from_secs(30), async {
        while !run
            .backbone
            .store
            .parked(&run.name)
            .await
            .expect("parked")
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = run.broker_log().await;
    let of_stream: Vec<(String, u64)> = log
        .iter()
        .filter(|(_, s, _)| *s == stream.to_string())
        .map(|(id, _, v)| (id.clone(), *v))
        .collect();
    assert_eq!(
        of_stream,
        held.iter()
            .zip(2..)
            .map(|(id, v)| (id.to_string(), v))
            .collect::<Vec<_>>(),
        "the held events, once each, in order, and never the poison"
    );
    let stats = relay.stats.clone();
    let left_out = HashSet::from([EventId::from_uuid(poison)]);
    let mut figures = run.finish("undecodable_row_mid_run", &left_out).await;
    Run::stop_relay(relay).await;
    figures.recovery = recovery;
    figures.notes = format!(
        "1 row parked its stream ({} events held, released with --skip); other streams kept \
         flowing (500 more events {} ms after the poison)",
        stats.snapshot().held,
        flowing_after.as_millis()
    );
    figures.report_and_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_broker_stream_blocks_the_relay_without_parking_or_skipping() {
    let db = fresh_database().await;
    let nats = shared_nats().await;
    let run = Run::start("sealed", db.url(), vec![nats.url()]).await;
    let relay = run.spawn_relay().await;
    let stream = StreamId::new();
    run.backbone
        .store
        .append(
            stream,
            ExpectedVersion::NoStream,
            vec![sample_event(stream, 1)],
        )
        .await
        .expect("append");
    // Seal the event stream: the broker refuses every write to it from now on.
    let js = edupulse_nats::jetstream_context(run.backbone.client.clone(), &run.nats);
    let mut info = js
        .get_stream(&run.nats.stream_name)
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .config
        .clone();
    tokio::time::sleep(Duration::from_secs(1)).await;
    info.sealed = true;
    js.update_stream(&info).await.expect("seal");
    let checkpoint_before = run.backbone.store.load(&run.name).await.expect("load");
    for i in 2..=20 {
        run.backbone
            .store
            .append(
                stream,
                ExpectedVersion::Exact(i - 1),
                vec![sample_event(stream, i)],
            )
            .await
            .expect("append");
    }
    let stats = relay.stats.clone();
    let blocked = within(
        "the relay reports the block",
        Duration::from_secs(30),
        async {
            loop {
                if let Some(reason) = stats.blocked_reason() {
                    return reason;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await;
    // Nothing parked or dead-lettered, the checkpoint stays before the refused events, and the
    // relay keeps retrying.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        run.backbone
            .store
            .parked(&run.name)
            .await
            .expect("parked")
            .is_empty()
    );
    assert_eq!(stats.snapshot().parked, 0);
    let checkpoint_after = run.backbone.store.load(&run.name).await.expect("load");
    assert_eq!(
        checkpoint_before.map(|c| c.cursor),
        checkpoint_after.map(|c| c.cursor),
        "the checkpoint does not pass events the broker refused"
    );
    assert!(stats.snapshot().retries > 0);
    eprintln!("faults: sealed stream: relay blocked, reason: {blocked}");
    Run::stop_relay(relay).await;
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
async fn signal(pid: u32, signal: &str) {
    let status = tokio::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .await
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_relay_resumed_after_its_successor_took_over_stores_nothing_twice() {
    let db = fresh_database().await;
    let nats = shared_nats().await;
    let run = Run::start("paused_relay", db.url(), vec![nats.url()]).await;
    let writers = run.writers(Workload {
        until: Until::AppendsPerWriter(2_500),
        pace: Pace::Closed {
            pause: Duration::from_millis(8),
        },
        ..Workload::default()
    });
    // The active relay is a process frozen mid-publishing (a GC stall, SIGSTOP, a frozen VM):
    // its connections stay open, it neither renews its lease nor lets it go.
    let mut frozen = spawn_relay_process(db.url(), &run.nats, &run.name);
    let pid = frozen.id().expect("the relay process runs");
    wait_holder(&run, &format!("pid {pid}")).await;
    let seen = lock(&run.consumed).distinct();
    wait_flowing(&run, seen, 200).await;
    signal(pid, "STOP").await;
    let paused = Instant::now();
    // The standby takes over once the frozen relay's lease expired, and publishes.
    let successor = run.spawn_relay().await;
    let took_over = wait_active(&successor.stats).await;
    let since = lock(&run.consumed).distinct();
    wait_flowing(&run, since, 300).await;
    // The frozen relay wakes up with a batch in hand and sends it.
    signal(pid, "CONT").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    kill_9(&mut frozen).await;
    writers.finish().await;
    let recovery = run.caught_up_since(paused).await;
    let stats = successor.stats.clone();
    let mut figures = run.finish("paused_relay_resumed", &HashSet::new()).await;
    Run::stop_relay(successor).await;
    figures.recovery = recovery;
    figures.notes = format!(
        "active relay SIGSTOPped mid-publishing; successor active after {} ms; the paused one \
         resumed 300+ events later; successor found {} already stored",
        took_over.as_millis(),
        stats.snapshot().duplicates
    );
    figures.report_and_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_lost_its_stream_is_detected_and_replay_restores_it_once_in_order() {
    let db = fresh_database().await;
    let nats = shared_nats().await;
    let run = Run::start("broker_went_back", db.url(), vec![nats.url()]).await;
    let relay = run.spawn_relay().await;
    run.writers(Workload {
        until: Until::AppendsPerWriter(100),
        ..Workload::default()
    })
    .finish()
    .await;
    assert!(run.caught_up_since(Instant::now()).await.is_some());
    Run::stop_relay(relay).await;
    run.stop_consumer();
    let store = run.backbone.store.clone();
    let checkpoint = store.load(&run.name).await.expect("load").expect("saved");
    assert!(checkpoint.broker_sequence > 0);
    let healthy = broker_status(&run.nats, &checkpoint).await.expect("status");
    assert_eq!(healthy["went_back_in_time"], false);

    // The broker loses everything it acknowledged (a stream recreated, a crash before fsync).
    let js = edupulse_nats::jetstream_context(run.backbone.client.clone(), &run.nats);
    js.delete_stream(&run.nats.stream_name)
        .await
        .expect("delete");
    edupulse_nats::provision(&js, &run.nats)
        .await
        .expect("recreate");
    let lost = broker_status(&run.nats, &checkpoint).await.expect("status");
    assert_eq!(lost["went_back_in_time"], true, "{lost}");
    assert!(
        lost["advice"]
            .as_str()
            .unwrap_or_default()
            .contains("replay")
    );

    // Replay from the start restores every event once, each stream in order.
    let head = store.head().await.expect("head").last_position;
    let report = run
        .backbone
        .relay(run.relay_config())
        .replay(1, head, ReplayMode::Missing, CancellationToken::new())
        .await
        .expect("replay");
    let acknowledged = run.history.acknowledged_versions();
    assert_eq!(
        report.republished as usize,
        acknowledged.len(),
        "{report:?}"
    );
    let log = run.broker_log().await;
    let mut seen = HashSet::new();
    let mut last: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for (id, stream, version) in &log {
        assert!(seen.insert(id.clone()), "event {id} stored twice");
        let previous = last.insert(stream.clone(), *version).unwrap_or(0);
        assert_eq!(*version, previous + 1, "stream {stream} out of order");
    }
    assert_eq!(seen.len(), acknowledged.len());
    // Replaying again stores nothing.
    let again = run
        .backbone
        .relay(run.relay_config())
        .replay(1, head, ReplayMode::Missing, CancellationToken::new())
        .await
        .expect("replay");
    assert_eq!((again.republished, again.duplicates), (0, again.events));
    let restored = broker_status(&run.nats, &checkpoint).await.expect("status");
    assert_eq!(restored["went_back_in_time"], false, "{restored}");
    eprintln!(
        "faults: broker lost its stream: detected by status; replay republished {} events, \
         then 0 on a second replay",
        report.republished
    );
}
