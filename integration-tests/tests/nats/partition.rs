//! The partitioned feed of projections: the bucket stream sourced through a subject transform,
//! read bucket by bucket with ordered consumers.

use crate::support::{config, setup, workload};
use edupulse_domain::StreamId;
use edupulse_nats::{NatsFeed, ProvisionError, StreamOutcome, jetstream_context, provision_feed};
use edupulse_ports::EventPublisher;
use edupulse_ports::projection::{Bucket, BucketEvent, ProjectionFeed};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Reads `bucket` from after `after` until `wanted` messages came (or 30 s passed).
async fn read(feed: &NatsFeed, bucket: Bucket, after: u64, wanted: usize) -> Vec<BucketEvent> {
    let mut reader = feed.open("test", bucket, after).await.expect("open");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < wanted && Instant::now() < deadline {
        got.extend(
            reader
                .next_batch(1000, Duration::from_millis(200))
                .await
                .expect("next batch"),
        );
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_lands_in_one_bucket_in_stream_order() {
    let nats = edupulse_integration_tests::shared_nats().await;
    let config = config(vec![nats.url()], "feed");
    let (client, publisher) = setup(&config).await;
    let js = jetstream_context(client.clone(), &config);
    let buckets = 8;
    provision_feed(&js, &config, buckets)
        .await
        .expect("provision the feed");
    let events = workload(40, 5);
    for result in publisher.publish(&events).await {
        result.expect("published");
    }
    let feed = NatsFeed::new(client, &config, buckets);

    // Count per bucket first: the source copies asynchronously.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut by_bucket: HashMap<Bucket, Vec<BucketEvent>> = HashMap::new();
    loop {
        by_bucket.clear();
        for bucket in 0..buckets {
            let mut reader = feed.open("count", bucket, 0).await.expect("open");
            let batch = reader
                .next_batch(10_000, Duration::from_millis(300))
                .await
                .expect("read");
            by_bucket.insert(bucket, batch);
        }
        let total: usize = by_bucket.values().map(Vec::len).sum();
        if total == events.len() || Instant::now() > deadline {
            break;
        }
    }
    let mut bucket_of: HashMap<StreamId, Bucket> = HashMap::new();
    let mut ids = HashSet::new();
    for (bucket, batch) in &by_bucket {
        let mut versions: HashMap<StreamId, u64> = HashMap::new();
        for pair in batch.windows(2) {
            assert!(pair[0].sequence < pair[1].sequence, "feed order");
        }
        for event in batch {
            let envelope = event.event.as_ref().expect("an event");
            assert!(ids.insert(envelope.id), "{} twice", envelope.id);
            assert_eq!(envelope.stream_id(), event.stream);
            let seen = bucket_of.entry(event.stream).or_insert(*bucket);
            assert_eq!(seen, bucket, "a stream in two buckets");
            let last = versions.entry(event.stream).or_insert(0);
            assert_eq!(event.version, *last + 1, "versions in order");
            *last = event.version;
        }
    }
    assert_eq!(ids.len(), events.len(), "every event once");
    let used = by_bucket.values().filter(|b| !b.is_empty()).count();
    assert!(used >= 4, "40 streams spread over {used} of 8 buckets");

    // Reading again after a position gives exactly what follows it.
    let (bucket, batch) = by_bucket
        .iter()
        .find(|(_, b)| b.len() >= 3)
        .expect("a bucket of three");
    let rest = read(&feed, *bucket, batch[1].sequence, batch.len() - 2).await;
    let expected: Vec<u64> = batch[2..].iter().map(|e| e.sequence).collect();
    let got: Vec<u64> = rest.iter().map(|e| e.sequence).collect();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_bucket_count_is_refused() {
    let nats = edupulse_integration_tests::shared_nats().await;
    let config = config(vec![nats.url()], "feed-count");
    let (client, _) = setup(&config).await;
    let js = jetstream_context(client, &config);
    let first = provision_feed(&js, &config, 8).await.expect("provision");
    assert_eq!(first, StreamOutcome::Created);
    let again = provision_feed(&js, &config, 8)
        .await
        .expect("provision again");
    assert_eq!(again, StreamOutcome::Unchanged);
    let other = provision_feed(&js, &config, 16).await;
    assert!(
        matches!(
            &other,
            Err(ProvisionError::Incompatible {
                field: "sources",
                ..
            })
        ),
        "{other:?}"
    );
    assert!(provision_feed(&js, &config, 0).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_naming_no_stream_is_an_aggregate_of_its_own() {
    let nats = edupulse_integration_tests::shared_nats().await;
    let config = config(vec![nats.url()], "feed-hostile");
    let (client, _) = setup(&config).await;
    let js = jetstream_context(client.clone(), &config);
    provision_feed(&js, &config, 1).await.expect("provision");
    for body in ["not json", "{}"] {
        let subject = format!(
            "{}.LessonPublished.{}",
            config.subject_prefix,
            StreamId::new()
        );
        js.publish(subject, body.into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let feed = NatsFeed::new(client, &config, 1);
    let got = read(&feed, 0, 0, 2).await;
    assert_eq!(got.len(), 2);
    assert_ne!(got[0].stream, got[1].stream, "each alone");
    for event in &got {
        assert_eq!(event.version, 1);
        let reason = event.event.as_ref().expect_err("not an event");
        assert!(reason.contains("names no stream"), "{reason}");
    }
}
