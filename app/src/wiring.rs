//! The one place that builds the adapters and plugs them into the use cases.
//!
//! The command, the demo, the bench and the end-to-end tests all go through [`Backbone`], so what
//! the tests drive is the real wiring, not a copy of it.

mod projections;

pub use projections::{RunningProjection, Shipped, spawn_shipped, spawn_workers};

use crate::cli::{NatsArgs, PgArgs, RelayArgs};
use crate::relay::{Relay, RelayConfig, RelayPorts, RelayStats};
use edupulse_nats::{
    ConnectError, ConsumerOptions, NatsAuth, NatsConfig, NatsConsumer, NatsPublisher,
    ProvisionError,
};
use edupulse_ports::{ConsumeError, StoreError};
use edupulse_postgres::{LeaseConfig, PgEventStore, PgStoreConfig, SessionKeepalive};
use secrecy::SecretString;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Why the backbone could not be put together. Each message names the problem in one line and
/// never contains a secret.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WiringError {
    /// A required setting is missing or malformed.
    #[error("configuration: {0}")]
    Config(String),
    /// PostgreSQL could not be reached or used.
    #[error("PostgreSQL")]
    Store(#[from] StoreError),
    /// NATS could not be reached.
    #[error("NATS")]
    Connect(#[from] ConnectError),
    /// The JetStream streams could not be created or do not fit.
    #[error("NATS JetStream")]
    Provision(#[from] ProvisionError),
    /// The durable consumer could not be created.
    #[error("NATS consumer")]
    Consume(#[from] ConsumeError),
    /// The metrics endpoint could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl PgArgs {
    /// The store configuration, or an error naming the missing setting.
    ///
    /// # Errors
    /// [`WiringError::Config`] when no URL is set.
    pub fn store_config(&self) -> Result<PgStoreConfig, WiringError> {
        let url = self.database_url.clone().ok_or_else(|| {
            WiringError::Config("no PostgreSQL URL: set DATABASE_URL or --database-url".into())
        })?;
        let mut config = PgStoreConfig::new(url);
        config.max_connections = self.pg_max_connections.max(2);
        let mut keepalive = SessionKeepalive::default();
        keepalive.idle = Duration::from_secs(self.pg_keepalives_idle_s);
        keepalive.interval = Duration::from_secs(self.pg_keepalives_interval_s);
        keepalive.count = self.pg_keepalives_count;
        keepalive.user_timeout = Duration::from_millis(self.pg_tcp_user_timeout_ms);
        config.session_keepalive = keepalive;
        Ok(config)
    }
}

impl RelayArgs {
    /// The lease timings: the TTL, and the renew interval when given (else a third of the TTL).
    ///
    /// # Errors
    /// [`WiringError::Config`] for timings that cannot work (see [`LeaseConfig`]).
    pub fn lease_config(&self) -> Result<LeaseConfig, WiringError> {
        let ttl = Duration::from_millis(self.lease_ttl_ms);
        let lease = match self.lease_renew_ms {
            None => LeaseConfig::new(ttl),
            Some(renew) => {
                let defaults = LeaseConfig::new(ttl)
                    .map_err(|e| WiringError::Config(format!("--lease-ttl-ms: {e}")))?;
                LeaseConfig::with_timings(
                    ttl,
                    Duration::from_millis(renew),
                    defaults.safety_margin(),
                )
            }
        };
        lease.map_err(|e| WiringError::Config(format!("--lease-ttl-ms / --lease-renew-ms: {e}")))
    }

    /// The store configuration of the relay: [`PgArgs::store_config`] with its lease timings.
    ///
    /// # Errors
    /// [`WiringError::Config`].
    pub fn store_config(&self) -> Result<PgStoreConfig, WiringError> {
        let mut config = self.pg.store_config()?;
        config.lease = self.lease_config()?;
        Ok(config)
    }
}

/// A week: JetStream keeps every message id of the window in memory, so a longer window only
/// costs memory for no gain (exactly-once storage does not rest on it).
const MAX_DUPLICATE_WINDOW_SECS: u64 = 7 * 24 * 3600;

impl NatsArgs {
    /// The NATS configuration, or an error naming the missing setting.
    ///
    /// # Errors
    /// [`WiringError::Config`] when no URL is set or a key file cannot be read.
    pub fn nats_config(&self) -> Result<NatsConfig, WiringError> {
        if self.nats_url.is_empty() {
            return Err(WiringError::Config(
                "no NATS URL: set NATS_URL or --nats-url".into(),
            ));
        }
        let mut config = NatsConfig::new(
            self.nats_url.iter().map(|u| u.trim().to_owned()),
            self.nats_stream.clone(),
            self.subject_prefix.clone(),
        );
        config.replicas = self.nats_replicas.max(1);
        if !(1..=MAX_DUPLICATE_WINDOW_SECS).contains(&self.nats_duplicate_window_secs) {
            return Err(WiringError::Config(format!(
                "--nats-duplicate-window-secs {} is outside 1..={MAX_DUPLICATE_WINDOW_SECS}",
                self.nats_duplicate_window_secs
            )));
        }
        config.duplicate_window = std::time::Duration::from_secs(self.nats_duplicate_window_secs);
        config.tls.require_tls = self.nats_tls_required;
        config.tls.root_ca = self.nats_ca.clone();
        if let Some(creds) = &self.nats_creds {
            config.auth = NatsAuth::CredentialsFile(creds.clone());
        } else if let Some(nkey) = &self.nats_nkey {
            let seed = std::fs::read_to_string(nkey).map_err(|e| {
                WiringError::Config(format!("cannot read the nkey file {}: {e}", nkey.display()))
            })?;
            config.auth = NatsAuth::NkeySeed(SecretString::from(seed.trim().to_owned()));
        }
        Ok(config)
    }
}

/// Everything connected: the PostgreSQL store and the NATS client, streams provisioned.
#[derive(Clone)]
pub struct Backbone {
    /// The store (also checkpoints, leases and commit hints).
    pub store: Arc<PgEventStore>,
    /// The NATS client.
    pub client: async_nats::Client,
    /// The NATS configuration in use.
    pub nats: NatsConfig,
}

impl Backbone {
    /// Connects to PostgreSQL and NATS and provisions the JetStream streams. Does not migrate.
    ///
    /// # Errors
    /// [`WiringError`] naming what failed.
    pub async fn connect(pg: &PgStoreConfig, nats: NatsConfig) -> Result<Self, WiringError> {
        let (store, client) =
            tokio::join!(PgEventStore::connect(pg), edupulse_nats::connect(&nats));
        let (store, client) = (store?, client?);
        let js = edupulse_nats::jetstream_context(client.clone(), &nats);
        edupulse_nats::provision(&js, &nats).await?;
        Ok(Self {
            store: Arc::new(store),
            client,
            nats,
        })
    }

    /// A publisher on this backbone's NATS client.
    pub fn publisher(&self) -> NatsPublisher {
        NatsPublisher::new(self.client.clone(), &self.nats)
    }

    /// The relay over this backbone.
    pub fn relay(&self, config: RelayConfig) -> Relay {
        Relay::new(
            RelayPorts {
                store: self.store.clone(),
                hints: self.store.clone(),
                checkpoints: self.store.clone(),
                leases: self.store.clone(),
                publisher: Arc::new(self.publisher()),
            },
            config,
        )
    }

    /// A durable consumer of the event stream, optionally filtered by subject.
    ///
    /// # Errors
    /// [`WiringError::Consume`].
    pub async fn consumer(
        &self,
        durable: &str,
        filter_subject: Option<String>,
    ) -> Result<NatsConsumer, WiringError> {
        let mut options = ConsumerOptions::new(durable);
        options.filter_subject = filter_subject;
        Ok(NatsConsumer::create(self.client.clone(), &self.nats, options).await?)
    }
}

/// A relay running in the background with its HTTP endpoints.
pub struct RunningRelay {
    /// Live statistics.
    pub stats: Arc<RelayStats>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, if anywhere.
    pub http: Option<SocketAddr>,
    /// Cancel to stop the relay gracefully.
    pub shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningRelay {
    /// Stops gracefully (in-flight acks finish, checkpoint saved) and waits for the end.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Waits until the relay stops (after its shutdown token is cancelled).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Kills the relay without any clean-up (a crash, for tests): nothing more is published or
    /// saved, and its lease's connection is dropped.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// Starts `relay` in the background, and its HTTP endpoints on `listen` when given.
///
/// # Errors
/// [`WiringError::Listen`].
pub async fn spawn_relay(
    relay: Relay,
    listen: Option<SocketAddr>,
) -> Result<RunningRelay, WiringError> {
    let shutdown = CancellationToken::new();
    let stats = relay.stats();
    let http = match listen {
        Some(addr) => Some(
            crate::http::serve(
                addr,
                crate::telemetry::prometheus(),
                stats.clone(),
                shutdown.clone(),
            )
            .await
            .map_err(|source| WiringError::Listen { addr, source })?,
        ),
        None => None,
    };
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    Ok(RunningRelay {
        stats,
        http,
        shutdown,
        task,
    })
}
