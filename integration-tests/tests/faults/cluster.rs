//! A 3-node JetStream cluster with R3 streams loses a node (the stream's leader, killed) in the
//! middle of a run: a new leader is elected, the relay retries, nothing is lost or duplicated.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use edupulse_integration_tests::{fresh_database, start_nats_cluster, unique_name};

use crate::workload::{Run, Workload, nats_config, pg_config, retry, soak_factor, wait_published};

/// The index of node `nX` (the harness names the servers `n0`, `n1`, `n2`).
fn node_index(server_name: &str) -> Option<usize> {
    server_name.strip_prefix('n')?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_cluster_loses_the_stream_leader_mid_run() {
    let cluster = start_nats_cluster().await;
    let db = fresh_database().await;
    let name = unique_name("cluster_r3");
    let mut nats = nats_config(cluster.urls(), &name);
    nats.replicas = 3;
    // The nodes advertise addresses the host cannot reach: only the listed ones are used.
    nats.ignore_discovered_servers = true;
    let run = Run::start_with(name, pg_config(db.url()), nats).await;
    let relay = run.spawn_relay().await;
    let writers = run.writers(Workload::default());

    let js = edupulse_nats::jetstream_context(run.backbone.client.clone(), &run.nats);
    let leader = retry("find the stream leader", Duration::from_secs(30), || {
        let (js, stream) = (js.clone(), run.nats.stream_name.clone());
        async move {
            let mut s = js.get_stream(&stream).await.map_err(|e| e.to_string())?;
            let info = s.info().await.map_err(|e| e.to_string())?;
            assert_eq!(info.config.num_replicas, 3);
            info.cluster
                .as_ref()
                .and_then(|c| c.leader.as_deref())
                .and_then(node_index)
                .ok_or_else(|| "no leader yet".to_owned())
        }
    })
    .await;
    wait_published(&relay, 500 * u64::from(soak_factor())).await;
    // A crash, not a stop: no graceful hand-over while publishes are in flight.
    cluster.kill_node(leader).await;
    let lost = Instant::now();
    tokio::time::sleep(Duration::from_secs(3) * soak_factor()).await;
    writers.join().await;
    let recovery = run.caught_up_since(lost).await;

    let retries = relay.stats.snapshot().retries;
    let mut figures = run.finish("cluster_r3_node_lost", &HashSet::new()).await;
    Run::stop_relay(relay).await;
    figures.recovery = recovery;
    figures.notes = format!(
        "stream leader n{leader} killed, not restarted; {retries} relay retries; {} first \
         deliveries repeated by the new consumer leader",
        figures.first_delivered_twice
    );
    // The killed node may also lead the run's consumer (seen: 14 events delivered again).
    figures.consumer_leader_may_be_lost();
    figures.report_and_check();
}
