//! The use cases of the EduPulse event backbone and their wiring: the `edupulse-events` command.
//!
//! Placeholder crate docs, completed with the CLI.

pub mod bench;
pub mod cli;
pub mod commands;
pub mod demo;
pub mod docker;
pub mod http;
pub mod input;
pub mod relay;
pub mod stats;
pub mod telemetry;
pub mod wiring;
