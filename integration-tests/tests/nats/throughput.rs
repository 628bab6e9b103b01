//! Measured figures: pipelined, acknowledged publishing against one at a time. Run alone for
//! meaningful numbers: `cargo test -p edupulse-integration-tests --test nats throughput -- --nocapture`.

use std::time::{Duration, Instant};

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

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
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
        (wide.len() + single.len() + hot.len()) as u64
    );
    assert!(p > 2.0 * s, "pipelining must pay: {p:.0}/s vs {s:.0}/s");
}
