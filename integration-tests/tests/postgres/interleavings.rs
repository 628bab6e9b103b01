//! The commit-safe order, proven the hard way: concurrent transactions open, write, append,
//! commit or roll back in random orders while two readers follow the store: one with
//! `read_all`, one beyond the horizon with `follow_visible` and a `ReadAhead` (as the relay does),
//! restarted now and then from its checkpoint. Each must see every committed event exactly once
//! (the restarted one: again only what it had read beyond its checkpoint, which the relay's
//! publisher deduplicates), never a rolled-back one, and every stream in order.

use crate::support::{Isolated, Rng, drain, event};
use edupulse_domain::{EventId, ExpectedVersion, StreamId};
use edupulse_ports::{Cursor, EventAppender, EventReader, FollowedRow, ReadAhead, RecordedEvent};
use edupulse_postgres::append_in_transaction;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Postgres, Transaction};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SCENARIOS: usize = 1000;
const MAX_TRANSACTIONS: usize = 4;
const SHARED_STREAMS: usize = 3;
const BACKGROUND_CALLERS: usize = 8;

#[derive(Clone, Copy, Debug)]
enum Step {
    /// BEGIN (no transaction id yet).
    Begin(usize),
    /// Write the caller's own table first: the transaction gets its id now, before appending.
    OwnWrite(usize),
    Append(usize),
    /// Commit or roll back.
    End(usize),
    /// The reader follows `read_all` until it returns an empty page.
    Read,
}

struct Plan {
    own_write: bool,
    commit: bool,
    events: usize,
}

struct Follower {
    cursor: Cursor,
    seen: HashSet<EventId>,
    last_version: HashMap<StreamId, u64>,
}

/// A follower beyond the horizon, as the relay: its checkpoint moves through settled rows only,
/// rows above the horizon are handed out once (until a restart) and remembered.
struct AheadFollower {
    follower: Follower,
    ahead: ReadAhead,
    /// Events handed out above the horizon, with their cursors, not yet passed by the checkpoint.
    out_ahead: HashMap<EventId, Cursor>,
    /// Events that may come a second time: handed out ahead before the last restart.
    may_repeat: HashSet<EventId>,
    /// Events handed out while above the horizon, in all.
    handed_ahead: usize,
    restarts: usize,
}

/// The reader beyond the horizon reads pages of this many rows and remembers at most
/// `AHEAD_LIMIT` rows above it.
const AHEAD_PAGE: usize = 4;
const AHEAD_LIMIT: usize = 2;

impl AheadFollower {
    fn new() -> Self {
        Self {
            follower: Follower {
                cursor: Cursor::START,
                seen: HashSet::new(),
                last_version: HashMap::new(),
            },
            ahead: ReadAhead::new(AHEAD_LIMIT),
            out_ahead: HashMap::new(),
            may_repeat: HashSet::new(),
            handed_ahead: 0,
            restarts: 0,
        }
    }

    /// Follows until there is nothing to hand out.
    async fn drain(&mut self, store: &impl EventReader, rolled_back: &HashSet<EventId>) {
        loop {
            let page = store
                .follow_visible(self.follower.cursor, AHEAD_PAGE)
                .await
                .expect("follow_visible");
            assert!(page.settled <= page.rows.len());
            assert!(
                page.rows.windows(2).all(|w| w[0].cursor() < w[1].cursor()),
                "follow_visible is in cursor order"
            );
            assert!(
                page.rows
                    .first()
                    .is_none_or(|r| r.cursor() > self.follower.cursor)
            );
            let planned = self.ahead.plan(page);
            if planned.is_idle() {
                return;
            }
            let mut batch = Vec::new();
            for row in &planned.rows {
                let FollowedRow::Event(e) = row else {
                    panic!("the test writes no undecodable rows");
                };
                if planned.is_ahead(e.cursor) {
                    self.ahead.handled(e.cursor);
                    self.out_ahead.insert(e.envelope.id, e.cursor);
                    self.handed_ahead += 1;
                }
                if self.may_repeat.remove(&e.envelope.id) {
                    // Handed out ahead before the restart: the broker refuses the copy.
                    continue;
                }
                batch.push(e.clone());
            }
            self.follower.check(&batch, rolled_back);
            if let Some(settled) = planned.settled_to {
                self.follower.cursor = settled;
                self.out_ahead.retain(|_, cursor| *cursor > settled);
            }
        }
    }

    /// A new relay from the saved checkpoint: what was handed out ahead may come again.
    fn restart(&mut self) {
        self.ahead = ReadAhead::new(AHEAD_LIMIT);
        self.may_repeat
            .extend(self.out_ahead.drain().map(|(id, _)| id));
        self.restarts += 1;
    }
}

impl Follower {
    fn check(&mut self, batch: &[RecordedEvent], rolled_back: &HashSet<EventId>) {
        for e in batch {
            assert!(
                self.seen.insert(e.envelope.id),
                "event {} read twice",
                e.envelope.id
            );
            assert!(
                !rolled_back.contains(&e.envelope.id),
                "event {} of a rolled-back transaction was read",
                e.envelope.id
            );
            let last = self.last_version.insert(e.stream_id, e.stream_version);
            assert_eq!(
                e.stream_version,
                last.unwrap_or(0) + 1,
                "stream {} read out of order",
                e.stream_id
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_interleavings_never_skip_nor_repeat() {
    // A cluster of its own: its open transactions would hold back other tests' reads, and its
    // completeness checks must not wait for theirs.
    let isolated = Isolated::start(true).await;
    let store = isolated.store();
    let writers = PgPoolOptions::new()
        .max_connections(MAX_TRANSACTIONS as u32 + 1)
        .connect(&isolated.container().url())
        .await
        .expect("writer pool");
    sqlx::query("CREATE TABLE caller_rows (id bigserial PRIMARY KEY, note text NOT NULL)")
        .execute(&writers)
        .await
        .expect("caller table");

    // The operator's view of what holds readers back: the oldest transaction with an id.
    let mut slow = writers.begin().await.expect("begin");
    sqlx::query("INSERT INTO caller_rows (note) VALUES ('slow')")
        .execute(&mut *slow)
        .await
        .expect("own write");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *slow)
        .await
        .expect("pid");
    let oldest = store
        .oldest_open_transaction()
        .await
        .expect("status")
        .expect("the open transaction is reported");
    assert_eq!(oldest.pid, Some(pid));
    assert_eq!(oldest.state, "idle in transaction");
    slow.rollback().await.expect("rollback");
    // (An autovacuum worker analyzing a table may hold an id for a moment: not ours, anyway.)
    assert!(
        store
            .oldest_open_transaction()
            .await
            .expect("status")
            .is_none_or(|t| t.pid != Some(pid))
    );

    // Meanwhile, other callers append through the store (group commit) to streams of their own:
    // the follower must see their events too, exactly once, in stream order.
    let stop = Arc::new(AtomicBool::new(false));
    let background: Vec<_> = (0..BACKGROUND_CALLERS)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let stream = StreamId::new();
                let mut ids = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let e = event(stream);
                    ids.push(e.id);
                    store
                        .append(stream, ExpectedVersion::Any, vec![e])
                        .await
                        .expect("background append");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                ids
            })
        })
        .collect();

    let mut rng = Rng::from_env("random_interleavings_never_skip_nor_repeat");
    let shared: Vec<StreamId> = (0..SHARED_STREAMS).map(|_| StreamId::new()).collect();
    let mut follower = Follower {
        cursor: Cursor::START,
        seen: HashSet::new(),
        last_version: HashMap::new(),
    };
    let mut beyond = AheadFollower::new();
    let mut committed: HashSet<EventId> = HashSet::new();
    let mut rolled_back: HashSet<EventId> = HashSet::new();
    let (mut early_ids, mut inherited) = (0usize, 0usize);

    for _ in 0..SCENARIOS {
        let n = 2 + rng.below(MAX_TRANSACTIONS - 1);
        let plans: Vec<Plan> = (0..n)
            .map(|_| Plan {
                own_write: rng.chance(50),
                commit: rng.chance(75),
                events: 1 + rng.below(3),
            })
            .collect();
        // A random interleaving of each transaction's steps (in their own order) and reads.
        let mut pending: Vec<Vec<Step>> = plans
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut steps = vec![Step::Begin(i)];
                if p.own_write {
                    steps.push(Step::OwnWrite(i));
                }
                steps.extend([Step::Append(i), Step::End(i)]);
                steps.reverse();
                steps
            })
            .collect();
        let mut schedule = Vec::new();
        while pending.iter().any(|s| !s.is_empty()) {
            if rng.chance(25) {
                schedule.push(Step::Read);
            }
            let live: Vec<usize> = (0..n).filter(|&i| !pending[i].is_empty()).collect();
            let i = live[rng.below(live.len())];
            schedule.extend(pending[i].pop());
        }
        schedule.push(Step::Read);

        let mut txs: Vec<Option<Transaction<'static, Postgres>>> = (0..n).map(|_| None).collect();
        let mut appended: Vec<Vec<EventId>> = vec![Vec::new(); n];
        // Streams with an append not yet committed or rolled back, and by whom: a second
        // append to one of them would wait for the first (a lock wait this single-threaded
        // driver cannot resolve), so it takes another stream.
        let mut busy: HashMap<StreamId, usize> = HashMap::new();
        let mut got_id_early: Vec<bool> = vec![false; n];

        for step in schedule {
            match step {
                Step::Begin(i) => txs[i] = Some(writers.begin().await.expect("begin")),
                Step::OwnWrite(i) => {
                    let tx = txs[i].as_mut().expect("open");
                    sqlx::query("INSERT INTO caller_rows (note) VALUES ('own write')")
                        .execute(&mut **tx)
                        .await
                        .expect("own write");
                    got_id_early[i] = true;
                }
                Step::Append(i) => {
                    let free: Vec<StreamId> = shared
                        .iter()
                        .copied()
                        .filter(|s| !busy.contains_key(s))
                        .collect();
                    let stream = if free.is_empty() || rng.chance(10) {
                        StreamId::new()
                    } else {
                        free[rng.below(free.len())]
                    };
                    let batch: Vec<_> = (0..plans[i].events).map(|_| event(stream)).collect();
                    appended[i] = batch.iter().map(|e| e.id).collect();
                    let tx = txs[i].as_mut().expect("open");
                    append_in_transaction(tx, stream, ExpectedVersion::Any, batch)
                        .await
                        .expect("append in transaction");
                    // Whether the key was raised to the predecessor's (the transaction's own id
                    // is older than the key of the stream's previous event).
                    let raised: bool = sqlx::query_scalar(
                        "SELECT commit_key > pg_current_xact_id()::text::int8 \
                         FROM events WHERE event_id = $1",
                    )
                    .bind(appended[i][0].as_uuid())
                    .fetch_one(&mut **tx)
                    .await
                    .expect("own key");
                    inherited += usize::from(raised);
                    busy.insert(stream, i);
                    if got_id_early[i] {
                        early_ids += 1;
                    }
                }
                Step::End(i) => {
                    let tx = txs[i].take().expect("open");
                    if plans[i].commit {
                        tx.commit().await.expect("commit");
                        committed.extend(appended[i].iter().copied());
                    } else {
                        tx.rollback().await.expect("rollback");
                        rolled_back.extend(appended[i].iter().copied());
                    }
                    busy.retain(|_, owner| *owner != i);
                }
                Step::Read => {
                    let page = 1 + rng.below(4);
                    let (batch, cursor) = drain(store, follower.cursor, page).await;
                    follower.check(&batch, &rolled_back);
                    follower.cursor = cursor;
                    if rng.chance(5) {
                        beyond.restart();
                    }
                    beyond.drain(store, &rolled_back).await;
                }
            }
        }
        // Every transaction of the scenario has ended: everything it committed must be read
        // (as soon as the background appends in flight, which hold the horizon, are done).
        let deadline = Instant::now() + Duration::from_secs(10);
        while appended
            .iter()
            .zip(&plans)
            .filter(|(_, p)| p.commit)
            .flat_map(|(ids, _)| ids)
            .any(|id| !follower.seen.contains(id))
        {
            assert!(Instant::now() < deadline, "committed events never read");
            tokio::time::sleep(Duration::from_millis(1)).await;
            let (batch, cursor) = drain(store, follower.cursor, 100).await;
            follower.check(&batch, &rolled_back);
            follower.cursor = cursor;
        }
        beyond.drain(store, &rolled_back).await;
        // The reader beyond the horizon saw everything the commit-safe one did, at least.
        assert!(
            follower.seen.is_subset(&beyond.follower.seen),
            "the reader beyond the horizon missed committed events"
        );
    }

    stop.store(true, Ordering::Relaxed);
    for task in background {
        committed.extend(task.await.expect("background caller"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while (follower.seen.len() < committed.len() || beyond.follower.seen.len() < committed.len())
        && Instant::now() < deadline
    {
        let (batch, cursor) = drain(store, follower.cursor, 100).await;
        follower.check(&batch, &rolled_back);
        follower.cursor = cursor;
        beyond.drain(store, &rolled_back).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        committed.iter().all(|id| follower.seen.contains(id)),
        "every committed event is read"
    );
    assert!(
        committed.iter().all(|id| beyond.follower.seen.contains(id)),
        "every committed event is read beyond the horizon too"
    );
    assert_eq!(beyond.follower.seen.len(), committed.len());
    // Once nothing is open, the checkpoint beyond the horizon catches up with the other.
    let deadline = Instant::now() + Duration::from_secs(10);
    while beyond.follower.cursor < follower.cursor && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        beyond.drain(store, &rolled_back).await;
    }
    assert_eq!(
        beyond.follower.cursor, follower.cursor,
        "both checkpoints end at the same place"
    );

    eprintln!(
        "{SCENARIOS} interleavings: {} events committed (incl. background), {} rolled back, \
         {early_ids} appends by transactions holding an older id, {inherited} appends keyed by \
         an inherited key; beyond the horizon: {} events handed out ahead, {} restarts",
        committed.len(),
        rolled_back.len(),
        beyond.handed_ahead,
        beyond.restarts
    );
    assert!(
        beyond.handed_ahead > 0,
        "the scenarios should hand out events above the horizon"
    );
    assert_eq!(follower.seen.len(), committed.len());
    assert!(
        inherited > 0,
        "the scenarios should exercise key inheritance"
    );
}
