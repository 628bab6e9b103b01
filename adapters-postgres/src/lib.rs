//! The PostgreSQL adapter of the EduPulse event backbone: the event store, the relay's outbox,
//! checkpoints, dead letters, commit hints and leases, on one PostgreSQL database with sqlx.
//!
//! [`PgEventStore`] implements the ports of `edupulse-ports` ([`EventAppender`], [`EventReader`],
//! [`CommitHints`], [`CheckpointStore`], [`LeaseProvider`]) and passes their conformance kit;
//! [`PgProjectionStore`] implements the projection store port and passes its kit.
//! [`append_in_transaction`] appends inside a transaction the caller already holds. The schema
//! lives in `migrations/`, embedded as [`MIGRATOR`]; nothing creates tables on connect.
//!
//! # The events table is the outbox
//!
//! Events are appended to one table, `events`, and nothing else is written: the relay reads the
//! same table in commit-safe order and publishes to NATS. There is no dual write to get wrong.
//!
//! # Stored text is the wire's text
//!
//! `metadata` and `payload` are `json` columns (migration 0007), holding the text the appender
//! wrote: the envelope's own encoding of each ([`EventEnvelope::payload_json`](edupulse_domain::EventEnvelope::payload_json)).
//! A read decodes the payload once, to validate it, and builds the envelope's wire bytes around
//! the stored payload text ([`StoredEnvelope::into_envelope_and_body`](edupulse_domain::StoredEnvelope::into_envelope_and_body)),
//! so the relay publishes exactly what consumers have always received without encoding the
//! event again. `json` is also cheaper than `jsonb` to insert (checked, not converted) and to read
//! back as text. Nothing queries inside the columns; an idempotent retry compares them as `jsonb`.
//! Rows stored before migration 0007, or written by hand, go out with their stored spelling
//! (jsonb's key order and spacing for the former): the same JSON values.
//!
//! # Commit-safe order: nothing ever skipped, nothing read twice
//!
//! Positions (`position bigint GENERATED ALWAYS AS IDENTITY`) are handed out when rows are
//! inserted, not when their transactions commit: a transaction holding position 10 can commit
//! after one holding 11, and a follower checkpointing "up to 11" would never see 10. Filtering on
//! `position` with a snapshot bound is not enough either: a transaction that took its position
//! early can still commit after a reader passed that position.
//!
//! So every row also carries a `commit_key` and the order, and the [`Cursor`], is
//! `(commit_key, position)`:
//!
//! - `commit_key = greatest(pg_current_xact_id(), commit_key of the stream's previous event)`.
//! - [`EventReader::read_all`] returns rows `> cursor` **and below the horizon**
//!   `commit_key < pg_snapshot_xmin(pg_current_snapshot())`, in `(commit_key, position)` order.
//!
//! *Why it never skips.* The snapshot's xmin is the oldest transaction id still running. Every
//! transaction that is still running (or starts later) has an id ≥ xmin, and every row it writes
//! gets a `commit_key` ≥ its id, so ≥ xmin: no row can ever appear below a cursor a reader has
//! already returned. Every row below xmin belongs to a finished transaction (its own id is ≤ its
//! key < xmin), so the snapshot sees it if it committed and never will if it rolled back.
//!
//! *Why the inheritance.* A caller's transaction can get its id early (by writing its own tables,
//! see [`append_in_transaction`]), then append version 6 of a stream after another, younger
//! transaction appended and committed version 5. Keyed by its own id alone, version 6 would sort
//! before version 5 in the global order. Taking the greater of its id and version 5's key keeps
//! per-stream order in the global order (equal keys are ordered by position, and version 6 was
//! inserted after version 5 committed). It costs nothing: the append reads the head row anyway.
//!
//! *What it costs, and how the relay avoids paying it.* A long-running **write** transaction (one
//! holding a transaction id) anywhere in the PostgreSQL cluster, not only on this table, holds
//! back the horizon: `read_all` returns nothing newer than that transaction's id until it ends.
//! [`EventReader::follow_visible`] also returns what is committed above the horizon, flagged as
//! not settled (one statement: the same snapshot gives the rows and the bound). The relay
//! publishes those rows at once and remembers them ([`edupulse_ports::ReadAhead`]), while its
//! checkpoint only moves through the settled rows; a row that commits late is ordered before
//! rows already published, and is still read because the next read starts at the checkpoint.
//! Per-stream order holds because an event is appended only once its stream's previous version
//! is committed, so a visible event's predecessor is always visible too, ordered before it.
//! Beyond a bounded number of rows read ahead (half a page), events wait for the horizon as
//! before, so the relay's memory stays bounded: a transaction left open for hours delays events
//! beyond that bound and grows the checkpoint lag, but loses and skips nothing.
//! Read-only transactions have no id and do not hold it back. An operator sees it as a growing
//! relay lag while appends continue, and finds the culprit with
//! [`PgEventStore::oldest_open_transaction`] (the `status` command shows its pid, age,
//! application name and state; `pg_stat_activity.backend_xid` is the raw source). Ending or
//! terminating that session releases the relay at once. Keep `idle_in_transaction_session_timeout`
//! set on application roles.
//!
//! *Operations.* `commit_key`s are transaction ids with their epoch (64 bits, never wrapping).
//! Physical replicas, failover and `pg_upgrade` keep the transaction counter, so keys keep
//! growing; a logical dump restored into a **new** cluster does not: there, advance the
//! transaction counter past the highest stored `commit_key` (`pg_resetwal --next-transaction-id`
//! with epoch) before appending, or new events would sort below the relay's checkpoint.
//!
//! # Appending
//!
//! One round trip per batch: a single statement reads the stream's head (version and key), checks
//! the expected version (any, no stream, exact n), and inserts the whole batch with
//! `INSERT … SELECT … FROM unnest(…) WITH ORDINALITY`, returning the head it saw and the positions
//! inserted. A failed expectation inserts nothing and raises nothing:
//! [`StoreError::Conflict`] with the actual version. A concurrent writer that read the same head
//! makes the insert fail with SQLSTATE 23505 on `events_stream_version_key`: also a conflict,
//! with the version read again (appends expecting [`ExpectedVersion::Any`] just try again). Errors
//! are classified by SQLSTATE and constraint name, never by message text.
//!
//! Appends are idempotent by event id: a conflict or a 23505 on `events_event_id_key` looks the
//! batch's ids up; when all are stored, in the same stream, with the same content (type, schema
//! version, payload, metadata, aggregate), the append is a replay and returns the original
//! positions ([`AppendOutcome::replayed`]); otherwise it is [`StoreError::DuplicateEventId`].
//!
//! # Group commit
//!
//! Most application code appends one event per command, and a transaction per event is bounded
//! by the commit (WAL flush) and the round trips, not by the work. With group commit on (the
//! default, [`GroupCommitConfig`]), concurrent [`EventAppender::append`] calls are coalesced: a
//! call that finds nothing of its shard being written writes alone, at once (a lone caller pays
//! no hand-off); calls that arrive while a write is in flight queue up and a writer task writes
//! them all with one statement (one transaction, one flush), each call keeping its own
//! expected-version check, idempotency and error; one call's conflict never fails or delays
//! another. Streams are sharded over the writers, and a group holds at most one call per stream
//! (the others wait for the next group, in arrival order). If the grouped statement fails as a
//! whole (a writer outside the group raced, an id clash, a cancelled statement), the group is
//! replayed call by call in savepoints of one transaction. Each writer holds a pooled connection
//! while it has work.
//!
//! What a grouped call's answer means, exactly:
//!
//! - `Ok` (not replayed): the call's events are committed, at the versions and positions given.
//!   A grouped statement commits on its own (autocommit), and its answer is used only once the
//!   server has reported it complete, commit included, without an error. The call-by-call
//!   transaction is only trusted after its last
//!   statement before the COMMIT has seen every row about to be acknowledged: a transaction in
//!   which any statement outside the savepoints failed (a SAVEPOINT or RELEASE cancelled, timed
//!   out, out of memory) is aborted, that last statement then fails, whereas its COMMIT would
//!   answer ROLLBACK without an error (sqlx reports that as a successful commit).
//! - `Ok` replayed: every event of the batch was already committed by an earlier append.
//! - [`StoreError::Conflict`], [`StoreError::DuplicateEventId`], [`StoreError::InvalidInput`]:
//!   nothing of the call is committed.
//! - [`StoreError::Internal`]: a bug or a misconfiguration for an operator (a denied privilege, a
//!   missing table, a stored value out of range); whether the call committed is not known.
//! - [`StoreError::Unavailable`]: the outcome is unknown, or the call was rolled back through no
//!   fault of its own. A statement of the call was cancelled or timed out, the connection broke,
//!   the commit failed, or the call-by-call transaction did not commit (every call of that
//!   transaction then gets `Unavailable`, whatever it got inside it: a conflict or a duplicate id
//!   seen there may have been caused by another call's rolled-back rows). Retrying with the same
//!   event ids is safe: an append that did commit is reported as a replay.
//!
//! The same holds without group commit: each statement of a direct append commits on its own.
//!
//! # Appending inside the caller's transaction
//!
//! [`append_in_transaction`] takes the caller's `&mut PgConnection` (an sqlx
//! `Transaction<'_, Postgres>` dereferences to one), so a service changes its own rows and appends
//! its events atomically. It is PostgreSQL-specific on purpose: the ports are storage-agnostic and
//! must not carry sqlx types, and "a transaction shared with your own tables" only exists for a
//! store in the same database. Domain code stays independent: command handlers return the events
//! to append; only the thin service layer that owns the transaction calls this function.
//!
//! # Append-only, enforced by the database
//!
//! Triggers refuse UPDATE, DELETE (per row) and TRUNCATE (per statement) on `events`, for every
//! role including the owner, with SQLSTATE [`APPEND_ONLY_SQLSTATE`].
//!
//! # Roles with one job each, and rules no INSERT can break
//!
//! `migrate` creates two NOLOGIN roles, to be granted to login roles:
//!
//! - `edupulse_writer`, for services: SELECT and INSERT on `events`, nothing else;
//! - `edupulse_relay`, for the relay: SELECT on `events`; checkpoints, leases, parked streams and
//!   dead letters. It cannot append.
//!
//! Migrations run as the schema's owner, a login nothing uses at run time. `edupulse_app`, the
//! single role of earlier versions, is now only the member of both (no privilege of its own).
//! A privilege the login lacks is [`StoreError::PermissionDenied`](edupulse_ports::StoreError).
//!
//! Granting INSERT would let a hand-written row bypass the append path, so the table checks what
//! the relay relies on for every INSERT statement, whoever runs it (a statement-level trigger over
//! the inserted rows, one set-based query): versions follow each other
//! ([`VERSION_GAP_SQLSTATE`] otherwise), and `commit_key` is exactly the one the store computes
//! ([`COMMIT_KEY_SQLSTATE`] otherwise), so no row can fall below a saved checkpoint (never read)
//! or stay above the read horizon (its stream stalled). Rows are refused, never stored as given.
//!
//! # Commit hints
//!
//! Followers are woken on channel [`HINT_CHANNEL`] (empty payload; a wake-up hint only, followers
//! also poll). For an append in the caller's transaction, a statement-level trigger notifies:
//! PostgreSQL delivers it at that transaction's commit, never for a rollback. The store's own
//! appends opt out of the trigger (a transaction-local setting their statement makes) and send
//! one coalesced NOTIFY after committing, from a read-only transaction: a NOTIFY inside a
//! transaction takes a database-wide lock at commit and keeps it through the WAL flush, which
//! serialized every committing appender (a seventh of the group writers' time at 5k events/s,
//! wait event `Lock:object`).
//!
//! # Leases expire unless renewed
//!
//! A lease ([`LeaseProvider`]) is a row of `leases`: name, holder, epoch, `expires_at`. Taking
//! it is one statement that inserts the row or takes it over once expired, incrementing its
//! epoch (a fencing token, [`Lease::epoch`]) and setting `expires_at = clock_timestamp() + ttl`.
//! A keeper task renews it every `renew_interval` on a connection of its own (replaced after a
//! failed or stuck attempt); dropping the lease releases the row (best effort; it expires
//! otherwise). `status` shows the holder of an unexpired row. Timings: [`LeaseConfig`], default
//! TTL 10 s, renewals every TTL/3.
//!
//! *Why not a session advisory lock.* A session lock lives as long as the server
//! keeps the holder's session. When the holder's host dies or its network silently drops
//! packets (no FIN, no RST), the server keeps it until TCP gives up, about two hours with the
//! kernel's defaults, and no standby can take over. Server-side keepalives shorten that only
//! when nothing sits in between: a proxy (Docker's userland docker-proxy for ports published on
//! 127.0.0.1, PgBouncer, a cloud load balancer) answers keepalives on behalf of a client that
//! is gone, so the session, and a lock tied to it, may never end. An expiry needs no cooperation
//! from the dead holder, its connections or anything between them. A session lock is also
//! broken by PgBouncer in transaction mode (consecutive statements may run on different server
//! sessions); the lease row needs no session state, so leases work through such a pooler too
//! (the rest of the store does not rely on session state either, except commit hints: LISTEN
//! needs session mode or a direct connection).
//!
//! *Why the holder never overlaps its successor.* The holder counts on its own monotonic clock
//! from the moment it *sent* the last renewal that succeeded; the server counted the TTL from
//! when it *received* it, later. The holder declares the lease lost ([`Lease::lost`]) once
//! `ttl - safety_margin` has passed without another success, so it stops at least the margin
//! (default TTL/5) before the server lets anyone else in. The margin covers the difference of
//! rate between the two clocks and the time to stop. Only the server's clock decides expiry,
//! so clients' clocks need not agree; a *step* of the server's wall clock (a manual change; NTP
//! slews) shortens or lengthens leases by that much.
//!
//! *Timing.* A standby takes over at most one TTL after the holder's last renewal reached the
//! server, plus its own retry period (the relay's `lease_retry`): 10 s + 1 s by default. A relay
//! whose network fails gives up after at most `ttl - safety_margin` (8 s).
//!
//! *Sessions.* Every connection of the store also sends TCP keepalive and user timeout settings
//! to the server ([`SessionKeepalive`]: probes after 5 s idle, every 2 s, 3 lost; unacknowledged
//! data dropped after 10 s), so PostgreSQL ends the sessions of a vanished client in seconds and
//! their open transactions stop holding the relay's horizon back. They only help when the
//! server sees the client's own TCP connection (not through a proxy); leases do not rely on
//! them. Zero them behind a pooler that refuses startup options (PgBouncer by default).
//!
//! # Costs, measured
//!
//! On this machine: 2 cores shared with other builds (load average 3–4 during the runs),
//! PostgreSQL 15 in Docker (storage driver fuse-overlayfs, so every WAL flush goes through FUSE),
//! `fsync=on`, `synchronous_commit=on`, reached over TCP loopback through docker-proxy; events of
//! ~370 bytes encoded. Client figures from `examples/append_costs.rs` (release build, three
//! runs: the range, then the typical value); server-side split from `pgbench -M prepared`
//! inside the container (no network).
//!
//! | step                                                          | cost                      |
//! |---------------------------------------------------------------|---------------------------|
//! | round trip, client (`SELECT 1` over TCP + docker-proxy)       | 90–310 µs, typ. 120 µs    |
//! | round trip, server only (pgbench, unix socket)                | 50 µs                     |
//! | commit of a one-row insert, client (statement + WAL flush)    | 0.5–1.8 ms, typ. 0.65 ms  |
//! | of which the WAL flush (pgbench, `synchronous_commit` on/off) | ~0.55 ms (0.67 vs 0.12)   |
//! | the append statement alone, server CPU (flush excluded)       | ~0.24 ms (0.74 ms with it)|
//! | the NOTIFY trigger (CPU; its commit lock is another matter)   | < 10 µs (not measurable)  |
//! | append, 1 event, one caller                                   | 1.0–2.6 ms (380–1000 /s)  |
//! | append, batch of 10 (per event)                               | 125–420 µs (2.4k–8k /s)   |
//! | append, batch of 100 (per event)                              | 27–73 µs (14k–38k /s)     |
//! | append, batch of 1000 (per event)                             | 26–37 µs (27k–39k /s)     |
//! | raw batched insert, 1000 rows, no store logic (per row)       | 12–21 µs (48k–82k /s)     |
//! | 16 concurrent single-event callers, group commit off / on     | 0.5–1.3k /s / 2.8k–5.4k /s|
//! | 64 concurrent single-event callers, group commit off / on     | 0.6–1.5k /s / 6k–15k /s   |
//! | `read_all`, pages of 1000, decoded (per event)                | 5–13 µs (75k–200k /s)     |
//!
//! What it says: a single-event append is a round trip, ~0.25 ms of statement work and a WAL
//! flush (~0.55 ms here); the flush and the round trip are per *transaction*, so batching is
//! where the throughput is: a batch of 100 already reaches ~75% of the batch-of-1000 rate, which
//! is ~50–60% of a raw insert of the same rows (the difference is the head lookup, the unique
//! index on `(stream_id, stream_version)`, JSON encoding and the identity). Group commit turns
//! 64 concurrent single-event callers into batches: 4–12× the throughput of one transaction per
//! call in the same run, with no change to any caller's result. On 2 loaded cores the client,
//! docker-proxy and PostgreSQL compete for CPU, which bounds every figure above and makes them
//! vary ±2× between runs: compare ratios within a run, not absolute values across runs.
//!
//! # Projections
//!
//! [`PgEventStore::projections`] gives the [`ProjectionStore`](edupulse_ports::projection::ProjectionStore)
//! on the same database (migration 0008): per projection and generation, each bucket's
//! position, each aggregate's applied version, parked events, documents and live workers. A
//! unit ([`PgProjectionUnit`]) is one transaction that first locks its bucket's row: the
//! handler's writes, the applied versions and the bucket's new position commit together, so an
//! effect happens exactly once, and two workers can never both commit a bucket's batch (the
//! runner commits only if the position it read is still the committed one). The batch's
//! aggregates are locked and read in one statement; writes are kept in the unit and written by
//! one statement right before the COMMIT, which fails in a transaction where anything failed
//! (no silent ROLLBACK). Events a projection emits ([`ProjectionUnit::emit`](edupulse_ports::projection::ProjectionUnit))
//! are appended in the unit's transaction, in a savepoint, and published by the relay after the
//! commit. Units time out (`lock_timeout`, `idle_in_transaction_session_timeout`) after the
//! lease's time to live, so a stuck worker never holds a bucket longer than its lease. Roles:
//! `edupulse_projector` (workers) and `edupulse_reader` (the view `projection_active_documents`
//! only).
//!
//! # Security
//!
//! [`PgStoreConfig`] keeps the URL in a [`secrecy::SecretString`]; its `Debug` shows the target
//! without the password, and no error of this crate quotes the URL.

mod append;
mod checkpoint;
mod config;
mod error;
mod group;
mod hints;
mod lease;
mod projection;
mod read;
mod status;

pub use config::{
    ConfigError, GroupCommitConfig, LeaseConfig, LeaseConfigError, PgStoreConfig, SessionKeepalive,
    StatementLog,
};
pub use error::{APPEND_ONLY_SQLSTATE, COMMIT_KEY_SQLSTATE, VERSION_GAP_SQLSTATE};
pub use hints::HINT_CHANNEL;
pub use projection::{PgProjectionStore, PgProjectionUnit};
pub use status::OpenTransaction;

use async_trait::async_trait;
use edupulse_domain::{DEFAULT_MAX_EVENT_BYTES, EventEnvelope, ExpectedVersion, StreamId};
use edupulse_ports::{
    AppendOutcome, Checkpoint, CheckpointStore, CommitHints, Cursor, EventAppender, EventReader,
    FollowedPage, FollowedRow, Lease, LeaseProvider, ParkedEvent, RecordedEvent, Release,
    StoreError, StoreHead, validate_batch,
};
use futures::stream::BoxStream;
use hints::HintMode;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A pooled connection idle for longer than this is pinged before it is handed out.
const IDLE_PING_AFTER: Duration = Duration::from_secs(1);

/// The embedded schema migrations; run with `MIGRATOR.run(&pool)` or [`PgEventStore::migrate`].
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The PostgreSQL event store. Cheap to clone (clones share the pool and the group commit
/// writers).
#[derive(Clone)]
pub struct PgEventStore {
    pool: PgPool,
    max_event_bytes: usize,
    group_config: GroupCommitConfig,
    group: Arc<OnceLock<group::GroupCommitter>>,
    after_commit: Arc<OnceLock<hints::AfterCommit>>,
    lease: LeaseConfig,
    connect_timeout: Duration,
}

impl fmt::Debug for PgEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the pool's connect options: they hold the password.
        f.debug_struct("PgEventStore")
            .field("pool_size", &self.pool.size())
            .field("max_event_bytes", &self.max_event_bytes)
            .field("group_commit", &self.group_config)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl PgEventStore {
    /// Connects a pool (one connection is opened at once, to fail early). Runs no DDL: run
    /// [`PgEventStore::migrate`] (the `migrate` command) to create or update the schema.
    ///
    /// # Errors
    /// [`StoreError::InvalidInput`] for a URL that cannot be parsed (the message never quotes
    /// it); [`StoreError::Unavailable`] when the server cannot be reached; [`StoreError::Internal`]
    /// when it refuses the connection (authentication, unknown database).
    pub async fn connect(config: &PgStoreConfig) -> Result<Self, StoreError> {
        let options = config
            .connect_options()
            .map_err(|e| StoreError::InvalidInput {
                reason: e.to_string(),
            })?;
        // One direct connection first: a pool only reports "timed out" when the server is
        // unreachable or refuses the credentials; the direct attempt gives the real reason
        // (connection refused, authentication failed, unknown database), classified as usual.
        let probe =
            tokio::time::timeout(config.acquire_timeout, PgConnection::connect_with(&options))
                .await
                .map_err(|_| error::unavailable("timed out connecting to PostgreSQL"))?
                .map_err(error::map_sqlx)?;
        // Closing is best effort: the probe has done its job either way.
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(config.acquire_timeout)
            // sqlx pings every connection it hands out by default: a round trip per call, as
            // much as the call itself for a read. Ping only connections idle for a while (a
            // restarted server is then noticed before use); a busy connection that breaks fails
            // its call with `Unavailable`, which callers retry anyway.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > IDLE_PING_AFTER {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await
            .map_err(error::map_sqlx)?;
        Ok(Self {
            pool,
            max_event_bytes: config.max_event_bytes,
            group_config: config.group_commit,
            group: Arc::default(),
            after_commit: Arc::default(),
            lease: config.lease,
            connect_timeout: config.acquire_timeout,
        })
    }

    /// Wraps an existing pool, with the defaults of [`PgStoreConfig::new`].
    pub fn from_pool(pool: PgPool) -> Self {
        let defaults = PgStoreConfig::new(String::new().into());
        Self {
            pool,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            group_config: defaults.group_commit,
            group: Arc::default(),
            after_commit: Arc::default(),
            lease: defaults.lease,
            connect_timeout: defaults.acquire_timeout,
        }
    }

    /// The same store with another group commit configuration (takes effect for appends made
    /// through the returned value and its clones).
    #[must_use]
    pub fn with_group_commit(mut self, config: GroupCommitConfig) -> Self {
        self.group_config = config;
        self.group = Arc::default();
        self
    }

    /// The same store with other lease timings (for leases taken through the returned value).
    #[must_use]
    pub fn with_lease_config(mut self, lease: LeaseConfig) -> Self {
        self.lease = lease;
        self
    }

    /// The same store with another event size limit.
    #[must_use]
    pub fn with_max_event_bytes(mut self, max_event_bytes: usize) -> Self {
        self.max_event_bytes = max_event_bytes;
        self
    }

    /// The connection pool (for the caller's own transactions, see [`append_in_transaction`]).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the pending migrations of [`MIGRATOR`].
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached; [`StoreError::Internal`]
    /// when a migration fails or the applied ones differ from the embedded ones.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => error::map_sqlx(e),
            other => StoreError::Internal(Box::new(other)),
        })
    }

    /// Events relay `name` dead-lettered before parked streams replaced dead letters (rows of
    /// earlier versions, kept for `status`; the relay records none any more).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    pub async fn dead_letter_count(&self, name: &str) -> Result<u64, StoreError> {
        checkpoint::dead_letter_count(&self.pool, name).await
    }

    /// The oldest transaction of the cluster that holds a transaction id: the one holding back
    /// [`EventReader::read_all`] (and so the relay) if any is. `None` when there is none.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`StoreError::Internal`].
    pub async fn oldest_open_transaction(&self) -> Result<Option<OpenTransaction>, StoreError> {
        status::oldest_open_transaction(&self.pool).await
    }

    /// [`append_in_transaction`] with this store's event size limit.
    ///
    /// # Errors
    /// As [`append_in_transaction`].
    pub async fn append_in_transaction(
        &self,
        conn: &mut PgConnection,
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<EventEnvelope>,
    ) -> Result<AppendOutcome, StoreError> {
        validate_batch(stream, &events, self.max_event_bytes)?;
        append::append_batch(
            conn,
            stream,
            expected,
            &events,
            append::Isolation::Savepoint,
            HintMode::AtCommit,
        )
        .await
    }

    fn group(&self) -> Option<&group::GroupCommitter> {
        self.group_config.enabled.then(|| {
            self.group.get_or_init(|| {
                group::GroupCommitter::start(
                    &self.pool,
                    self.group_config,
                    self.after_commit().clone(),
                )
            })
        })
    }

    /// The sender of this store's commit hints (started at first use, inside the runtime).
    fn after_commit(&self) -> &hints::AfterCommit {
        self.after_commit
            .get_or_init(|| hints::AfterCommit::start(&self.pool))
    }
}

/// Appends `events` to `stream` inside the transaction `conn` is in, with the guarantees of
/// [`EventAppender::append`]: expected version, idempotency by event id, commit-safe order. The
/// events become visible, and the relay's wake-up hint is sent, when the caller commits; if it
/// rolls back, nothing was appended.
///
/// The append runs in a savepoint: when it fails (a conflict, a duplicate id, …), the savepoint
/// is rolled back and the caller's transaction is still usable: it can roll back, or go on.
/// Pass an sqlx transaction (`&mut tx`); a connection outside a transaction gets its own
/// transaction. (A transaction opened with a raw `BEGIN` statement is not known to sqlx and is
/// not supported.) Uses the default event size limit; see
/// [`PgEventStore::append_in_transaction`] for the store's configured one.
///
/// Whatever the caller's transaction wrote before the append gave it a transaction id then: its
/// events are ordered as of that id (or later), and the relay waits for its commit (see the
/// crate docs). Keep such transactions short.
///
/// ```no_run
/// use edupulse_domain::{EventEnvelope, ExpectedVersion, LessonPublished, LessonTitle, StreamId, Uuid};
/// use edupulse_postgres::append_in_transaction;
///
/// /// Domain code: decides, and returns the events. No database type in sight.
/// fn publish(lesson_id: Uuid, author_id: Uuid, title: &str) -> Result<Vec<EventEnvelope>, Box<dyn std::error::Error>> {
///     let event = LessonPublished { lesson_id, author_id, title: LessonTitle::new(title)? };
///     Ok(vec![EventEnvelope::new(event).with_stream(StreamId::from_uuid(lesson_id))])
/// }
///
/// /// The service layer owns the transaction: its own row and the events, both or neither.
/// async fn publish_lesson(
///     pool: &sqlx::PgPool,
///     lesson_id: Uuid,
///     author_id: Uuid,
///     seen_version: u64,
/// ) -> Result<(), Box<dyn std::error::Error>> {
///     let events = publish(lesson_id, author_id, "Ownership, borrowing and lifetimes")?;
///     let mut tx = pool.begin().await?;
///     sqlx::query("UPDATE lessons SET published_at = now() WHERE id = $1")
///         .bind(lesson_id)
///         .execute(&mut *tx)
///         .await?;
///     let stream = StreamId::from_uuid(lesson_id);
///     // A conflict rolls back only the append; here we give up the whole command.
///     append_in_transaction(&mut tx, stream, ExpectedVersion::Exact(seen_version), events).await?;
///     tx.commit().await?;
///     Ok(())
/// }
/// ```
///
/// # Errors
/// As [`EventAppender::append`]. Every statement of the append runs in a savepoint, so after a
/// conflict, a duplicate id or invalid input the caller's transaction is as it was before the
/// call, and usable. After [`StoreError::Unavailable`] it may not be: a savepoint command itself
/// may have failed (cancelled, timed out) and aborted it, or the connection may be gone. Roll it
/// back then: the COMMIT of an aborted transaction answers ROLLBACK without an error, which
/// sqlx's `Transaction::commit` reports as success.
pub async fn append_in_transaction(
    conn: &mut PgConnection,
    stream: StreamId,
    expected: ExpectedVersion,
    events: Vec<EventEnvelope>,
) -> Result<AppendOutcome, StoreError> {
    validate_batch(stream, &events, DEFAULT_MAX_EVENT_BYTES)?;
    // The caller's commit is the only moment that tells the events are committed: the
    // trigger sends the hint then.
    append::append_batch(
        conn,
        stream,
        expected,
        &events,
        append::Isolation::Savepoint,
        HintMode::AtCommit,
    )
    .await
}

#[async_trait]
impl EventAppender for PgEventStore {
    #[tracing::instrument(name = "append", skip_all, fields(%stream, %expected, events = events.len()))]
    async fn append(
        &self,
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<EventEnvelope>,
    ) -> Result<AppendOutcome, StoreError> {
        validate_batch(stream, &events, self.max_event_bytes)?;
        if let Some(group) = self.group().filter(|g| g.accepts(events.len())) {
            return group.append(stream, expected, events).await;
        }
        let mut conn = self.pool.acquire().await.map_err(error::map_sqlx)?;
        let hint = HintMode::AfterCommit(self.after_commit());
        append::append_batch(
            &mut conn,
            stream,
            expected,
            &events,
            append::Isolation::Autocommit,
            hint,
        )
        .await
    }
}

#[async_trait]
impl EventReader for PgEventStore {
    async fn read_stream(
        &self,
        stream: StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        read::read_stream(&self.pool, stream, from_version, limit).await
    }

    async fn read_all(
        &self,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        read::read_all(&self.pool, after, limit).await
    }

    async fn follow(&self, after: Cursor, limit: usize) -> Result<Vec<FollowedRow>, StoreError> {
        read::follow(&self.pool, after, limit).await
    }

    async fn follow_visible(
        &self,
        after: Cursor,
        limit: usize,
    ) -> Result<FollowedPage, StoreError> {
        read::follow_visible(&self.pool, after, limit).await
    }

    async fn read_positions(
        &self,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        read::read_positions(&self.pool, from, to, limit).await
    }

    async fn stream_version(&self, stream: StreamId) -> Result<Option<u64>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(error::map_sqlx)?;
        append::stream_version(&mut conn, stream).await
    }

    async fn head(&self) -> Result<StoreHead, StoreError> {
        read::head(&self.pool).await
    }
}

#[async_trait]
impl CommitHints for PgEventStore {
    async fn subscribe(&self) -> Result<BoxStream<'static, ()>, StoreError> {
        hints::subscribe(&self.pool).await
    }
}

#[async_trait]
impl CheckpointStore for PgEventStore {
    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        checkpoint::load(&self.pool, name).await
    }

    async fn save(
        &self,
        name: &str,
        cursor: Cursor,
        broker_sequence: u64,
    ) -> Result<(), StoreError> {
        checkpoint::save(&self.pool, name, cursor, broker_sequence).await
    }

    async fn park(&self, name: &str, event: &ParkedEvent) -> Result<(), StoreError> {
        checkpoint::park(&self.pool, name, event).await
    }

    async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>, StoreError> {
        checkpoint::parked(&self.pool, name).await
    }

    async fn request_release(
        &self,
        name: &str,
        stream: StreamId,
        release: Release,
    ) -> Result<bool, StoreError> {
        checkpoint::request_release(&self.pool, name, stream, release).await
    }

    async fn unpark(&self, name: &str, stream: StreamId) -> Result<(), StoreError> {
        checkpoint::unpark(&self.pool, name, stream).await
    }
}

#[async_trait]
impl LeaseProvider for PgEventStore {
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
    ) -> Result<Option<Box<dyn Lease>>, StoreError> {
        let settings = lease::KeeperSettings {
            options: (*self.pool.connect_options()).clone(),
            connect_timeout: self.connect_timeout,
            config: self.lease,
        };
        lease::try_acquire(&self.pool, settings, name, holder).await
    }

    async fn holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        lease::holder(&self.pool, name).await
    }
}
