//! The fault and bad-input suite: the whole backbone (the app's real wiring, PostgreSQL, the
//! relay, NATS JetStream, a durable consumer) is broken on purpose while writers append, and
//! every run is judged in Jepsen's vocabulary (`checker`): attempted, acknowledged,
//! indeterminate, consumed, lost, unexpected, duplicated, redelivered, reordered. Every run must
//! end with lost = unexpected = duplicated = reordered = 0.
//!
//! Each test prints one row of the figures table and appends it to `target/faults-report.md`
//! (delete the file before a full run to get one table).
//!
//! - `broker`: NATS stopped ≥ 10 s during sustained appends; NATS paused mid-publish.
//! - `relay`: the relay process killed with `SIGKILL` at 1/3 and 1/2 of a run; two relays
//!   racing on one checkpoint, the active one killed.
//! - `network`: the active relay's host goes silent (its packets dropped by `iptables`, the
//!   process alive); the standby process must publish within 15 s.
//! - `store`: PostgreSQL restarted mid-load; statements cancelled at random under group commit.
//! - `edges`: a relay down four times the broker's duplicate window; a row no decoder accepts in
//!   the middle of a run (it parks its stream, the others flow); a sealed broker stream (the relay
//!   blocks and reports it, parks nothing).
//! - `concurrency`: 16 writers on one stream; out-of-order commits of caller transactions.
//! - `cluster`: a 3-node JetStream cluster with R3 streams losing a node.
//! - `bad_input`, `hostile_json`: malformed, unknown, oversized, too deep, at the limits;
//!   a property run over the NDJSON parser and the envelope decoder.
//! - `security`: the application role as a login role; no password in any log line.
//! - `tls`: PostgreSQL with `sslmode=verify-full` and SCRAM, NATS over TLS with nkey users and
//!   least permissions; each misconfiguration refused with one line (`target/faults-refusals.md`).
//!
//! Writers are the harness's workload generator (`edupulse_integration_tests::workload`, the one
//! the demo and the bench use); `workload` here wires it, the app's backbone and a durable
//! consumer into a [`workload::Run`].
//!
//! Tests that break a server start their own (`start_nats`, `start_postgres`,
//! `start_nats_cluster`); the others use the shared ones with their own database and stream.
//! `EDUPULSE_SOAK=1` runs ten times the work.

/// The verdict, shared with the demo: the harness's checker.
use edupulse_integration_tests::checker;

mod bad_input;
mod broker;
mod child;
mod cluster;
mod concurrency;
mod edges;
mod hostile_json;
mod network;
mod relay;
mod security;
mod store;
mod tls;
mod workload;

/// Not a test: the body of the child processes of `relay` and `security` (see `child`). Does
/// nothing unless started by them.
#[test]
#[ignore = "run by the suite itself as a child process"]
fn relay_child_process() {
    if let Ok(mode) = std::env::var(child::MODE) {
        child::run(&mode);
    }
}
