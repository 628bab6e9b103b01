//! How the relay behaves: [`RelayConfig`] and its defaults.

use std::time::Duration;

/// Events per page by default. Pages do not drain the publisher's window (the relay streams), so
/// the size mostly sets memory: up to three pages are held at once (two being published, one being
/// read). Measured peak RSS during a 1M catch-up: 56–60 MiB at 2048 (51 MiB before the relay
/// streamed; 61.5 MiB at 4096 then), against a 64 MB budget. The catch-up is CPU-bound here.
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
