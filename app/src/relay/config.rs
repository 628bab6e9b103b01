//! How the relay behaves: [`RelayConfig`] and its defaults.

use std::time::Duration;

/// Events per page by default. Each page ends with the in-flight window draining (the acks of the
/// last events), so larger pages keep the broker busier; but two pages are in memory at once (one
/// publishing, one read ahead): measured peak RSS during a 1M catch-up was 50 MiB at 2048 and
/// 61.5 MiB at 4096, against a 64 MB budget, for no faster catch-up (it is CPU-bound here).
pub const DEFAULT_BATCH_SIZE: usize = 2048;

/// How the relay behaves.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Checkpoint (and lease) name; one active relay per name.
    pub name: String,
    /// Who this relay is, shown by `status` (host, pid).
    pub holder: String,
    /// Events read and published per batch.
    pub batch_size: usize,
    /// Longest wait between reads when no hint arrives.
    pub poll_interval: Duration,
    /// Shortest time between two checkpoint saves. A save is a write to the store; saving after
    /// every batch costs the store a transaction per batch for nothing, since a crash only
    /// re-publishes (deduplicated) what was acknowledged since the last save. The last cursor
    /// is always saved on a graceful stop.
    pub checkpoint_interval: Duration,
    /// How often a standby tries to take the lease.
    pub lease_retry: Duration,
    /// First retry delay after a failure.
    pub backoff_min: Duration,
    /// Longest retry delay; keep it well below the broker's duplicate window.
    pub backoff_max: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
            holder: format!("pid {}", std::process::id()),
            batch_size: DEFAULT_BATCH_SIZE,
            poll_interval: Duration::from_millis(500),
            checkpoint_interval: Duration::from_millis(100),
            lease_retry: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(10),
        }
    }
}
