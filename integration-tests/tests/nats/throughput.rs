//! Measured figures: pipelined, acknowledged publishing against one at a time. Run alone for
//! meaningful numbers: `cargo test -p edupulse-integration-tests --test nats throughput -- --nocapture`.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use futures::StreamExt;

use edupulse_integration_tests::shared_nats;
use edupulse_ports::EventPublisher;

use crate::support::{config, message_count, raw, setup, workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishing_beats_one_at_a_time() {
    let nats = shared_nats().await;
    let config = config(vec![nats.url()], "throughput");
    let (client, publisher) = setup(&config).await;

    // Many aggregates: the pipeline fills (up to 1024 in flight, one per stream).
    let wide = workload(2000, 10);
    let started = Instant::now();
    for batch in wide.chunks(5000) {
        assert!(publisher.publish(batch).await.iter().all(Result::is_ok));
    }
    let pipelined = started.elapsed();

    // One event per call, each acknowledgement awaited before the next.
    let single = workload(2000, 1);
    let started = Instant::now();
    for event in &single {
        assert!(publisher.publish(std::slice::from_ref(event)).await[0].is_ok());
    }
    let one_at_a_time = started.elapsed();

    // One hot stream: bound by the round trip, whatever the batch.
    let hot = workload(1, 2000);
    let started = Instant::now();
    assert!(publisher.publish(&hot).await.iter().all(Result::is_ok));
    let hot_stream = started.elapsed();

    // Baseline: the bare client, same payloads, 1024 acks awaited at a time, no ordering.
    let raw_events = workload(2000, 10);
    let js = edupulse_nats::jetstream_context(client.clone(), &config);
    let started = Instant::now();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    for event in &raw_events {
        let subject = edupulse_nats::event_subject(&config.subject_prefix, event).unwrap();
        let ack = js
            .publish_with_headers(
                subject,
                edupulse_nats::event_headers(event),
                event.envelope.encode().into(),
            )
            .await
            .expect("sent");
        in_flight.push(ack.into_future());
        if in_flight.len() >= 1024 {
            let acked: Option<Result<_, _>> = in_flight.next().await;
            acked.expect("ack").expect("acked");
        }
    }
    while let Some(ack) = in_flight.next().await {
        ack.expect("acked");
    }
    let bare = started.elapsed();

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    eprintln!(
        "baseline: bare async-nats, 1024 in flight: {:.0} acked publishes/s",
        rate(raw_events.len(), bare)
    );
    let (p, s, h) = (
        rate(wide.len(), pipelined),
        rate(single.len(), one_at_a_time),
        rate(hot.len(), hot_stream),
    );
    eprintln!(
        "acked publishes/s: pipelined {p:.0} ({} events, 2000 streams, batches of 5000), \
         one at a time {s:.0}, single hot stream in one batch {h:.0}",
        wide.len()
    );
    assert_eq!(
        message_count(&raw(&client), &config.stream_name).await,
        (wide.len() + single.len() + hot.len() + raw_events.len()) as u64
    );
    // A loose bound: the suite runs tests in parallel on a shared machine.
    assert!(p > 1.5 * s, "pipelining must pay: {p:.0}/s vs {s:.0}/s");
}
