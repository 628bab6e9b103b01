//! Throw-away PostgreSQL and NATS servers in Docker configured like a deployment, for the lab's
//! `demo` and `bench` when no URLs are given (the suites' servers are tuned for tests instead:
//! see [`crate::start_postgres`]).
//!
//! They use the project's own images (the same as the integration tests), built from Debian
//! packages by `scripts/build-images.sh` if missing, since no registry may be reachable. Unlike
//! the test harness, PostgreSQL keeps `fsync` on, so figures are those of a durable store, and
//! both data directories are on Docker volumes, as in production: the container's own file system
//! may be a FUSE overlay (it is on this project's CI machine), which measured 2.4× slower for
//! JetStream's file store. Containers and their volumes are removed when the [`LocalServers`]
//! value is dropped.

use std::path::PathBuf;
use std::time::{Duration, Instant};
use testcontainers::bollard::models::{HostConfig, Mount, MountTypeEnum};
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use thiserror::Error;

const PG_IMAGE: (&str, &str) = ("edupulse-test/postgres", "15");
const NATS_IMAGE: (&str, &str) = ("edupulse-test/nats", "2.10");
/// The image's configuration that makes JetStream fsync every write before acknowledging it.
const DURABLE_NATS_CONFIG: &str = "/etc/nats/durable.conf";
const PG_PASSWORD: &str = "edupulse-demo";

/// Why local servers could not be started.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DockerError {
    /// The image build script failed (Docker not running, no Debian mirror).
    #[error("building the images with {script} failed: {output}")]
    Build {
        /// The script.
        script: String,
        /// What it printed.
        output: String,
    },
    /// A container did not start or never became ready.
    #[error("starting the {what} container failed (is Docker running?)")]
    Start {
        /// Which server.
        what: &'static str,
        /// Why.
        #[source]
        source: testcontainers::TestcontainersError,
    },
}

/// When JetStream makes a write durable before acknowledging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerSync {
    /// `sync_interval: always`: every write is fsynced before its acknowledgement, so an
    /// acknowledged event survives a power failure (what the README asks of production).
    Always,
    /// nats-server's default: fsync every two minutes; an acknowledgement means "in the page
    /// cache". For measuring what `Always` costs.
    ServerDefault,
}

/// A NATS server in Docker; removed on drop.
pub struct LocalNats {
    container: ContainerAsync<GenericImage>,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
}

impl LocalNats {
    /// Starts a NATS server with JetStream on a volume, syncing as `sync` says. The images must
    /// be built ([`LocalServers::start`] builds them).
    ///
    /// # Errors
    /// [`DockerError::Start`].
    pub async fn start(sync: BrokerSync) -> Result<Self, DockerError> {
        let container = nats_image(sync)
            .start()
            .await
            .map_err(|source| DockerError::Start {
                what: "NATS",
                source,
            })?;
        let port = host_port(&container, 4222, "NATS").await?;
        Ok(Self {
            url: format!("nats://127.0.0.1:{port}"),
            container,
        })
    }

    /// The container id, for CPU sampling.
    pub fn id(&self) -> String {
        self.container.id().to_owned()
    }
}

fn nats_image(sync: BrokerSync) -> testcontainers::ContainerRequest<GenericImage> {
    let mut args = Vec::new();
    if sync == BrokerSync::Always {
        args.extend(["-c", DURABLE_NATS_CONFIG]);
    }
    args.extend(["-js", "-sd", "/data", "-p", "4222"]);
    GenericImage::new(NATS_IMAGE.0, NATS_IMAGE.1)
        .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
        .with_exposed_port(4222.tcp())
        .with_cmd(args)
        .with_label("edupulse-demo", "1")
        .with_host_config_modifier(|hc| on_volume(hc, "/data"))
        .with_startup_timeout(Duration::from_secs(60))
}

/// PostgreSQL and NATS running in Docker; removed on drop.
pub struct LocalServers {
    postgres: ContainerAsync<GenericImage>,
    nats: ContainerAsync<GenericImage>,
    /// `postgres://…@127.0.0.1:<port>/edupulse`.
    pub database_url: String,
    /// `nats://127.0.0.1:<port>`.
    pub nats_url: String,
    /// Time to build or check the images, and to start both servers.
    pub startup: Duration,
}

impl LocalServers {
    /// Builds the images if needed and starts both servers, published on 127.0.0.1, NATS
    /// syncing as `sync` says.
    ///
    /// # Errors
    /// [`DockerError`].
    pub async fn start(sync: BrokerSync) -> Result<Self, DockerError> {
        let started = Instant::now();
        build_images().await?;
        let postgres = GenericImage::new(PG_IMAGE.0, PG_IMAGE.1)
            .with_wait_for(WaitFor::message_on_stderr(
                "database system is ready to accept connections",
            ))
            .with_exposed_port(5432.tcp())
            .with_env_var("POSTGRES_USER", "edupulse")
            .with_env_var("POSTGRES_PASSWORD", PG_PASSWORD)
            .with_env_var("POSTGRES_DB", "edupulse")
            // PostgreSQL's defaults are sized for a small machine: 128 MB of shared buffers and
            // a checkpoint every 1 GB of WAL. Sized as a deployment on this machine would be
            // (fsync stays on), so a bench does not measure backends evicting dirty buffers
            // and the full-page-write burst after every checkpoint.
            .with_cmd([
                "-c",
                "shared_buffers=1GB",
                "-c",
                "max_wal_size=8GB",
                "-c",
                "checkpoint_timeout=15min",
            ])
            .with_label("edupulse-demo", "1")
            .with_host_config_modifier(|hc| on_volume(hc, "/var/lib/postgresql/data"))
            .with_startup_timeout(Duration::from_secs(90));
        let nats = nats_image(sync);
        let (postgres, nats) = tokio::join!(postgres.start(), nats.start());
        let postgres = postgres.map_err(|source| DockerError::Start {
            what: "PostgreSQL",
            source,
        })?;
        let nats = nats.map_err(|source| DockerError::Start {
            what: "NATS",
            source,
        })?;
        let pg_port = host_port(&postgres, 5432, "PostgreSQL").await?;
        let nats_port = host_port(&nats, 4222, "NATS").await?;
        Ok(Self {
            database_url: format!("postgres://edupulse:{PG_PASSWORD}@127.0.0.1:{pg_port}/edupulse"),
            nats_url: format!("nats://127.0.0.1:{nats_port}"),
            startup: started.elapsed(),
            postgres,
            nats,
        })
    }

    /// Container ids, for messages.
    pub fn ids(&self) -> (String, String) {
        (self.postgres.id().to_owned(), self.nats.id().to_owned())
    }
}

async fn host_port(
    container: &ContainerAsync<GenericImage>,
    port: u16,
    what: &'static str,
) -> Result<u16, DockerError> {
    container
        .get_host_port_ipv4(port.tcp())
        .await
        .map_err(|source| DockerError::Start { what, source })
}

/// Puts `path` on an anonymous volume (filled from the image on first use, removed with the
/// container).
fn on_volume(host_config: &mut HostConfig, path: &str) {
    host_config.mounts.get_or_insert_with(Vec::new).push(Mount {
        target: Some(path.to_owned()),
        typ: Some(MountTypeEnum::VOLUME),
        ..Mount::default()
    });
}

/// The image build script: the embedded recipes, written out (see [`crate::recipes`]).
fn build_script() -> Result<PathBuf, DockerError> {
    let root = crate::recipes::default_root();
    crate::recipes::write_to(&root).map_err(|e| DockerError::Build {
        script: root.display().to_string(),
        output: format!("cannot write the image recipes: {e}"),
    })
}

async fn build_images() -> Result<(), DockerError> {
    let script = build_script()?;
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    match output {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(DockerError::Build {
            script: script.display().to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
        Err(e) => Err(DockerError::Build {
            script: script.display().to_string(),
            output: e.to_string(),
        }),
    }
}
