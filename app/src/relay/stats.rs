//! What the relay has done: [`RelayStats`], read concurrently by status, the demo and tests.

use crate::latency::LatencyHistogram;
use chrono::Utc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// What the relay has done, for status, the demo and tests. Cheap to read concurrently.
#[derive(Default)]
pub struct RelayStats {
    /// Events acknowledged as newly stored by the broker.
    pub(super) published: AtomicU64,
    /// Events the broker reported as duplicates (already stored).
    pub(super) duplicates: AtomicU64,
    /// Publish or read attempts that failed and were retried.
    pub(super) retries: AtomicU64,
    /// Streams this relay parked (an event it could not decode or the broker refused for good).
    pub(super) parked: AtomicU64,
    /// Events held back behind a parked event of their stream.
    pub(super) held: AtomicU64,
    /// Events published above the store's horizon, not yet passed by the checkpoint.
    pub(super) read_ahead: AtomicU64,
    /// Why publishing is blocked for every stream (the broker refuses the whole stream), if it is.
    pub(super) blocked: std::sync::Mutex<Option<String>>,
    /// The highest broker sequence acknowledged (saved with each checkpoint).
    pub(super) broker_sequence: AtomicU64,
    /// Global position of the last checkpoint saved.
    pub(super) checkpoint_position: AtomicU64,
    /// Global position of the store's tip at the last check.
    pub(super) head_position: AtomicU64,
    /// Whether this relay holds the lease.
    pub(super) active: AtomicBool,
    /// Times this relay took the lease.
    pub(super) takeovers: AtomicU64,
    /// Epoch (fencing token) of the last lease this relay took; 0 before the first.
    pub(super) lease_epoch: AtomicU64,
    /// Time from the store recording an event to the broker's acknowledgement.
    pub(super) commit_to_ack: LatencyHistogram,
    /// Unix time in milliseconds of the last healthy iteration (lease check or successful read).
    pub(super) heartbeat_ms: AtomicU64,
}

/// The relay's counters at one moment (see [`RelayStats::snapshot`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelaySnapshot {
    /// Events acknowledged as newly stored by the broker.
    pub published: u64,
    /// Events the broker already held (a second copy refused or deduplicated).
    pub duplicates: u64,
    /// Publish or store attempts that failed and were retried.
    pub retries: u64,
    /// Streams this relay parked.
    pub parked: u64,
    /// Events held back behind a parked event of their stream.
    pub held: u64,
    /// Events published above the store's horizon (committed after a transaction still open),
    /// not yet passed by the checkpoint.
    pub read_ahead: u64,
    /// The highest broker sequence acknowledged.
    pub broker_sequence: u64,
    /// Global position of the last checkpoint saved.
    pub checkpoint_position: u64,
    /// Global position of the store's tip at the last check.
    pub head_position: u64,
    /// Whether this relay holds the lease.
    pub active: bool,
    /// Times this relay took the lease.
    pub takeovers: u64,
    /// Epoch (fencing token) of the last lease this relay took; 0 before the first.
    pub lease_epoch: u64,
}

impl RelayStats {
    /// The counters now. Each is read on its own (relaxed): a snapshot taken while the relay
    /// works may mix two instants, which figures for humans and tests tolerate.
    pub fn snapshot(&self) -> RelaySnapshot {
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RelaySnapshot {
            published: read(&self.published),
            duplicates: read(&self.duplicates),
            retries: read(&self.retries),
            parked: read(&self.parked),
            held: read(&self.held),
            read_ahead: read(&self.read_ahead),
            broker_sequence: read(&self.broker_sequence),
            checkpoint_position: read(&self.checkpoint_position),
            head_position: read(&self.head_position),
            active: self.active.load(Ordering::Relaxed),
            takeovers: read(&self.takeovers),
            lease_epoch: read(&self.lease_epoch),
        }
    }

    /// Time from the store recording an event to the broker's acknowledgement.
    pub fn commit_to_ack(&self) -> &LatencyHistogram {
        &self.commit_to_ack
    }

    pub(super) fn beat(&self) {
        let now = u64::try_from(Utc::now().timestamp_millis()).unwrap_or_default();
        self.heartbeat_ms.store(now, Ordering::Relaxed);
    }

    /// Why the broker refuses every event (a sealed or deleted stream), while it does.
    pub fn blocked_reason(&self) -> Option<String> {
        self.blocked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether the relay had a healthy iteration within `within`.
    pub fn is_healthy(&self, within: Duration) -> bool {
        let now = u64::try_from(Utc::now().timestamp_millis()).unwrap_or_default();
        let last = self.heartbeat_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) <= u64::try_from(within.as_millis()).unwrap_or(u64::MAX)
    }

    /// Approximate number of events not yet published (positions are not dense in commit order,
    /// so this is an estimate; 0 when caught up).
    pub fn lag(&self) -> u64 {
        self.head_position
            .load(Ordering::Relaxed)
            .saturating_sub(self.checkpoint_position.load(Ordering::Relaxed))
    }
}
