//! The PostgreSQL adapter against a real PostgreSQL 15 (Docker, local image): the ports
//! conformance kit (with and without group commit), the commit-safe order under random
//! interleavings, append-only enforcement, appends in the caller's transaction, idempotency,
//! group commit isolation, leases, hints, the projection store and secrets.
//!
//! Most tests have a database of their own in the container shared by this binary, and run in
//! parallel. The conformance kit and the interleavings test get a container of their own:
//! commit-safe reads wait for every open write transaction of the *cluster*, and they need
//! `read_all` to be complete as soon as their own writes are (see `support::Isolated`).

mod append_only;
mod caller_transaction;
mod group_commit;
mod interleavings;
mod leases_and_hints;
mod secrets_and_errors;
mod support;

use support::Isolated;

// The default configuration: appends go through group commit.
edupulse_ports::event_store_conformance!(Isolated::start(true).await);
edupulse_ports::checkpoint_conformance!(Isolated::start(true).await);
edupulse_ports::lease_conformance!(
    support::store_on(&edupulse_integration_tests::fresh_database().await).await
);
edupulse_ports::hints_conformance!(
    support::store_on(&edupulse_integration_tests::fresh_database().await).await
);
edupulse_ports::projection_store_conformance!({
    let store = support::store_on(&edupulse_integration_tests::fresh_database().await).await;
    (store.projections(), std::sync::Arc::new(store))
});

/// The same kit with group commit off: every append is its own statement.
mod direct {
    use super::*;

    edupulse_ports::event_store_conformance!(Isolated::start(false).await);
}
