//! The lab of the EduPulse event backbone: the demo and the bench, not the product.
//!
//! `edupulse-events` (crate `edupulse-app`) is what a team deploys; it links no container tooling
//! and no bench code. This crate holds what runs the backbone for people rather than for
//! production: the demo (the README's main job) and the bench, with their own throw-away
//! PostgreSQL and NATS in Docker when no URLs are given.
//!
//! # What is here
//! - [`demo`]: a realistic EduPulse workload appended concurrently while the relay publishes and a
//!   consumer reads; checks exactly once and per-stream order and prints a summary.
//! - [`bench`](mod@bench): throughput and latency against the machine's own ceilings.
//! - The servers, the image recipes (embedded, so that an installed or copied `edupulse-lab`
//!   builds its images without a checkout) and the checker come from the one harness,
//!   `edupulse-integration-tests`, that every suite uses too.
//! - [`cli`]: the `edupulse-lab` command line.
//!
//! # Design decisions
//! - **The lab uses the product's wiring** ([`edupulse_app::wiring::Backbone`]): what the demo
//!   and the bench drive is what production runs.
//! - **The bench's relay is the production relay** in a process of its own (`edupulse-lab relay`
//!   runs `edupulse-events relay`'s code), so its memory and CPU are measured apart.

pub mod bench;
pub mod cli;
pub mod demo;
