//! The runner against the in-memory fakes: order, exactly once, sharing, parking, rebuilds.

use super::*;
use edupulse_domain::achievements::QuizAceRule;
use edupulse_domain::{
    DomainEvent, EventEnvelope, EventId, ExpectedVersion, LessonPublished, LessonTitle,
    QuizSubmitted, Score, StreamId, Uuid,
};
use edupulse_ports::memory::{
    InMemoryBroker, InMemoryEventStore, InMemoryFeed, InMemoryProjectionStore, InMemoryUnit,
};
use edupulse_ports::projection::{Applying, ProjectionUnit, Skipped};
use edupulse_ports::{EventAppender, EventPublisher, EventReader, HandlerError};
use std::collections::HashSet;
use std::sync::Mutex;

const BUCKETS: u16 = 8;

struct World {
    events: Arc<InMemoryEventStore>,
    broker: InMemoryBroker,
    store: Arc<InMemoryProjectionStore>,
    feed: Arc<InMemoryFeed>,
}

impl World {
    fn new() -> Self {
        let events = Arc::new(InMemoryEventStore::default());
        let broker = InMemoryBroker::new();
        Self {
            store: Arc::new(InMemoryProjectionStore::new(events.clone())),
            feed: Arc::new(InMemoryFeed::new(broker.clone(), BUCKETS)),
            events,
            broker,
        }
    }

    /// Appends `events` to `stream` and publishes what the store holds and the broker does not.
    async fn append(&self, stream: StreamId, events: Vec<EventEnvelope>) {
        self.events
            .append(stream, ExpectedVersion::Any, events)
            .await
            .expect("append");
        self.publish_new().await;
    }

    async fn read_first(&self, stream: StreamId) -> EventId {
        self.events.read_stream(stream, 1, 1).await.expect("read")[0]
            .envelope
            .id
    }

    async fn publish_new(&self) {
        let published = self.broker.messages().len();
        let all = self.events.all_events();
        self.broker.publish(&all[published..]).await;
    }

    fn runner<P: Projection<InMemoryUnit> + 'static>(
        &self,
        projection: &ProjectionId,
        handler: Arc<P>,
        worker: &str,
    ) -> Arc<ProjectionRunner<InMemoryProjectionStore, P>> {
        let config = RunnerConfig {
            poll: Duration::from_millis(10),
            heartbeat: Duration::from_millis(30),
            batch_size: 16,
            retry: RetryPolicy {
                max_deliveries: 3,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(5),
            },
            ..RunnerConfig::new(worker)
        };
        Arc::new(ProjectionRunner::new(
            projection.clone(),
            self.store.clone(),
            self.feed.clone(),
            self.events.clone(),
            handler,
            config,
        ))
    }
}

fn spawn<P: Projection<InMemoryUnit> + 'static>(
    runner: Arc<ProjectionRunner<InMemoryProjectionStore, P>>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    (stop.clone(), tokio::spawn(runner.run(stop)))
}

/// Records every application per stream (document `applied/<stream>`: the versions in the
/// order applied), and fails for good on the poison event ids.
#[derive(Default)]
struct Recording {
    poison: Mutex<HashSet<EventId>>,
    flaky: Mutex<HashSet<EventId>>,
}

#[async_trait::async_trait]
impl Projection<InMemoryUnit> for Recording {
    async fn apply(
        &self,
        unit: &mut InMemoryUnit,
        event: Applying<'_>,
    ) -> Result<(), HandlerError> {
        if self
            .poison
            .lock()
            .expect("lock")
            .contains(&event.envelope.id)
        {
            return Err(HandlerError::Permanent("poison".into()));
        }
        if self.flaky.lock().expect("lock").remove(&event.envelope.id) {
            return Err(HandlerError::Transient("flaky once".into()));
        }
        let key = format!("applied/{}", event.stream);
        let mut versions: Vec<u64> = unit
            .load(&key)
            .await?
            .map(|v| serde_json::from_value(v).expect("versions"))
            .unwrap_or_default();
        versions.push(event.version);
        Ok(unit.save(&key, serde_json::json!(versions)).await?)
    }
}

fn lesson(stream: StreamId) -> EventEnvelope {
    EventEnvelope::new(LessonPublished {
        lesson_id: Uuid::new_v4(),
        author_id: Uuid::new_v4(),
        title: LessonTitle::new("Lifetimes").expect("title"),
    })
    .with_stream(stream)
}

fn quiz(stream: StreamId, learner: Uuid, score: f32) -> EventEnvelope {
    let q = QuizSubmitted::new(
        *stream.as_uuid(),
        learner,
        Score::new(score).expect("score"),
        Score::new(10.0).expect("max"),
    )
    .expect("quiz");
    EventEnvelope::new(q).with_stream(stream)
}

async fn wait_until<F: AsyncFn() -> bool>(what: &str, done: F) {
    for _ in 0..1000 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn applied_versions(world: &World, projection: &ProjectionId, stream: StreamId) -> Vec<u64> {
    world
        .store
        .document(projection, &format!("applied/{stream}"))
        .await
        .map(|v| serde_json::from_value(v).expect("versions"))
        .unwrap_or_default()
}

async fn progress(
    world: &World,
    projection: &ProjectionId,
) -> edupulse_ports::projection::ProjectionProgress {
    world.store.progress(projection).await.expect("progress")
}

#[tokio::test]
async fn workers_share_the_buckets_and_apply_each_event_once_in_order() {
    let world = World::new();
    let projection = ProjectionId::new("recording", 1).expect("name");
    let handler = Arc::new(Recording::default());
    let streams: Vec<StreamId> = (0..24).map(|_| StreamId::new()).collect();
    for round in 0..5 {
        for s in &streams {
            world.append(*s, vec![lesson(*s), lesson(*s)]).await;
        }
        if round == 1 {
            world.publish_new().await;
        }
    }
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let runner = world.runner(&projection, handler.clone(), &format!("w{i}"));
            let stats = runner.stats();
            (spawn(runner), stats)
        })
        .collect();
    let total = 24 * 10;
    wait_until("every event is applied", async || {
        progress(&world, &projection).await.applied == total
    })
    .await;
    for s in &streams {
        assert_eq!(
            applied_versions(&world, &projection, *s).await,
            (1..=10).collect::<Vec<u64>>(),
            "each version once, in order"
        );
    }
    // Each worker ends up with a share: nobody holds everything for long.
    wait_until("the buckets are shared", async || {
        workers.iter().all(|(_, stats)| {
            let held = stats.snapshot().buckets_held;
            (2..=3).contains(&held)
        })
    })
    .await;
    for ((stop, task), _) in workers {
        stop.cancel();
        task.await.expect("worker ends");
    }
}

#[tokio::test]
async fn a_worker_that_stops_hands_its_buckets_over_and_nothing_is_applied_twice() {
    let world = World::new();
    let projection = ProjectionId::new("recording", 1).expect("name");
    let handler = Arc::new(Recording::default());
    let streams: Vec<StreamId> = (0..16).map(|_| StreamId::new()).collect();
    for s in &streams {
        world
            .append(*s, vec![lesson(*s), lesson(*s), lesson(*s)])
            .await;
    }
    let (stop_a, task_a) = spawn(world.runner(&projection, handler.clone(), "a"));
    wait_until("a applies something", async || {
        progress(&world, &projection).await.applied > 0
    })
    .await;
    stop_a.cancel();
    task_a.await.expect("a ends");
    let (stop_b, task_b) = spawn(world.runner(&projection, handler.clone(), "b"));
    for s in &streams {
        world.append(*s, vec![lesson(*s)]).await;
    }
    wait_until("b catches up", async || {
        progress(&world, &projection).await.applied == 16 * 4
    })
    .await;
    for s in &streams {
        assert_eq!(
            applied_versions(&world, &projection, *s).await,
            vec![1, 2, 3, 4]
        );
    }
    stop_b.cancel();
    task_b.await.expect("b ends");
}

#[tokio::test]
async fn a_poison_event_parks_its_aggregate_only_until_retried_or_skipped() {
    let world = World::new();
    let projection = ProjectionId::new("recording", 1).expect("name");
    let handler = Arc::new(Recording::default());
    let poisoned = StreamId::new();
    let healthy: Vec<StreamId> = (0..6).map(|_| StreamId::new()).collect();
    let bad = lesson(poisoned);
    handler.poison.lock().expect("lock").insert(bad.id);
    let flaky = lesson(healthy[0]);
    handler.flaky.lock().expect("lock").insert(flaky.id);
    world
        .append(
            poisoned,
            vec![lesson(poisoned), bad.clone(), lesson(poisoned)],
        )
        .await;
    world.append(healthy[0], vec![flaky]).await;
    for s in &healthy {
        world.append(*s, vec![lesson(*s), lesson(*s)]).await;
    }
    let (stop, task) = spawn(world.runner(&projection, handler.clone(), "w"));
    let healthy_events = 6 * 2 + 1;
    wait_until(
        "the healthy streams and the poisoned one's first event are applied",
        async || progress(&world, &projection).await.applied == healthy_events + 1,
    )
    .await;
    let p = progress(&world, &projection).await;
    assert_eq!(
        (p.parked_aggregates, p.parked_events),
        (1, 2),
        "the poison and what waits behind it"
    );
    let parked = world.store.parked(&projection).await.expect("parked");
    assert_eq!(parked[0].stream, poisoned);
    assert_eq!(parked[0].events[0].version, 2);
    assert!(parked[0].events[0].reason.contains("poison"), "{parked:?}");
    assert!(parked[0].events[1].reason.contains("behind"), "{parked:?}");
    assert_eq!(
        applied_versions(&world, &projection, healthy[0]).await,
        vec![1, 2, 3]
    );

    // Later events of the parked aggregate wait behind it; a retry after the fix applies them.
    world.append(poisoned, vec![lesson(poisoned)]).await;
    wait_until("the new event parks behind", async || {
        progress(&world, &projection).await.parked_events == 3
    })
    .await;
    handler.poison.lock().expect("lock").clear();
    assert!(
        world
            .store
            .retry(&projection, poisoned)
            .await
            .expect("retry")
    );
    wait_until("the retry applies the parked events", async || {
        progress(&world, &projection).await.parked_events == 0
    })
    .await;
    assert_eq!(
        applied_versions(&world, &projection, poisoned).await,
        vec![1, 2, 3, 4]
    );

    // Skipping gives up one event explicitly.
    let again = StreamId::new();
    let bad = lesson(again);
    handler.poison.lock().expect("lock").insert(bad.id);
    world.append(again, vec![bad, lesson(again)]).await;
    wait_until("the new poison parks", async || {
        progress(&world, &projection).await.parked_events == 2
    })
    .await;
    assert_eq!(
        world.store.skip(&projection, again).await.expect("skip"),
        Skipped::Event { version: 1 }
    );
    wait_until("the skip lets the rest through", async || {
        progress(&world, &projection).await.parked_events == 0
    })
    .await;
    assert_eq!(applied_versions(&world, &projection, again).await, vec![2]);
    stop.cancel();
    task.await.expect("ends");
}

#[tokio::test]
async fn badges_are_awarded_once_through_the_store_even_by_a_rebuild() {
    let world = World::new();
    let first = ProjectionId::new("achievements", 1).expect("name");
    let handler = Arc::new(Achievements::new(QuizAceRule::default()));
    let learner = Uuid::new_v4();
    let near = Uuid::new_v4();
    let quizzes: Vec<StreamId> = (0..4).map(|_| StreamId::new()).collect();
    for q in &quizzes {
        world
            .append(*q, vec![quiz(*q, learner, 9.0), quiz(*q, near, 5.0)])
            .await;
    }
    world
        .append(quizzes[0], vec![quiz(quizzes[0], near, 8.0)])
        .await;
    let badges = || {
        world
            .events
            .all_events()
            .into_iter()
            .filter(|e| matches!(e.envelope.event, DomainEvent::BadgeAwarded(_)))
            .collect::<Vec<_>>()
    };
    let (stop, task) = spawn(world.runner(&first, handler.clone(), "w"));
    wait_until("the badge is awarded", async || badges().len() == 1).await;
    let badge = &badges()[0];
    assert_eq!(badge.stream_id, QuizAceRule::badge_stream(learner));
    let trigger = badge
        .envelope
        .metadata
        .causation_id
        .clone()
        .expect("causation");
    // The learner's submissions are in four aggregates (four buckets, maybe): whichever was
    // applied third triggered the award.
    let mut triggers = Vec::new();
    for q in &quizzes {
        triggers.push(world.read_first(*q).await.to_string());
    }
    assert!(
        triggers.contains(&trigger.as_str().to_owned()),
        "caused by a submission"
    );
    world.publish_new().await;

    // A rebuild applies everything again into its own state and awards nothing new.
    let rebuilt = first.next_generation();
    let (stop2, task2) = spawn(world.runner(&rebuilt, handler.clone(), "r"));
    wait_until("the rebuild catches up", async || {
        world
            .store
            .progress(&rebuilt)
            .await
            .expect("progress")
            .applied
            == 10
    })
    .await;
    let doc = world
        .store
        .document(&rebuilt, &Achievements::key(learner))
        .await
        .expect("doc");
    let progress: LearnerProgress = serde_json::from_value(doc).expect("progress");
    assert_eq!(
        progress,
        LearnerProgress {
            qualifying: 4,
            awarded: true
        }
    );
    assert_eq!(badges().len(), 1, "never awarded twice");
    world.store.activate(&rebuilt).await.expect("activate");
    assert_eq!(
        world
            .store
            .active_generation("achievements")
            .await
            .expect("active"),
        Some(2)
    );
    for (s, t) in [(stop, task), (stop2, task2)] {
        s.cancel();
        t.await.expect("ends");
    }
}

#[tokio::test]
async fn the_catalogue_keeps_one_entry_per_lesson() {
    let world = World::new();
    let projection = ProjectionId::new("catalogue", 1).expect("name");
    let streams: Vec<StreamId> = (0..5).map(|_| StreamId::new()).collect();
    for s in &streams {
        world
            .append(*s, vec![lesson(*s), quiz(*s, Uuid::new_v4(), 1.0)])
            .await;
    }
    let (stop, task) = spawn(world.runner(&projection, Arc::new(LessonCatalogue), "w"));
    wait_until("the catalogue is built", async || {
        world.store.documents(&projection).await.len() == 5
    })
    .await;
    stop.cancel();
    task.await.expect("ends");
}

#[tokio::test]
async fn an_early_event_waits_for_its_version_and_follows_it_in_order() {
    let world = World::new();
    let projection = ProjectionId::new("recording", 1).expect("name");
    let handler = Arc::new(Recording::default());
    let stream = StreamId::new();
    let events = (0..4).map(|_| lesson(stream)).collect();
    world
        .events
        .append(stream, ExpectedVersion::NoStream, events)
        .await
        .expect("append");
    let all = world.events.all_events();
    // The broker delivers version 3 before version 2 (as after a redelivery).
    world
        .broker
        .publish(&[all[0].clone(), all[2].clone()])
        .await;
    let (stop, task) = spawn(world.runner(&projection, handler, "w"));
    wait_until("version 3 waits for version 2", async || {
        let parked = world.store.parked(&projection).await.expect("parked");
        parked.first().is_some_and(|a| a.events.len() == 1)
    })
    .await;
    let parked = world.store.parked(&projection).await.expect("parked");
    assert_eq!(parked[0].events[0].version, 3);
    assert!(
        parked[0].events[0].reason.contains("waiting for version 2"),
        "{parked:?}"
    );
    world
        .broker
        .publish(&[all[1].clone(), all[3].clone()])
        .await;
    wait_until("every version is applied", async || {
        progress(&world, &projection).await.applied == 4
    })
    .await;
    assert_eq!(
        applied_versions(&world, &projection, stream).await,
        [1, 2, 3, 4]
    );
    assert!(
        world
            .store
            .parked(&projection)
            .await
            .expect("parked")
            .is_empty()
    );
    stop.cancel();
    task.await.expect("worker ends");
}
