//! Waiting after a failure: exponential backoff with jitter, cut short by shutdown or the loss
//! of the lease.

use super::{Interrupted, Relay, RelayConfig};
use edupulse_ports::{Lease, StoreError};
use rand::Rng;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

impl Relay {
    pub(super) fn note_store_error(&self, what: &str, e: &StoreError) {
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("edupulse_relay_store_errors_total").increment(1);
        if e.is_retryable() {
            warn!(error = %e, "{what} failed; retrying");
        } else {
            error!(error = %e, "{what} failed (needs an operator); retrying");
        }
    }

    /// Sleeps the backoff for the `failures`-th consecutive failure. `Err` if interrupted.
    pub(super) async fn backoff(
        &self,
        failures: u32,
        lease: &dyn Lease,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let delay = backoff_delay(&self.config, failures);
        tokio::select! {
            () = shutdown.cancelled() => Err(Interrupted::Shutdown),
            () = lease.lost() => Err(Interrupted::LeaseLost),
            () = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

/// Exponential backoff with full jitter: a random delay in [min, min·2^n], capped at max.
pub(super) fn backoff_delay(config: &RelayConfig, failures: u32) -> Duration {
    let exp = config
        .backoff_min
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let cap = exp.min(config.backoff_max).max(config.backoff_min);
    let jittered = rand::rng().random_range(config.backoff_min.as_secs_f64()..=cap.as_secs_f64());
    let delay = Duration::from_secs_f64(jittered);
    debug!(?delay, failures, "backoff");
    delay
}
