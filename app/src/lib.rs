//! The use cases of the EduPulse event backbone, their wiring, and the `edupulse-events` command.
//!
//! # What is here
//! - [`relay`]: the relay use case, over ports only (unit-tested with the in-memory fakes): it
//!   follows the store's commit-safe order from a named checkpoint and publishes to the broker.
//! - [`wiring`]: the one place that builds the PostgreSQL and NATS adapters and plugs them into the
//!   use cases ([`wiring::Backbone`]); the command, the lab (demo and bench, crate
//!   `edupulse-lab`) and the end-to-end tests all go through it.
//! - [`entry`]: what every binary does around its command (logging, runtime, last word);
//!   [`commands`]: what the subcommands do; [`cli`]: their options (clap, with environment
//!   variable fallbacks); [`input`]: the NDJSON / flag event format of `append`.
//! - [`telemetry`], [`http`], [`latency`]: logs, Prometheus metrics, `/metrics` `/healthz` `/readyz`,
//!   and a constant-memory latency histogram.
//!
//! # Design decisions
//! - **The binary is thin.** `main.rs` parses, sets up logging and turns errors into one line and
//!   an exit code; `anyhow` lives there only. Everything else returns typed errors.
//! - **The production binary is only the product.** It links no container tooling and no bench:
//!   the demo and the bench are the lab's (`edupulse-lab`), which depends on this crate.
//! - **Use cases see ports, not adapters.** The relay holds `Arc<dyn …>` ports, so it is tested in
//!   memory and a team can swap an adapter without touching it.
//! - **Secrets** (`DATABASE_URL`, NATS credentials) are `secrecy::SecretString`s and never printed.

pub mod cli;
pub mod commands;
pub mod entry;
pub mod http;
pub mod input;
pub mod latency;
pub mod projection;
pub mod relay;
pub mod telemetry;
pub mod wiring;

/// The README's Rust examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;
