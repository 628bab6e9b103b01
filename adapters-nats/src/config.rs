//! Configuration of the adapter: servers, stream layout, limits, authentication and TLS.

use secrecy::SecretString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The default deduplication window of the event stream: 2 minutes.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// The default largest message (payload plus headers): 1 MiB, NATS's default `max_payload`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// The default number of published messages awaiting their acknowledgement at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// The default time to wait for a JetStream acknowledgement (and any JetStream API answer).
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// The default time allowed to open a connection to one server.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the client authenticates. Secrets are [`SecretString`]s: they never appear in `Debug`.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum NatsAuth {
    /// No credentials, or credentials embedded in the server URL (`nats://user:password@host`,
    /// `nats://token@host`): [`crate::connect`] takes them out of the URL and sends them as
    /// connect options, so the client never logs them with the server address.
    #[default]
    None,
    /// A `.creds` file (user JWT and nkey seed), as issued by `nsc`. The path is not a secret;
    /// the file's content is read at connect time and never logged.
    CredentialsFile(PathBuf),
    /// An nkey seed (`SU…`).
    NkeySeed(SecretString),
    /// A bearer token.
    Token(SecretString),
    /// A user name and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: SecretString,
    },
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::CredentialsFile(path) => {
                f.debug_tuple("CredentialsFile").field(path).finish()
            }
            NatsAuth::NkeySeed(_) => f.write_str("NkeySeed([REDACTED])"),
            NatsAuth::Token(_) => f.write_str("Token([REDACTED])"),
            NatsAuth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"[REDACTED]")
                .finish(),
        }
    }
}

/// TLS options.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct NatsTls {
    /// Refuse to talk to a server without TLS (otherwise TLS is used when the server asks for it
    /// or the URL scheme is `tls://`).
    pub require_tls: bool,
    /// A PEM file of root certificates to trust, in addition to the system's.
    pub root_ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Everything the adapter needs to connect, provision and publish.
///
/// Build one with [`NatsConfig::new`] and adjust the public fields. `Debug` never prints a secret:
/// passwords in server URLs are masked and [`NatsAuth`] redacts its secrets.
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsConfig {
    /// Server URLs (`nats://host:4222`, `tls://…`). With a cluster, list every node.
    pub servers: Vec<String>,
    /// The JetStream stream holding the events (for example `EDUPULSE_EVENTS`).
    pub stream_name: String,
    /// The first subject token(s): events go to `<prefix>.<EventType>.<stream id>`.
    pub subject_prefix: String,
    /// How many copies the cluster keeps of each message (1, or 3 in a 3-node cluster).
    pub replicas: usize,
    /// How long the broker remembers event ids to drop duplicates.
    ///
    /// **Must be at least the relay's longest retry horizon**: the time from the first attempt to
    /// publish an event to the last retry of it (backoff included), and the time a replay may
    /// re-send events. An event retried after the window has passed is stored twice. Consumers
    /// are idempotent by event id anyway, but the stream then holds a duplicate. Defaults to
    /// [`DEFAULT_DUPLICATE_WINDOW`].
    pub duplicate_window: Duration,
    /// The largest message (payload plus headers) published; also the stream's
    /// `max_msg_size`. Larger events fail with `PublishError::TooLarge` before being sent (so do
    /// events larger than the server's `max_payload`, when that is smaller).
    pub max_message_bytes: usize,
    /// The most messages awaiting acknowledgement at once, over all streams.
    pub max_in_flight: usize,
    /// How long to wait for a JetStream acknowledgement (or any JetStream API answer) before
    /// reporting a timeout.
    pub ack_timeout: Duration,
    /// How long to try each server when connecting.
    pub connect_timeout: Duration,
    /// Use only the servers listed, not those the cluster advertises (needed when the nodes
    /// advertise addresses the client cannot reach, as with published container ports).
    pub ignore_discovered_servers: bool,
    /// The connection's name, shown by the server's monitoring.
    pub client_name: Option<String>,
    /// Authentication.
    pub auth: NatsAuth,
    /// TLS.
    pub tls: NatsTls,
}

impl NatsConfig {
    /// A configuration with the defaults: one replica, a 2-minute duplicate window, 1 MiB
    /// messages, 1024 in flight, 5-second acknowledgement timeout, no authentication.
    pub fn new(
        servers: impl IntoIterator<Item = impl Into<String>>,
        stream_name: impl Into<String>,
        subject_prefix: impl Into<String>,
    ) -> Self {
        Self {
            servers: servers.into_iter().map(Into::into).collect(),
            stream_name: stream_name.into(),
            subject_prefix: subject_prefix.into(),
            replicas: 1,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            ignore_discovered_servers: false,
            client_name: None,
            auth: NatsAuth::None,
            tls: NatsTls::default(),
        }
    }

    /// The dead-letter stream's name: `<stream_name>_DLQ`.
    pub fn dlq_stream_name(&self) -> String {
        format!("{}_DLQ", self.stream_name)
    }

    /// The dead-letter subjects' first token(s): `<prefix>-dlq`. Dead letters go to
    /// `<prefix>-dlq.<consumer>.<EventType>.<stream id>`.
    pub fn dlq_subject_prefix(&self) -> String {
        format!("{}-dlq", self.subject_prefix)
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: Vec<String> = self.servers.iter().map(|s| redact_url(s)).collect();
        f.debug_struct("NatsConfig")
            .field("servers", &servers)
            .field("stream_name", &self.stream_name)
            .field("subject_prefix", &self.subject_prefix)
            .field("replicas", &self.replicas)
            .field("duplicate_window", &self.duplicate_window)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_in_flight", &self.max_in_flight)
            .field("ack_timeout", &self.ack_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("ignore_discovered_servers", &self.ignore_discovered_servers)
            .field("client_name", &self.client_name)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .finish()
    }
}

/// A server URL with any user information (`user:password@`) masked, safe to log.
///
/// ```
/// assert_eq!(
///     edupulse_nats::redact_url("nats://app:s3cret@nats.internal:4222"),
///     "nats://***@nats.internal:4222"
/// );
/// assert_eq!(edupulse_nats::redact_url("localhost:4222"), "localhost:4222");
/// ```
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn debug_never_prints_secrets() {
        let mut config = NatsConfig::new(
            ["nats://u:hunter2@h:4222", "nats://h2:4222"],
            "EVENTS",
            "edupulse",
        );
        config.auth = NatsAuth::NkeySeed(SecretString::from("SUAHUNTER2SEED"));
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("SUAHUNTER2"), "{shown}");
        assert!(shown.contains("nats://***@h:4222"));
        config.auth = NatsAuth::UserPassword {
            user: "app".into(),
            password: SecretString::from("hunter2"),
        };
        assert!(!format!("{config:?}").contains("hunter2"));
        config.auth = NatsAuth::Token(SecretString::from("hunter2"));
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn redaction_keeps_host_and_path() {
        assert_eq!(redact_url("tls://a@b@h:1/x@y"), "tls://***@h:1/x@y");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
        assert_eq!(redact_url("u:p@h"), "***@h");
    }

    #[test]
    fn derived_names() {
        let config = NatsConfig::new(["h"], "EVENTS", "edupulse.events");
        assert_eq!(config.dlq_stream_name(), "EVENTS_DLQ");
        assert_eq!(config.dlq_subject_prefix(), "edupulse.events-dlq");
        assert_eq!(config.duplicate_window, Duration::from_secs(120));
    }
}
