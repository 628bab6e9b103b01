//! A 3-node NATS JetStream cluster on a user-defined Docker network.
//!
//! The nodes reach each other by container name on their own network (routes
//! `nats://<container name>:6222`); each node's client port is published on
//! 127.0.0.1 at a port fixed for the cluster's life. The nodes run with
//! `--no_advertise`: the addresses they would gossip are in-network ones,
//! useless from the host. Clients must connect with the full list of
//! [`NatsCluster::urls`] and ignore discovered servers:
//!
//! ```no_run
//! # async fn f(cluster: &edupulse_integration_tests::NatsCluster) -> Result<(), async_nats::ConnectError> {
//! let client = async_nats::ConnectOptions::new()
//!     .ignore_discovered_servers()
//!     .connect(cluster.urls())
//!     .await?;
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use testcontainers::core::WaitFor;
use testcontainers::{ContainerAsync, GenericImage, ImageExt as _};

use crate::cleanup;
use crate::docker::{self, HOST};
use crate::images::{NATS_IMAGE, NATS_TAG};
use crate::nats::{NATS_PORT, NATS_READY_LINE, RESTART_TIMEOUT, wait_jetstream};

/// Number of nodes of [`start_nats_cluster`].
pub const CLUSTER_SIZE: usize = 3;
/// Name of the NATS cluster (`--cluster_name`).
pub const CLUSTER_NAME: &str = "edupulse";
/// Route port inside the containers.
pub const ROUTE_PORT: u16 = 6222;
/// How long [`start_nats_cluster`] waits for each node's JetStream. Three nodes electing on a
/// loaded 2-core machine took over 60 s once; a readiness wait, not a figure.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(150);
/// How long one attempt of [`start_nats_cluster`] waits for an R3 stream to be placeable before
/// the cluster is started afresh. Three nodes started together have been seen, under load, to
/// answer JetStream requests while the meta leader refused R3 placement ("no suitable peers")
/// for the whole of 150 s; a new cluster formed in seconds.
pub const PLACEMENT_TIMEOUT: Duration = Duration::from_secs(45);
/// How many clusters [`start_nats_cluster`] starts at most before it gives up.
const CLUSTER_ATTEMPTS: u32 = 3;

struct Node {
    name: String,
    container: ContainerAsync<GenericImage>,
    port: AtomicU16,
}

/// A running 3-node JetStream cluster owned by the caller. Dropping it removes
/// its containers, then its network.
pub struct NatsCluster {
    network: String,
    nodes: Vec<Node>,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCluster")
            .field("network", &self.network)
            .field("urls", &self.urls())
            .finish()
    }
}

/// Starts a 3-node JetStream cluster (R3 streams possible) and waits until
/// an R3 stream can be placed. Takes ~1–2 s. A cluster whose meta leader
/// does not accept R3 placement within [`PLACEMENT_TIMEOUT`] is removed and
/// started afresh, up to three times.
///
/// # Panics
///
/// When the network or a node cannot be started, a node's JetStream does not
/// answer within [`CLUSTER_READY_TIMEOUT`], or no attempt could place an R3
/// stream.
pub async fn start_nats_cluster() -> NatsCluster {
    let started = std::time::Instant::now();
    let mut attempt = 1;
    loop {
        let cluster = launch_cluster().await;
        match cluster.wait_for_r3_placement().await {
            Ok(()) => {
                eprintln!(
                    "edupulse-test: nats cluster {} ready in {:.2?}",
                    cluster.network,
                    started.elapsed()
                );
                return cluster;
            }
            Err(error) if attempt < CLUSTER_ATTEMPTS => {
                eprintln!("edupulse-test: {error}; starting the cluster afresh");
                cluster.print_log_tails().await;
                drop(cluster);
                attempt += 1;
            }
            Err(error) => panic!("{error} ({CLUSTER_ATTEMPTS} clusters tried)"),
        }
    }
}

/// Starts the three nodes on a new network and waits until each answers JetStream requests.
async fn launch_cluster() -> NatsCluster {
    let cluster_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let base = format!("edupulse-{}-{cluster_id}", cleanup::session_id());
    let network = format!("{base}-net");
    docker::create_network(&network).await;

    let names: Vec<String> = (0..CLUSTER_SIZE).map(|i| format!("{base}-n{i}")).collect();
    let routes = names
        .iter()
        .map(|n| format!("nats://{n}:{ROUTE_PORT}"))
        .collect::<Vec<_>>()
        .join(",");

    let starts = names.iter().enumerate().map(|(i, name)| {
        let network = network.clone();
        let routes = routes.clone();
        async move {
            let args: Vec<String> = [
                // Acknowledged means fsynced on every node (see the README's guarantees).
                "-c",
                crate::nats::DURABLE_NATS_CONFIG,
                "-js",
                "-sd",
                "/data",
                "-p",
                "4222",
                "-m",
                "8222",
                "-n",
                &format!("n{i}"),
                "--cluster_name",
                CLUSTER_NAME,
                "--cluster",
                &format!("nats://0.0.0.0:{ROUTE_PORT}"),
                "--routes",
                &routes,
                "--no_advertise",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            let (container, ports) = docker::start_container(
                &format!("nats cluster node {name}"),
                || {
                    GenericImage::new(NATS_IMAGE, NATS_TAG)
                        .with_wait_for(WaitFor::message_on_stderr(NATS_READY_LINE))
                        .with_cmd(args.clone())
                        .with_container_name(name.clone())
                        .with_network(network.clone())
                },
                &[NATS_PORT],
            )
            .await;
            Node {
                name: name.clone(),
                container,
                port: AtomicU16::new(ports[0]),
            }
        }
    });
    let nodes = futures::future::join_all(starts).await;
    let cluster = NatsCluster { network, nodes };
    for i in 0..cluster.len() {
        wait_jetstream(
            cluster.node_name(i),
            &[cluster.node_url(i)],
            CLUSTER_READY_TIMEOUT,
        )
        .await;
    }
    cluster
}

impl NatsCluster {
    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The Docker network of the cluster.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// Container name (and in-network host name) of node `i`.
    ///
    /// # Panics
    ///
    /// When `i` is out of range.
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Client URL of node `i`: `nats://127.0.0.1:PORT`.
    ///
    /// # Panics
    ///
    /// When `i` is out of range.
    pub fn node_url(&self, i: usize) -> String {
        format!(
            "nats://{HOST}:{}",
            self.nodes[i].port.load(Ordering::Relaxed)
        )
    }

    /// Client URLs of all nodes.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.node_url(i)).collect()
    }

    /// Client URLs of all nodes, comma separated (split it on `,` for
    /// async-nats, which takes a list, not this string).
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// A client of the cluster: all node URLs, discovered servers ignored.
    ///
    /// # Errors
    ///
    /// When no node can be reached.
    pub async fn connect(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .ignore_discovered_servers()
            .connect(self.urls())
            .await
    }

    /// Stops node `i` (SIGTERM, SIGKILL after 10 s); its JetStream store
    /// survives for [`NatsCluster::start_node`].
    ///
    /// # Panics
    ///
    /// When docker refuses or `i` is out of range.
    pub async fn stop_node(&self, i: usize) {
        let node = &self.nodes[i];
        node.container
            .stop_with_timeout(Some(10))
            .await
            .unwrap_or_else(|e| panic!("stop {}: {e}", node.name));
    }

    /// Kills node `i` at once (a crash).
    ///
    /// # Panics
    ///
    /// When docker refuses or `i` is out of range.
    pub async fn kill_node(&self, i: usize) {
        let node = &self.nodes[i];
        node.container
            .stop_with_timeout(Some(0))
            .await
            .unwrap_or_else(|e| panic!("kill {}: {e}", node.name));
    }

    /// Starts the stopped node `i` again, re-reads its port and waits until it
    /// answers JetStream requests (it rejoined and knows the meta leader).
    ///
    /// # Panics
    ///
    /// When docker refuses, `i` is out of range, or the node is not ready
    /// within [`RESTART_TIMEOUT`].
    pub async fn start_node(&self, i: usize) {
        let started = std::time::Instant::now();
        let node = &self.nodes[i];
        node.container
            .start()
            .await
            .unwrap_or_else(|e| panic!("start {}: {e}", node.name));
        let port = docker::host_port(&node.container, NATS_PORT).await;
        node.port.store(port, Ordering::Relaxed);
        wait_jetstream(&node.name, &[self.node_url(i)], RESTART_TIMEOUT).await;
        eprintln!(
            "edupulse-test: {} restarted, ready in {:.2?}",
            node.name,
            started.elapsed()
        );
    }

    /// Freezes node `i` (`docker pause`).
    ///
    /// # Panics
    ///
    /// When docker refuses or `i` is out of range.
    pub async fn pause_node(&self, i: usize) {
        let node = &self.nodes[i];
        node.container
            .pause()
            .await
            .unwrap_or_else(|e| panic!("pause {}: {e}", node.name));
    }

    /// Resumes the paused node `i`.
    ///
    /// # Panics
    ///
    /// When docker refuses or `i` is out of range.
    pub async fn unpause_node(&self, i: usize) {
        let node = &self.nodes[i];
        node.container
            .unpause()
            .await
            .unwrap_or_else(|e| panic!("unpause {}: {e}", node.name));
    }

    /// Waits until an R3 stream can be placed (all peers known to the
    /// JetStream meta leader): creates and deletes a probe stream, retrying.
    async fn wait_for_r3_placement(&self) -> Result<(), String> {
        let urls = self.urls();
        let probe = format!("edupulse_probe_{}", cleanup::session_id());
        let probe_once = || async {
            let client = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(2))
                .ignore_discovered_servers()
                .connect(&urls)
                .await
                .map_err(|e| e.to_string())?;
            let js = async_nats::jetstream::new(client);
            let create = js.create_stream(async_nats::jetstream::stream::Config {
                name: probe.clone(),
                subjects: vec![format!("{probe}.>")],
                storage: async_nats::jetstream::stream::StorageType::Memory,
                num_replicas: CLUSTER_SIZE,
                ..Default::default()
            });
            tokio::time::timeout(Duration::from_secs(2), create)
                .await
                .map_err(|_| "no answer to a stream creation".to_owned())?
                .map_err(|e| e.to_string())?;
            js.delete_stream(&probe).await.map_err(|e| e.to_string())?;
            Ok::<(), String>(())
        };
        docker::try_poll_until(
            &format!("nats cluster {} R3 placement", self.network),
            PLACEMENT_TIMEOUT,
            probe_once,
        )
        .await
    }

    /// Prints the last lines each node wrote, for a cluster that did not become ready.
    async fn print_log_tails(&self) {
        for node in &self.nodes {
            let log = tokio::process::Command::new("docker")
                .args(["logs", "--tail", "15", &node.name])
                .output()
                .await
                .map(|out| String::from_utf8_lossy(&out.stderr).into_owned())
                .unwrap_or_else(|e| format!("(docker logs failed: {e})"));
            eprintln!("edupulse-test: last lines of {}:\n{log}", node.name);
        }
    }

    /// The testcontainers handle of node `i`.
    ///
    /// # Panics
    ///
    /// When `i` is out of range.
    pub fn container(&self, i: usize) -> &ContainerAsync<GenericImage> {
        &self.nodes[i].container
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        // containers first (each drop removes its container before returning),
        // then the network they were attached to
        drop(std::mem::take(&mut self.nodes));
        docker::remove_network_blocking(&self.network);
    }
}
