//! Helpers of the smoke tests.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};

/// Creates a file-storage stream `name` on the subjects `name.>`.
pub(crate) async fn create_stream(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> stream::Stream {
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{name}.>")],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .expect("create the stream")
}

/// Publishes with an ack, retrying (for 30 s) while the server or the stream
/// leader is unavailable. The message id makes retries idempotent (JetStream
/// deduplication), so the returned sequence is that of the one stored copy.
pub(crate) async fn publish_until_acked(js: &jetstream::Context, subject: &str) -> u64 {
    let id = uuid::Uuid::new_v4().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            js.send_publish(
                subject.to_owned(),
                PublishMessage::build()
                    .payload("payload".into())
                    .message_id(&id),
            )
            .await?
            .await
            .map_err(async_nats::Error::from)
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(ack)) => return ack.sequence,
            Ok(Err(e)) if tokio::time::Instant::now() < deadline => {
                eprintln!("{subject}: retrying after: {e}");
            }
            Err(_) if tokio::time::Instant::now() < deadline => {
                eprintln!("{subject}: retrying after a timeout");
            }
            other => panic!("no ack for {subject}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
