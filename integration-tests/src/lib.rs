//! Hermetic Docker test environment of the EduPulse event backbone: real
//! PostgreSQL 15 and NATS 2.10 (JetStream) servers in containers, for the
//! integration suites of this workspace.
//!
//! # What it gives a test
//!
//! - [`fresh_database`]: a database of its own (unique name) in the PostgreSQL
//!   container shared by the test binary, already migrated: it is created with
//!   `CREATE DATABASE … TEMPLATE` from a template database that was migrated once
//!   with `edupulse_postgres::MIGRATOR`.
//! - [`shared_nats`] and [`unique_name`]: the NATS (JetStream) server shared by
//!   the test binary, and per-test stream names / subject prefixes.
//! - [`start_postgres`], [`start_nats`]: containers of its own for fault tests,
//!   with `pause`/`unpause`/`stop`/`start`/`kill` ([`PgContainer`],
//!   [`NatsContainer`]).
//! - [`cancel_statements_at_random`]: a task cancelling the statements of a
//!   database's backends at random (`pg_cancel_backend`), as a statement timeout,
//!   an operator or an out-of-memory error would make them fail.
//! - [`Forwarder`]: a TCP forwarder on 127.0.0.1 giving one client a path (a port) of its own
//!   to a server, to cut that client alone (packets dropped on its port, or
//!   [`Forwarder::silence`]).
//! - [`checker`]: the history of a run and its verdict (lost, duplicated, redelivered,
//!   reordered, unexpected), defined once, used by the demo and by every suite.
//! - [`projections`]: the projections' side of the checker (badges and catalogue rows against
//!   what the stored events call for) and a probe projection counting events applied twice or
//!   out of order.
//! - [`workload`]: the one workload generator (writers appending with expected versions,
//!   retrying ambiguous failures with the same ids, at a closed- or open-loop pace), recording
//!   into the checker's history; used by the demo, the bench and every suite.
//! - [`tls`]: a certificate authority made at test time, PostgreSQL serving TLS with a
//!   `pg_hba.conf` of the test's choosing, NATS with a configuration file of its choosing (TLS,
//!   nkey users, permissions), NATS user keys.
//! - [`start_nats_cluster`]: a 3-node JetStream cluster on a user-defined Docker
//!   network whose nodes can be stopped and started one by one ([`NatsCluster`]).
//!
//! # Design decisions
//!
//! - **Images are local and built on demand.** No registry is reachable where
//!   this runs, so the images `edupulse-test/postgres:15` and
//!   `edupulse-test/nats:2.10` are built from `docker/` by
//!   `scripts/build-images.sh`. The harness runs that script once per process
//!   before its first container ([`images::ensure_images`]); the script skips in
//!   ~0.1 s when the images are up to date and is serialized by `flock`, so
//!   concurrent test binaries are safe and a plain `cargo test --workspace` on a
//!   fresh machine with Docker needs no manual step.
//! - **One shared container of each kind per test binary**, started lazily
//!   (a `tokio::sync::OnceCell` static), isolation by unique database / stream
//!   names. Tests that break a server (pause, stop, kill) start their own.
//!   A shared container is never paused or restarted, and no Docker call is made
//!   on it after it started: every `#[tokio::test]` has its own runtime, and the
//!   runtime that started it may be gone.
//! - **Readiness from the server logs, then polled after a restart.** PostgreSQL
//!   is ready at the line "database system is ready to accept connections" on
//!   *stderr* (our entrypoint sets the cluster up in single-user mode, so it is
//!   printed once, by the real server listening on TCP); NATS at "Server is
//!   ready". After `start()` the harness polls with real clients (a query, a
//!   JetStream account request) instead: testcontainers does not re-check.
//!   Containers are `GenericImage`s: testcontainers-modules' `Postgres` also
//!   waits for the line on stdout, which this image never prints.
//! - **Host ports are fixed per container and bound to 127.0.0.1.** Each port is
//!   published on `127.0.0.1` at a port chosen free by the harness, so it stays
//!   the same across `stop()`/`start()`: a client or pool made with
//!   [`PgContainer::url`] / [`NatsContainer::url`] reconnects by itself after a
//!   restart. Nothing ever connects to a container's bridge address.
//! - **Restarts keep the data.** `stop()`/`start()` restart the same container,
//!   whose file system survives: PostgreSQL's data directory and the JetStream
//!   store (`/data`) are kept. `pause()` freezes the processes (connections hang
//!   instead of failing), `kill()` simulates a crash.
//! - **Speed over durability in PostgreSQL:** containers run with
//!   `-c fsync=off` ([`postgres::DEFAULT_PG_ARGS`]); a container stop or kill
//!   loses nothing with it, only an OS crash would.
//! - **Nothing is left behind** ([`cleanup`]): every container and network is
//!   labelled `edupulse-test`, with the test process id and a per-process session
//!   id. Owned handles remove their containers on drop (testcontainers); the
//!   shared ones live in statics, which Rust never drops, so a small reaper
//!   process (`sh`) waits for the test process to exit (end of its stdin pipe,
//!   which also happens on a crash or kill) and removes everything of the
//!   session. `scripts/cleanup-test-containers.sh` (run by `.ci/run` at exit)
//!   is the safety net.
//!
//! # Clients of the cluster
//!
//! The cluster nodes run with `--no_advertise`, and their in-network addresses
//! are unusable from the host anyway: Rust clients must connect with the list
//! of [`NatsCluster::urls`] and
//! `async_nats::ConnectOptions::new().ignore_discovered_servers()`
//! (as [`NatsCluster::connect`] does).

pub mod checker;
pub mod cleanup;
pub mod cluster;
pub mod docker;
pub mod forward;
pub mod images;
pub mod local;
pub mod nats;
pub mod postgres;
pub mod projections;
pub mod recipes;
pub mod tls;
pub mod workload;

pub use cluster::{NatsCluster, start_nats_cluster};
pub use forward::Forwarder;
pub use nats::{
    NatsContainer, read_back_config, shared_nats, start_nats, start_nats_with_args, unique_name,
};
pub use postgres::{
    PgContainer, StatementCanceller, TestDb, cancel_statements_at_random, fresh_database,
    shared_postgres, start_postgres, start_postgres_with_args,
};

/// Event `i` of `stream` for tests: lessons and badges alternate, so both payload shapes (with
/// and without text) travel through every suite.
pub fn sample_event(stream: edupulse_domain::StreamId, i: u64) -> edupulse_domain::EventEnvelope {
    use edupulse_domain::{BadgeAwarded, EventEnvelope, LessonPublished, LessonTitle, Uuid};
    let envelope = if i.is_multiple_of(2) {
        EventEnvelope::new(LessonPublished {
            lesson_id: *stream.as_uuid(),
            author_id: Uuid::new_v4(),
            title: LessonTitle::new(format!("Lesson {i}")).expect("a numbered title is valid"),
        })
    } else {
        EventEnvelope::new(BadgeAwarded {
            badge_id: Uuid::new_v4(),
            recipient_id: *stream.as_uuid(),
        })
    };
    envelope.with_stream(stream)
}
