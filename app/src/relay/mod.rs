//! The relay: publishes every committed event to the broker, from a named checkpoint.
//!
//! The events table is the outbox. The relay follows the store's commit-safe order
//! ([`edupulse_ports::EventReader::follow_visible`]) and streams the events to the broker
//! ([`EventPublisher::publish_stream`]); its checkpoint only moves through the contiguous prefix
//! of settled rows whose events are acknowledged (or parked, see below). Events already
//! committed beyond the store's horizon (after an older transaction still open) are published at
//! once too, but the checkpoint never moves past an unsettled row: a [`edupulse_ports::ReadAhead`]
//! remembers what went out ahead, so that it is not published again when read again, and a late
//! commit ordered before it is still read. A crash anywhere loses nothing: the next relay resumes
//! from the last saved checkpoint and re-publishes what was acknowledged since (at most
//! `checkpoint_interval` of publishing, plus what was in flight). The publisher's fence makes the
//! broker refuse those second copies however long the relay was down, and the relay counts them
//! as duplicates.
//!
//! # The data path
//!
//! ```text
//!  store ──follow_visible──▶ ReadAhead ──▶ parked streams held ──▶ publish_stream ──▶ broker
//!  (pages of batch_size,      (what went     (undecodable rows       (window kept full,
//!   one read in flight)        out ahead)     parked)                 one per stream in flight)
//!                                                   │                        │ acks, any order
//!                                                   ▼                        ▼
//!                                             Window: contiguous settled prefix ──▶ checkpoint saver
//! ```
//!
//! Events travel as the store read them: the envelope's bytes come from the stored text
//! ([`edupulse_ports::RecordedEvent::encoded`]), and the relay never encodes a payload again.
//! The store still decodes each row once on the way, so that a row that is not a valid event
//! parks its stream instead of reaching consumers.
//!
//! A session reads the next page as soon as at most one page of events is outstanding (so up to
//! two are being published at once), and the publisher's window never drains at a page boundary, and each event is acknowledged on its own
//! (its commit → ack time is its own, not its page's slowest). A transient failure ends the
//! session; the next starts from the checkpoint after a backoff.
//!
//! # Where things are
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | [`Relay`] and its ports, [`Relay::run`]: standby until the lease is taken, then active |
//! | `config.rs` | [`RelayConfig`] and its defaults |
//! | `stats.rs` | [`RelayStats`], read as a [`RelaySnapshot`] |
//! | `active.rs` | the active loop: sessions one after the other, a backoff after a failed one |
//! | `session.rs` | one session: continuous reads, the publisher's stream, acknowledgements, idling |
//! | `window.rs` | which events are out, and how far the checkpoint may go |
//! | `checkpoint.rs` | loading the checkpoint at takeover, saving it off the publishing path |
//! | `publish.rs` | publishing a batch for replay and releases; accounting and the blocked state |
//! | `parking.rs` | parked streams and their release |
//! | `replay.rs` | [`Relay::replay`], re-publishing a range in stream order |
//! | `backoff.rs` | every wait after a failure, cut short by shutdown or the loss of the lease |
//!
//! # Behaviour
//! - **One active relay per checkpoint name**, by a lease ([`LeaseProvider`]). Others wait as
//!   standbys, retrying every `lease_retry`. The lease expires unless the active relay renews it,
//!   so when the active one dies, or its host or network goes silent, a standby takes over
//!   within about the lease's time to live. When the lease is lost (not renewed in time, or
//!   found taken over) the relay stops publishing at once, mid-batch, and goes back to standby
//!   without saving anything; the lease's store guarantees this happens before a successor can
//!   take it. Each takeover's epoch (a fencing token) is logged and kept in [`RelayStats`].
//! - **Latency and throughput.** Idle, the relay waits for a commit hint ([`CommitHints`], e.g.
//!   PostgreSQL NOTIFY) or the poll interval, so an event is published milliseconds after commit.
//!   Behind, it reads pages of `batch_size` in a task of its own as soon as at most one page is
//!   still being published. Checkpoints are saved off the publishing path (a companion future saves the
//!   latest settled cursor at most every `checkpoint_interval`; a save is a commit), and the
//!   store's head (for the lag metric) is read at most once a second when idle. A hint that
//!   reads nothing new (its events held back behind an older open transaction, beyond what may be
//!   read ahead) is followed by quick re-reads.
//! - **Broker failures** are retried forever with exponential backoff and jitter (never giving up
//!   silently), capped at `backoff_max`: the session stops reading, lets what is in flight
//!   settle, and the next one starts from the checkpoint. A retry of an ambiguous publish never stores a second
//!   copy (the publisher's fence). Lag is exported as a metric and logged. A refusal of the whole
//!   broker stream ([`edupulse_ports::PublishError::Misconfigured`]: sealed, deleted) is retried the same way and
//!   reported by [`RelayStats::blocked_reason`] (and `/readyz`); no event is parked for it.
//! - **Poison events park their own stream.** A row that cannot be decoded, or an event the broker
//!   refuses for good ([`edupulse_ports::PublishError::is_permanent`]: too large for the broker), is recorded with
//!   its bytes and reason ([`CheckpointStore::park`]); the later events of its stream are held
//!   back, every other stream keeps flowing, and an operator releases the stream (see
//!   `relay/parking.rs`).
//! - **Graceful shutdown**: on cancellation the relay stops reading, lets in-flight publishes
//!   finish and be acknowledged, saves the checkpoint and returns.

use edupulse_ports::{
    CheckpointStore, CommitHints, EventPublisher, EventStore, Lease, LeaseProvider,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

/// The ports the relay works with.
#[derive(Clone)]
pub struct RelayPorts {
    /// Where events are read from.
    pub store: Arc<dyn EventStore>,
    /// Wake-up hints after commits.
    pub hints: Arc<dyn CommitHints>,
    /// Checkpoints and dead letters.
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// The lease that makes one relay active per checkpoint.
    pub leases: Arc<dyn LeaseProvider>,
    /// The broker.
    pub publisher: Arc<dyn EventPublisher>,
}

/// The first re-read after a hint that read nothing (doubling up to the poll interval).
const HELD_BACK_RECHECK: Duration = Duration::from_millis(1);

/// How often, at most, the idle relay reads the store's head for the lag metric.
const HEAD_REFRESH: Duration = Duration::from_secs(1);

/// How often the active relay looks for parked streams an operator asked to release.
const RELEASE_POLL: Duration = Duration::from_secs(1);

/// Why a batch could not be fully settled, or why the active loop ended.
enum Interrupted {
    /// Cancellation was requested while waiting to retry.
    Shutdown,
    /// The lease was lost: stop at once.
    LeaseLost,
}

/// Metric handles updated once per event.
struct EventMetrics {
    published: metrics::Counter,
    duplicates: metrics::Counter,
    commit_to_ack: metrics::Histogram,
}

/// The relay use case. See the module documentation.
pub struct Relay {
    ports: RelayPorts,
    config: RelayConfig,
    stats: Arc<RelayStats>,
    handles: std::sync::OnceLock<EventMetrics>,
}

impl Relay {
    /// A relay over `ports`.
    pub fn new(ports: RelayPorts, config: RelayConfig) -> Self {
        Self {
            ports,
            config,
            stats: Arc::default(),
            handles: std::sync::OnceLock::new(),
        }
    }

    /// Live statistics.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` is cancelled: standby until the lease is taken, then publishes.
    pub async fn run(&self, shutdown: CancellationToken) {
        let span = info_span!("relay", name = %self.config.name);
        async {
            while !shutdown.is_cancelled() {
                let Some(lease) = self.acquire_lease(&shutdown).await else {
                    break;
                };
                self.stats.active.store(true, Ordering::Relaxed);
                self.stats.takeovers.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .lease_epoch
                    .store(lease.epoch(), Ordering::Relaxed);
                metrics::gauge!("edupulse_relay_active").set(1.0);
                info!(
                    holder = %self.config.holder,
                    epoch = lease.epoch(),
                    "lease taken; relay active"
                );
                tokio::select! {
                    () = self.publish_while_active(lease.as_ref(), &shutdown) => {}
                    // Whatever the active loop waits for (a read or a checkpoint save on a
                    // connection that went silent), a lost lease ends it: nothing more is read,
                    // published or saved.
                    () = lease.lost() => {}
                }
                if !lease.is_held() {
                    self.lost();
                }
                self.stats.active.store(false, Ordering::Relaxed);
                metrics::gauge!("edupulse_relay_active").set(0.0);
                drop(lease);
            }
            info!("relay stopped");
        }
        .instrument(span)
        .await;
    }

    async fn acquire_lease(&self, shutdown: &CancellationToken) -> Option<Box<dyn Lease>> {
        let mut logged = false;
        loop {
            let attempt = self
                .ports
                .leases
                .try_acquire(&self.config.name, &self.config.holder);
            let attempt = tokio::select! {
                () = shutdown.cancelled() => return None,
                attempt = attempt => attempt,
            };
            match attempt {
                Ok(Some(lease)) => {
                    self.stats.beat();
                    return Some(lease);
                }
                Ok(None) if !logged => {
                    self.stats.beat();
                    info!("another relay is active; standing by");
                    logged = true;
                }
                Ok(None) => self.stats.beat(),
                Err(e) => warn!(error = %e, "cannot try the lease; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(self.config.lease_retry) => {}
            }
        }
    }
}

/// A lease that is never lost, for work that needs none (replay).
struct AlwaysHeld;

#[async_trait::async_trait]
impl Lease for AlwaysHeld {
    async fn lost(&self) {
        std::future::pending::<()>().await;
    }
    fn is_held(&self) -> bool {
        true
    }
    fn epoch(&self) -> u64 {
        0
    }
}

mod active;
mod backoff;
mod checkpoint;
mod config;
mod parking;
mod publish;
mod replay;
mod session;
mod stats;
#[cfg(test)]
mod tests;
mod window;

pub use config::{DEFAULT_BATCH_SIZE, RelayConfig};
pub use replay::{ReplayMode, ReplayReport};
pub use stats::{RelaySnapshot, RelayStats};
