use edupulse_domain::DEFAULT_MAX_EVENT_BYTES;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How to connect to PostgreSQL and how the store behaves.
///
/// Build it with [`PgStoreConfig::new`] and adjust the public fields. Its `Debug` output shows
/// user, host, port and database, never the password (nor the raw URL, which may carry it).
#[derive(Clone)]
#[non_exhaustive]
pub struct PgStoreConfig {
    /// A `postgres://user:password@host:port/database?…` URL. Kept secret: never printed.
    pub url: SecretString,
    /// `application_name` of the pool's connections, as `pg_stat_activity` shows it.
    pub application_name: String,
    /// Size of the connection pool.
    pub max_connections: u32,
    /// How long a call waits for a free pooled connection before failing with
    /// [`edupulse_ports::StoreError::Unavailable`].
    pub acquire_timeout: Duration,
    /// The largest encoded event accepted (default [`DEFAULT_MAX_EVENT_BYTES`], chosen so that
    /// every stored event can be published to NATS).
    pub max_event_bytes: usize,
    /// Coalescing of concurrent appends (see [`GroupCommitConfig`]).
    pub group_commit: GroupCommitConfig,
    /// How often a held lease pings its connection. Loss is detected within about
    /// `lease_ping_interval + lease_ping_timeout`.
    pub lease_ping_interval: Duration,
    /// How long a lease ping may take before the lease is declared lost.
    pub lease_ping_timeout: Duration,
}

/// Group commit: concurrent [`edupulse_ports::EventAppender::append`] calls are written many
/// per statement (one transaction, one WAL flush), each call keeping its own expected-version
/// check, idempotency and error. A call that finds its shard idle writes alone at once; calls
/// arriving meanwhile are queued and written together by the shard's writer task.
///
/// The writer tasks are spawned on the Tokio runtime of the store's first grouped append and
/// live as long as the store (and its clones): a store shared by several runtimes (a `static`
/// used by many `#[tokio::test]`s) should disable group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupCommitConfig {
    /// Whether `append` goes through the writer tasks (`true`, the default) or runs its own
    /// statement on a pooled connection.
    pub enabled: bool,
    /// Number of writer tasks, that is of shards (each writer holds one pooled connection while
    /// it has work). Streams are sharded over them, so two groups never race on one stream.
    pub writers: usize,
    /// Most events written by one grouped statement. Larger single calls bypass the group.
    pub max_group_events: usize,
    /// Capacity of each writer's queue, in calls; callers wait (back-pressure) when it is full.
    pub queue_capacity: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            writers: 2,
            max_group_events: 512,
            queue_capacity: 4096,
        }
    }
}

impl GroupCommitConfig {
    /// Group commit switched off: every `append` runs its own statement.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }
}

impl PgStoreConfig {
    /// A configuration with the defaults: 10 connections, 5 s acquire timeout, the domain's event
    /// size limit, group commit on with 2 writers, lease pinged every 500 ms with a 1.5 s timeout.
    pub fn new(url: SecretString) -> Self {
        Self {
            url,
            application_name: "edupulse-events".to_owned(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            group_commit: GroupCommitConfig::default(),
            lease_ping_interval: Duration::from_millis(500),
            lease_ping_timeout: Duration::from_millis(1500),
        }
    }

    /// Parses the URL into connect options.
    pub(crate) fn connect_options(&self) -> Result<PgConnectOptions, ConfigError> {
        // The parser's own error is dropped on purpose: some of its messages quote the input.
        PgConnectOptions::from_str(self.url.expose_secret())
            .map(|o| o.application_name(&self.application_name))
            .map_err(|_| ConfigError)
    }
}

impl fmt::Debug for PgStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match self.connect_options() {
            Ok(o) => format!(
                "postgres://{}:[REDACTED]@{}:{}/{}",
                o.get_username(),
                o.get_host(),
                o.get_port(),
                o.get_database().unwrap_or("")
            ),
            Err(_) => "[REDACTED: not a valid URL]".to_owned(),
        };
        f.debug_struct("PgStoreConfig")
            .field("url", &target)
            .field("application_name", &self.application_name)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("group_commit", &self.group_commit)
            .field("lease_ping_interval", &self.lease_ping_interval)
            .field("lease_ping_timeout", &self.lease_ping_timeout)
            .finish()
    }
}

/// The database URL cannot be parsed. Deliberately says nothing more, so that no part of the URL
/// (which may hold a password) reaches a log.
#[derive(Debug, thiserror::Error)]
#[error("the database URL is not a valid PostgreSQL connection URL")]
pub struct ConfigError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let config = PgStoreConfig::new(SecretString::from(
            "postgres://app:s3cr3t-pw@db.example:6432/events?sslmode=disable",
        ));
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
        assert!(shown.contains("db.example:6432/events"), "{shown}");
        let bad = PgStoreConfig::new(SecretString::from("postgres://app:s3cr3t-pw@host:notaport"));
        let shown = format!("{bad:?}");
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
        let err = bad.connect_options().err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| !e.contains("s3cr3t-pw")));
    }
}
