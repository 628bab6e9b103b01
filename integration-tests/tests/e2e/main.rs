//! End-to-end suite: the app's real wiring (`edupulse_app::wiring::Backbone`, the relay, the demo
//! workload) against real PostgreSQL and NATS JetStream in Docker.
//!
//! Each test gets its own database and its own JetStream stream and subject prefix, so the tests
//! run in parallel on the binary's shared containers.

use edupulse_app::relay::RelayConfig;
use edupulse_app::wiring::{Backbone, spawn_relay};
use edupulse_domain::{
    BadgeAwarded, EventEnvelope, EventId, ExpectedVersion, LessonPublished, LessonTitle, StreamId,
    Uuid,
};
use edupulse_integration_tests::{fresh_database, shared_nats, unique_name};
use edupulse_nats::NatsConfig;
use edupulse_ports::{CheckpointStore, EventAppender, EventConsumer, EventReader, Settlement};
use edupulse_postgres::PgStoreConfig;
use secrecy::SecretString;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// A database and stream names of the test's own.
async fn configs() -> (PgStoreConfig, NatsConfig) {
    let db = fresh_database().await;
    let nats = shared_nats().await;
    let pg = PgStoreConfig::new(SecretString::from(db.url().to_owned()));
    let nats = NatsConfig::new(
        [nats.url()],
        unique_name("E2E"),
        unique_name("edupulse").replace('_', "-"),
    );
    (pg, nats)
}

fn fast_relay(name: &str) -> RelayConfig {
    RelayConfig {
        name: name.to_owned(),
        poll_interval: Duration::from_millis(100),
        lease_retry: Duration::from_millis(200),
        ..RelayConfig::default()
    }
}

fn badge(stream: StreamId) -> EventEnvelope {
    EventEnvelope::new(BadgeAwarded {
        badge_id: Uuid::new_v4(),
        recipient_id: *stream.as_uuid(),
    })
    .with_stream(stream)
}

/// Receives from a fresh durable consumer until `ids` have all arrived (or 60 s without
/// progress); returns how many times each event id arrived and per-stream order violations.
async fn consume_all(backbone: &Backbone, ids: &HashSet<EventId>) -> (HashMap<EventId, u32>, u64) {
    let mut consumer = backbone
        .consumer(&unique_name("check"), None)
        .await
        .expect("consumer");
    let mut seen: HashMap<EventId, u32> = HashMap::new();
    let mut last: HashMap<StreamId, u64> = HashMap::new();
    let mut reordered = 0;
    let mut idle = std::time::Instant::now();
    while ids.iter().any(|id| !seen.contains_key(id)) && idle.elapsed() < Duration::from_secs(60) {
        let batch = consumer
            .next_batch(512, Duration::from_millis(200))
            .await
            .expect("next batch");
        if !batch.is_empty() {
            idle = std::time::Instant::now();
        }
        for d in batch {
            let n = seen.entry(d.envelope.id).or_insert(0);
            *n += 1;
            if *n == 1 {
                let v = d.stream_version.expect("stream version header");
                let prev = last.insert(d.envelope.stream_id(), v).unwrap_or(0);
                if v != prev + 1 {
                    reordered += 1;
                }
            }
            consumer
                .settle(d.token, Settlement::Ack)
                .await
                .expect("ack");
        }
    }
    (seen, reordered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demo_workload_arrives_exactly_once_in_stream_order() {
    let (pg, nats) = configs().await;
    let report = edupulse_lab::demo::run_against(&pg, nats, 3_000, 8)
        .await
        .expect("demo runs");
    assert_eq!(report.appended, 3_000);
    assert!(report.passed(), "{report:?}");
    // The projections had something to show: badges earned by the rule, lessons published.
    println!("{}", report.projections.table());
    assert!(
        report.projections.badges_expected > 0,
        "{:?}",
        report.projections
    );
    assert!(
        report.projections.lessons_expected > 0,
        "{:?}",
        report.projections
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standby_takes_over_when_the_active_relay_dies() {
    let (pg, nats) = configs().await;
    let backbone = Backbone::connect(&pg, nats).await.expect("connect");
    backbone.store.migrate().await.expect("migrate");
    let name = unique_name("relay");
    let first = spawn_relay(backbone.relay(fast_relay(&name)), None)
        .await
        .expect("relay a");
    let second = spawn_relay(backbone.relay(fast_relay(&name)), None)
        .await
        .expect("relay b");

    let streams: Vec<StreamId> = (0..10).map(|_| StreamId::new()).collect();
    let mut ids = HashSet::new();
    append_rounds(&backbone, &streams, &mut ids, 10).await;
    // Wait until one relay is active and has published something, then kill it.
    for _ in 0..200 {
        let published = first.stats.snapshot().published + second.stats.snapshot().published;
        if published > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let a_active = first.stats.snapshot().active;
    let b_active = second.stats.snapshot().active;
    assert!(a_active ^ b_active, "exactly one relay is active");
    let (dead, survivor) = if a_active {
        (first, second)
    } else {
        (second, first)
    };
    dead.abort();

    append_rounds(&backbone, &streams, &mut ids, 10).await;
    let (seen, reordered) = consume_all(&backbone, &ids).await;
    // The standby took over (its lease became free when the dead relay's connection closed).
    assert!(survivor.stats.snapshot().active);
    assert_eq!(survivor.stats.snapshot().takeovers, 1);
    survivor.stop().await;
    assert_exactly_once(&ids, &seen, reordered);
}

/// Appends `rounds` events to each stream, one append per event.
async fn append_rounds(
    backbone: &Backbone,
    streams: &[StreamId],
    ids: &mut HashSet<EventId>,
    rounds: usize,
) {
    for _ in 0..rounds {
        for s in streams {
            let e = badge(*s);
            ids.insert(e.id);
            backbone
                .store
                .append(*s, ExpectedVersion::Any, vec![e])
                .await
                .expect("append");
        }
    }
}

/// The service's "publish lesson" command: its own row and the event in one transaction, left
/// open for the caller to commit or roll back.
async fn publish_lesson(
    pool: &sqlx::PgPool,
    lesson: Uuid,
    event: EventEnvelope,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("UPDATE lessons SET published = true WHERE id = $1")
        .bind(lesson)
        .execute(&mut *tx)
        .await
        .expect("update");
    edupulse_postgres::append_in_transaction(
        &mut tx,
        StreamId::from_uuid(lesson),
        ExpectedVersion::NoStream,
        vec![event],
    )
    .await
    .expect("append in tx");
    tx
}

fn assert_exactly_once(ids: &HashSet<EventId>, seen: &HashMap<EventId, u32>, reordered: u64) {
    let lost = ids.iter().filter(|id| !seen.contains_key(id)).count();
    let duplicated = seen.values().filter(|&&n| n > 1).count();
    let unexpected = seen.keys().filter(|id| !ids.contains(id)).count();
    assert_eq!(
        (lost, duplicated, unexpected, reordered),
        (0, 0, 0, 0),
        "lost, duplicated, unexpected, reordered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caller_transaction_commit_publishes_and_rollback_does_not() {
    let (pg, nats) = configs().await;
    let backbone = Backbone::connect(&pg, nats).await.expect("connect");
    backbone.store.migrate().await.expect("migrate");
    let pool = backbone.store.pool().clone();
    sqlx::query("CREATE TABLE lessons (id uuid PRIMARY KEY, title text NOT NULL, published bool NOT NULL DEFAULT false)")
        .execute(&pool)
        .await
        .expect("service table");

    let lesson = Uuid::new_v4();
    let stream = StreamId::from_uuid(lesson);
    let publish = |title: &str| {
        EventEnvelope::new(LessonPublished {
            lesson_id: lesson,
            author_id: Uuid::new_v4(),
            title: LessonTitle::new(title).expect("title"),
        })
        .with_stream(stream)
    };
    sqlx::query("INSERT INTO lessons (id, title) VALUES ($1, 'Draft')")
        .bind(lesson)
        .execute(&pool)
        .await
        .expect("insert lesson");

    // Rolled back: neither the row change nor the event.
    let rolled_back = publish("Never published");
    let tx = publish_lesson(&pool, lesson, rolled_back.clone()).await;
    tx.rollback().await.expect("rollback");

    // Committed: both.
    let committed = publish("Published for real");
    let tx = publish_lesson(&pool, lesson, committed.clone()).await;
    tx.commit().await.expect("commit");

    let name = unique_name("relay");
    let relay = spawn_relay(backbone.relay(fast_relay(&name)), None)
        .await
        .expect("relay");
    let (seen, reordered) = consume_all(&backbone, &HashSet::from([committed.id])).await;
    relay.stop().await;
    assert_eq!(seen.get(&committed.id), Some(&1));
    assert!(
        !seen.contains_key(&rolled_back.id),
        "a rolled-back event is never published"
    );
    assert_eq!(reordered, 0);
    let published: bool = sqlx::query_scalar("SELECT published FROM lessons WHERE id = $1")
        .bind(lesson)
        .fetch_one(&pool)
        .await
        .expect("read lesson");
    assert!(published);
}

/// What consumers receive is, byte for byte, the envelope's encoding of what was appended: the
/// relay sends the stored text on, whichever way it was appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_broker_holds_each_envelope_byte_for_byte() {
    let (pg, nats) = configs().await;
    let stream_name = nats.stream_name.clone();
    let backbone = Backbone::connect(&pg, nats).await.expect("connect");
    backbone.store.migrate().await.expect("migrate");
    let stream = StreamId::new();
    let mut events = edupulse_ports::conformance::every_kind_of_event(stream);
    let in_transaction = events.split_off(2);
    backbone
        .store
        .append(stream, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("append");
    let mut tx = backbone.store.pool().begin().await.expect("begin");
    edupulse_postgres::append_in_transaction(
        &mut tx,
        stream,
        ExpectedVersion::Exact(2),
        in_transaction.clone(),
    )
    .await
    .expect("append in transaction");
    tx.commit().await.expect("commit");
    let standalone = edupulse_ports::conformance::append_standalone(&*backbone.store).await;
    let expected: HashMap<String, Vec<u8>> = events
        .iter()
        .chain(&in_transaction)
        .chain([&standalone])
        .map(|e| (e.id.to_string(), e.encode()))
        .collect();

    let relay = spawn_relay(backbone.relay(fast_relay(&unique_name("relay"))), None)
        .await
        .expect("relay");
    let ids: HashSet<EventId> = events
        .iter()
        .chain(&in_transaction)
        .chain([&standalone])
        .map(|e| e.id)
        .collect();
    let (seen, _) = consume_all(&backbone, &ids).await;
    relay.stop().await;
    assert_eq!(seen.len(), expected.len(), "every event arrived");

    let client = async_nats::connect(shared_nats().await.url())
        .await
        .expect("nats");
    let js = async_nats::jetstream::new(client);
    let broker = js.get_stream(&stream_name).await.expect("stream");
    for sequence in 1..=u64::try_from(expected.len()).expect("small") {
        let message = broker
            .get_raw_message(sequence)
            .await
            .expect("stored message");
        let id = message
            .headers
            .get(edupulse_nats::headers::MSG_ID)
            .expect("Nats-Msg-Id")
            .as_str()
            .to_owned();
        assert_eq!(
            String::from_utf8_lossy(&message.payload),
            String::from_utf8_lossy(&expected[&id]),
            "the broker's copy of {id} is not the envelope's encoding"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_stop_saves_the_checkpoint_and_restart_resumes() {
    let (pg, nats) = configs().await;
    let backbone = Backbone::connect(&pg, nats).await.expect("connect");
    backbone.store.migrate().await.expect("migrate");
    let name = unique_name("relay");
    let stream = StreamId::new();
    let mut ids = HashSet::new();
    append_rounds(&backbone, &[stream], &mut ids, 50).await;
    let relay = spawn_relay(backbone.relay(fast_relay(&name)), None)
        .await
        .expect("relay");
    for _ in 0..200 {
        if relay.stats.snapshot().published >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    relay.stop().await;
    let checkpoint = backbone
        .store
        .load(&name)
        .await
        .expect("load")
        .expect("checkpoint saved");
    let last = backbone
        .store
        .read_stream(stream, 50, 1)
        .await
        .expect("read");
    assert_eq!(
        checkpoint.cursor, last[0].cursor,
        "checkpoint covers every acked event"
    );

    // More events while no relay runs; a new relay resumes from the checkpoint.
    append_rounds(&backbone, &[stream], &mut ids, 25).await;
    let relay = spawn_relay(backbone.relay(fast_relay(&name)), None)
        .await
        .expect("relay again");
    let (seen, reordered) = consume_all(&backbone, &ids).await;
    assert_eq!(
        relay.stats.snapshot().duplicates,
        0,
        "a graceful stop leaves nothing to re-publish"
    );
    relay.stop().await;
    assert_exactly_once(&ids, &seen, reordered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_health_endpoints() {
    let (pg, nats) = configs().await;
    let backbone = Backbone::connect(&pg, nats).await.expect("connect");
    backbone.store.migrate().await.expect("migrate");
    let stream = StreamId::new();
    backbone
        .store
        .append(stream, ExpectedVersion::NoStream, vec![badge(stream)])
        .await
        .expect("append");
    let relay = spawn_relay(
        backbone.relay(fast_relay(&unique_name("relay"))),
        Some("127.0.0.1:0".parse().expect("addr")),
    )
    .await
    .expect("relay");
    let addr = relay.http.expect("http bound");
    for _ in 0..200 {
        if relay.stats.snapshot().published >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let get = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect http");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut body = String::new();
        s.read_to_string(&mut body).await.expect("read");
        body
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    let metrics = get("/metrics").await;
    assert!(
        metrics.contains("edupulse_relay_published_total"),
        "{metrics}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projection_commands_operate_a_projection() {
    use clap::Parser;
    use edupulse_app::cli::{Cli, Command, ProjectionsCommand};
    use edupulse_ports::projection::ProjectionStore;
    let db = fresh_database().await;
    let parse = |args: &[&str]| {
        let mut all = vec!["edupulse-events", "projections"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--projection", "achievements", "--database-url", db.url()]);
        match Cli::try_parse_from(all).expect("parses").command {
            Command::Projections { action } => action,
            _ => unreachable!("parsed as the projections command"),
        }
    };
    let stream = StreamId::new().to_string();
    match parse(&["status"]) {
        ProjectionsCommand::Status { pg, which } => {
            edupulse_app::commands::projection_status(&pg, &which)
                .await
                .expect("status");
        }
        _ => unreachable!("status"),
    }
    match parse(&["retry", "--stream", &stream]) {
        ProjectionsCommand::Retry { pg, which, stream } => {
            let refused = edupulse_app::commands::retry(&pg, &which, &stream).await;
            assert!(refused.is_err(), "not parked: refused");
        }
        _ => unreachable!("retry"),
    }
    match parse(&["skip", "--stream", "not-a-uuid"]) {
        ProjectionsCommand::Skip { pg, which, stream } => {
            let refused = edupulse_app::commands::skip(&pg, &which, &stream).await;
            assert!(refused.is_err(), "not a stream id: refused");
        }
        _ => unreachable!("skip"),
    }
    match parse(&["activate", "--generation", "3"]) {
        ProjectionsCommand::Activate { pg, which } => {
            edupulse_app::commands::activate(&pg, &which)
                .await
                .expect("activate");
        }
        _ => unreachable!("activate"),
    }
    let store = edupulse_postgres::PgEventStore::connect(&PgStoreConfig::new(SecretString::from(
        db.url().to_owned(),
    )))
    .await
    .expect("connect");
    let active = store.projections().active_generation("achievements").await;
    assert_eq!(active.expect("active generation"), Some(3));
}
