//! The producer over gRPC and over QUIC to the reference agent, from the same test code:
//! 100,000 records over 6 partitions land at the offsets acknowledged, read back by Fetch, and
//! read back again after the agent restarts on the same directory.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhouse::discovery::StaticDiscovery;
use streamhouse::producer::{Acks, Producer, ProducerRecord};
use streamhouse::transport::{Endpoint, Transport};
use streamhouse_agent::AgentConfig;
use support::agent::{Kind, RunningAgent};

const RECORDS: u64 = 100_000;
const PARTITIONS: u32 = 6;

fn value(i: u64) -> Vec<u8> {
    let mut v = format!("{i:020}").into_bytes();
    v.resize(100, b'.');
    v
}

/// Sends `RECORDS` keyed records; returns (partition, offset) → send index, and records/s.
async fn produce(
    transport: Arc<dyn Transport>,
    endpoint: &Endpoint,
    topic: &str,
    acks: Acks,
) -> (HashMap<(u32, i64), u64>, f64, u64) {
    let producer = Producer::builder(
        transport,
        StaticDiscovery::new().with_topic(topic, PARTITIONS, endpoint),
    )
    .acks(acks)
    .build()
    .unwrap();
    let start = Instant::now();
    let mut deliveries = Vec::with_capacity(RECORDS as usize);
    for i in 0..RECORDS {
        let key = format!("key-{}", i % 1_000);
        let value = value(i);
        let delivery = producer
            .send(ProducerRecord::new(topic, &value).key(key.as_bytes()))
            .await
            .unwrap();
        deliveries.push(delivery);
    }
    let mut acked = HashMap::new();
    for (i, delivery) in deliveries.into_iter().enumerate() {
        let meta = delivery.await.unwrap();
        assert!(
            acked
                .insert((meta.partition, meta.offset), i as u64)
                .is_none()
        );
    }
    let rate = RECORDS as f64 / start.elapsed().as_secs_f64();
    let batches = producer.stats().batches;
    producer.close(Duration::from_secs(10)).await.unwrap();
    (acked, rate, batches)
}

async fn check(agent: &RunningAgent, kind: Kind, topic: &str, acked: &HashMap<(u32, i64), u64>) {
    let mut total = 0;
    for partition in 0..PARTITIONS {
        let records = agent.read(kind, topic, partition).await;
        let mut last = None;
        for (position, record) in records.iter().enumerate() {
            assert_eq!(record.offset, position as i64);
            let sent: u64 = std::str::from_utf8(&record.value.as_deref().unwrap()[..20])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(acked.get(&(partition, record.offset)), Some(&sent));
            assert!(last < Some(sent), "partition {partition} out of order");
            last = Some(sent);
        }
        total += records.len();
    }
    assert_eq!(total as u64, RECORDS);
}

/// The whole scenario over one transport: produce (acks leader and durable), read back,
/// restart, read back.
async fn scenario(kind: Kind) -> (f64, f64, u64, f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        AgentConfig::new(dir.path())
            .topic("leader", PARTITIONS)
            .topic("durable", PARTITIONS)
    };
    let agent = RunningAgent::start(config()).await;
    let endpoint = agent.endpoint(kind);
    let (leader, leader_rate, _) =
        produce(agent.transport(kind), &endpoint, "leader", Acks::Leader).await;
    let fsyncs_before = agent.agent.fsyncs();
    let start = Instant::now();
    let (durable, durable_rate, durable_batches) =
        produce(agent.transport(kind), &endpoint, "durable", Acks::Durable).await;
    let fsyncs = agent.agent.fsyncs() - fsyncs_before;
    let fsync_rate = fsyncs as f64 / start.elapsed().as_secs_f64();
    check(&agent, kind, "leader", &leader).await;
    check(&agent, kind, "durable", &durable).await;
    agent.stop().await;

    let agent = RunningAgent::start(config()).await;
    assert!(
        agent
            .agent
            .recovery()
            .iter()
            .all(|r| r.report.truncated_bytes == 0)
    );
    check(&agent, kind, "leader", &leader).await;
    check(&agent, kind, "durable", &durable).await;
    agent.stop().await;
    (
        leader_rate,
        durable_rate,
        fsyncs,
        fsync_rate,
        durable_batches,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_land_at_their_offsets_and_survive_a_restart() {
    for kind in [Kind::Grpc, Kind::Quic] {
        let (leader, durable, fsyncs, fsync_rate, batches) = scenario(kind).await;
        println!(
            "{kind:?}, 100-B values: acks=leader {leader:.0} records/s; acks=durable \
             {durable:.0} records/s with {fsyncs} fsyncs for {batches} batches ({fsync_rate:.0}/s)"
        );
        // Durable answers wait for an fsync, and one fsync covers every batch written before
        // it (group commit): at least one, never more than one per batch.
        assert!(fsyncs >= 1, "{kind:?}: durable acks without an fsync");
        assert!(
            fsyncs <= batches,
            "{kind:?}: {fsyncs} fsyncs for {batches} batches"
        );
    }
}
