//! NATS 2.10 (JetStream) containers: owned ones for fault tests
//! ([`start_nats`]), the shared one of the test binary ([`shared_nats`]), and
//! per-test names ([`unique_name`]).

use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use testcontainers::core::WaitFor;
use testcontainers::{ContainerRequest, GenericImage, ImageExt as _};
use tokio::sync::OnceCell;

use crate::docker::{self, HOST};
use crate::images::{NATS_IMAGE, NATS_TAG};

/// Client port inside the container.
pub const NATS_PORT: u16 = 4222;
/// HTTP monitoring port inside the container (`/healthz`, `/jsz`, `/varz`).
pub const NATS_MONITOR_PORT: u16 = 8222;
/// The server's readiness line (stderr).
pub const NATS_READY_LINE: &str = "Server is ready";
/// The image's configuration file that makes JetStream fsync every write before acknowledging
/// it (`sync_interval: always`).
pub const DURABLE_NATS_CONFIG: &str = "/etc/nats/durable.conf";

/// Server arguments of [`start_nats`] and the shared container (the image's
/// default command): JetStream on, its store in `/data` inside the container
/// (kept across stop/start, gone with the container).
pub const DEFAULT_NATS_ARGS: &[&str] = &["-js", "-sd", "/data", "-p", "4222", "-m", "8222"];
/// How long `start()` waits for JetStream to answer again.
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(60);

/// A NATS container owned by the caller; removed when dropped.
///
/// Its ports on 127.0.0.1 are fixed for the container's life: a client made
/// with [`NatsContainer::url`] reconnects by itself after
/// [`NatsContainer::start`]. Streams (file storage) survive a restart.
pub struct NatsContainer {
    managed: docker::Managed,
    port: AtomicU16,
    monitor_port: AtomicU16,
}

impl std::fmt::Debug for NatsContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsContainer")
            .field("id", &self.id())
            .field("port", &self.port())
            .finish()
    }
}

/// Starts a NATS container of the caller's own, with [`DEFAULT_NATS_ARGS`].
///
/// # Panics
///
/// When the image cannot be built or the server does not become ready.
pub async fn start_nats() -> NatsContainer {
    start_nats_with_args(DEFAULT_NATS_ARGS).await
}

/// Starts a NATS container with these `nats-server` arguments, which replace
/// [`DEFAULT_NATS_ARGS`] (keep `-p 4222 -m 8222`, and `-js` for JetStream).
///
/// # Panics
///
/// When the image cannot be built or the server does not become ready.
pub async fn start_nats_with_args(args: &[&str]) -> NatsContainer {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    start_nats_from(|image| image.with_cmd(args.clone())).await
}

/// Starts a NATS container whose request `finish` completes from the image (readiness line
/// set): it sets the command and may copy files in (a configuration, certificates).
///
/// # Panics
///
/// When the image cannot be built or the server does not become ready.
pub(crate) async fn start_nats_from(
    finish: impl Fn(GenericImage) -> ContainerRequest<GenericImage>,
) -> NatsContainer {
    let (container, ports) = docker::start_container(
        "nats",
        || {
            finish(
                GenericImage::new(NATS_IMAGE, NATS_TAG)
                    .with_wait_for(WaitFor::message_on_stderr(NATS_READY_LINE)),
            )
        },
        &[NATS_PORT, NATS_MONITOR_PORT],
    )
    .await;
    NatsContainer {
        managed: docker::Managed::new("nats", container),
        port: AtomicU16::new(ports[0]),
        monitor_port: AtomicU16::new(ports[1]),
    }
}

impl std::ops::Deref for NatsContainer {
    type Target = docker::Managed;
    fn deref(&self) -> &docker::Managed {
        &self.managed
    }
}

impl NatsContainer {
    /// The host port (on 127.0.0.1) of the client port.
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{HOST}:{}", self.port())
    }

    /// `http://127.0.0.1:PORT` of the monitoring endpoint.
    pub fn monitor_url(&self) -> String {
        format!(
            "http://{HOST}:{}",
            self.monitor_port.load(Ordering::Relaxed)
        )
    }

    /// A new client of this server (default async-nats options: it
    /// reconnects forever).
    ///
    /// # Errors
    ///
    /// When the server cannot be reached.
    pub async fn connect(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(self.url())
            .await
    }

    /// Starts the stopped container again, re-reads its ports and waits until
    /// JetStream answers (streams are recovered by then).
    ///
    /// # Panics
    ///
    /// When docker refuses or JetStream is not ready within [`RESTART_TIMEOUT`].
    pub async fn start(&self) {
        let started = std::time::Instant::now();
        let port = self.restart_container(NATS_PORT).await;
        self.port.store(port, Ordering::Relaxed);
        let monitor = docker::host_port(self.container(), NATS_MONITOR_PORT).await;
        self.monitor_port.store(monitor, Ordering::Relaxed);
        self.wait_ready(RESTART_TIMEOUT).await;
        eprintln!(
            "edupulse-test: nats {} restarted, ready in {:.2?}",
            &self.id()[..12],
            started.elapsed()
        );
    }

    /// Waits until a new client gets an answer to a JetStream account request.
    ///
    /// # Panics
    ///
    /// On timeout.
    pub async fn wait_ready(&self, timeout: Duration) {
        wait_jetstream("nats", std::slice::from_ref(&self.url()), timeout).await;
    }
}

/// Waits until a client of `urls` (discovered servers ignored) gets an answer
/// to a JetStream account request: the server is up and, in a cluster, the
/// JetStream meta leader is known.
///
/// # Panics
///
/// On timeout.
pub async fn wait_jetstream(what: &str, urls: &[String], timeout: Duration) {
    docker::poll_until(what, timeout, || async {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .ignore_discovered_servers()
            .connect(urls)
            .await
            .map_err(|e| e.to_string())?;
        // Until JetStream is up (in a cluster: until the meta leader is
        // known) the request is not answered at all: ask again soon rather
        // than wait for the default 5 s request timeout.
        let js = async_nats::jetstream::new(client);
        match tokio::time::timeout(Duration::from_millis(750), js.query_account()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer to a JetStream account request".to_owned()),
        }
    })
    .await;
}

static SHARED: OnceCell<NatsContainer> = OnceCell::const_new();

/// The NATS (JetStream) container shared by all tests of this test binary,
/// started on first use and removed when the process exits. Use
/// [`unique_name`] for stream names and subject prefixes.
///
/// Do not pause, stop or kill it (other tests use it): start your own with
/// [`start_nats`] for that.
///
/// # Panics
///
/// When it cannot be started.
pub async fn shared_nats() -> &'static NatsContainer {
    SHARED.get_or_init(start_nats).await
}

/// A name unique to the caller, valid as a NATS subject token and as a
/// JetStream stream or consumer name: `<prefix>_<12 hex digits>`, the
/// prefix's characters other than ASCII letters, digits, `_` and `-` replaced
/// by `_`. E.g. `unique_name("events")` → `events_3f9a0c1b2d4e`; use it as a
/// stream name and as a subject prefix (`events_3f9a0c1b2d4e.>`).
pub fn unique_name(prefix: &str) -> String {
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

/// A throwaway pull consumer's configuration for reading a whole stream back to check it: from
/// the first message, no acks, in memory, one replica, removed 30 s after its last use.
pub fn read_back_config() -> async_nats::jetstream::consumer::pull::Config {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
    async_nats::jetstream::consumer::pull::Config {
        ack_policy: AckPolicy::None,
        deliver_policy: DeliverPolicy::All,
        inactive_threshold: Duration::from_secs(30),
        num_replicas: 1,
        memory_storage: true,
        ..Default::default()
    }
}
