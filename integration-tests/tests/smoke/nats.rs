//! NATS JetStream: acked publishes, pause/unpause, stop/start.

use std::time::Duration;

use async_nats::jetstream;
use edupulse_integration_tests::{NatsContainer, shared_nats, start_nats, unique_name};

use crate::support::{create_stream, publish_until_acked};

#[tokio::test]
async fn jetstream_publish_is_acked() {
    let nats = shared_nats().await;
    let client = nats.connect().await.unwrap();
    let js = jetstream::new(client);
    let name = unique_name("smoke");
    let mut stream = create_stream(&js, &name, 1).await;

    for i in 1..=3u64 {
        let ack = js
            .publish(format!("{name}.created"), "hello".into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(ack.stream, name);
        assert_eq!(ack.sequence, i);
    }
    assert_eq!(stream.info().await.unwrap().state.messages, 3);
}

async fn assert_paused_then_resumed(nats: &NatsContainer) {
    let client = nats.connect().await.expect("connect");
    let js = jetstream::new(client);
    let name = unique_name("paused");
    create_stream(&js, &name, 1).await;

    nats.pause().await;
    let hung = tokio::time::timeout(Duration::from_millis(800), async {
        js.publish(format!("{name}.x"), "x".into())
            .await?
            .await
            .map_err(async_nats::Error::from)
    })
    .await;
    assert!(hung.is_err(), "a paused server must not ack: {hung:?}");

    nats.unpause().await;
    let seq = publish_until_acked(&js, &format!("{name}.x")).await;
    assert!(seq >= 1);
}

#[tokio::test]
async fn nats_pause_and_unpause() {
    let nats = start_nats().await;
    assert_paused_then_resumed(&nats).await;
}

#[tokio::test]
async fn nats_stop_and_start_keeps_streams() {
    let nats = start_nats().await;
    let url_before = nats.url();
    let client = nats.connect().await.unwrap();
    let js = jetstream::new(client.clone());
    let name = unique_name("restart");
    create_stream(&js, &name, 1).await;
    assert_eq!(publish_until_acked(&js, &format!("{name}.a")).await, 1);

    nats.stop().await;
    nats.start().await;
    assert_eq!(
        nats.url(),
        url_before,
        "the host port is fixed across restarts"
    );

    // the client made before the restart reconnects by itself; the stream and
    // its message survived in the container's JetStream store
    assert_eq!(publish_until_acked(&js, &format!("{name}.b")).await, 2);
    let mut stream = js.get_stream(&name).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
}
