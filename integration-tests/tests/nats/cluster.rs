//! A 3-node JetStream cluster with R3 streams keeps accepting publishes with one node down (its
//! stream leader, killed mid-run).

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use edupulse_integration_tests::start_nats_cluster;

use crate::support::{
    assert_exactly_once_in_order, config, publish_until_done, raw, read_stream, setup, spawn_relay,
    wait_batches, workload,
};

/// The index of node `nX` (the harness names the servers `n0`, `n1`, `n2`).
fn node_index(server_name: &str) -> Option<usize> {
    server_name.strip_prefix('n')?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_stream_accepts_publishes_with_one_node_down() {
    let cluster = start_nats_cluster().await;
    let mut config = config(cluster.urls(), "cluster");
    config.replicas = 3;
    // The nodes do not advertise addresses the host can reach: use the listed ones only.
    config.ignore_discovered_servers = true;
    let (client, publisher) = setup(&config).await;
    let js = raw(&client);
    let mut stream = js.get_stream(&config.stream_name).await.unwrap();
    let info = stream.info().await.unwrap().clone();
    assert_eq!(info.config.num_replicas, 3);

    // Stop the stream's leader mid-run (a new one must be elected), while a relay-like loop
    // publishes batches.
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.as_deref())
        .and_then(node_index)
        .unwrap_or(0);
    let connected = node_index(&client.server_info().server_name);
    let events = workload(40, 30);
    let done = Arc::new(AtomicUsize::new(0));
    let relay = spawn_relay(
        publisher.clone(),
        events.clone(),
        done.clone(),
        Duration::from_millis(200),
    );
    wait_batches(&done, 1).await;
    eprintln!("killing stream leader n{leader} (client connected to {connected:?})");
    // Killed, not stopped: a SIGTERM lets the leader hand over gracefully; a crash forces an
    // election while publishes are in flight.
    cluster.kill_node(leader).await;
    let stopped = Instant::now();
    let stats = relay.await.expect("relay");
    eprintln!(
        "n{leader} killed: all {} events acknowledged {:?} after the stop; {stats:?}",
        events.len(),
        stopped.elapsed()
    );
    // A leaderless moment is transient, not a configuration problem.
    assert!(
        stats
            .errors
            .keys()
            .all(|k| ["timeout", "unavailable", "not_attempted"].contains(k)),
        "{stats:?}"
    );

    // Still accepting with the node down.
    let more = workload(10, 5);
    let stats = publish_until_done(&publisher, &more, Duration::from_secs(30)).await;
    assert_eq!(stats.retryable_errors(), 0, "{stats:?}");

    let stored = read_stream(&js, &config.stream_name).await;
    let all: Vec<_> = events.iter().chain(&more).cloned().collect();
    assert_eq!(stored.len(), all.len());
    assert_eq!(assert_exactly_once_in_order(&stored, &all), 50);
    if let Ok(info) = stream.info().await {
        eprintln!(
            "new leader: {:?}",
            info.cluster.as_ref().and_then(|c| c.leader.clone())
        );
    }
}
