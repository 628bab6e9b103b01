//! Docker plumbing shared by the container kinds: host ports on 127.0.0.1,
//! starting a labelled container, user-defined networks.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers::core::IntoContainerPort as _;
use testcontainers::runners::AsyncRunner as _;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt as _};

use crate::cleanup;

/// The only address the harness publishes ports on and connects to.
pub const HOST: &str = "127.0.0.1";

/// How long a container may take to print its readiness line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

/// A TCP port that is free on 127.0.0.1 now and was not handed out before by
/// this process (so parallel tests of one binary never get the same port).
pub fn free_local_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind((HOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("cannot find a free port on {HOST}: {e}"));
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Starts a container from `request` with the harness labels and each
/// `(container port, host port)` published on 127.0.0.1 only, the host ports
/// chosen by [`free_local_port`] (fixed for the container's life, so they
/// survive a restart). Retries with other host ports when one was taken in
/// the meantime.
///
/// # Panics
///
/// When the container cannot be started (after 4 attempts).
pub async fn start_container(
    what: &str,
    request: impl Fn() -> ContainerRequest<GenericImage>,
    container_ports: &[u16],
) -> (ContainerAsync<GenericImage>, Vec<u16>) {
    cleanup::ensure_reaper();
    crate::images::ensure_images().await;
    let mut last_error = String::new();
    for _ in 0..4 {
        let host_ports: Vec<u16> = container_ports.iter().map(|_| free_local_port()).collect();
        let bindings: HashMap<String, Option<Vec<PortBinding>>> = container_ports
            .iter()
            .zip(&host_ports)
            .map(|(c, h)| {
                (
                    format!("{c}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some(HOST.to_owned()),
                        host_port: Some(h.to_string()),
                    }]),
                )
            })
            .collect();
        // the images EXPOSE these ports; only the bindings are set here
        let req = request()
            .with_labels(cleanup::labels())
            .with_startup_timeout(STARTUP_TIMEOUT)
            .with_host_config_modifier(move |hc: &mut HostConfig| {
                hc.publish_all_ports = Some(false);
                hc.port_bindings = Some(bindings.clone());
            });
        let started = Instant::now();
        match req.start().await {
            Ok(container) => {
                eprintln!(
                    "edupulse-test: {what} {} ready in {:.2?} (ports {host_ports:?})",
                    &container.id()[..12],
                    started.elapsed()
                );
                return (container, host_ports);
            }
            Err(e) => {
                last_error = e.to_string();
                let port_taken = last_error.contains("already allocated")
                    || last_error.contains("address already in use")
                    || last_error.contains("port is already");
                if !port_taken {
                    break;
                }
            }
        }
    }
    panic!("cannot start {what}: {last_error}");
}

/// Runs the docker CLI, returning its trimmed stdout.
///
/// # Errors
///
/// The command's stderr when it fails or cannot be run.
pub async fn docker_cli(args: &[&str]) -> Result<String, String> {
    let output = tokio::process::Command::new("docker")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// Creates a user-defined bridge network with the harness labels.
///
/// # Panics
///
/// When docker refuses.
pub async fn create_network(name: &str) {
    cleanup::ensure_reaper();
    let label_args: Vec<String> = cleanup::labels()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut args = vec!["network", "create"];
    for l in &label_args {
        args.extend(["--label", l.as_str()]);
    }
    args.push(name);
    if let Err(e) = docker_cli(&args).await {
        panic!("cannot create docker network {name}: {e}");
    }
}

/// Removes a network, blocking (for `Drop`); errors are printed, not raised.
pub fn remove_network_blocking(name: &str) {
    match std::process::Command::new("docker")
        .args(["network", "rm", name])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "edupulse-test: cannot remove network {name}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("edupulse-test: cannot remove network {name}: {e}"),
    }
}

/// Re-reads the host port published for `container_port` (after a restart).
///
/// # Panics
///
/// When the container publishes no such port.
pub async fn host_port(container: &ContainerAsync<GenericImage>, container_port: u16) -> u16 {
    container
        .get_host_port_ipv4(container_port.tcp())
        .await
        .unwrap_or_else(|e| panic!("container {} port {container_port}: {e}", container.id()))
}

/// Polls `probe` every 100 ms until it returns `Ok`, for at most `timeout`.
///
/// # Panics
///
/// On timeout, with the last error of the probe.
pub async fn poll_until<F, Fut, E>(what: &str, timeout: Duration, probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    if let Err(error) = try_poll_until(what, timeout, probe).await {
        panic!("{error}");
    }
}

/// [`poll_until`] for a caller that can do something else on timeout.
///
/// # Errors
///
/// On timeout: what was not ready, and the last error of the probe.
pub async fn try_poll_until<F, Fut, E>(
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(5), probe()).await;
        let error = match attempt {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "probe timed out".to_owned(),
        };
        if started.elapsed() > timeout {
            return Err(format!("{what} not ready after {timeout:?}: {error}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A container the harness started, with the lifecycle operations fault tests use. Both
/// [`crate::PgContainer`] and [`crate::NatsContainer`] dereference to it.
pub struct Managed {
    kind: &'static str,
    container: ContainerAsync<GenericImage>,
}

impl Managed {
    /// Wraps a started container; `kind` names it in messages.
    pub fn new(kind: &'static str, container: ContainerAsync<GenericImage>) -> Self {
        Self { kind, container }
    }

    /// The Docker container id.
    pub fn id(&self) -> &str {
        self.container.id()
    }

    /// The testcontainers handle, for anything not covered here (`exec`, logs).
    pub fn container(&self) -> &ContainerAsync<GenericImage> {
        &self.container
    }

    fn check(&self, what: &str, result: Result<(), testcontainers::TestcontainersError>) {
        if let Err(e) = result {
            panic!("{what} {} {}: {e}", self.kind, self.id());
        }
    }

    /// Freezes the container's processes (`docker pause`): connections stay open but hang. The
    /// ports stay the same.
    ///
    /// # Panics
    ///
    /// When docker refuses.
    pub async fn pause(&self) {
        self.check("pause", self.container.pause().await);
    }

    /// Resumes a paused container.
    ///
    /// # Panics
    ///
    /// When docker refuses.
    pub async fn unpause(&self) {
        self.check("unpause", self.container.unpause().await);
    }

    /// Stops the container (the server's graceful shutdown, SIGKILL after 10 s). Its file system
    /// (database, JetStream store) survives for a restart.
    ///
    /// # Panics
    ///
    /// When docker refuses.
    pub async fn stop(&self) {
        self.check("stop", self.container.stop_with_timeout(Some(10)).await);
    }

    /// Kills the container at once (a crash: SIGKILL, no clean shutdown).
    ///
    /// # Panics
    ///
    /// When docker refuses.
    pub async fn kill(&self) {
        self.check("kill", self.container.stop_with_timeout(Some(0)).await);
    }

    /// Starts the stopped container again and returns the host port now published for
    /// `container_port` (the harness fixes ports, so it is normally unchanged). Readiness is the
    /// caller's to check: testcontainers does not re-check it after a restart.
    ///
    /// # Panics
    ///
    /// When docker refuses.
    pub async fn restart_container(&self, container_port: u16) -> u16 {
        self.check("start", self.container.start().await);
        host_port(&self.container, container_port).await
    }
}
