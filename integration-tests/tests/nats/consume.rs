//! The durable consumer: deliveries with stream version and position, redelivery after a nak
//! delay, dead-lettering with reason headers through `run_handler`, undecodable messages
//! dead-lettered by the consumer itself, unknown event types passed on.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use edupulse_domain::{DomainEvent, EventId, StreamId};
use edupulse_integration_tests::shared_nats;
use edupulse_nats::{ConsumerOptions, NatsConsumer, headers, stream_filter, type_filter};
use edupulse_ports::consumer::run_handler;
use edupulse_ports::{
    Delivery, EventConsumer, EventHandler, EventPublisher, HandlerError, RetryPolicy, Settlement,
};

use crate::support::{
    config, message_count, raw, read_stream, recorded, setup, unknown_envelope, workload,
};

#[tokio::test]
async fn deliveries_carry_version_position_and_attempt() {
    let nats = shared_nats().await;
    let config = config(vec![nats.url()], "deliver");
    let (client, publisher) = setup(&config).await;
    let events = workload(3, 3);
    assert!(publisher.publish(&events).await.iter().all(Result::is_ok));

    let mut consumer = NatsConsumer::create(client, &config, ConsumerOptions::new("projection"))
        .await
        .unwrap();
    let batch = consumer
        .next_batch(100, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(batch.len(), 9);
    for (d, e) in batch.iter().zip(&events) {
        assert_eq!(d.envelope, e.envelope);
        assert_eq!(d.stream_version, Some(e.stream_version));
        assert_eq!(d.position, Some(e.position()));
        assert_eq!(d.attempt, 1);
    }
    for d in &batch {
        consumer.settle(d.token, Settlement::Ack).await.unwrap();
    }
    assert!(matches!(
        consumer.settle(batch[0].token, Settlement::Ack).await,
        Err(edupulse_ports::ConsumeError::UnknownDelivery)
    ));
    let empty = consumer
        .next_batch(100, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(empty.is_empty(), "acked messages are not delivered again");
}

#[tokio::test]
async fn filters_by_type_and_by_aggregate() {
    let nats = shared_nats().await;
    let config = config(vec![nats.url()], "filters");
    let (client, publisher) = setup(&config).await;
    let events = workload(3, 4);
    assert!(publisher.publish(&events).await.iter().all(Result::is_ok));

    let mut options = ConsumerOptions::new("badges");
    options.filter_subject = Some(type_filter(&config.subject_prefix, "BadgeAwarded"));
    let mut badges = NatsConsumer::create(client.clone(), &config, options)
        .await
        .unwrap();
    let got = badges
        .next_batch(100, Duration::from_secs(1))
        .await
        .unwrap();
    let expected = events
        .iter()
        .filter(|e| e.envelope.event_type() == "BadgeAwarded")
        .count();
    assert_eq!(got.len(), expected);
    assert!(
        got.iter()
            .all(|d| d.envelope.event_type() == "BadgeAwarded")
    );

    let stream = events[0].stream_id;
    let mut options = ConsumerOptions::new("one-aggregate");
    options.filter_subject = Some(stream_filter(&config.subject_prefix, stream));
    let mut one = NatsConsumer::create(client, &config, options)
        .await
        .unwrap();
    let got = one.next_batch(100, Duration::from_secs(1)).await.unwrap();
    let versions: Vec<_> = got.iter().map(|d| d.stream_version.unwrap()).collect();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    assert!(got.iter().all(|d| d.envelope.stream_id() == stream));
}

/// Fails transiently for one event (every time) and permanently for another; records the time
/// of every delivery.
struct Flaky {
    transient: EventId,
    permanent: EventId,
    seen: Mutex<HashMap<EventId, Vec<(u64, Instant)>>>,
}

#[async_trait]
impl EventHandler for Flaky {
    async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
        self.seen
            .lock()
            .expect("not poisoned")
            .entry(d.envelope.id)
            .or_default()
            .push((d.attempt, Instant::now()));
        if d.envelope.id == self.transient {
            Err(HandlerError::Transient(
                "search index down\r\ninjected".into(),
            ))
        } else if d.envelope.id == self.permanent {
            Err(HandlerError::Permanent("lesson has no author".into()))
        } else {
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_with_nak_delay_then_dead_letter_with_reason_headers() {
    let nats = shared_nats().await;
    let config = config(vec![nats.url()], "redeliver");
    let (client, publisher) = setup(&config).await;
    let events = workload(2, 3);
    assert!(publisher.publish(&events).await.iter().all(Result::is_ok));

    let handler = Flaky {
        transient: events[2].envelope.id,
        permanent: events[3].envelope.id,
        seen: Mutex::default(),
    };
    let policy = RetryPolicy {
        max_deliveries: 3,
        base_delay: Duration::from_millis(300),
        max_delay: Duration::from_secs(5),
    };
    let mut consumer = NatsConsumer::create(client.clone(), &config, ConsumerOptions::new("flaky"))
        .await
        .unwrap();
    let js = raw(&client);
    let dlq = config.dlq_stream_name();
    let stop = {
        let js = js.clone();
        let dlq = dlq.clone();
        async move {
            let started = Instant::now();
            while message_count(&js, &dlq).await < 2 && started.elapsed() < Duration::from_secs(20)
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Let the last settlements land.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let settled = run_handler(&mut consumer, &handler, policy, stop)
        .await
        .unwrap();
    // 4 events acked once, the permanent one dead-lettered at once, the transient one 3 times.
    assert_eq!(settled, 4 + 1 + 3);

    let seen = handler.seen.lock().unwrap().clone();
    let transient = &seen[&handler.transient];
    let attempts: Vec<u64> = transient.iter().map(|(a, _)| *a).collect();
    assert_eq!(
        attempts,
        vec![1, 2, 3],
        "attempt comes from the delivery count"
    );
    let gap1 = transient[1].1 - transient[0].1;
    let gap2 = transient[2].1 - transient[1].1;
    eprintln!("redelivery gaps: {gap1:?}, {gap2:?} (nak delays 300 ms, 600 ms)");
    assert!(gap1 >= Duration::from_millis(280), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(560), "{gap2:?}");
    assert_eq!(seen[&handler.permanent].len(), 1);

    let dead = read_stream(&js, &dlq).await;
    assert_eq!(dead.len(), 2);
    let by_id = |id: EventId| {
        dead.iter()
            .find(|m| m.header(headers::DLQ_ORIGINAL_MSG_ID) == Some(id.to_string()))
            .expect("dead letter")
    };
    let t = by_id(handler.transient);
    let original = &events[2];
    assert_eq!(
        t.header(headers::DLQ_REASON).unwrap(),
        "gave up after 3 deliveries: search index down  injected"
    );
    assert_eq!(t.header(headers::DLQ_DELIVERY_COUNT).as_deref(), Some("3"));
    assert_eq!(t.header(headers::DLQ_CONSUMER).as_deref(), Some("flaky"));
    let original_subject = format!(
        "{}.{}.{}",
        config.subject_prefix,
        original.envelope.event_type(),
        original.stream_id
    );
    assert_eq!(
        t.header(headers::DLQ_ORIGINAL_SUBJECT),
        Some(original_subject)
    );
    assert!(t.header(headers::DLQ_ORIGINAL_SEQUENCE).is_some());
    assert_eq!(
        t.subject,
        format!(
            "{}-dlq.flaky.{}.{}",
            config.subject_prefix,
            original.envelope.event_type(),
            original.stream_id
        )
    );
    // The original payload and headers travel with it.
    assert_eq!(&t.payload[..], &original.envelope.encode()[..]);
    assert_eq!(
        t.header(headers::STREAM_VERSION),
        Some(original.stream_version.to_string())
    );
    let p = by_id(handler.permanent);
    assert_eq!(
        p.header(headers::DLQ_REASON).as_deref(),
        Some("lesson has no author")
    );
    assert_eq!(p.header(headers::DLQ_DELIVERY_COUNT).as_deref(), Some("1"));

    // Nothing is left to deliver: dead letters were terminated, the rest acked.
    let left = consumer
        .next_batch(10, Duration::from_millis(500))
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    // The event stream still holds everything (limits retention).
    assert_eq!(message_count(&js, &config.stream_name).await, 6);
}

#[tokio::test]
async fn undecodable_messages_are_dead_lettered_and_unknown_types_delivered() {
    let nats = shared_nats().await;
    let config = config(vec![nats.url()], "malformed");
    let (client, publisher) = setup(&config).await;
    let js = raw(&client);
    let stream = StreamId::new();

    let subject = format!("{}.LessonPublished.{stream}", config.subject_prefix);
    js.publish(subject.clone(), "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let unknown = recorded(unknown_envelope("CourseArchived", stream), 1, 1);
    let valid = workload(1, 1);
    assert!(publisher.publish(std::slice::from_ref(&unknown)).await[0].is_ok());
    assert!(publisher.publish(&valid).await[0].is_ok());

    let mut consumer =
        NatsConsumer::create(client.clone(), &config, ConsumerOptions::new("reader"))
            .await
            .unwrap();
    let batch = consumer
        .next_batch(10, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(batch.len(), 2, "the malformed message is never returned");
    match &batch[0].envelope.event {
        DomainEvent::Unknown(u) => assert_eq!(u.event_type(), "CourseArchived"),
        other => panic!("expected an unknown event, got {other:?}"),
    }
    assert_eq!(batch[1].envelope, valid[0].envelope);

    let dead = read_stream(&js, &config.dlq_stream_name()).await;
    assert_eq!(dead.len(), 1);
    let reason = dead[0].header(headers::DLQ_REASON).unwrap();
    assert!(reason.starts_with("undecodable message"), "{reason}");
    assert_eq!(dead[0].header(headers::DLQ_ORIGINAL_SUBJECT), Some(subject));
    assert_eq!(&dead[0].payload[..], b"{not json");
    assert_eq!(
        dead[0].header(headers::DLQ_CONSUMER).as_deref(),
        Some("reader")
    );

    for d in &batch {
        consumer.settle(d.token, Settlement::Ack).await.unwrap();
    }
    let again = consumer
        .next_batch(10, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(
        again.is_empty(),
        "the malformed message was terminated, not redelivered"
    );
}

#[tokio::test]
async fn consumer_of_a_missing_stream_is_misconfigured() {
    let nats = shared_nats().await;
    let config = config(vec![nats.url()], "nostream");
    let client = edupulse_nats::connect(&config).await.unwrap();
    let err = NatsConsumer::create(client, &config, ConsumerOptions::new("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, edupulse_ports::ConsumeError::Misconfigured { .. }),
        "{err:?}"
    );
}
