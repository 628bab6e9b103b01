//! Command-line interface: every option has an environment variable fallback and a `--help` text.

use crate::telemetry::LogFormat;
use crate::wiring::Shipped;
use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;
use std::net::SocketAddr;
use std::path::PathBuf;

/// EduPulse event backbone: stores domain events in PostgreSQL and publishes them to NATS
/// JetStream, guaranteed, through a relay.
#[derive(Debug, Parser)]
#[command(name = "edupulse-events", version, about, long_about = None)]
pub struct Cli {
    /// Options shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Log format on stderr (the filter comes from RUST_LOG, e.g. `info,edupulse_app=debug`).
    #[arg(
        long,
        env = "EDUPULSE_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

/// PostgreSQL connection options.
#[derive(Debug, Clone, Args)]
pub struct PgArgs {
    /// PostgreSQL URL, e.g. `postgres://app:secret@db:5432/edupulse?sslmode=verify-full&sslrootcert=/etc/ca.pem`.
    /// TLS is configured in the URL (`sslmode=verify-full`, `sslrootcert`, `sslcert`, `sslkey`).
    /// The password is never printed.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretString>,
    /// Largest number of pooled connections to PostgreSQL.
    #[arg(long, env = "EDUPULSE_PG_MAX_CONNECTIONS", default_value_t = 16)]
    pub pg_max_connections: u32,
    /// Seconds a session may stay idle before the server sends TCP keepalives
    /// (`tcp_keepalives_idle`, sent at connect; 0: the server's setting).
    #[arg(long, env = "EDUPULSE_PG_KEEPALIVES_IDLE_S", default_value_t = 5)]
    pub pg_keepalives_idle_s: u64,
    /// Seconds between the server's keepalive probes (`tcp_keepalives_interval`; 0: the
    /// server's setting).
    #[arg(long, env = "EDUPULSE_PG_KEEPALIVES_INTERVAL_S", default_value_t = 2)]
    pub pg_keepalives_interval_s: u64,
    /// Probes lost before the server drops the session (`tcp_keepalives_count`; 0: the
    /// server's setting).
    #[arg(long, env = "EDUPULSE_PG_KEEPALIVES_COUNT", default_value_t = 3)]
    pub pg_keepalives_count: u32,
    /// Milliseconds the server lets sent data go unacknowledged before dropping the session
    /// (`tcp_user_timeout`; 0: the server's setting). Set all four to 0 behind a pooler that
    /// refuses startup options (PgBouncer by default).
    #[arg(
        long,
        env = "EDUPULSE_PG_TCP_USER_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub pg_tcp_user_timeout_ms: u64,
}

/// NATS connection and stream options. `Debug` shows the URLs without their credentials.
#[derive(Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma separated, e.g. `nats://n1:4222,nats://n2:4222`. Use `tls://` to
    /// require TLS. A user and password in them are never printed.
    #[arg(long, env = "NATS_URL", value_delimiter = ',', hide_env_values = true)]
    pub nats_url: Vec<String>,
    /// JetStream stream holding the events (created or checked at start).
    #[arg(long, env = "EDUPULSE_NATS_STREAM", default_value = "EDUPULSE_EVENTS")]
    pub nats_stream: String,
    /// Subject prefix: events go to `<prefix>.<EventType>.<stream id>`.
    #[arg(long, env = "EDUPULSE_SUBJECT_PREFIX", default_value = "edupulse")]
    pub subject_prefix: String,
    /// Replicas of the JetStream streams (3 on a production cluster).
    #[arg(long, env = "EDUPULSE_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,
    /// NATS credentials file (JWT + nkey seed), for decentralised auth.
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// NATS nkey seed file, for nkey auth.
    #[arg(long, env = "NATS_NKEY")]
    pub nats_nkey: Option<PathBuf>,
    /// CA certificate (PEM) to verify the NATS server's TLS certificate.
    #[arg(long, env = "NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// Require TLS to NATS even if the URL does not say so.
    #[arg(long, env = "NATS_TLS_REQUIRED")]
    pub nats_tls_required: bool,
    /// JetStream's duplicate window of the event stream, in seconds (1 to 604800). Exactly-once
    /// storage does not depend on it (publishes are fenced per subject); it makes a quick retry
    /// of an ambiguous publish a plain duplicate acknowledgement, and protects publishers that do
    /// not use the fence.
    #[arg(
        long,
        env = "EDUPULSE_NATS_DUPLICATE_WINDOW_SECS",
        default_value_t = 120
    )]
    pub nats_duplicate_window_secs: u64,
}

impl std::fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self
            .nats_url
            .iter()
            .map(|u| edupulse_nats::redact_url(u))
            .collect();
        f.debug_struct("NatsArgs")
            .field("nats_url", &urls)
            .field("nats_stream", &self.nats_stream)
            .field("subject_prefix", &self.subject_prefix)
            .finish_non_exhaustive()
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the database migrations (idempotent). Nothing else ever creates tables.
    Migrate {
        #[command(flatten)]
        /// PostgreSQL options.
        pg: PgArgs,
    },
    /// Run the relay: publish every committed event to NATS JetStream, from a checkpoint.
    /// Long-running; stops gracefully on SIGINT/SIGTERM.
    Relay(RelayArgs),
    /// Re-publish the events with global positions FROM..=TO (after the broker lost data).
    /// Safe to repeat: the broker deduplicates by event id.
    Replay {
        /// PostgreSQL options.
        #[command(flatten)]
        pg: PgArgs,
        /// NATS options.
        #[command(flatten)]
        nats: NatsArgs,
        /// First global position.
        #[arg(long)]
        from: u64,
        /// Last global position (inclusive).
        #[arg(long)]
        to: u64,
        /// Store again the events the broker already holds (only a stream's last version: never
        /// after a later one). Without it, those are counted and nothing is stored.
        #[arg(long)]
        force: bool,
    },
    /// List the streams the relay holds back behind an event it could not decode or publish.
    Parked {
        /// PostgreSQL options.
        #[command(flatten)]
        pg: PgArgs,
        /// Checkpoint name.
        #[arg(long, env = "EDUPULSE_RELAY_NAME", default_value = "default")]
        name: String,
    },
    /// Release a parked stream: the active relay publishes the parked event (once fixed) and
    /// what waits behind it, in order; with --skip it leaves the parked event out for good.
    Release {
        /// PostgreSQL options.
        #[command(flatten)]
        pg: PgArgs,
        /// Checkpoint name.
        #[arg(long, env = "EDUPULSE_RELAY_NAME", default_value = "default")]
        name: String,
        /// The parked stream.
        #[arg(long)]
        stream: String,
        /// Leave the parked event out for good (it is never published).
        #[arg(long)]
        skip: bool,
    },
    /// Append events: one from flags, one from --json, or NDJSON lines on stdin (bulk import).
    /// Prints one JSON result per event (position and version, or the error).
    Append(AppendArgs),
    /// Print events as JSON lines: one stream, or all from a global position (commit order).
    Read(ReadArgs),
    /// Follow the NATS stream through a durable consumer and print events as JSON lines.
    Tail {
        /// NATS options.
        #[command(flatten)]
        nats: NatsArgs,
        /// Durable consumer name (reuse it to resume where you left off).
        #[arg(long, default_value = "edupulse-tail")]
        durable: String,
        /// Only events of this type.
        #[arg(long)]
        event_type: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        max: Option<u64>,
    },
    /// Run workers of a projection: each takes its share of the feed's buckets, applies their
    /// events in per-aggregate order and commits effects exactly once. Long-running; stops
    /// gracefully on SIGINT/SIGTERM. Run a new --generation beside the old one to rebuild.
    Project(ProjectArgs),
    /// Inspect and operate projections: status, parked aggregates, retry, skip, activate.
    Projections {
        /// What to do.
        #[command(subcommand)]
        action: ProjectionsCommand,
    },
    /// Show the relay's state: last committed position, last published, checkpoint age, lease
    /// holder, dead letters, and what holds the commit horizon back.
    Status {
        /// PostgreSQL options.
        #[command(flatten)]
        pg: PgArgs,
        /// NATS options: with a NATS URL, the broker's last sequence is compared with what it
        /// acknowledged (a broker that went back in time lost acknowledged events).
        #[command(flatten)]
        nats: NatsArgs,
        /// Checkpoint name.
        #[arg(long, env = "EDUPULSE_RELAY_NAME", default_value = "default")]
        name: String,
    },
}

/// Which projection, and which generation of it.
#[derive(Debug, Clone, Args)]
pub struct ProjectionRef {
    /// The projection.
    #[arg(long, value_enum)]
    pub projection: Shipped,
    /// Its generation (a rebuild runs the next one beside the current one).
    #[arg(long, default_value_t = 1)]
    pub generation: u32,
}

/// Options of `project`.
#[derive(Debug, Args)]
pub struct ProjectArgs {
    /// PostgreSQL options.
    #[command(flatten)]
    pub pg: PgArgs,
    /// NATS options.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The projection.
    #[command(flatten)]
    pub which: ProjectionRef,
    /// Workers in this process (tasks); workers of all processes share the buckets.
    #[arg(long, env = "EDUPULSE_PROJECTION_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Buckets of the feed: fixed when the bucket stream is created, the most workers that can
    /// share the work.
    #[arg(long, env = "EDUPULSE_PROJECTION_BUCKETS", default_value_t = edupulse_nats::DEFAULT_BUCKETS)]
    pub buckets: u16,
    /// This process's worker name prefix, unique among the projection's processes (default:
    /// host name and process id).
    #[arg(long, env = "EDUPULSE_PROJECTION_WORKER")]
    pub worker: Option<String>,
    /// Events per unit (one transaction).
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Time to live of the bucket leases, in milliseconds: a dead worker's buckets are taken
    /// over within about this.
    #[arg(long, env = "EDUPULSE_LEASE_TTL_MS", default_value_t = 10_000)]
    pub lease_ttl_ms: u64,
    /// Address of /metrics, /healthz and /readyz (none when not given).
    #[arg(long, env = "EDUPULSE_METRICS_ADDR")]
    pub listen: Option<SocketAddr>,
}

/// The `projections` subcommands.
#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Progress as JSON: events applied, lag, parked aggregates and events, live workers, and
    /// the generation readers use.
    Status {
        /// PostgreSQL options.
        #[command(flatten)]
        pg: PgArgs,
        /// The projection.
        #[command(flatten)]
        which: ProjectionRef,
    },
    /// The parked aggregates, one JSON line each, with their parked events.
    Parked {
        /// PostgreSQL options.
        #[command(flatten)]
        pg: PgArgs,
        /// The projection.
        #[command(flatten)]
        which: ProjectionRef,
    },
    /// Apply a parked aggregate's events again, in order (after a fix).
    Retry {
        /// PostgreSQL options.
        #[command(flatten)]
        pg: PgArgs,
        /// The projection.
        #[command(flatten)]
        which: ProjectionRef,
        /// The parked aggregate (stream id).
        #[arg(long)]
        stream: String,
    },
    /// Give up a parked aggregate's first parked event (or the gap it waits on) for good, and
    /// apply the rest again.
    Skip {
        /// PostgreSQL options.
        #[command(flatten)]
        pg: PgArgs,
        /// The projection.
        #[command(flatten)]
        which: ProjectionRef,
        /// The parked aggregate (stream id).
        #[arg(long)]
        stream: String,
    },
    /// Make this generation the one readers use (after a rebuild caught up).
    Activate {
        /// PostgreSQL options.
        #[command(flatten)]
        pg: PgArgs,
        /// The projection.
        #[command(flatten)]
        which: ProjectionRef,
    },
}

/// Options of `relay`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// PostgreSQL options.
    #[command(flatten)]
    pub pg: PgArgs,
    /// NATS options.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Checkpoint name; one relay is active per name, others stand by.
    #[arg(long, env = "EDUPULSE_RELAY_NAME", default_value = "default")]
    pub name: String,
    /// Events per publish batch when catching up.
    #[arg(long, env = "EDUPULSE_RELAY_BATCH", default_value_t = crate::relay::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Longest wait between reads when no commit hint arrives, in milliseconds.
    #[arg(long, env = "EDUPULSE_RELAY_POLL_MS", default_value_t = 500)]
    pub poll_ms: u64,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "EDUPULSE_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,
    /// Time to live of the relay's lease, in milliseconds: a standby takes over within about
    /// this (plus a second) after the active relay's host goes silent, and the active relay
    /// gives up its work if it cannot renew the lease within 4/5 of it.
    #[arg(long, env = "EDUPULSE_LEASE_TTL_MS", default_value_t = 10_000)]
    pub lease_ttl_ms: u64,
    /// How often the active relay renews its lease, in milliseconds (default: a third of the
    /// TTL). Must be below 4/5 of the TTL.
    #[arg(long, env = "EDUPULSE_LEASE_RENEW_MS")]
    pub lease_renew_ms: Option<u64>,
    /// Runtime worker threads. The relay is one pipeline (read, then publish with acks
    /// pipelined), so one thread is enough to saturate a broker; more threads only add
    /// cross-thread wake-ups and per-thread allocator memory (measured by the bench).
    #[arg(long, env = "EDUPULSE_RELAY_THREADS", default_value_t = 1)]
    pub threads: usize,
}

/// Options of `append`.
#[derive(Debug, Args)]
pub struct AppendArgs {
    /// PostgreSQL options.
    #[command(flatten)]
    pub pg: PgArgs,
    /// Event type (LessonPublished, QuizSubmitted, BadgeAwarded, PaymentProcessed).
    #[arg(long = "type", requires = "payload", conflicts_with = "json")]
    pub event_type: Option<String>,
    /// Payload as JSON, with --type.
    #[arg(long)]
    pub payload: Option<String>,
    /// Stream (aggregate) id; omit for a standalone event.
    #[arg(long)]
    pub stream: Option<String>,
    /// Expected stream version: any, no_stream, or a number.
    #[arg(long, default_value = "any")]
    pub expected: String,
    /// One event as JSON (full envelope or short form; see the README).
    #[arg(long)]
    pub json: Option<String>,
    /// How many appends to run at once when importing from stdin.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

/// Options of `read`.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// PostgreSQL options.
    #[command(flatten)]
    pub pg: PgArgs,
    /// Read this stream (from --from-version); otherwise read all events in commit order.
    #[arg(long)]
    pub stream: Option<String>,
    /// First stream version, with --stream.
    #[arg(long, default_value_t = 1)]
    pub from_version: u64,
    /// Read all events after this global position (commit order), without --stream.
    #[arg(long, default_value_t = 0)]
    pub from_position: u64,
    /// Stop after this many events.
    #[arg(long)]
    pub limit: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn env_fallback_and_secret_not_printed() {
        let cli = Cli::try_parse_from([
            "edupulse-events",
            "migrate",
            "--database-url",
            "postgres://u:sentinel-pw@h/db",
        ])
        .unwrap();
        let printed = format!("{cli:?}");
        assert!(!printed.contains("sentinel-pw"), "{printed}");
        let cli = Cli::try_parse_from([
            "edupulse-events",
            "tail",
            "--nats-url",
            "nats://u:sentinel-pw@h:4222,tls://u:sentinel-pw@h2:4222",
        ])
        .unwrap();
        let printed = format!("{cli:?}");
        assert!(!printed.contains("sentinel-pw"), "{printed}");
        assert!(printed.contains("h2:4222"), "{printed}");
    }

    #[test]
    fn lease_timings_parse_and_are_validated() {
        let relay = |extra: &[&str]| {
            let mut args = vec!["edupulse-events", "relay"];
            args.extend_from_slice(extra);
            match Cli::try_parse_from(args).expect("parses").command {
                Command::Relay(relay) => relay,
                _ => unreachable!("parsed as the relay command"),
            }
        };
        let defaults = relay(&[]).lease_config().expect("valid defaults");
        assert_eq!(defaults.ttl(), std::time::Duration::from_secs(10));
        let custom = relay(&["--lease-ttl-ms", "6000", "--lease-renew-ms", "1000"])
            .lease_config()
            .expect("valid");
        assert_eq!(custom.renew_interval(), std::time::Duration::from_secs(1));
        assert!(
            relay(&["--lease-ttl-ms", "6000", "--lease-renew-ms", "6000"])
                .lease_config()
                .is_err()
        );
        assert!(relay(&["--lease-ttl-ms", "10"]).lease_config().is_err());
    }
}
