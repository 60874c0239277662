//! Time-bound behaviour on tokio's paused clock: buffer exhaustion after `max_block`, and
//! every record failing by `delivery_timeout` when the agent never answers.

use std::time::Duration;
use streamhouse::mock::MockAgent;
use streamhouse::producer::{Persistence, ProduceError, Producer, ProducerRecord};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn send_waits_for_memory_then_fails_after_max_block() {
    let agent = MockAgent::new().with_topic("t", 1);
    agent.set_stalled(true);
    let producer = Producer::builder(agent.transport(), agent.discovery())
        .batch_size(1024)
        .buffer_memory(4 * 1024) // room for four batches
        .max_block(Duration::from_secs(3))
        .build()
        .unwrap();
    let value = [7u8; 200];
    let mut accepted = Vec::new();
    let start = Instant::now();
    let err = loop {
        match producer.send(ProducerRecord::new("t", &value)).await {
            Ok(delivery) => accepted.push(delivery),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, ProduceError::BufferExhausted(d) if d == Duration::from_secs(3)),
        "{err}"
    );
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(3),
        "waited exactly max_block"
    );
    assert!(
        accepted.len() >= 16,
        "four batches of four or more 200-byte records"
    );
    assert_eq!(err.persistence(), Persistence::NotPersisted);

    let closed = producer.close(Duration::from_secs(1)).await;
    assert!(matches!(
        closed,
        Err(ProduceError::CloseTimedOut {
            unfinished_batches: 4
        })
    ));
    for delivery in accepted {
        let err = delivery.await.unwrap_err();
        assert!(matches!(err, ProduceError::Closed { .. }), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_blocked_send_proceeds_once_memory_frees() {
    let agent = MockAgent::new().with_topic("t", 1);
    agent.set_stalled(true);
    let producer = Producer::builder(agent.transport(), agent.discovery())
        .batch_size(1024)
        .buffer_memory(1024)
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let value = [1u8; 900];
    let first = producer
        .send(ProducerRecord::new("t", &value))
        .await
        .unwrap();
    // The agent recovers after 5 s: the stalled request times out (2 s), is retried, answered.
    let recovering = agent.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        recovering.set_stalled(false);
    });
    let start = Instant::now();
    let second = producer
        .send(ProducerRecord::new("t", &value))
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "second send waited for memory"
    );
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "and no longer than needed"
    );
    assert_eq!(first.await.unwrap().offset, 0);
    assert_eq!(second.await.unwrap().offset, 1);
}

#[tokio::test(start_paused = true)]
async fn an_agent_that_never_answers_fails_every_record_by_the_delivery_timeout() {
    let agent = MockAgent::new().with_topic("t", 4);
    agent.set_stalled(true);
    let delivery_timeout = Duration::from_secs(10);
    let producer = Producer::builder(agent.transport(), agent.discovery())
        .request_timeout(Duration::from_secs(3))
        .delivery_timeout(delivery_timeout)
        .batch_size(2048)
        .build()
        .unwrap();
    let start = Instant::now();
    let mut deliveries = Vec::new();
    for i in 0..2_000u32 {
        let value = i.to_be_bytes();
        deliveries.push(
            producer
                .send(ProducerRecord::new("t", &value))
                .await
                .unwrap(),
        );
    }
    let (mut sent, mut unsent) = (0, 0);
    for delivery in deliveries {
        let err = delivery.await.unwrap_err();
        assert!(
            start.elapsed() <= delivery_timeout + Duration::from_millis(10),
            "failed late: {:?}",
            start.elapsed()
        );
        match err {
            ProduceError::DeliveryTimeout {
                timeout,
                persistence,
            } => {
                assert_eq!(timeout, delivery_timeout);
                match persistence {
                    Persistence::PossiblyPersisted => sent += 1,
                    Persistence::NotPersisted => unsent += 1,
                }
            }
            other => panic!("unexpected error {other}"),
        }
    }
    // The first batch of each partition went out and hangs; the rest queued behind it.
    assert!(sent > 0 && unsent > 0, "sent {sent}, unsent {unsent}");
    assert!(
        agent.stats().produce_requests >= 3,
        "the stalled request was retried"
    );
    producer.close(Duration::from_secs(1)).await.unwrap();
    assert_eq!(agent.stats().records_appended, 0);
}
