//! A 3-node JetStream cluster keeps accepting acked publishes to an R3 stream
//! with one node (the stream leader) down, and takes it back.

use async_nats::jetstream;
use edupulse_integration_tests::{start_nats_cluster, unique_name};

use crate::support::{create_stream, publish_until_acked};

#[tokio::test]
async fn r3_stream_survives_one_node_down() {
    let cluster = start_nats_cluster().await;
    assert_eq!(cluster.len(), 3);
    assert_eq!(cluster.url_list().split(',').count(), 3);
    assert!(
        cluster
            .urls()
            .iter()
            .all(|u| u.starts_with("nats://127.0.0.1:"))
    );

    let client = cluster.connect().await.unwrap();
    let js = jetstream::new(client);
    let name = unique_name("r3");
    let mut stream = create_stream(&js, &name, 3).await;
    assert_eq!(publish_until_acked(&js, &format!("{name}.a")).await, 1);

    // stop the node leading the stream (server names are n0, n1, n2)
    let leader = stream
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("an R3 stream has a leader");
    let down: usize = leader.trim_start_matches('n').parse().unwrap();
    cluster.stop_node(down).await;

    for expected in 2..=4 {
        assert_eq!(
            publish_until_acked(&js, &format!("{name}.b")).await,
            expected
        );
    }

    cluster.start_node(down).await;
    assert_eq!(publish_until_acked(&js, &format!("{name}.c")).await, 5);
    assert_eq!(
        js.get_stream(&name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages,
        5
    );
}
