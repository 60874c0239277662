//! The producer end to end over the mock transport: real offsets, order, partitioning,
//! flush, close, and re-routing after "not leader".

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use streamhouse::discovery::{PartitionLeader, StaticDiscovery, TopicMetadata};
use streamhouse::mock::{MockAgent, MockTransport};
use streamhouse::partitioner::kafka_partition;
use streamhouse::producer::{Acks, ProduceError, Producer, ProducerRecord};
use streamhouse::proto::v1::ErrorCode;

fn value_of(i: u64) -> Vec<u8> {
    // 100-byte values that carry their send index.
    let mut v = format!("{i:020}").into_bytes();
    v.resize(100, b'.');
    v
}

fn index_of(value: &[u8]) -> u64 {
    std::str::from_utf8(&value[..20]).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_order_and_partitions_match_the_log() {
    const RECORDS: u64 = 200_000;
    const PARTITIONS: u32 = 8;
    let agent = MockAgent::new().with_topic("orders", PARTITIONS);
    let producer = Producer::builder(agent.transport(), agent.discovery())
        .acks(Acks::Leader)
        .build()
        .unwrap();

    let mut deliveries = Vec::with_capacity(RECORDS as usize);
    for i in 0..RECORDS {
        let key = format!("customer-{}", i % 5_000);
        let value = value_of(i);
        let record = ProducerRecord::new("orders", &value).key(key.as_bytes());
        let delivery = producer.send(record).await.unwrap();
        deliveries.push((i, key, delivery));
    }
    let mut acked: HashMap<(u32, i64), u64> = HashMap::new();
    for (i, key, delivery) in deliveries {
        let meta = delivery.await.unwrap();
        assert_eq!(
            meta.partition,
            kafka_partition(key.as_bytes(), NonZeroU32::new(PARTITIONS).unwrap()),
            "record {i} ({key}) not on Kafka's murmur2 partition"
        );
        assert!(
            acked.insert((meta.partition, meta.offset), i).is_none(),
            "offset given twice"
        );
    }
    producer.close(Duration::from_secs(10)).await.unwrap();

    let mut total = 0;
    for partition in 0..PARTITIONS {
        let log = agent.records("orders", partition);
        let mut previous = None;
        for (position, record) in log.iter().enumerate() {
            assert_eq!(record.offset, position as i64, "offsets are positions");
            let sent = index_of(record.value.as_deref().unwrap());
            assert_eq!(
                acked.get(&(partition, record.offset)),
                Some(&sent),
                "acked offset holds the record"
            );
            assert!(
                previous < Some(sent),
                "partition {partition} out of send order"
            );
            previous = Some(sent);
        }
        total += log.len();
    }
    assert_eq!(total as u64, RECORDS);
    assert_eq!(agent.stats().duplicates, 0);
}

#[tokio::test(start_paused = true)]
async fn flush_sends_without_waiting_for_linger() {
    let agent = MockAgent::new().with_topic("t", 2);
    let producer = Producer::builder(agent.transport(), agent.discovery())
        .linger(Duration::from_secs(60))
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    let a = producer
        .send(ProducerRecord::new("t", b"a").partition(0))
        .await
        .unwrap();
    let b = producer
        .send(ProducerRecord::new("t", b"b").partition(1))
        .await
        .unwrap();
    producer.flush().await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "flush waited for linger"
    );
    assert_eq!(a.await.unwrap().offset, 0);
    assert_eq!(b.await.unwrap().offset, 0);
    assert_eq!(agent.records("t", 1).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn closed_producers_refuse_sends_and_dropped_ones_still_deliver() {
    let agent = MockAgent::new().with_topic("t", 1);
    let producer = Producer::builder(agent.transport(), agent.discovery())
        .linger(Duration::from_millis(50))
        .build()
        .unwrap();
    let pending = producer
        .send(ProducerRecord::new("t", b"last words"))
        .await
        .unwrap();
    producer.close(Duration::from_secs(5)).await.unwrap();
    assert_eq!(pending.await.unwrap().offset, 0);
    let err = producer
        .send(ProducerRecord::new("t", b"late"))
        .await
        .unwrap_err();
    assert!(matches!(err, ProduceError::Closed { .. }));

    // Dropping every handle without close still delivers what was buffered.
    let producer = Producer::builder(agent.transport(), agent.discovery())
        .linger(Duration::from_millis(50))
        .build()
        .unwrap();
    let orphan = producer
        .send(ProducerRecord::new("t", b"orphan"))
        .await
        .unwrap();
    drop(producer);
    assert_eq!(orphan.await.unwrap().offset, 1);
}

#[tokio::test(start_paused = true)]
async fn explicit_and_invalid_partitions() {
    let agent = MockAgent::new().with_topic("t", 3);
    let producer = Producer::builder(agent.transport(), agent.discovery())
        .build()
        .unwrap();
    let meta = producer
        .send_and_wait(ProducerRecord::new("t", b"x").partition(2).key(b"k"))
        .await
        .unwrap();
    assert_eq!((meta.partition, meta.offset), (2, 0));
    let err = producer
        .send(ProducerRecord::new("t", b"x").partition(3))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ProduceError::UnknownPartition {
            partition: 3,
            partitions: 3
        }
    ));
    let err = producer
        .send(ProducerRecord::new("missing", b"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, ProduceError::Discovery(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn not_leader_invalidates_metadata_and_reroutes() {
    let old = MockAgent::with_id(1).with_topic("t", 1);
    let new = MockAgent::with_id(2).with_topic("t", 1);
    let transport = MockTransport::new()
        .with_agent(old.clone())
        .with_agent(new.clone());
    let leader = |agent: &MockAgent| {
        TopicMetadata::new(
            "t",
            vec![PartitionLeader {
                agent_id: agent.id(),
                endpoint: agent.endpoint(),
            }],
        )
        .unwrap()
    };
    let discovery = Arc::new(StaticDiscovery::new());
    discovery.set_topic(leader(&old));
    let producer = Producer::builder(transport, discovery.clone())
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .build()
        .unwrap();
    producer
        .send_and_wait(ProducerRecord::new("t", b"first"))
        .await
        .unwrap();

    // Leadership moves; the old leader says so once.
    discovery.set_topic(leader(&new));
    old.fail_next(1, ErrorCode::NotLeader);
    let meta = producer
        .send_and_wait(ProducerRecord::new("t", b"second"))
        .await
        .unwrap();
    assert_eq!(meta.offset, 0, "offset in the new leader's log");
    assert_eq!(old.records("t", 0).len(), 1);
    assert_eq!(
        new.records("t", 0)[0].value.as_deref(),
        Some(&b"second"[..])
    );
    assert_eq!(old.stats().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn non_retriable_refusals_fail_only_their_batch() {
    let agent = MockAgent::new().with_topic("t", 1);
    let producer = Producer::builder(agent.transport(), agent.discovery())
        .build()
        .unwrap();
    agent.fail_next(1, ErrorCode::CorruptBatch);
    let err = producer
        .send_and_wait(ProducerRecord::new("t", b"refused"))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ProduceError::Rejected {
            code: ErrorCode::CorruptBatch,
            ..
        }
    ));
    assert_eq!(
        err.persistence(),
        streamhouse::producer::Persistence::NotPersisted
    );
    // The sequence gap the refusal left is repaired with a new epoch: later records go through.
    let meta = producer
        .send_and_wait(ProducerRecord::new("t", b"accepted"))
        .await
        .unwrap();
    assert_eq!(meta.offset, 0);
    assert_eq!(agent.records("t", 0).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn compressed_batches_round_trip_through_the_agent() {
    let agent = MockAgent::new()
        .with_codecs(streamhouse_codecs::all())
        .with_topic("t", 2);
    for codec in [
        Arc::new(streamhouse_codecs::Lz4) as Arc<dyn streamhouse::codec::Codec>,
        Arc::new(streamhouse_codecs::Zstd::new(1)),
    ] {
        let producer = Producer::builder(agent.transport(), agent.discovery())
            .codec_arc(codec)
            .build()
            .unwrap();
        let mut events = streamhouse::payload::EventGenerator::new(3);
        let mut last = None;
        for _ in 0..2_000 {
            let (key, value) = events.next_event(200);
            last = Some(
                producer
                    .send(ProducerRecord::new("t", &value).key(&key))
                    .await
                    .unwrap(),
            );
        }
        last.unwrap().await.unwrap();
        producer.close(Duration::from_secs(5)).await.unwrap();
    }
    let total: usize = (0..2).map(|p| agent.records("t", p).len()).sum();
    assert_eq!(total, 4_000);
}
