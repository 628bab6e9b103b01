//! Connecting to NATS, with failures classified so a command line can print one clear line.

use crate::config::{NatsAuth, NatsConfig, redact_url};
use async_nats::{ConnectErrorKind, ConnectOptions, Event, ServerAddr};
use secrecy::{ExposeSecret, SecretString};
use std::path::PathBuf;
use thiserror::Error;

/// Why a connection could not be opened. Messages never contain a secret (URLs are redacted).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No server URL was configured.
    ///
    /// # Handling
    /// A configuration error: set at least one URL (`NATS_URL`).
    #[error("no NATS server URL configured")]
    NoServers,
    /// A server URL cannot be parsed (bad scheme, bad port…).
    ///
    /// # Handling
    /// A configuration error: fix the URL. Not retryable.
    #[error("invalid NATS server URL {url}")]
    InvalidUrl {
        /// The URL, with any password masked.
        url: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No server could be reached (connection refused, DNS failure, timeout).
    ///
    /// # Handling
    /// Retryable: the servers may be starting. Check the address and the network if it persists.
    #[error("cannot reach NATS at {servers}")]
    Unreachable {
        /// The servers tried, with passwords masked.
        servers: String,
        /// The last failure.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The server refused the credentials (authorization violation, bad signature).
    ///
    /// # Handling
    /// Not retryable: fix the user, password, token, nkey or credentials file.
    #[error("NATS refused the credentials")]
    AuthFailed(#[source] async_nats::ConnectError),
    /// TLS could not be set up (certificate not trusted, TLS required but not offered, a
    /// certificate file that cannot be read).
    ///
    /// # Handling
    /// Not retryable: fix the TLS options or the server's certificate.
    #[error("TLS with NATS failed")]
    Tls(#[source] async_nats::ConnectError),
    /// The credentials file cannot be read or parsed.
    ///
    /// # Handling
    /// Not retryable: fix the path or the file.
    #[error("cannot read NATS credentials file {path}")]
    CredentialsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ConnectError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectError::Unreachable { .. })
    }
}

/// Opens a client connection as `config` says: all servers listed, TLS and authentication
/// applied, unlimited reconnection after the first success (a publish during an outage fails
/// with a classified error, and the client reconnects by itself), connection events logged with
/// `tracing`.
///
/// The first connection is tried once over the servers and fails with a typed error, so that a
/// command started with a wrong URL or password says so at once.
///
/// # Errors
/// Every [`ConnectError`] variant.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, ConnectError> {
    let (addrs, url_auth) = parse_servers(&config.servers)?;
    let options = options(config, url_auth).await?;
    options
        .connect(addrs)
        .await
        .map_err(|e| classify_connect(e, &config.servers))
}

/// Credentials embedded in a server URL: `nats://user:password@host` or `nats://token@host`.
#[derive(Debug)] // SecretString prints [REDACTED]
enum UrlAuth {
    UserPassword(String, SecretString),
    Token(SecretString),
}

/// Parses the server URLs and takes any credentials out of them (the first found is used).
///
/// The addresses handed to the client carry no credentials: the client logs server addresses,
/// password included, at debug level (and async-nats 0.51 ignores credentials in a URL anyway);
/// they are passed as connect options instead.
fn parse_servers(servers: &[String]) -> Result<(Vec<ServerAddr>, Option<UrlAuth>), ConnectError> {
    if servers.is_empty() {
        return Err(ConnectError::NoServers);
    }
    let mut auth = None;
    let mut addrs = Vec::with_capacity(servers.len());
    for s in servers {
        let invalid = |source| ConnectError::InvalidUrl {
            url: redact_url(s),
            source,
        };
        let mut url = s.parse::<ServerAddr>().map_err(invalid)?.into_inner();
        if !url.username().is_empty() {
            let user = percent_decode(url.username());
            let found = match url.password() {
                Some(password) => {
                    UrlAuth::UserPassword(user, SecretString::from(percent_decode(password)))
                }
                None => UrlAuth::Token(SecretString::from(user)),
            };
            auth.get_or_insert(found);
            // Cannot fail for a URL that has a user name.
            let _ = url.set_password(None);
            let _ = url.set_username("");
        }
        addrs.push(ServerAddr::from_url(url).map_err(invalid)?);
    }
    Ok((addrs, auth))
}

/// Decodes `%XX` escapes (as in URL user information); anything else is kept as is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn options(
    config: &NatsConfig,
    url_auth: Option<UrlAuth>,
) -> Result<ConnectOptions, ConnectError> {
    let mut options = match &config.auth {
        NatsAuth::None => match url_auth {
            None => ConnectOptions::new(),
            Some(UrlAuth::UserPassword(user, password)) => {
                ConnectOptions::with_user_and_password(user, password.expose_secret().into())
            }
            Some(UrlAuth::Token(token)) => {
                ConnectOptions::with_token(token.expose_secret().to_owned())
            }
        },
        NatsAuth::CredentialsFile(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| ConnectError::CredentialsFile {
                path: path.clone(),
                source,
            })?,
        NatsAuth::NkeySeed(seed) => ConnectOptions::with_nkey(seed.expose_secret().to_owned()),
        NatsAuth::Token(token) => ConnectOptions::with_token(token.expose_secret().to_owned()),
        NatsAuth::UserPassword { user, password } => {
            ConnectOptions::with_user_and_password(user.clone(), password.expose_secret().into())
        }
    };
    options = options
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.ack_timeout))
        .max_reconnects(None::<usize>)
        // Room for a whole pipelined batch while reconnecting, so sends never wait on the
        // client's queue instead of timing out on the acknowledgement.
        .client_capacity(config.max_in_flight.saturating_mul(2).max(2048))
        .require_tls(config.tls.require_tls)
        .event_callback(|event| async move { log_event(&event) });
    if config.ignore_discovered_servers {
        options = options.ignore_discovered_servers();
    }
    if let Some(name) = &config.client_name {
        options = options.name(name);
    }
    if let Some(ca) = &config.tls.root_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &config.tls.client_cert {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options)
}

fn log_event(event: &Event) {
    match event {
        Event::Connected => tracing::info!("nats connected"),
        Event::Disconnected => tracing::warn!("nats disconnected; reconnecting"),
        Event::LameDuckMode => tracing::warn!("nats server entering lame duck mode"),
        Event::SlowConsumer(sid) => tracing::warn!(sid, "nats slow consumer"),
        // A permissions violation (a publish or subscription the user may not make) only shows
        // here: the refused publish itself just times out.
        Event::ServerError(error) => tracing::warn!(%error, "nats server error"),
        other => tracing::debug!(event = %other, "nats connection event"),
    }
}

/// Whether a rustls error is among the causes of `error` (directly, or inside an I/O error).
fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<async_nats::rustls::Error>() {
            return true;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && inner.is::<async_nats::rustls::Error>()
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Maps a client connect error to ours, by kind.
fn classify_connect(error: async_nats::ConnectError, servers: &[String]) -> ConnectError {
    match error.kind() {
        ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
            ConnectError::AuthFailed(error)
        }
        ConnectErrorKind::Tls => ConnectError::Tls(error),
        ConnectErrorKind::ServerParse => ConnectError::InvalidUrl {
            url: servers
                .iter()
                .map(|s| redact_url(s))
                .collect::<Vec<_>>()
                .join(","),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, error),
        },
        // The client reports a failed TLS handshake (a certificate not trusted, a server
        // without TLS) as an I/O error: the rustls error inside says what it is.
        ConnectErrorKind::Io if is_tls_failure(&error) => ConnectError::Tls(error),
        ConnectErrorKind::Dns
        | ConnectErrorKind::TimedOut
        | ConnectErrorKind::Io
        | ConnectErrorKind::MaxReconnects => ConnectError::Unreachable {
            servers: servers
                .iter()
                .map(|s| redact_url(s))
                .collect::<Vec<_>>()
                .join(","),
            source: error,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_typed_and_redacted() {
        assert!(matches!(parse_servers(&[]), Err(ConnectError::NoServers)));
        let err = parse_servers(&["http://u:pw@h:4222".into()]).unwrap_err();
        match &err {
            ConnectError::InvalidUrl { url, .. } => assert_eq!(url, "http://***@h:4222"),
            other => panic!("{other:?}"),
        }
        assert!(!err.to_string().contains("pw"));
        assert!(parse_servers(&["nats://h:notaport".into()]).is_err());
        assert!(parse_servers(&["nats://h:4222".into(), "localhost".into()]).is_ok());
    }

    #[test]
    fn credentials_are_taken_out_of_the_urls() {
        let (addrs, auth) = parse_servers(&[
            "nats://app:p%40ss:w0rd@h1:4222".into(),
            "nats://h2:4222".into(),
        ])
        .unwrap();
        // The client never sees (nor logs) them in an address.
        for addr in &addrs {
            assert!(!addr.has_user_pass(), "{}", addr.as_url_str());
            assert!(!addr.as_url_str().contains("w0rd"));
        }
        match auth {
            Some(UrlAuth::UserPassword(user, password)) => {
                assert_eq!(user, "app");
                assert_eq!(password.expose_secret(), "p@ss:w0rd");
            }
            _ => panic!("user and password expected"),
        }
        let (_, auth) = parse_servers(&["nats://s3cr3t-token@h:4222".into()]).unwrap();
        assert!(matches!(auth, Some(UrlAuth::Token(t)) if t.expose_secret() == "s3cr3t-token"));
        let (_, auth) = parse_servers(&["nats://h:4222".into()]).unwrap();
        assert!(auth.is_none());
    }

    #[test]
    fn kinds_are_classified() {
        let servers = vec!["nats://u:pw@h:1".to_owned()];
        let e = |k| classify_connect(async_nats::ConnectError::new(k), &servers);
        assert!(matches!(
            e(ConnectErrorKind::AuthorizationViolation),
            ConnectError::AuthFailed(_)
        ));
        assert!(matches!(
            e(ConnectErrorKind::Authentication),
            ConnectError::AuthFailed(_)
        ));
        assert!(matches!(e(ConnectErrorKind::Tls), ConnectError::Tls(_)));
        let unreachable = e(ConnectErrorKind::Io);
        assert!(unreachable.is_retryable());
        assert_eq!(
            unreachable.to_string(),
            "cannot reach NATS at nats://***@h:1"
        );
        assert!(matches!(
            e(ConnectErrorKind::TimedOut),
            ConnectError::Unreachable { .. }
        ));
        let handshake = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            async_nats::rustls::Error::InvalidCertificate(
                async_nats::rustls::CertificateError::UnknownIssuer,
            ),
        );
        let refused = classify_connect(
            async_nats::ConnectError::with_source(ConnectErrorKind::Io, handshake),
            &servers,
        );
        assert!(matches!(refused, ConnectError::Tls(_)), "{refused:?}");
        assert!(!refused.is_retryable());
    }

    #[tokio::test]
    async fn unreachable_server_is_reported_as_such() {
        // Port 1 on localhost: nothing listens there.
        let mut config = NatsConfig::new(["nats://127.0.0.1:1"], "S", "p");
        config.connect_timeout = std::time::Duration::from_secs(1);
        match connect(&config).await {
            Err(ConnectError::Unreachable { servers, .. }) => {
                assert_eq!(servers, "nats://127.0.0.1:1")
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }
}
