use edupulse_domain::DEFAULT_MAX_EVENT_BYTES;
use secrecy::{ExposeSecret, SecretString};
use sqlx::ConnectOptions;
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
    /// Time to live of a lease, how often its holder renews it and when it gives up (see
    /// [`LeaseConfig`]).
    pub lease: LeaseConfig,
    /// TCP keepalives and user timeout the server applies to this store's sessions (see
    /// [`SessionKeepalive`]).
    pub session_keepalive: SessionKeepalive,
    /// What the driver logs of statements: by default a statement slower than a second is
    /// logged as a warning, with its SQL.
    pub statement_log: StatementLog,
}

/// The timing of leases: a lease expires `ttl` after it was taken or last renewed, on the
/// server's clock, unless its holder renews it first.
///
/// The holder renews every `renew_interval` and gives up (its [`edupulse_ports::Lease::lost`]
/// fires) as soon as no renewal has succeeded within `ttl - safety_margin`, counted on its own
/// monotonic clock from the moment the last successful renewal was *sent*. The server set that
/// renewal's expiry to `ttl` after it *received* it, so the holder always stops at least
/// `safety_margin` before anyone else can take the lease. The margin absorbs the difference of
/// rate between the two clocks and the time the holder needs to stop acting (an in-flight
/// publish being cut short).
///
/// A standby takes over at most `ttl` after the holder's last renewal reached the server, plus
/// its own retry period: with the default 10 s and a 1 s retry, within 11 s of the holder's
/// host going silent.
///
/// Valid by construction: `ttl` ≥ [`LeaseConfig::MIN_TTL`], `0 < renew_interval <
/// ttl - safety_margin` (at least one renewal attempt fits before the holder gives up) and
/// `safety_margin < ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    ttl: Duration,
    renew_interval: Duration,
    safety_margin: Duration,
}

impl LeaseConfig {
    /// The default time to live: a standby takes over within ~11 s of a silent holder.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
    /// The shortest time to live accepted: shorter, a pause of the holder's process (a GC-free
    /// runtime still stalls on a loaded host) would cost it the lease.
    pub const MIN_TTL: Duration = Duration::from_millis(500);

    /// A lease living `ttl`, renewed every `ttl / 3`, given up `ttl / 5` before it expires.
    ///
    /// # Errors
    /// [`LeaseConfigError::TtlTooShort`] below [`LeaseConfig::MIN_TTL`].
    pub fn new(ttl: Duration) -> Result<Self, LeaseConfigError> {
        Self::with_timings(ttl, ttl / 3, ttl / 5)
    }

    /// A lease living `ttl`, renewed every `renew_interval`, given up `safety_margin` before it
    /// expires.
    ///
    /// # Errors
    /// [`LeaseConfigError`] naming the violated bound (see the type's docs).
    pub fn with_timings(
        ttl: Duration,
        renew_interval: Duration,
        safety_margin: Duration,
    ) -> Result<Self, LeaseConfigError> {
        if ttl < Self::MIN_TTL {
            return Err(LeaseConfigError::TtlTooShort {
                ttl,
                min: Self::MIN_TTL,
            });
        }
        if safety_margin >= ttl {
            return Err(LeaseConfigError::MarginTooLarge { safety_margin, ttl });
        }
        let budget = ttl - safety_margin;
        if renew_interval.is_zero() || renew_interval >= budget {
            return Err(LeaseConfigError::RenewInterval {
                renew_interval,
                budget,
            });
        }
        Ok(Self {
            ttl,
            renew_interval,
            safety_margin,
        })
    }

    /// How long a lease lives after it was taken or renewed, on the server's clock.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often the holder renews.
    pub fn renew_interval(&self) -> Duration {
        self.renew_interval
    }

    /// How long before the server would let a successor in the holder gives up.
    pub fn safety_margin(&self) -> Duration {
        self.safety_margin
    }

    /// How long after sending a renewal that then succeeded the holder still acts:
    /// `ttl - safety_margin`.
    pub fn holding_budget(&self) -> Duration {
        self.ttl - self.safety_margin
    }
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self::new(Self::DEFAULT_TTL).expect("the default TTL is above the minimum")
    }
}

/// Timings of a lease that cannot work (see [`LeaseConfig`]). A configuration mistake: fix the
/// settings; retrying does not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseConfigError {
    /// The time to live is below the minimum.
    #[error("the lease TTL {ttl:?} is shorter than the minimum {min:?}")]
    TtlTooShort {
        /// The TTL asked for.
        ttl: Duration,
        /// [`LeaseConfig::MIN_TTL`].
        min: Duration,
    },
    /// The safety margin leaves no time to hold the lease.
    #[error("the lease safety margin {safety_margin:?} is not shorter than the TTL {ttl:?}")]
    MarginTooLarge {
        /// The margin asked for.
        safety_margin: Duration,
        /// The TTL.
        ttl: Duration,
    },
    /// The renew interval is zero, or no renewal would happen before the holder gives up.
    #[error(
        "the lease renew interval {renew_interval:?} must be above zero and below the TTL minus \
         the safety margin ({budget:?})"
    )]
    RenewInterval {
        /// The interval asked for.
        renew_interval: Duration,
        /// `ttl - safety_margin`.
        budget: Duration,
    },
}

/// TCP keepalives and user timeout the *server* applies to this store's sessions, sent as
/// startup options (`-c tcp_keepalives_idle=…`), so that PostgreSQL notices a client whose host
/// died or whose network silently dropped in seconds rather than after the kernel's defaults
/// (about two hours), and ends its session: its locks and open transaction go with it (an open
/// transaction holds back the relay's horizon, see the crate docs).
///
/// A zero field is not sent: the server's own setting applies. Zero them all behind a proxy that
/// refuses startup options (PgBouncer unless `ignore_startup_parameters` lists `options`). Behind
/// any proxy (docker-proxy, PgBouncer, a cloud load balancer) these settings only watch the
/// proxy's connection, which the proxy keeps alive for a client that is gone: that is why leases
/// do not rely on sessions (see [`LeaseConfig`]). Needs PostgreSQL 12 or later
/// (`tcp_user_timeout`). Ignored by the server on Unix-socket connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionKeepalive {
    /// Idle time before the server's first keepalive probe (`tcp_keepalives_idle`, whole
    /// seconds).
    pub idle: Duration,
    /// Time between probes (`tcp_keepalives_interval`, whole seconds).
    pub interval: Duration,
    /// Probes lost before the connection is dropped (`tcp_keepalives_count`).
    pub count: u32,
    /// How long sent data may stay unacknowledged before the connection is dropped
    /// (`tcp_user_timeout`, milliseconds).
    pub user_timeout: Duration,
}

impl Default for SessionKeepalive {
    /// Probes after 5 s idle, every 2 s, 3 lost: a silent client is dropped after ~11 s idle;
    /// one with unacknowledged data after 10 s.
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(5),
            interval: Duration::from_secs(2),
            count: 3,
            user_timeout: Duration::from_secs(10),
        }
    }
}

impl SessionKeepalive {
    /// Nothing sent: the server's settings apply.
    pub fn server_defaults() -> Self {
        Self {
            idle: Duration::ZERO,
            interval: Duration::ZERO,
            count: 0,
            user_timeout: Duration::ZERO,
        }
    }

    /// The startup options to send: `(setting, value)` for each non-zero field.
    pub(crate) fn startup_options(&self) -> Vec<(&'static str, String)> {
        let secs = |d: Duration| (!d.is_zero()).then(|| d.as_secs().max(1).to_string());
        [
            ("tcp_keepalives_idle", secs(self.idle)),
            ("tcp_keepalives_interval", secs(self.interval)),
            (
                "tcp_keepalives_count",
                (self.count > 0).then(|| self.count.to_string()),
            ),
            (
                "tcp_user_timeout",
                (!self.user_timeout.is_zero()).then(|| self.user_timeout.as_millis().to_string()),
            ),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
        .collect()
    }
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
    /// size limit, group commit on with 2 writers, the default [`LeaseConfig`] (10 s) and
    /// [`SessionKeepalive`].
    pub fn new(url: SecretString) -> Self {
        Self {
            url,
            application_name: "edupulse-events".to_owned(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            group_commit: GroupCommitConfig::default(),
            lease: LeaseConfig::default(),
            session_keepalive: SessionKeepalive::default(),
            statement_log: StatementLog::default(),
        }
    }

    /// Parses the URL into connect options, with the application name and the session
    /// keepalives (after the URL's own `options`, so they win).
    pub(crate) fn connect_options(&self) -> Result<PgConnectOptions, ConfigError> {
        // The parser's own error is dropped on purpose: some of its messages quote the input.
        let options = PgConnectOptions::from_str(self.url.expose_secret())
            .map(|o| o.application_name(&self.application_name))
            .map_err(|_| ConfigError)?;
        let options = match self.statement_log {
            StatementLog::SlowAsWarnings => options,
            StatementLog::Off => options.disable_statement_logging(),
        };
        let startup = self.session_keepalive.startup_options();
        Ok(if startup.is_empty() {
            options
        } else {
            options.options(startup)
        })
    }
}

/// What the driver logs of the statements it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatementLog {
    /// Statements slower than a second are logged as warnings, with their SQL: a slow statement
    /// in a service is worth an operator's look.
    #[default]
    SlowAsWarnings,
    /// Nothing: for work that is slow on purpose (a bench's bulk loads), whose output is a table.
    Off,
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
            .field("lease", &self.lease)
            .field("session_keepalive", &self.session_keepalive)
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
    fn lease_defaults_take_over_within_fifteen_seconds() {
        let lease = LeaseConfig::default();
        assert_eq!(lease.ttl(), Duration::from_secs(10));
        assert!(lease.renew_interval() < lease.holding_budget());
        assert!(lease.holding_budget() < lease.ttl());
        assert!(lease.ttl() + Duration::from_secs(1) < Duration::from_secs(15));
    }

    #[test]
    fn lease_timings_are_validated() {
        let s = Duration::from_secs;
        assert!(matches!(
            LeaseConfig::new(Duration::from_millis(100)),
            Err(LeaseConfigError::TtlTooShort { .. })
        ));
        assert!(matches!(
            LeaseConfig::with_timings(s(10), s(3), s(10)),
            Err(LeaseConfigError::MarginTooLarge { .. })
        ));
        assert!(matches!(
            LeaseConfig::with_timings(s(10), s(8), s(2)),
            Err(LeaseConfigError::RenewInterval { .. })
        ));
        assert!(matches!(
            LeaseConfig::with_timings(s(10), Duration::ZERO, s(2)),
            Err(LeaseConfigError::RenewInterval { .. })
        ));
        let ok = LeaseConfig::with_timings(s(10), s(2), s(1)).expect("valid");
        assert_eq!(ok.holding_budget(), s(9));
    }

    #[test]
    fn session_keepalives_become_startup_options() {
        let sent = SessionKeepalive::default().startup_options();
        assert_eq!(
            sent,
            vec![
                ("tcp_keepalives_idle", "5".to_owned()),
                ("tcp_keepalives_interval", "2".to_owned()),
                ("tcp_keepalives_count", "3".to_owned()),
                ("tcp_user_timeout", "10000".to_owned()),
            ]
        );
        assert!(
            SessionKeepalive::server_defaults()
                .startup_options()
                .is_empty()
        );
        let config = PgStoreConfig::new(SecretString::from(
            "postgres://app:pw@db.example/events?options=-c%20statement_timeout%3D5s",
        ));
        let options = config.connect_options().expect("valid URL");
        let line = options.get_options().unwrap_or_default();
        assert!(line.starts_with("-c statement_timeout=5s"), "{line}");
        assert!(line.ends_with("-c tcp_user_timeout=10000"), "{line}");
    }

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
