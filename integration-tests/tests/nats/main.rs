//! Integration suite of `edupulse-nats` against real NATS 2.10 JetStream servers (testcontainers):
//! publishing with headers, deduplication, size and subject checks, per-stream order under
//! failures, broker pause and restart, provisioning, the durable consumer with retries and dead
//! letters, a 3-node cluster losing a node, and measured throughput.
//!
//! Tests share one server per binary (unique stream names per test); those that break a server
//! start their own.

mod cluster;
mod consume;
mod faults;
mod partition;
mod provisioning;
mod publish;
mod support;
mod throughput;

edupulse_ports::publisher_conformance!(crate::support::fresh_publishers().await);
edupulse_ports::consumer_conformance!(crate::support::publisher_and_consumer().await);
