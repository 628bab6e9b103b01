//! The one workload generator: writers appending through the store's real `append`, as services
//! would, used by the demo, the bench and every suite.
//!
//! Each writer owns its aggregates and appends to them with their exact expected version, as a
//! service instance owning a shard would. A retryable failure is ambiguous (it may have
//! committed): the writer records it in the [`History`] and sends the **same** events again, which
//! the store answers with a replay if the first attempt had committed. A writer gives up an append
//! only after [`Workload::give_up_after`]; its events then stay indeterminate and the writer moves
//! to a fresh aggregate (the old one's version is unknown).
//!
//! A conflict on an aggregate a writer owns, or a resent append not answered with a replay of what
//! was acknowledged, is the store breaking its idempotency promise: the run ends with a
//! [`WorkloadError`] instead of papering over it.
//!
//! What a workload varies, each a field of [`Workload`]: the event [`Mix`] (one fixed shape, for
//! measurements, or the EduPulse mix of the demo), the [`Batch`] size, the [`Pace`] (closed loop,
//! each writer waiting for its call, or open loop at an offered rate), when it ends ([`Until`]),
//! and a share of acknowledged appends sent again (a client that lost the answer).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edupulse_app::latency::LatencyHistogram;
use edupulse_domain::{
    Actor, AmountCents, BadgeAwarded, ContextId, DomainEvent, EventEnvelope, ExpectedVersion,
    LessonPublished, LessonTitle, Metadata, PaymentProcessed, QuizSubmitted, Score, StreamId,
    TraceParent, Uuid,
};
use edupulse_ports::{AppendOutcome, EventAppender, StoreError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::checker::History;

/// The metadata key tagging a run's events with the run's id (so that a consumer of a shared
/// stream judges only its own run).
pub const RUN_KEY: &str = "edupulse_run";

/// Which events the writers append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mix {
    /// Quiz submissions only, all of one shape and size ([`quiz_submission`]): what measurements
    /// want.
    QuizSubmissions,
    /// The EduPulse mix: lessons published (new aggregates, some announced in a catalogue
    /// stream all writers share), quiz submissions in batches to the writer's quizzes, badges to
    /// learners, payments (new invoice aggregates), with Unicode titles.
    Edupulse,
}

/// Events per `append` call (all to one stream, as the port requires).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// Exactly this many.
    Fixed(usize),
    /// 1 to this many, at random.
    UpTo(usize),
}

/// How the writers pace their calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Closed loop: each writer waits for its call, then pauses this long, then calls again.
    Closed {
        /// The pause between two calls of a writer.
        pause: Duration,
    },
    /// Open loop at an offered rate: one call (to a new aggregate) per tick, each in a task of
    /// its own, so a slow call does not lower the offered rate; at most `writers` calls at once.
    Open {
        /// Events per second offered, across writers.
        events_per_sec: f64,
    },
}

/// When the writers stop starting new calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// When [`Writers::stop`] is called.
    Stopped,
    /// After this many calls per writer (closed loop).
    AppendsPerWriter(usize),
    /// Once this many events were appended across writers.
    Events(u64),
    /// After this long.
    Elapsed(Duration),
}

/// Notified of each acknowledged append with the instant the store answered (the bench times
/// commit → broker acknowledgement from it).
pub type CommitObserver = Arc<dyn Fn(&AppendOutcome, Instant) + Send + Sync>;

/// A workload; [`Workload::default`] is a light steady load (4 writers, 8 aggregates each, 1–4
/// events per call, 10 ms between calls, until stopped).
#[derive(Debug, Clone)]
pub struct Workload {
    /// Concurrent writers (closed loop), or the most calls at once (open loop).
    pub writers: usize,
    /// Aggregates each writer cycles through.
    pub streams_per_writer: usize,
    /// Which events.
    pub mix: Mix,
    /// How many per call.
    pub batch: Batch,
    /// How fast.
    pub pace: Pace,
    /// Until when.
    pub until: Until,
    /// Share of acknowledged appends sent once more, same ids and expectation, in percent.
    pub resend_percent: u32,
    /// How long a writer retries an ambiguous append before leaving it indeterminate.
    pub give_up_after: Duration,
    /// The run's id, written under [`RUN_KEY`] in every event's metadata.
    pub run: Option<String>,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            writers: 4,
            streams_per_writer: 8,
            mix: Mix::QuizSubmissions,
            batch: Batch::UpTo(4),
            pace: Pace::Closed {
                pause: Duration::from_millis(10),
            },
            until: Until::Stopped,
            resend_percent: 0,
            give_up_after: Duration::from_secs(90),
            run: None,
        }
    }
}

/// Where the writers report what they did, besides their own counts.
#[derive(Clone, Default)]
pub struct Observers {
    /// The checker's history (attempted, acknowledged, ambiguous). `None` where nothing is
    /// judged (a throughput row), to keep its bookkeeping out of the measurement.
    pub history: Option<Arc<History>>,
    /// Called for each acknowledged append.
    pub on_commit: Option<CommitObserver>,
}

/// Why a workload ended before its end.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WorkloadError {
    /// The store refused an append for a reason a retry cannot fix (invalid input, a store
    /// misconfigured): the run's setup is wrong.
    #[error("an append to {stream} failed")]
    Store {
        /// The stream appended to.
        stream: StreamId,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// A conflict on an aggregate the writer owns: only the writer appends to it, so the store
    /// answered a retry of a committed append with a conflict instead of a replay.
    #[error("conflict on {stream}, which only this writer appends to (expected {expected})")]
    Conflict {
        /// The stream.
        stream: StreamId,
        /// The expectation sent.
        expected: ExpectedVersion,
    },
    /// An acknowledged append sent again was not answered with a replay of the same versions.
    #[error("a resent append to {stream} was not a replay of the acknowledged one")]
    NotReplayed {
        /// The stream.
        stream: StreamId,
    },
    /// A writer task panicked or was cancelled.
    #[error("a writer task failed: {0}")]
    Task(String),
}

/// What the writers did.
#[derive(Default)]
pub struct Written {
    /// Events acknowledged by the store.
    pub appended: u64,
    /// Appends given up after [`Workload::give_up_after`] (their events indeterminate).
    pub given_up: u64,
    /// From the start to the last call's answer.
    pub elapsed: Duration,
    /// Latency of each acknowledged `append` call.
    pub latency: LatencyHistogram,
}

/// Running writers.
pub struct Writers {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<Result<(), WorkloadError>>,
    shared: Arc<Shared>,
    started: Instant,
}

/// What every writer of a workload shares.
struct Shared {
    store: Arc<dyn EventAppender>,
    workload: Workload,
    observers: Observers,
    latency: LatencyHistogram,
    appended: AtomicU64,
    given_up: AtomicU64,
    /// Events still to append under [`Until::Events`].
    budget: AtomicU64,
    /// The catalogue stream all writers of the EduPulse mix share.
    catalogue: StreamId,
    deadline: Option<Instant>,
}

impl Workload {
    /// Starts the writers on `store`.
    pub fn start(self, store: Arc<dyn EventAppender>, observers: Observers) -> Writers {
        let started = Instant::now();
        let shared = Arc::new(Shared {
            store,
            budget: AtomicU64::new(match self.until {
                Until::Events(n) => n,
                _ => u64::MAX,
            }),
            deadline: match self.until {
                Until::Elapsed(d) => Some(started + d),
                _ => None,
            },
            workload: self,
            observers,
            latency: LatencyHistogram::default(),
            appended: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
            catalogue: StreamId::new(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        match shared.workload.pace {
            Pace::Closed { pause } => {
                for _ in 0..shared.workload.writers.max(1) {
                    tasks.spawn(closed_loop(shared.clone(), stop.clone(), pause));
                }
            }
            Pace::Open { events_per_sec } => {
                tasks.spawn(open_loop(shared.clone(), stop.clone(), events_per_sec));
            }
        }
        Writers {
            stop,
            tasks,
            shared,
            started,
        }
    }
}

impl Writers {
    /// Asks the writers to stop after their current append (retries included).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for the writers to reach the workload's end.
    ///
    /// # Errors
    /// The first [`WorkloadError`] of a writer; the others are stopped.
    pub async fn finish(mut self) -> Result<Written, WorkloadError> {
        let mut outcome = Ok(());
        while let Some(done) = self.tasks.join_next().await {
            let done = done
                .map_err(|e| WorkloadError::Task(e.to_string()))
                .and_then(|r| r);
            if let Err(e) = done {
                self.stop();
                if outcome.is_ok() {
                    outcome = Err(e);
                }
            }
        }
        outcome?;
        let elapsed = self.started.elapsed();
        let shared = Arc::try_unwrap(self.shared)
            .map_err(|_| WorkloadError::Task("a writer outlived its task".into()))?;
        Ok(Written {
            appended: shared.appended.into_inner(),
            given_up: shared.given_up.into_inner(),
            elapsed,
            latency: shared.latency,
        })
    }

    /// Stops the writers and waits for them.
    ///
    /// # Errors
    /// As [`Writers::finish`].
    pub async fn join(self) -> Result<Written, WorkloadError> {
        self.stop();
        self.finish().await
    }
}

/// An aggregate a writer owns, and its version once known.
#[derive(Clone, Copy)]
struct Owned {
    stream: StreamId,
    version: Option<u64>,
}

impl Owned {
    fn fresh() -> Self {
        Self {
            stream: StreamId::new(),
            version: None,
        }
    }

    fn expected(self) -> ExpectedVersion {
        self.version
            .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact)
    }
}

/// One call: where, with what expectation, which events, and the owned aggregate it advances.
struct Call {
    stream: StreamId,
    expected: ExpectedVersion,
    events: Vec<EventEnvelope>,
    owned: Option<usize>,
}

/// A closed-loop writer.
async fn closed_loop(
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    pause: Duration,
) -> Result<(), WorkloadError> {
    // A Send generator: the task may move between worker threads.
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let per_writer = shared.workload.streams_per_writer.max(1);
    let mut owned: Vec<Owned> = (0..per_writer).map(|_| Owned::fresh()).collect();
    let learners: Vec<StreamId> = (0..per_writer * 4).map(|_| StreamId::new()).collect();
    let mut calls = 0usize;
    while shared.may_continue(&stop, calls) {
        let wanted = shared.batch_size(&mut rng);
        let mut call = shared.next_call(&mut rng, &owned, &learners, calls, wanted);
        // The budget counts events, and a call of the mix may hold fewer than asked for.
        let Some(n) = shared.take_budget(call.events.len()) else {
            break;
        };
        call.events.truncate(n);
        calls += 1;
        let owned_slot = call.owned;
        match shared.append_acknowledged(call).await? {
            Some(outcome) => {
                if let Some(slot) = owned_slot {
                    owned[slot].version = Some(outcome.last_version());
                }
            }
            // Indeterminate: this aggregate's version is unknown now; leave it.
            None => {
                if let Some(slot) = owned_slot {
                    owned[slot] = Owned::fresh();
                }
            }
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(())
}

/// The open-loop driver: one call per tick, each to a new aggregate, in a task of its own.
async fn open_loop(
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    events_per_sec: f64,
) -> Result<(), WorkloadError> {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(shared.workload.writers.max(1)));
    let batch = match shared.workload.batch {
        Batch::Fixed(n) | Batch::UpTo(n) => n.max(1),
    };
    let calls_per_sec = events_per_sec / batch as f64;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / calls_per_sec.max(1e-3)));
    // Late ticks fire at once: the offered rate holds even after a stall of the timer.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let mut calls = JoinSet::new();
    let mut made = 0usize;
    while shared.may_continue(&stop, made) {
        ticker.tick().await;
        let Some(n) = shared.take_budget(batch) else {
            break;
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let stream = StreamId::new();
        let call = Call {
            stream,
            expected: ExpectedVersion::NoStream,
            events: shared.events_of_one_shape(stream, n, &[], &mut rng),
            owned: None,
        };
        made += 1;
        let shared = shared.clone();
        calls.spawn(async move {
            let _permit = permit;
            shared.append_acknowledged(call).await.map(|_| ())
        });
    }
    while let Some(done) = calls.join_next().await {
        done.map_err(|e| WorkloadError::Task(e.to_string()))??;
    }
    Ok(())
}

impl Shared {
    fn may_continue(&self, stop: &AtomicBool, calls: usize) -> bool {
        !stop.load(Ordering::SeqCst)
            && self.deadline.is_none_or(|d| Instant::now() < d)
            && match self.workload.until {
                Until::AppendsPerWriter(n) => calls < n,
                _ => true,
            }
    }

    fn batch_size(&self, rng: &mut impl Rng) -> usize {
        match self.workload.batch {
            Batch::Fixed(n) => n.max(1),
            Batch::UpTo(n) => rng.random_range(1..=n.max(1)),
        }
    }

    /// Takes up to `wanted` events from the budget; `None` once it is spent.
    fn take_budget(&self, wanted: usize) -> Option<usize> {
        let wanted = wanted as u64;
        self.budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                (b > 0).then(|| b - wanted.min(b))
            })
            .ok()
            .map(|before| wanted.min(before) as usize)
    }

    /// The writer's next call: its `turn`-th, of `n` events where the mix allows several.
    fn next_call(
        &self,
        rng: &mut impl Rng,
        owned: &[Owned],
        learners: &[StreamId],
        turn: usize,
        n: usize,
    ) -> Call {
        match self.workload.mix {
            Mix::QuizSubmissions => {
                let slot = turn % owned.len();
                self.to_owned_aggregate(owned, slot, n, &[], rng)
            }
            Mix::Edupulse => self.edupulse_call(rng, owned, learners, n),
        }
    }

    fn to_owned_aggregate(
        &self,
        owned: &[Owned],
        slot: usize,
        n: usize,
        students: &[StreamId],
        rng: &mut impl Rng,
    ) -> Call {
        let aggregate = owned[slot];
        Call {
            stream: aggregate.stream,
            expected: aggregate.expected(),
            events: self.events_of_one_shape(aggregate.stream, n, students, rng),
            owned: Some(slot),
        }
    }

    /// `n` quiz submissions to `stream`, tagged with the run, by students drawn from
    /// `students` (fresh ones when it is empty).
    fn events_of_one_shape(
        &self,
        stream: StreamId,
        n: usize,
        students: &[StreamId],
        rng: &mut impl Rng,
    ) -> Vec<EventEnvelope> {
        (0..n)
            .map(|_| {
                let metadata = self.metadata(rng);
                let student = match students.len() {
                    0 => Uuid::new_v4(),
                    len => *students[rng.random_range(0..len)].as_uuid(),
                };
                quiz_submission_with(stream, student, rng, metadata)
            })
            .collect()
    }

    /// One command of the EduPulse mix.
    fn edupulse_call(
        &self,
        rng: &mut impl Rng,
        owned: &[Owned],
        learners: &[StreamId],
        n: usize,
    ) -> Call {
        let metadata = self.metadata(rng);
        let single = |stream: StreamId, expected: ExpectedVersion, event: DomainEvent| Call {
            stream,
            expected,
            events: vec![
                EventEnvelope::new(event)
                    .with_stream(stream)
                    .with_metadata(metadata.clone()),
            ],
            owned: None,
        };
        match rng.random_range(0..100u32) {
            // A lesson is published, sometimes announced in the shared catalogue.
            0..=9 => {
                let announced = rng.random_bool(0.3);
                let stream = if announced {
                    self.catalogue
                } else {
                    StreamId::new()
                };
                let lesson = LessonPublished {
                    lesson_id: if announced {
                        Uuid::new_v4()
                    } else {
                        *stream.as_uuid()
                    },
                    author_id: Uuid::new_v4(),
                    title: title(rng),
                };
                let expected = if announced {
                    ExpectedVersion::Any
                } else {
                    ExpectedVersion::NoStream
                };
                single(stream, expected, lesson.into())
            }
            // Submissions to one of the writer's quizzes, with its expected version, by the
            // writer's learners (so that some earn badges).
            10..=64 => {
                let slot = rng.random_range(0..owned.len());
                self.to_owned_aggregate(owned, slot, n, learners, rng)
            }
            // A badge, in the learner's stream.
            65..=84 => {
                let learner = learners[rng.random_range(0..learners.len())];
                let badge = BadgeAwarded {
                    badge_id: Uuid::new_v4(),
                    recipient_id: *learner.as_uuid(),
                };
                single(learner, ExpectedVersion::Any, badge.into())
            }
            // A payment: a new invoice aggregate.
            _ => {
                let invoice = StreamId::new();
                let payment = PaymentProcessed {
                    invoice_id: *invoice.as_uuid(),
                    user_id: Uuid::new_v4(),
                    amount_cents: AmountCents::new(rng.random_range(499..=49_900))
                        .expect("a positive amount is valid"),
                };
                single(invoice, ExpectedVersion::NoStream, payment.into())
            }
        }
    }

    /// Request metadata, tagged with the run.
    fn metadata(&self, rng: &mut impl Rng) -> Metadata {
        let mut metadata = request_metadata(rng);
        if let Some(run) = &self.workload.run {
            metadata
                .extra
                .insert(RUN_KEY.to_owned(), run.clone().into());
        }
        metadata
    }

    /// Appends until the store acknowledges, recording every step in the history. `None`:
    /// given up after [`Workload::give_up_after`] (the events stay indeterminate).
    async fn append_acknowledged(
        &self,
        call: Call,
    ) -> Result<Option<AppendOutcome>, WorkloadError> {
        let resend = (self.workload.resend_percent > 0
            && rand::random_range(0..100u32) < self.workload.resend_percent)
            .then(|| call.events.clone());
        let Some(first) = self.until_acknowledged(&call, call.events.clone()).await? else {
            return Ok(None);
        };
        self.appended
            .fetch_add(first.events.len() as u64, Ordering::Relaxed);
        if let Some(events) = resend {
            // A client that lost the answer sends the same append again.
            if let Some(again) = self.until_acknowledged(&call, events).await?
                && !(again.replayed && again.events == first.events)
            {
                return Err(WorkloadError::NotReplayed {
                    stream: call.stream,
                });
            }
        }
        Ok(Some(first))
    }

    async fn until_acknowledged(
        &self,
        call: &Call,
        events: Vec<EventEnvelope>,
    ) -> Result<Option<AppendOutcome>, WorkloadError> {
        let history = self.observers.history.as_deref();
        let acknowledged = append_until_acknowledged(
            &*self.store,
            history,
            (call.stream, call.expected),
            events,
            self.workload.give_up_after,
        )
        .await;
        match acknowledged {
            Ok(Some(ack)) => {
                self.latency.record(ack.latency);
                if let Some(observe) = &self.observers.on_commit {
                    observe(&ack.outcome, ack.at);
                }
                Ok(Some(ack.outcome))
            }
            Ok(None) => {
                self.given_up.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            Err(StoreError::Conflict { .. }) if call.owned.is_some() => {
                if let Some(h) = history {
                    h.conflict();
                }
                Err(WorkloadError::Conflict {
                    stream: call.stream,
                    expected: call.expected,
                })
            }
            Err(source) => Err(WorkloadError::Store {
                stream: call.stream,
                source,
            }),
        }
    }
}

/// An append the store acknowledged.
pub struct Acknowledged {
    /// The store's answer.
    pub outcome: AppendOutcome,
    /// How long the successful call took.
    pub latency: Duration,
    /// When the store answered.
    pub at: Instant,
}

/// Appends `events` to `target` (stream, expectation) until the store acknowledges, recording
/// each step in `history`: a retryable failure is ambiguous and is retried with the **same**
/// events (the store answers a replay if the first attempt had committed), with backoff. Gives
/// up after `give_up_after` and returns `None` (the events stay indeterminate).
///
/// # Errors
/// A non-retryable [`StoreError`] (conflict, invalid input…), as the store returned it.
pub async fn append_until_acknowledged(
    store: &dyn EventAppender,
    history: Option<&History>,
    target: (StreamId, ExpectedVersion),
    events: Vec<EventEnvelope>,
    give_up_after: Duration,
) -> Result<Option<Acknowledged>, StoreError> {
    let (stream, expected) = target;
    if let Some(h) = history {
        h.attempt(&events);
    }
    let started = Instant::now();
    let mut delay = Duration::from_millis(20);
    loop {
        let t0 = Instant::now();
        match store.append(stream, expected, events.clone()).await {
            Ok(outcome) => {
                let at = Instant::now();
                if let Some(h) = history {
                    h.acknowledged(&outcome);
                }
                return Ok(Some(Acknowledged {
                    outcome,
                    latency: at - t0,
                    at,
                }));
            }
            Err(e) if e.is_retryable() => {
                if let Some(h) = history {
                    h.ambiguous(&events);
                }
                if started.elapsed() > give_up_after {
                    eprintln!("workload: giving up an append after {give_up_after:?}: {e}");
                    return Ok(None);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Titles in several scripts, emoji included: the store and the wire carry any UTF-8.
const TITLES: [&str; 6] = [
    "Ownership and borrowing",
    "Async Rust: futures and executors",
    "Les bases de la statistique",
    "Álgebra lineal para principiantes",
    "日本語の文法入門",
    "Event sourcing in practice 🦀",
];

fn title(rng: &mut impl Rng) -> LessonTitle {
    LessonTitle::new(TITLES[rng.random_range(0..TITLES.len())]).expect("static titles are valid")
}

/// Request metadata as a service would attach it (correlation id, actor, W3C traceparent).
pub fn request_metadata(rng: &mut impl Rng) -> Metadata {
    let trace: u128 = rng.random::<u128>() | 1;
    let span: u64 = rng.random::<u64>() | 1;
    Metadata {
        correlation_id: ContextId::new(format!("req-{:016x}", rng.random::<u64>())).ok(),
        actor: Actor::new(format!("user:{}", Uuid::new_v4())).ok(),
        traceparent: TraceParent::new(format!("00-{trace:032x}-{span:016x}-01")).ok(),
        ..Metadata::default()
    }
}

/// A quiz submission to `stream` (the quiz), with fresh ids and request metadata: the one shape
/// of [`Mix::QuizSubmissions`].
pub fn quiz_submission(stream: StreamId, rng: &mut impl Rng) -> EventEnvelope {
    let metadata = request_metadata(rng);
    quiz_submission_with(stream, Uuid::new_v4(), rng, metadata)
}

fn quiz_submission_with(
    stream: StreamId,
    student: Uuid,
    rng: &mut impl Rng,
    metadata: Metadata,
) -> EventEnvelope {
    let max = Score::new(20.0).expect("a positive maximum is valid");
    let score = Score::new(rng.random_range(0..=40) as f32 / 2.0).expect("0 to 20 is valid");
    let submission = QuizSubmitted::new(*stream.as_uuid(), student, score, max)
        .expect("a score within its maximum is valid");
    EventEnvelope::new(submission)
        .with_stream(stream)
        .with_metadata(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edupulse_ports::memory::InMemoryEventStore;

    async fn run(workload: Workload) -> (Written, Arc<History>) {
        let store = Arc::new(InMemoryEventStore::default());
        let history = History::new();
        let observers = Observers {
            history: Some(history.clone()),
            on_commit: None,
        };
        let written = workload
            .start(store, observers)
            .finish()
            .await
            .expect("the workload runs");
        (written, history)
    }

    #[tokio::test]
    async fn an_event_budget_is_appended_exactly() {
        for mix in [Mix::QuizSubmissions, Mix::Edupulse] {
            let (written, history) = run(Workload {
                mix,
                pace: Pace::Closed {
                    pause: Duration::ZERO,
                },
                until: Until::Events(1_001),
                ..Workload::default()
            })
            .await;
            assert_eq!(written.appended, 1_001, "{mix:?}");
            assert_eq!(history.acknowledged_count(), 1_001, "{mix:?}");
        }
    }

    #[tokio::test]
    async fn resent_appends_are_replays() {
        let (written, history) = run(Workload {
            writers: 2,
            until: Until::AppendsPerWriter(50),
            pace: Pace::Closed {
                pause: Duration::ZERO,
            },
            resend_percent: 50,
            ..Workload::default()
        })
        .await;
        assert_eq!(written.appended as usize, history.acknowledged_count());
        assert_eq!(history.conflicts(), 0);
    }

    #[tokio::test]
    async fn an_open_loop_offers_its_rate_until_its_budget() {
        let (written, _) = run(Workload {
            writers: 8,
            batch: Batch::Fixed(2),
            pace: Pace::Open {
                events_per_sec: 2_000.0,
            },
            until: Until::Events(100),
            ..Workload::default()
        })
        .await;
        assert_eq!(written.appended, 100);
        assert_eq!(written.latency.count(), 50);
    }
}
