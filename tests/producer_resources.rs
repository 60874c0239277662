//! Issue 12's producer-side items, each named after what was seen.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use streamhouse::discovery::{Discovery, DiscoveryError, TopicMetadata};
use streamhouse::mock::MockAgent;
use streamhouse::producer::{ProduceError, Producer, ProducerRecord};
use tokio::time::Instant;

/// A discovery that answers its first `answers` lookups from the agent's own, then never again.
struct Hanging {
    agent: MockAgent,
    answers: u64,
    asked: AtomicU64,
}

#[async_trait::async_trait]
impl Discovery for Hanging {
    async fn topic(&self, topic: &str) -> Result<Arc<TopicMetadata>, DiscoveryError> {
        if self.asked.fetch_add(1, Ordering::SeqCst) < self.answers {
            return self.agent.discovery().topic(topic).await;
        }
        std::future::pending().await
    }
    fn invalidate(&self, _topic: &str) {}
}

/// Seen: "`send` waits for metadata without the `max_block` bound". It fails with
/// `MetadataTimeout` once `max_block` has passed.
#[tokio::test(start_paused = true)]
async fn send_waits_for_metadata_at_most_max_block() {
    let agent = MockAgent::new().with_topic("t", 1);
    let discovery = Arc::new(Hanging {
        agent: agent.clone(),
        answers: 0,
        asked: AtomicU64::new(0),
    });
    let producer = Producer::builder(agent.transport(), discovery)
        .max_block(Duration::from_millis(300))
        .build()
        .unwrap();
    let start = Instant::now();
    let sent = tokio::time::timeout(
        Duration::from_secs(60),
        producer.send(ProducerRecord::new("t", b"x")),
    )
    .await
    .expect("send returned");
    assert!(
        matches!(sent, Err(ProduceError::MetadataTimeout { ref topic, .. }) if topic == "t"),
        "{:?}",
        sent.map(|_| ())
    );
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}

/// Seen: "`close(timeout)` can overrun its timeout": with every record settled the sender
/// still waited for a metadata refresh that never answered. `close` now ends by its deadline.
#[tokio::test(start_paused = true)]
async fn close_ends_by_its_timeout_with_a_lookup_hanging() {
    let agent = MockAgent::new().with_topic("t", 1);
    let discovery = Arc::new(Hanging {
        agent: agent.clone(),
        answers: 1,
        asked: AtomicU64::new(0),
    });
    let producer = Producer::builder(agent.transport(), discovery.clone())
        .metadata_max_age(Duration::from_millis(50))
        .build()
        .unwrap();
    producer
        .send_and_wait(ProducerRecord::new("t", b"x"))
        .await
        .unwrap();
    // A refresh is now due, and hangs.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        discovery.asked.load(Ordering::SeqCst) >= 2,
        "a refresh was asked"
    );
    let start = Instant::now();
    let closed = tokio::time::timeout(
        Duration::from_secs(60),
        producer.close(Duration::from_secs(1)),
    )
    .await
    .expect("close returned");
    assert!(closed.is_ok(), "{closed:?}");
    assert!(
        start.elapsed() <= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

/// Seen: "`THROTTLED` / `throttle_ms` are never used": the producer now holds its requests
/// to an agent that answered with `throttle_ms` for that long, and counts it.
#[tokio::test(start_paused = true)]
async fn the_producer_holds_off_for_throttle_ms() {
    let agent = MockAgent::new().with_topic("t", 1);
    let producer = Producer::builder(agent.transport(), agent.discovery())
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(1))
        .linger(Duration::ZERO)
        .build()
        .unwrap();
    agent.fail_next(1, streamhouse_proto::v1::ErrorCode::Throttled);
    let start = Instant::now();
    let meta = producer
        .send_and_wait(ProducerRecord::new("t", b"x"))
        .await
        .unwrap();
    assert_eq!(meta.offset, 0);
    // The mock asks for 10 ms; the retry backoff alone would have been 1 ms.
    assert!(
        start.elapsed() >= Duration::from_millis(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(producer.stats().throttled, 1);
    producer.close(Duration::from_secs(1)).await.unwrap();
}
