//! Child processes: the test binary re-executed as a relay (so that it can be killed for real,
//! `SIGKILL`, with no chance to clean up) or as the `relay` command of the CLI (so that its
//! whole output can be captured).
//!
//! The parent runs `<this test binary> --exact relay_child_process --ignored --nocapture` with
//! [`MODE`] and the settings in the environment; `relay_child_process` (in `main.rs`) calls
//! [`run`], which never returns in `relay` mode (the relay runs until killed).

use std::process::Stdio;
use std::time::Duration;

use edupulse_app::wiring::{Backbone, spawn_relay};
use edupulse_nats::NatsConfig;
use tokio::process::{Child, Command};

use crate::workload::{nats_config, pg_config, relay_config, retry};

/// What the child does: `relay` or `cli-relay`.
pub(crate) const MODE: &str = "EDUPULSE_FAULTS_CHILD";
const PG_URL: &str = "EDUPULSE_FAULTS_PG_URL";
const NATS_URLS: &str = "EDUPULSE_FAULTS_NATS_URLS";
const RUN_NAME: &str = "EDUPULSE_FAULTS_RUN_NAME";
const DUPLICATE_WINDOW_MS: &str = "EDUPULSE_FAULTS_DUPLICATE_WINDOW_MS";

/// The command re-executing this test binary as a child in `mode`.
pub(crate) fn command(mode: &str) -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "relay_child_process",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(MODE, mode)
    .stdin(Stdio::null())
    .kill_on_drop(true);
    cmd
}

/// Starts a relay process on the run `run_name` (its stream, prefix and checkpoint names).
pub(crate) fn spawn_relay_process(pg_url: &str, nats: &NatsConfig, run_name: &str) -> Child {
    command("relay")
        .env(PG_URL, pg_url)
        .env(NATS_URLS, nats.servers.join(","))
        .env(RUN_NAME, run_name)
        .env(
            DUPLICATE_WINDOW_MS,
            nats.duplicate_window.as_millis().to_string(),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the relay process")
}

/// Kills the child at once (`SIGKILL`) and reaps it.
pub(crate) async fn kill_9(child: &mut Child) {
    child.kill().await.expect("kill -9 the relay process");
}

/// The child's entry point (see the module docs).
pub(crate) fn run(mode: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match mode {
        "relay" => runtime.block_on(relay()),
        "cli-relay" => runtime.block_on(crate::security::cli_relay_child()),
        other => panic!("unknown child mode {other:?}"),
    }
}

/// Runs a relay through the real wiring until killed.
async fn relay() {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let name = env(RUN_NAME);
    let servers = env(NATS_URLS).split(',').map(str::to_owned).collect();
    let pg = pg_config(&env(PG_URL));
    let mut nats = nats_config(servers, &name);
    if let Some(ms) = std::env::var(DUPLICATE_WINDOW_MS)
        .ok()
        .and_then(|ms| ms.parse().ok())
    {
        nats.duplicate_window = Duration::from_millis(ms);
    }
    let backbone = retry("connect the backbone", Duration::from_secs(60), || {
        Backbone::connect(&pg, nats.clone())
    })
    .await;
    let running = spawn_relay(backbone.relay(relay_config(&name)), None)
        .await
        .expect("spawn relay");
    running.wait().await;
}
