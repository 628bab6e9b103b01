//! The active relay's host goes silent: every packet between it and the servers is dropped (no
//! FIN, no RST), the process itself lives on. The standby, another process, must be active and
//! publishing within 15 s.
//!
//! The active relay reaches PostgreSQL and NATS through ports of its own on 127.0.0.1
//! ([`Forwarder`]s), so an `iptables` rule on those ports silences it alone; the writers, the
//! consumer and the standby keep their direct paths. The forwarders keep their own connections
//! to the servers open, as docker-proxy or a pooler would: the servers still see healthy
//! sessions of the silent relay, so only a lease that expires can free it.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use edupulse_app::relay::RelayConfig;
use edupulse_app::wiring::{Backbone, spawn_relay};
use edupulse_integration_tests::postgres::{PG_PASSWORD, PG_USER};
use edupulse_integration_tests::{Forwarder, fresh_database, shared_nats, shared_postgres};

use crate::checker::lock;
use crate::child::{kill_9, spawn_relay_process};
use crate::relay::{stats, wait_active, wait_holder};
use crate::workload::{Run, Workload, nats_config, pg_config, wait_published};

/// The longest a standby may take to publish after the active relay's host went silent.
const TAKEOVER_BUDGET: Duration = Duration::from_secs(15);

const IPTABLES: &str = "/usr/sbin/iptables";

/// Packets to and from some ports of 127.0.0.1 are dropped while this lives; the rules are
/// removed on drop, on every path (a failed assertion included).
struct DroppedPorts {
    /// The rules inserted so far, each as its match (`-i lo -p tcp --dport P -j DROP`).
    rules: Vec<Vec<String>>,
}

impl DroppedPorts {
    /// Drops every packet on the loopback interface to or from `ports`.
    fn on(ports: &[u16]) -> Self {
        let mut dropped = Self { rules: Vec::new() };
        for port in ports {
            for direction in ["--dport", "--sport"] {
                let rule: Vec<String> = ["-i", "lo", "-p", "tcp", direction, &port.to_string()]
                    .into_iter()
                    .chain(["-j", "DROP"])
                    .map(str::to_owned)
                    .collect();
                iptables("-I", &rule).unwrap_or_else(|e| panic!("insert a DROP rule: {e}"));
                // Recorded once inserted, so the drop removes exactly what exists.
                dropped.rules.push(rule);
            }
        }
        dropped
    }
}

impl Drop for DroppedPorts {
    fn drop(&mut self) {
        for rule in self.rules.drain(..) {
            if let Err(e) = iptables("-D", &rule) {
                eprintln!("faults: could not remove the rule {rule:?}: {e}");
            }
        }
    }
}

/// Runs `iptables <action> INPUT <rule>`.
fn iptables(action: &str, rule: &[String]) -> Result<(), String> {
    let out = Command::new(IPTABLES)
        .args([action, "INPUT"])
        .args(rule)
        .output()
        .map_err(|e| format!("{IPTABLES}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Polls `done` every 20 ms until it holds; how long that took from `since`. Fails the test
/// after `limit`.
async fn time_until(since: Instant, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    loop {
        if done() {
            return since.elapsed();
        }
        assert!(since.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_network_loss_of_the_active_relays_host() {
    let db = fresh_database().await;
    let (pg, nats) = (shared_postgres().await, shared_nats().await);
    let run = Run::start("relay_silent_host", db.url(), vec![nats.url()]).await;

    // The active relay's own paths to the servers.
    let pg_path = Forwarder::start(pg.port()).await;
    let nats_path = Forwarder::start(nats.port()).await;
    let pg_url = format!(
        "postgres://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{}/{}",
        pg_path.port(),
        db.name()
    );
    let nats_url = format!("nats://127.0.0.1:{}", nats_path.port());
    let silent_host =
        Backbone::connect(&pg_config(&pg_url), nats_config(vec![nats_url], &run.name))
            .await
            .expect("the active relay's backbone");
    let active = spawn_relay(
        silent_host.relay(RelayConfig {
            holder: "relay-on-the-silent-host".to_owned(),
            ..run.relay_config()
        }),
        None,
    )
    .await
    .expect("the active relay");
    wait_active(&active.stats).await;
    let mut standby = spawn_relay_process(db.url(), &run.nats, &run.name);
    let standby_holder = format!("pid {}", standby.id().expect("the standby runs"));

    let writers = run.writers(Workload::default());
    wait_published(&active, 200).await;
    // The standby has had time to connect and stand by.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(active.stats.snapshot().active);

    let dropped = DroppedPorts::on(&[pg_path.port(), nats_path.port()]);
    let silenced = Instant::now();
    let active_stats = active.stats.clone();
    let gave_up = time_until(silenced, TAKEOVER_BUDGET, || {
        !active_stats.snapshot().active
    })
    .await;
    wait_holder(&run, &standby_holder).await;
    let took_over = silenced.elapsed();
    let seen = lock(&run.consumed).distinct();
    let publishing = time_until(silenced, TAKEOVER_BUDGET, || {
        lock(&run.consumed).distinct() > seen
    })
    .await;
    eprintln!(
        "faults: silent host: the active relay gave up after {:.1} s; the standby took the \
         lease after {:.1} s and published after {:.1} s",
        gave_up.as_secs_f64(),
        took_over.as_secs_f64(),
        publishing.as_secs_f64()
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    writers.join().await;
    let recovery = run.caught_up_since(silenced).await;
    let epoch: Option<i64> = sqlx::query_scalar("SELECT epoch FROM leases WHERE name = $1")
        .bind(&run.name)
        .fetch_optional(run.backbone.store.pool())
        .await
        .expect("read the lease's epoch");

    // The silent host never comes back: its paths close before the rules go, so nothing it
    // sent meanwhile reaches a server afterwards (its retransmissions meet closed ports).
    active.abort();
    drop(silent_host);
    drop((pg_path, nats_path));
    drop(dropped);

    let mut figures = run.finish("relay_silent_host", &HashSet::new()).await;
    kill_9(&mut standby).await;
    figures.recovery = recovery;
    figures.notes = format!(
        "packets of the active relay's host dropped (iptables on its own 127.0.0.1 ports); it \
         gave up after {:.1} s, the standby (process) took the lease after {:.1} s (epoch {} → \
         {}) and published after {:.1} s; {}",
        gave_up.as_secs_f64(),
        took_over.as_secs_f64(),
        active_stats.snapshot().lease_epoch,
        epoch.unwrap_or_default(),
        publishing.as_secs_f64(),
        stats("silent", &active_stats)
    );
    figures.report_and_check();
    assert!(
        gave_up < took_over,
        "the silent relay gave up before the takeover"
    );
    assert!(
        publishing <= TAKEOVER_BUDGET,
        "the standby published after {publishing:?}"
    );
}
