//! Issue 11's data-safety defects on the producer side, each against the mock agent (the same
//! sans-IO rules as the reference agent) and failing on the code before its fix.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use streamhouse::batch::{Batch, DecodeLimits};
use streamhouse::discovery::{Discovery, DiscoveryError, PartitionLeader, TopicMetadata};
use streamhouse::history::{History, RecordId};
use streamhouse::mock::MockAgent;
use streamhouse::producer::{
    Acks, ConfigError, Persistence, ProduceError, Producer, ProducerRecord,
};
use streamhouse_proto::v1::ErrorCode;

/// Defect 4: acks=none with idempotence silently dropped a partition after any gap. Asking
/// for both is now a typed error (Kafka's rule), and acks=none alone sends no producer id.
#[tokio::test]
async fn acks_none_turns_idempotence_off_and_refuses_both_explicitly() {
    let agent = MockAgent::new().with_topic("t", 1);
    let both = Producer::builder(agent.transport(), agent.discovery())
        .acks(Acks::None)
        .idempotence(true)
        .build();
    assert!(matches!(both, Err(ConfigError::IdempotenceWithoutAcks)));

    let producer = Producer::builder(agent.transport(), agent.discovery())
        .acks(Acks::None)
        .build()
        .unwrap();
    producer
        .send_and_wait(ProducerRecord::new("t", b"x"))
        .await
        .unwrap();
    producer.close(Duration::from_secs(5)).await.unwrap();
    let stored = agent.batches("t", 0);
    let header = *Batch::parse(stored[0].clone(), &DecodeLimits::default())
        .unwrap()
        .header();
    assert_eq!(
        header.producer.producer_id, -1,
        "no idempotence with acks=none"
    );
}

/// Defect 6: a batch the agent appended but answered `REQUEST_TIMED_OUT` (it gave up waiting)
/// or `STORAGE_ERROR` (the fsync failed) travelled the retry path without the "possibly stored"
/// flag and, once its delivery timeout passed, was reported `NotPersisted` although it was in
/// the log. The history checker finds no such record now.
#[tokio::test(start_paused = true)]
async fn an_appended_batch_answered_with_a_failure_is_never_reported_not_persisted() {
    for code in [ErrorCode::RequestTimedOut, ErrorCode::StorageError] {
        let agent = MockAgent::new().with_topic("t", 1);
        let producer = Producer::builder(agent.transport(), agent.discovery())
            .linger(Duration::ZERO)
            .request_timeout(Duration::from_secs(1))
            .delivery_timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        // Appended, answered with the failure; every retry then refused until the deadline.
        agent.fail_after_append(1, code);
        agent.fail_next(10_000, ErrorCode::Unavailable);
        let id = RecordId::new(0, 0);
        let value = id.value(16);
        let delivery = producer
            .send(ProducerRecord::new("t", &value))
            .await
            .unwrap();
        let mut history = History::new();
        history.record_delivery(id, delivery).await;
        producer.close(Duration::from_secs(5)).await.unwrap();
        let report = history.check(vec![(0, agent.records("t", 0))]);
        assert_eq!(
            agent.records("t", 0).len(),
            1,
            "{code:?}: the batch is in the log"
        );
        assert!(report.is_clean(), "{code:?}:\n{report}");
        assert_eq!(
            report.total().unknown_present,
            1,
            "{code:?}: reported PossiblyPersisted"
        );
    }
}

/// A discovery that says the topic has 4 partitions the first time and 2 ever after, and
/// counts how often it is asked.
struct Shrinking {
    asked: AtomicU64,
    before: Arc<TopicMetadata>,
    after: Arc<TopicMetadata>,
}

#[async_trait::async_trait]
impl Discovery for Shrinking {
    async fn topic(&self, _topic: &str) -> Result<Arc<TopicMetadata>, DiscoveryError> {
        let n = self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(if n == 0 {
            self.before.clone()
        } else {
            self.after.clone()
        })
    }
    fn invalidate(&self, _topic: &str) {}
}

/// Defect 7: when a topic shrank below a queued batch's partition, the sender refreshed
/// metadata in a loop until the delivery timeout (thousands of lookups), then failed the batch
/// with `DeliveryTimeout`. Now it fails at once with `UnknownPartition`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_removed_by_a_shrink_fails_at_once() {
    let agent = MockAgent::new().with_topic("t", 2);
    let leaders = |n| {
        let leader = PartitionLeader {
            agent_id: agent.id(),
            endpoint: agent.endpoint(),
        };
        Arc::new(TopicMetadata::new("t", vec![leader; n]).unwrap())
    };
    let discovery = Arc::new(Shrinking {
        asked: AtomicU64::new(0),
        before: leaders(4),
        after: leaders(2),
    });
    let producer = Producer::builder(agent.transport(), discovery.clone())
        .request_timeout(Duration::from_secs(1))
        .delivery_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let result = producer
        .send_and_wait(ProducerRecord::new("t", b"x").partition(3))
        .await;
    let error = result.unwrap_err();
    assert!(
        matches!(
            error,
            ProduceError::UnknownPartition {
                partition: 3,
                partitions: 2
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.persistence(), Persistence::NotPersisted);
    let asked = discovery.asked.load(Ordering::SeqCst);
    assert!(asked <= 4, "metadata asked {asked} times");
    producer.close(Duration::from_secs(5)).await.unwrap();
}

/// Defect 8: batches in flight when `close` gave up were failed but not counted in
/// `records_failed`.
#[tokio::test(start_paused = true)]
async fn records_failed_counts_in_flight_batches_failed_at_close() {
    let agent = MockAgent::new().with_topic("t", 1);
    let producer = Producer::builder(agent.transport(), agent.discovery())
        .linger(Duration::ZERO)
        .build()
        .unwrap();
    agent.set_stalled(true);
    let mut deliveries = Vec::new();
    for i in 0..10u8 {
        deliveries.push(producer.send(ProducerRecord::new("t", &[i])).await.unwrap());
    }
    // Let the sender put them in flight to the stalled agent.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(agent.stats().produce_requests > 0);
    let closed = producer.close(Duration::from_millis(100)).await;
    assert!(
        matches!(closed, Err(ProduceError::CloseTimedOut { .. })),
        "{closed:?}"
    );
    for d in deliveries {
        assert!(d.await.is_err());
    }
    let stats = producer.stats();
    assert_eq!((stats.records_acked, stats.records_failed), (0, 10));
}
