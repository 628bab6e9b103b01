//! Group commit: concurrent appends coalesced into one statement (one transaction, one WAL flush),
//! each call keeping its own expected-version check, idempotency and error.
//!
//! Streams are sharded over a few writer tasks. A call whose shard has nothing being written
//! writes alone, directly (the "leader": no hand-off, so a lone caller pays no extra latency).
//! Calls arriving while a write of their shard is in flight go to the shard's queue; its writer
//! takes whatever is queued (up to a number of events), at most one call per stream (the others
//! wait for the next group, in arrival order), and writes the group with one statement that
//! checks each call's expectation against its stream's head separately: a call whose expectation
//! fails inserts nothing and does not affect the others. While a group is being written, the next
//! one accumulates: the busier the store, the larger the groups.
//!
//! When the statement fails as a whole (a unique violation because a writer outside the group
//! raced, a reused event id, any other database error), the group is replayed call by call, each
//! in its own savepoint of one transaction, so every call gets exactly its own result. That
//! transaction is shared: a failure outside the savepoints aborts it for every call, and its
//! COMMIT then answers ROLLBACK without an error. So its answers are sent only after a commit
//! proven by a last statement that sees every row about to be acknowledged; otherwise every call
//! of it is answered `Unavailable` (see `one_by_one`).
//!
//! A caller that gives up (drops its future) does not withdraw its call: like any append whose
//! outcome is unknown, it may have happened, and a retry with the same ids is a replay.

use crate::append::{
    Columns, Isolation, append_batch, conflict_or_replay, encode_expected, to_u64,
};
use crate::config::GroupCommitConfig;
use crate::error::{internal, map_sqlx, shared_failure, unavailable, with_causes};
use crate::hints::{AfterCommit, HintMode};
use edupulse_domain::{EventEnvelope, ExpectedVersion, StreamId, Uuid};
use edupulse_ports::{AppendOutcome, AppendedEvent, StoreError};
use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{mpsc, oneshot};

/// The statement for a group: like the single append, per request. `requests` has one row per
/// call (at most one per stream); `heads` reads each stream's head through a LATERAL index probe;
/// `accepted` keeps the calls whose expectation holds; the insert joins each event to its call.
const GROUP_APPEND_SQL: &str = r#"
WITH requests AS (
    SELECT * FROM unnest($1::uuid[], $2::int2[], $3::int8[])
        WITH ORDINALITY AS r(stream_id, kind, exact, req)
), heads AS (
    SELECT r.req, r.stream_id, r.kind, r.exact, h.stream_version AS version, h.commit_key
    FROM requests r
    LEFT JOIN LATERAL (
        SELECT e.stream_version, e.commit_key
        FROM events e
        WHERE e.stream_id = r.stream_id
        ORDER BY e.stream_version DESC
        LIMIT 1
    ) h ON true
), accepted AS (
    SELECT * FROM heads h
    WHERE CASE h.kind
        WHEN 0 THEN true
        WHEN 1 THEN h.version IS NULL
        ELSE h.version = h.exact
    END
), inserted AS (
    INSERT INTO events (commit_key, event_id, stream_id, stream_version, aggregate_id,
                        event_type, schema_version, occurred_at, metadata, payload)
    SELECT greatest(pg_current_xact_id()::text::int8, a.commit_key), u.event_id, a.stream_id,
           coalesce(a.version, 0) + u.nth, u.aggregate_id,
           u.event_type, u.schema_version, u.occurred_at, u.metadata, u.payload
    FROM unnest($4::int8[], $5::int8[], $6::uuid[], $7::uuid[], $8::text[], $9::int4[],
                $10::timestamptz[], $11::text[]::json[], $12::text[]::json[])
        WITH ORDINALITY AS u(req, nth, event_id, aggregate_id, event_type, schema_version,
                             occurred_at, metadata, payload, ord)
    JOIN accepted a ON a.req = u.req
    -- The store sends the commit hint itself, after the commit (see HintMode).
    CROSS JOIN (SELECT set_config('edupulse.hint_after_commit', $13::text, true)) AS hint
    ORDER BY u.ord
    RETURNING position, stream_id, stream_version
)
SELECT h.req, h.version AS head, coalesce(i.positions, '{}'::int8[]) AS positions
FROM heads h
LEFT JOIN (
    SELECT stream_id, array_agg(position ORDER BY stream_version) AS positions
    FROM inserted GROUP BY stream_id
) i ON i.stream_id = h.stream_id
ORDER BY h.req
"#;

/// How many of these event ids the transaction sees (its own rows included).
const COUNT_IDS_SQL: &str = "SELECT count(*) FROM events WHERE event_id = ANY($1)";

type Reply = oneshot::Sender<Result<AppendOutcome, StoreError>>;

struct Request {
    stream: StreamId,
    expected: ExpectedVersion,
    events: Vec<EventEnvelope>,
    reply: Reply,
}

impl Request {
    fn answer(self, result: Result<AppendOutcome, StoreError>) {
        // The caller may have given up (its future was dropped): nothing to do then.
        let _ = self.reply.send(result);
    }
}

/// One writer task: its queue, and how many appends of its streams are being written now.
struct Shard {
    queue: mpsc::Sender<Request>,
    busy: Arc<AtomicUsize>,
}

/// Marks a shard busy for as long as it lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter.clone())
    }

    /// Marks the shard busy only if nothing is being written: the caller may then write alone.
    fn try_lead(counter: &Arc<AtomicUsize>) -> Option<Self> {
        counter
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Self(counter.clone()))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The queues of the writer tasks.
pub(crate) struct GroupCommitter {
    pool: PgPool,
    shards: Vec<Shard>,
    max_group_events: usize,
    hints: AfterCommit,
}

impl GroupCommitter {
    /// Starts the writer tasks on the current Tokio runtime. They stop when this is dropped and
    /// their queues are drained.
    pub(crate) fn start(pool: &PgPool, config: GroupCommitConfig, hints: AfterCommit) -> Self {
        let max_group_events = config.max_group_events.max(1);
        let capacity = config.queue_capacity.max(1);
        let shards = (0..config.writers.max(1))
            .map(|_| {
                let (queue, rx) = mpsc::channel(capacity);
                let busy = Arc::new(AtomicUsize::new(0));
                tokio::spawn(writer(
                    pool.clone(),
                    hints.clone(),
                    rx,
                    busy.clone(),
                    max_group_events,
                    capacity,
                ));
                Shard { queue, busy }
            })
            .collect();
        Self {
            pool: pool.clone(),
            shards,
            max_group_events,
            hints,
        }
    }

    /// Whether a batch of `n` events goes through the group (larger ones are groups of their own
    /// already, and are written directly).
    pub(crate) fn accepts(&self, n: usize) -> bool {
        n <= self.max_group_events
    }

    /// Appends, alone when nothing else of the shard is being written (no hand-off to the writer,
    /// so a lone caller pays no extra latency), else through the writer's queue: the calls that
    /// arrive while a write is in flight are written together by the next group.
    pub(crate) async fn append(
        &self,
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<EventEnvelope>,
    ) -> Result<AppendOutcome, StoreError> {
        let shard = &self.shards[(stream.as_uuid().as_u128() % self.shards.len() as u128) as usize];
        if let Some(_leading) = Busy::try_lead(&shard.busy) {
            let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
            let hint = HintMode::AfterCommit(&self.hints);
            return append_batch(
                &mut conn,
                stream,
                expected,
                &events,
                Isolation::Autocommit,
                hint,
            )
            .await;
        }
        let (reply, answer) = oneshot::channel();
        let request = Request {
            stream,
            expected,
            events,
            reply,
        };
        shard
            .queue
            .send(request)
            .await
            .map_err(|_| unavailable("the group commit writer has stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("the group commit writer stopped before answering"))?
    }
}

#[derive(Default)]
struct Group {
    requests: Vec<Request>,
    streams: HashSet<StreamId>,
    events: usize,
}

impl Group {
    /// Takes `request` into the group, or gives it back when its stream is already in the group
    /// or it would make the group too large.
    fn offer(&mut self, request: Request, max_events: usize) -> Option<Request> {
        let too_big = !self.requests.is_empty() && self.events + request.events.len() > max_events;
        if too_big || self.streams.contains(&request.stream) {
            return Some(request);
        }
        self.streams.insert(request.stream);
        self.events += request.events.len();
        self.requests.push(request);
        None
    }

    fn is_full(&self, max_events: usize) -> bool {
        self.events >= max_events
    }
}

async fn writer(
    pool: PgPool,
    hints: AfterCommit,
    mut queue: mpsc::Receiver<Request>,
    busy: Arc<AtomicUsize>,
    max_events: usize,
    max_deferred: usize,
) {
    // Calls that could not join the previous group, oldest first: they go first next time, so
    // calls on one stream are written in arrival order.
    let mut deferred: VecDeque<Request> = VecDeque::new();
    let mut open = true;
    // The writer keeps its connection while there is work (no pool hand-off per group) and
    // gives it back when idle, or when it may be broken.
    let mut conn: Option<PoolConnection<Postgres>> = None;
    loop {
        let mut group = Group::default();
        let mut next_deferred = VecDeque::new();
        for request in deferred.drain(..) {
            next_deferred.extend(group.offer(request, max_events));
        }
        if group.requests.is_empty() {
            conn = None;
            if !open {
                return;
            }
            match queue.recv().await {
                Some(request) => next_deferred.extend(group.offer(request, max_events)),
                None => return,
            }
        }
        while open && !group.is_full(max_events) && next_deferred.len() < max_deferred {
            match queue.try_recv() {
                Ok(request) => next_deferred.extend(group.offer(request, max_events)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        deferred = next_deferred;
        let _writing = Busy::enter(&busy);
        let conn_ok = write_group(&pool, &hints, &mut conn, group.requests).await;
        if !conn_ok {
            conn = None;
        }
    }
}

/// Writes one group and answers its calls. Returns `false` when the connection may be broken.
async fn write_group(
    pool: &PgPool,
    hints: &AfterCommit,
    slot: &mut Option<PoolConnection<Postgres>>,
    mut requests: Vec<Request>,
) -> bool {
    let conn = match slot {
        Some(conn) => conn,
        None => match pool.acquire().await {
            Ok(conn) => slot.insert(conn),
            Err(error) => {
                for request in requests {
                    request.answer(Err(shared_failure(&error)));
                }
                return false;
            }
        },
    };
    if requests.len() == 1 {
        if let Some(request) = requests.pop() {
            let result = append_batch(
                conn,
                request.stream,
                request.expected,
                &request.events,
                Isolation::Autocommit,
                HintMode::AfterCommit(hints),
            )
            .await;
            let ok = !matches!(result, Err(StoreError::Unavailable(_)));
            request.answer(result);
            return ok;
        }
        return true;
    }
    match run_group_statement(conn, &requests).await {
        Ok(rows) => {
            // The statement committed on its own (autocommit).
            if rows.iter().any(|row| matches!(row, GroupRow::Appended(_))) {
                hints.committed();
            }
            for (request, row) in requests.into_iter().zip(rows) {
                match row {
                    GroupRow::Appended(events) => {
                        let stream_id = request.stream;
                        request.answer(Ok(AppendOutcome {
                            stream_id,
                            events,
                            replayed: false,
                        }));
                    }
                    // Resolving a rejection (conflict, or replay of an earlier append) takes a
                    // lookup: done aside, so that it delays neither the others nor the next group.
                    GroupRow::Rejected { head } => {
                        tokio::spawn(resolve_rejection(pool.clone(), request, head));
                    }
                    GroupRow::Failed(error) => request.answer(Err(error)),
                }
            }
        }
        Err(error @ sqlx::Error::Database(_)) => {
            tracing::debug!(%error, calls = requests.len(), "group append failed, isolating calls");
            return one_by_one(conn, hints, requests).await;
        }
        Err(error) => {
            for request in requests {
                request.answer(Err(shared_failure(&error)));
            }
            return false;
        }
    }
    true
}

enum GroupRow {
    Appended(Vec<AppendedEvent>),
    Rejected { head: Option<u64> },
    Failed(StoreError),
}

async fn run_group_statement(
    conn: &mut PgConnection,
    requests: &[Request],
) -> Result<Vec<GroupRow>, sqlx::Error> {
    let total: usize = requests.iter().map(|r| r.events.len()).sum();
    let mut streams: Vec<Uuid> = Vec::with_capacity(requests.len());
    let mut kinds = Vec::with_capacity(requests.len());
    let mut exacts = Vec::with_capacity(requests.len());
    let mut req_of_event: Vec<i64> = Vec::with_capacity(total);
    let mut nth: Vec<i64> = Vec::with_capacity(total);
    let mut columns = Columns::with_capacity(total);
    for (i, request) in requests.iter().enumerate() {
        let (kind, exact) = encode_expected(request.expected);
        streams.push(*request.stream.as_uuid());
        kinds.push(kind);
        exacts.push(exact);
        for (n, event) in request.events.iter().enumerate() {
            req_of_event.push(i as i64 + 1);
            nth.push(n as i64 + 1);
            columns.push(event);
        }
    }
    let rows = sqlx::query(GROUP_APPEND_SQL)
        .bind(&streams)
        .bind(&kinds)
        .bind(&exacts)
        .bind(&req_of_event)
        .bind(&nth)
        .bind(&columns.event_ids)
        .bind(&columns.aggregate_ids)
        .bind(&columns.event_types)
        .bind(&columns.schema_versions)
        .bind(&columns.occurred_at)
        .bind(&columns.metadata)
        .bind(&columns.payloads)
        // A group is always a transaction of the store's own: its writer sends the hint.
        .bind(HintMode::AFTER_COMMIT)
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::with_capacity(requests.len());
    for (request, row) in requests.iter().zip(&rows) {
        let head: Option<i64> = row.try_get("head")?;
        let positions: Vec<i64> = row.try_get("positions")?;
        out.push(group_row(request, head, &positions));
    }
    if out.len() != requests.len() {
        // An answer that does not fit the statement: a bug, not an outage (never retried).
        return Err(sqlx::Error::Decode(Box::new(crate::error::AdapterError(
            format!(
                "group append returned {} rows for {} calls",
                rows.len(),
                requests.len()
            ),
        ))));
    }
    Ok(out)
}

fn group_row(request: &Request, head: Option<i64>, positions: &[i64]) -> GroupRow {
    let head = match head.map(to_u64).transpose() {
        Ok(head) => head,
        Err(e) => return GroupRow::Failed(e),
    };
    if positions.is_empty() {
        return GroupRow::Rejected { head };
    }
    if positions.len() != request.events.len() {
        return GroupRow::Failed(internal(format!(
            "group append stored {} of {} events of a call",
            positions.len(),
            request.events.len()
        )));
    }
    let first = head.unwrap_or(0) + 1;
    let mut events = Vec::with_capacity(positions.len());
    for (i, (&position, event)) in positions.iter().zip(&request.events).enumerate() {
        match to_u64(position) {
            Ok(position) => events.push(AppendedEvent {
                id: event.id,
                stream_version: first + i as u64,
                position,
            }),
            Err(e) => return GroupRow::Failed(e),
        }
    }
    GroupRow::Appended(events)
}

async fn resolve_rejection(pool: PgPool, request: Request, head: Option<u64>) {
    let result = match pool.acquire().await {
        Ok(mut conn) => {
            let columns = Columns::of(&request.events);
            conflict_or_replay(&mut conn, request.stream, request.expected, head, &columns).await
        }
        Err(error) => Err(map_sqlx(error)),
    };
    request.answer(result);
}

/// The group failed as a whole: write each call in its own savepoint of one transaction (still
/// one commit), so a failing call only fails itself. Answers are sent after the commit, and only
/// a commit [`commit_proven`] vouches for: when the transaction did not commit, or its outcome is
/// unknown, every call is answered `Unavailable`, since what was computed inside the transaction
/// (appended, and also a conflict or a duplicate id, which an earlier call of the same
/// transaction may have caused) no longer holds; retrying with the same ids is safe.
async fn one_by_one(conn: &mut PgConnection, hints: &AfterCommit, requests: Vec<Request>) -> bool {
    let mut tx = match conn.begin().await {
        Ok(tx) => tx,
        Err(error) => {
            for request in requests {
                request.answer(Err(shared_failure(&error)));
            }
            return false;
        }
    };
    let mut results = Vec::with_capacity(requests.len());
    for request in &requests {
        results.push(
            append_batch(
                &mut tx,
                request.stream,
                request.expected,
                &request.events,
                Isolation::Savepoint,
                HintMode::AfterCommit(hints),
            )
            .await,
        );
    }
    let appended: Vec<Uuid> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().filter(|o| !o.replayed))
        .flat_map(|o| o.events.iter().map(|e| *e.id.as_uuid()))
        .collect();
    if let Err(failure) = commit_proven(tx, &appended).await {
        tracing::debug!(%failure, calls = requests.len(), "isolated group did not commit");
        let reason = with_causes(&failure);
        for request in requests {
            request.answer(Err(unavailable(reason.clone())));
        }
        return false;
    }
    if !appended.is_empty() {
        hints.committed();
    }
    let mut ok = true;
    for (request, result) in requests.into_iter().zip(results) {
        ok &= !matches!(result, Err(StoreError::Unavailable(_)));
        request.answer(result);
    }
    ok
}

/// Why the isolated group's transaction is not known to have committed.
#[derive(Debug, thiserror::Error)]
enum NotCommitted {
    /// The last statement before the COMMIT failed: the transaction was aborted (SQLSTATE 25P02,
    /// an earlier statement outside the savepoints failed) or broke then.
    #[error("the group's transaction failed before its commit")]
    Aborted(#[source] sqlx::Error),
    /// The transaction does not hold exactly the rows about to be acknowledged (a savepoint
    /// rolled back behind an answer's back: not expected, but then nothing is acknowledged).
    #[error("the group's transaction holds {found} of the {appended} events it appended")]
    RowsMissing { appended: usize, found: i64 },
    /// The COMMIT failed: rolled back, or unknown if the connection broke.
    #[error("the group's commit failed")]
    Commit(#[source] sqlx::Error),
}

/// Commits the isolated group's transaction, and proves it did.
///
/// In an aborted transaction, COMMIT answers ROLLBACK without an error, and sqlx reports that
/// as a successful commit; a transaction is aborted when any statement outside the calls'
/// savepoints fails (a SAVEPOINT, RELEASE or ROLLBACK TO cancelled, timed out, out of memory).
/// So the last statement before the COMMIT counts the rows the group is about to acknowledge:
/// it fails in an aborted transaction, and it sees exactly the rows the transaction holds. The
/// COMMIT of a transaction that is not aborted commits it or fails with an error.
async fn commit_proven(
    mut tx: sqlx::Transaction<'_, Postgres>,
    appended: &[Uuid],
) -> Result<(), NotCommitted> {
    let found: i64 = sqlx::query_scalar(COUNT_IDS_SQL)
        .bind(appended)
        .fetch_one(&mut *tx)
        .await
        .map_err(NotCommitted::Aborted)?;
    if usize::try_from(found).ok() != Some(appended.len()) {
        // Dropping `tx` rolls it back.
        return Err(NotCommitted::RowsMissing {
            appended: appended.len(),
            found,
        });
    }
    tx.commit().await.map_err(NotCommitted::Commit)
}
