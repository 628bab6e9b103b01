//! The contracts between the EduPulse core (append, relay, consumers) and the outside world.
//!
//! Each trait speaks domain types only: no database or broker type appears here, so an adapter can
//! be swapped without touching the core or the other adapters.
//!
//! # The ports
//!
//! - [`EventAppender`] and [`EventReader`] (together [`EventStore`]): append a batch to one stream
//!   with optimistic concurrency, idempotent by event id; read one stream forward; read all events
//!   in **commit-safe order** from a [`Cursor`], or beyond the commit-safe horizon
//!   ([`EventReader::follow_visible`], followed with [`ReadAhead`]).
//! - [`CommitHints`]: a lossy wake-up signal after commits, so followers need not poll tightly.
//! - [`EventPublisher`]: publish a batch to the broker and report, per event, the broker's
//!   acknowledgement (stored or duplicate) or a classified [`PublishError`].
//! - [`CheckpointStore`]: named checkpoints and a record of dead-lettered events.
//! - [`LeaseProvider`]: at most one active holder per name (one active relay per checkpoint).
//! - [`projection`]: [`projection::ProjectionFeed`] (the published events in buckets by
//!   stream), [`projection::ProjectionStore`] (progress, parked events and state, one transaction
//!   per unit) and [`projection::Projection`] (a handler applied exactly once per event).
//! - [`EventConsumer`] and [`EventHandler`]: downstream projections, with explicit ack, retry with
//!   backoff and dead-lettering, driven by [`consumer::run_handler`].
//!
//! # Design decisions
//!
//! - **Commit-safe order, not timestamps.** A [`Cursor`] is `(commit, position)`: events are
//!   followed in the order their transactions became visible, so a follower never skips an event
//!   whose transaction committed after a later-numbered one. How `commit` is derived is the
//!   adapter's business (the in-memory store numbers appends; PostgreSQL uses transaction ids
//!   below the snapshot horizon).
//! - **Per-event publish outcomes.** [`EventPublisher::publish`] returns one result per event, so
//!   the relay can checkpoint exactly the acknowledged prefix and retry or dead-letter the rest.
//! - **Typed errors with handling advice.** Every error variant says whether to retry.
//!   [`StoreError::Conflict`] carries the expected and actual versions.
//! - **`async-trait`** because the app holds the ports as `Arc<dyn …>`.
//! - **Fakes over mocks.** The `test-util` feature brings in-memory implementations
//!   (`memory`) and the `conformance` kit any store adapter must pass; `mocks` brings mockall
//!   mocks for the rare interaction check.

//! # Writing your own adapter
//!
//! An adapter implements one or more traits and proves it with the conformance kits (feature
//! `test-util`, module `conformance`): each kit is a macro that expands
//! into one named `#[tokio::test]` per contract check, given an expression that builds a fresh
//! instance. Put it in the adapter's integration tests, against the real backend:
//!
//! ```ignore
//! // tests/conformance.rs of a team's own store, publisher or lease provider
//! edupulse_ports::event_store_conformance!(my_store::fresh().await);
//! edupulse_ports::checkpoint_conformance!(my_store::fresh().await);
//! edupulse_ports::lease_conformance!(my_store::fresh().await);
//! edupulse_ports::hints_conformance!(my_store::fresh().await);
//! // a projection store and the event store its units emit into
//! edupulse_ports::projection_store_conformance!(my_store::fresh_projections().await);
//! edupulse_ports::consumer_conformance!(my_broker::publisher_and_consumer().await);
//! // two publishers (two processes) over one fresh, empty broker stream
//! edupulse_ports::publisher_conformance!(my_broker::two_fresh_publishers().await);
//! ```
//!
//! The in-memory fakes of `memory` and the PostgreSQL and NATS adapters run
//! the same kits, so a team's adapter that passes them can replace one of ours without
//! touching the other adapters or the core.

mod checkpoint;
pub mod consumer;
mod error;
mod lease;
pub mod projection;
mod publisher;
mod read_ahead;
mod store;

#[cfg(feature = "test-util")]
pub mod conformance;
#[cfg(feature = "test-util")]
pub mod memory;

/// mockall mocks of the ports (feature `mocks`), for interactions a fake cannot check.
#[cfg(feature = "mocks")]
pub use checkpoint::MockCheckpointStore;
pub use checkpoint::{Checkpoint, CheckpointStore, ParkedEvent, Release};
pub use consumer::{
    ConsumeError, Delivery, DeliveryToken, EventConsumer, EventHandler, HandlerError, RetryPolicy,
    Settlement, StreamOrderGuard, StreamPosition,
};
pub use error::{BoxError, PublishError, StoreError};
pub use lease::{Lease, LeaseProvider};
#[cfg(feature = "mocks")]
pub use publisher::MockEventPublisher;
pub use publisher::{EventPublisher, PublishAck, PublishResult, Settled};
pub use read_ahead::{FollowedPage, Planned, ReadAhead};
pub use store::{
    AppendOutcome, AppendedEvent, CommitHints, Cursor, EventAppender, EventReader, EventStore,
    FollowedRow, RecordedEvent, StoreHead, UndecodableRow, validate_batch,
};
#[cfg(feature = "mocks")]
pub use store::{MockEventAppender, MockEventReader};
