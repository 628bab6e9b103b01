//! Helpers of the PostgreSQL suite: stores on fresh databases, sample events, a seeded PRNG.

use async_trait::async_trait;
use edupulse_domain::{EventEnvelope, ExpectedVersion, StreamId};
use edupulse_integration_tests::{PgContainer, TestDb, start_postgres};
use edupulse_ports::{
    AppendOutcome, Checkpoint, CheckpointStore, Cursor, EventAppender, EventReader, FollowedRow,
    ParkedEvent, RecordedEvent, Release, StoreError, StoreHead,
};
use edupulse_postgres::{GroupCommitConfig, PgEventStore, PgStoreConfig};
use secrecy::SecretString;

pub(crate) fn config(url: &str) -> PgStoreConfig {
    let mut config = PgStoreConfig::new(SecretString::from(url.to_owned()));
    config.application_name = "edupulse-postgres-tests".into();
    config.max_connections = 8;
    config
}

pub(crate) async fn store_on(db: &TestDb) -> PgEventStore {
    PgEventStore::connect(&config(db.url()))
        .await
        .expect("connect the store")
}

pub(crate) fn event(stream: StreamId) -> EventEnvelope {
    edupulse_ports::conformance::sample_event(stream)
}

pub(crate) fn events(stream: StreamId, n: usize) -> Vec<EventEnvelope> {
    edupulse_ports::conformance::sample_events(stream, n)
}

/// Reads everything after `cursor` (pages of `page`), returning the events and the new cursor.
pub(crate) async fn drain(
    store: &impl EventReader,
    mut cursor: Cursor,
    page: usize,
) -> (Vec<RecordedEvent>, Cursor) {
    let mut out = Vec::new();
    loop {
        let batch = store.read_all(cursor, page).await.expect("read_all");
        let Some(last) = batch.last() else {
            return (out, cursor);
        };
        assert!(batch[0].cursor > cursor, "read_all starts after the cursor");
        cursor = last.cursor;
        out.extend(batch);
    }
}

/// SplitMix64: a tiny seeded PRNG, so a failing interleaving can be replayed from its seed.
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded from `EDUPULSE_TEST_SEED` when set, else from the clock (printed).
    pub(crate) fn from_env(test: &str) -> Self {
        let seed = std::env::var("EDUPULSE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(42, |d| d.as_nanos() as u64)
            });
        eprintln!("{test}: seed {seed} (replay with EDUPULSE_TEST_SEED={seed})");
        Self(seed)
    }

    /// An independent generator seeded from this one (one per concurrent task, all replayable
    /// from the parent's seed).
    pub(crate) fn fork(&mut self) -> Self {
        Self(self.next())
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `true` with probability `percent`%.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Polls `read_all` from `cursor` until `n` events came (other transactions of the cluster may
/// hold the horizon back for a moment: that is the design), then checks nothing more comes.
pub(crate) async fn read_exactly(
    store: &impl EventReader,
    cursor: Cursor,
    page: usize,
    n: usize,
) -> (Vec<RecordedEvent>, Cursor) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let (mut all, mut cursor) = drain(store, cursor, page).await;
    while all.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} events readable after 30 s",
            all.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let (more, next) = drain(store, cursor, page).await;
        all.extend(more);
        cursor = next;
    }
    assert_eq!(all.len(), n, "no more events than expected");
    (all, cursor)
}

/// A store on a PostgreSQL container of its own (migrated `postgres` database), for the tests
/// that need a quiet cluster: `read_all` waits for every open write transaction of the whole
/// cluster, so on the shared container another test's transaction can hold it back, and the
/// conformance kit reads "everything" once, expecting it to be complete.
pub(crate) struct Isolated {
    store: PgEventStore,
    // Declared after the store: dropped (container removed) once the store is gone.
    pg: PgContainer,
}

impl Isolated {
    pub(crate) async fn start(group_commit: bool) -> Self {
        let pg = start_postgres().await;
        let mut config = config(&pg.url());
        if !group_commit {
            config.group_commit = GroupCommitConfig::disabled();
        }
        let store = PgEventStore::connect(&config)
            .await
            .expect("connect the store");
        store.migrate().await.expect("migrate");
        Self { store, pg }
    }

    pub(crate) fn store(&self) -> &PgEventStore {
        &self.store
    }

    pub(crate) fn container(&self) -> &PgContainer {
        &self.pg
    }
}

#[async_trait]
impl EventAppender for Isolated {
    async fn append(
        &self,
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<EventEnvelope>,
    ) -> Result<AppendOutcome, StoreError> {
        self.store.append(stream, expected, events).await
    }
}

#[async_trait]
impl EventReader for Isolated {
    async fn read_stream(
        &self,
        stream: StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.read_stream(stream, from_version, limit).await
    }

    async fn read_all(
        &self,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.read_all(after, limit).await
    }

    async fn follow(&self, after: Cursor, limit: usize) -> Result<Vec<FollowedRow>, StoreError> {
        self.store.follow(after, limit).await
    }

    async fn read_positions(
        &self,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.read_positions(from, to, limit).await
    }

    async fn stream_version(&self, stream: StreamId) -> Result<Option<u64>, StoreError> {
        self.store.stream_version(stream).await
    }

    async fn head(&self) -> Result<StoreHead, StoreError> {
        self.store.head().await
    }
}

#[async_trait]
impl CheckpointStore for Isolated {
    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        self.store.load(name).await
    }

    async fn save(
        &self,
        name: &str,
        cursor: Cursor,
        broker_sequence: u64,
    ) -> Result<(), StoreError> {
        self.store.save(name, cursor, broker_sequence).await
    }

    async fn park(&self, name: &str, event: &ParkedEvent) -> Result<(), StoreError> {
        self.store.park(name, event).await
    }

    async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>, StoreError> {
        self.store.parked(name).await
    }

    async fn request_release(
        &self,
        name: &str,
        stream: StreamId,
        release: Release,
    ) -> Result<bool, StoreError> {
        self.store.request_release(name, stream, release).await
    }

    async fn unpark(&self, name: &str, stream: StreamId) -> Result<(), StoreError> {
        self.store.unpark(name, stream).await
    }
}
