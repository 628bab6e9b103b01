//! Smoke suite of the test harness: each piece of the hermetic Docker
//! environment, exercised with raw clients (sqlx, async-nats), not with the
//! project's adapters. Tests run in parallel, like every suite of the workspace.

mod cluster;
mod images;
mod nats;
mod postgres;
mod support;
