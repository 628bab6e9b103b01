//! A run of the whole backbone under a fault: the real wiring ([`Backbone`]), writers appending
//! with expected versions and retrying ambiguous failures with the same ids, a durable consumer
//! collecting every delivery, and the verdict ([`Run::finish`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use edupulse_integration_tests::workload::{self, Observers};
use std::time::{Duration, Instant};

use edupulse_app::relay::RelayConfig;
use edupulse_app::wiring::{Backbone, RunningRelay, spawn_relay};
use edupulse_domain::{EventEnvelope, EventId, ExpectedVersion, Metadata, StreamId};
use edupulse_integration_tests::unique_name;
use edupulse_nats::{NatsConfig, NatsConsumer};
use edupulse_ports::{
    AppendOutcome, CheckpointStore, EventAppender, EventConsumer, ParkedEvent, Settlement,
};
use edupulse_postgres::{PgEventStore, PgStoreConfig};
use secrecy::SecretString;
use tokio::task::JoinHandle;

use crate::checker::{Consumed, Figures, History, judge, lock};

/// `EDUPULSE_SOAK=1` multiplies the amount of work (and the run times) by this.
pub(crate) fn soak_factor() -> u32 {
    match std::env::var("EDUPULSE_SOAK").as_deref() {
        Ok("1" | "true" | "yes") => 10,
        _ => 1,
    }
}

/// How long to wait for everything acknowledged to be consumed before judging.
pub(crate) const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits until relay `name` parked `n` streams; panics after [`CONVERGENCE_TIMEOUT`].
pub(crate) async fn wait_parked(
    store: &dyn CheckpointStore,
    name: &str,
    n: usize,
) -> Vec<ParkedEvent> {
    let deadline = Instant::now() + CONVERGENCE_TIMEOUT;
    loop {
        let parked = store.parked(name).await.unwrap_or_default();
        if parked.len() >= n {
            return parked;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} streams parked after {CONVERGENCE_TIMEOUT:?}",
            parked.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) use edupulse_integration_tests::workload::RUN_KEY;
pub(crate) use edupulse_integration_tests::workload::{Batch, Pace, Until, Workload};

/// A NATS configuration with the run's own stream and subject prefix, and a short ack timeout
/// (faults are noticed sooner).
pub(crate) fn nats_config(servers: Vec<String>, name: &str) -> NatsConfig {
    let mut config = NatsConfig::new(servers, name.to_uppercase(), name.to_owned());
    config.ack_timeout = Duration::from_secs(2);
    config
}

/// A store configuration for `url`: a small pool and a short acquire timeout (faults are
/// reported as `Unavailable` sooner).
pub(crate) fn pg_config(url: &str) -> PgStoreConfig {
    let mut config = PgStoreConfig::new(SecretString::from(url.to_owned()));
    config.max_connections = 8;
    config.acquire_timeout = Duration::from_secs(3);
    config
}

/// The relay configuration of the suite: small batches (faults land mid-batch), quick polling,
/// quick lease retries, backoff capped far below the duplicate window.
pub(crate) fn relay_config(name: &str) -> RelayConfig {
    RelayConfig {
        name: name.to_owned(),
        batch_size: 64,
        poll_interval: Duration::from_millis(100),
        lease_retry: Duration::from_millis(250),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_secs(2),
        ..RelayConfig::default()
    }
}

/// An event of `stream`, tagged with the run, alternating lessons and badges.
pub(crate) fn event(stream: StreamId, run: &str, i: u64) -> EventEnvelope {
    let mut metadata = Metadata::default();
    metadata.extra.insert(RUN_KEY.to_owned(), run.into());
    edupulse_integration_tests::sample_event(stream, i).with_metadata(metadata)
}

/// Appends until the store acknowledges (see
/// [`edupulse_integration_tests::workload::append_until_acknowledged`]), recording into
/// `history`. `None`: given up after `deadline`. Any other error is a failure of the test (the
/// writers own their streams).
pub(crate) async fn append_until_acknowledged(
    store: &dyn EventAppender,
    history: &History,
    stream: StreamId,
    expected: ExpectedVersion,
    events: Vec<EventEnvelope>,
    deadline: Duration,
) -> Option<AppendOutcome> {
    workload::append_until_acknowledged(store, Some(history), (stream, expected), events, deadline)
        .await
        .unwrap_or_else(|e| panic!("append to {stream} (expected {expected}): {e:?}"))
        .map(|ack| ack.outcome)
}

/// Running writers of a fault run: stopping or finishing them fails the test if they hang or
/// if the store broke a promise (see [`WorkloadError`](workload::WorkloadError)).
pub(crate) struct Writers(workload::Writers);

impl Writers {
    /// Stops and waits for the writers.
    pub(crate) async fn join(self) {
        self.0.stop();
        self.finish().await;
    }

    /// Waits for the writers to finish their appends (a workload with an end).
    pub(crate) async fn finish(self) {
        within("the writers", Duration::from_secs(300), self.0.finish())
            .await
            .expect("the writers keep the store's promises");
    }
}

/// Starts the writers of `workload` on `store`, tagged with `run`.
pub(crate) fn spawn_writers(
    store: Arc<PgEventStore>,
    history: Arc<History>,
    run: &str,
    workload: Workload,
) -> Writers {
    let workload = Workload {
        run: Some(run.to_owned()),
        ..workload
    };
    let observers = Observers {
        history: Some(history),
        on_commit: None,
    };
    Writers(workload.start(store, observers))
}

/// Awaits `fut`, failing the test with `what` if it takes longer than `limit` (a hang is a
/// finding, not something to wait for forever).
pub(crate) async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// Waits until `relay` has published at least `n` events (the fault must land mid-run).
pub(crate) async fn wait_published(relay: &RunningRelay, n: u64) {
    let started = Instant::now();
    while relay.stats.snapshot().published < n {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the relay never published {n} events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The consumer side: a durable consumer acking every delivery promptly.
struct Collector {
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

fn spawn_collector(mut consumer: NatsConsumer, consumed: Arc<Mutex<Consumed>>) -> Collector {
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            while !stop.load(Ordering::SeqCst) {
                let next = consumer.next_batch(512, Duration::from_millis(250));
                match tokio::time::timeout(Duration::from_secs(10), next).await {
                    Err(_) => eprintln!("faults: the consumer's fetch hung for 10 s"),
                    Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(250)).await,
                    Ok(Ok(batch)) => {
                        for d in batch {
                            lock(&consumed).record(&d);
                            // A failed ack means a redelivery later (counted as such).
                            let ack = consumer.settle(d.token, Settlement::Ack);
                            let _ = tokio::time::timeout(Duration::from_secs(10), ack).await;
                        }
                    }
                }
            }
        }
    });
    Collector { stop, task }
}

/// One run: its names, configurations, wiring, history and consumer.
pub(crate) struct Run {
    /// Unique name: the NATS stream (upper case), subject prefix, relay and consumer name.
    pub(crate) name: String,
    /// The store configuration.
    pub(crate) pg: PgStoreConfig,
    /// The NATS configuration.
    pub(crate) nats: NatsConfig,
    /// The wiring the run uses for appends and in-process relays.
    pub(crate) backbone: Backbone,
    /// What writers did.
    pub(crate) history: Arc<History>,
    /// What the consumer received.
    pub(crate) consumed: Arc<Mutex<Consumed>>,
    collector: Collector,
}

/// Retries `f` until it succeeds or `timeout` passes (servers that just started, a cluster
/// electing its leaders).
pub(crate) async fn retry<T, E: std::fmt::Display, Fut>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Fut,
) -> T
where
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if started.elapsed() < timeout => {
                eprintln!("faults: {what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

impl Run {
    /// Connects the real wiring to the database at `pg_url` (migrated) and to NATS `servers`,
    /// with a unique stream, and starts the consumer.
    pub(crate) async fn start(fault: &str, pg_url: &str, servers: Vec<String>) -> Self {
        let name = unique_name(fault);
        let nats = nats_config(servers, &name);
        Self::start_with(name, pg_config(pg_url), nats).await
    }

    /// [`Run::start`] with given configurations.
    pub(crate) async fn start_with(name: String, pg: PgStoreConfig, nats: NatsConfig) -> Self {
        Self::start_with_consumer(name, pg, nats, None).await
    }

    /// [`Run::start_with`], the consumer connected with `consumer_nats` (another NATS user) when
    /// given.
    pub(crate) async fn start_with_consumer(
        name: String,
        pg: PgStoreConfig,
        nats: NatsConfig,
        consumer_nats: Option<NatsConfig>,
    ) -> Self {
        let backbone = retry("connect the backbone", Duration::from_secs(60), || {
            Backbone::connect(&pg, nats.clone())
        })
        .await;
        let consumer_backbone = match consumer_nats {
            None => backbone.clone(),
            Some(config) => {
                retry(
                    "connect the consumer's backbone",
                    Duration::from_secs(60),
                    || Backbone::connect(&pg, config.clone()),
                )
                .await
            }
        };
        let consumer = retry("create the consumer", Duration::from_secs(60), || {
            consumer_backbone.consumer(&name, None)
        })
        .await;
        let consumed = Arc::new(Mutex::new(Consumed::default()));
        let collector = spawn_collector(consumer, consumed.clone());
        Self {
            name,
            pg,
            nats,
            backbone,
            history: History::new(),
            consumed,
            collector,
        }
    }

    /// The run's relay configuration (checkpoint and lease named after the run).
    pub(crate) fn relay_config(&self) -> RelayConfig {
        relay_config(&self.name)
    }

    /// An in-process relay over the run's wiring.
    pub(crate) async fn spawn_relay(&self) -> RunningRelay {
        spawn_relay(self.backbone.relay(self.relay_config()), None)
            .await
            .expect("spawn relay")
    }

    /// Stops `relay` gracefully (in-flight acks, checkpoint saved); a relay that does not stop
    /// fails the test.
    pub(crate) async fn stop_relay(relay: RunningRelay) {
        within(
            "the relay's graceful stop",
            Duration::from_secs(30),
            relay.stop(),
        )
        .await;
    }

    /// Stops the run's consumer (for a test that takes the stream away from under it).
    pub(crate) fn stop_consumer(&self) {
        self.collector.stop.store(true, Ordering::SeqCst);
    }

    /// Starts writers with `workload`.
    pub(crate) fn writers(&self, workload: Workload) -> Writers {
        spawn_writers(
            self.backbone.store.clone(),
            self.history.clone(),
            &self.name,
            workload,
        )
    }

    /// A small steady load, waited for: `writers` writers of `appends` appends each.
    pub(crate) async fn append_some(&self, writers: usize, appends: usize) {
        self.writers(Workload {
            writers,
            until: Until::AppendsPerWriter(appends),
            ..Workload::default()
        })
        .finish()
        .await;
    }

    /// Waits until every event acknowledged so far is consumed; returns how long that took
    /// from `since` (the moment a fault healed). `None` on timeout.
    pub(crate) async fn caught_up_since(&self, since: Instant) -> Option<Duration> {
        let ids = self.history.acknowledged_ids();
        self.wait_consumed(&ids, &HashSet::new(), CONVERGENCE_TIMEOUT)
            .await
            .then(|| since.elapsed())
    }

    /// Waits until the consumer has received `ids` (except `except`).
    pub(crate) async fn wait_consumed(
        &self,
        ids: &HashSet<EventId>,
        except: &HashSet<EventId>,
        timeout: Duration,
    ) -> bool {
        let started = Instant::now();
        loop {
            let missing = {
                let consumed = lock(&self.consumed);
                ids.iter()
                    .filter(|id| !except.contains(id) && !consumed.contains(id))
                    .count()
            };
            if missing == 0 {
                return true;
            }
            if started.elapsed() > timeout {
                eprintln!("faults: {missing} events still not consumed after {timeout:?}");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the broker stores in the run's stream, in stream sequence order (see
    /// [`crate::checker::broker_log`]).
    pub(crate) async fn broker_log(&self) -> Vec<(String, String, u64)> {
        let js = edupulse_nats::jetstream_context(self.backbone.client.clone(), &self.nats);
        crate::checker::broker_log(&js, &self.nats.stream_name).await
    }

    /// Waits for everything acknowledged (but `dead_lettered`) to be consumed, lets late
    /// duplicates arrive, stops the consumer and judges the run.
    pub(crate) async fn finish(self, fault: &str, dead_lettered: &HashSet<EventId>) -> Figures {
        let ids = self.history.acknowledged_ids();
        self.wait_consumed(&ids, dead_lettered, CONVERGENCE_TIMEOUT)
            .await;
        // A duplicate stored by the broker would arrive right behind: give it a moment.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let broker = self.broker_log().await;
        self.collector.stop.store(true, Ordering::SeqCst);
        within(
            "the consumer's stop",
            Duration::from_secs(30),
            self.collector.task,
        )
        .await
        .expect("consumer task");
        let consumed = lock(&self.consumed);
        judge(fault, &self.history, &consumed, dead_lettered, &broker)
    }
}
