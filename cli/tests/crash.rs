//! A real agent process SIGKILLed three times mid-stream: with acks=durable and idempotence,
//! every acknowledged record is in the log exactly once, at its acknowledged offset, and each
//! partition is in send order.

mod support;

use std::collections::HashMap;
use std::time::Duration;
use streamhouse::discovery::StaticDiscovery;
use streamhouse::producer::{Acks, Persistence, Producer, ProducerRecord};
use streamhouse::reader::PartitionReader;
use streamhouse::transport::Transport;
use streamhouse_grpc::GrpcTransport;
use support::AgentProcess;

const RECORDS: u64 = 30_000;
const PARTITIONS: u32 = 3;
const KILLS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let topic_arg = format!("crash:{PARTITIONS}");
    let agent = AgentProcess::start(dir.path(), 0, &["--topic", &topic_arg]);
    let port = agent.port;
    let endpoint = agent.url().parse().unwrap();

    // Kill and restart the agent on the same port while the producer runs.
    let data = dir.path().to_owned();
    let killer = tokio::task::spawn_blocking(move || {
        let mut agent = agent;
        for _ in 0..KILLS {
            std::thread::sleep(Duration::from_millis(400));
            agent.kill();
            std::thread::sleep(Duration::from_millis(100));
            agent = AgentProcess::start(&data, port, &["--topic", &topic_arg]);
        }
        agent
    });

    let producer = Producer::builder(
        GrpcTransport::default(),
        StaticDiscovery::new().with_topic("crash", PARTITIONS, &endpoint),
    )
    .acks(Acks::Durable)
    .batch_size(16 * 1024)
    .linger(Duration::from_millis(2))
    .request_timeout(Duration::from_secs(2))
    .delivery_timeout(Duration::from_secs(30))
    .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
    .build()
    .unwrap();
    let mut deliveries = Vec::with_capacity(RECORDS as usize);
    for i in 0..RECORDS {
        let value = format!("{i:010}");
        let key = format!("k{}", i % 101);
        let record = ProducerRecord::new("crash", value.as_bytes()).key(key.as_bytes());
        deliveries.push(producer.send(record).await.unwrap());
        if i % 200 == 0 {
            // Spread the stream over the kills.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut acked: HashMap<u64, (u32, i64)> = HashMap::new();
    let mut failed = 0;
    for (i, delivery) in deliveries.into_iter().enumerate() {
        match delivery.await {
            Ok(meta) => {
                acked.insert(i as u64, (meta.partition, meta.offset));
            }
            Err(e) => {
                assert_eq!(e.persistence(), Persistence::PossiblyPersisted, "{e}");
                if failed == 0 {
                    let mut source = std::error::Error::source(&e);
                    let mut chain = e.to_string();
                    while let Some(s) = source {
                        chain.push_str(&format!(": {s}"));
                        source = s.source();
                    }
                    println!("first failure: {chain}");
                }
                failed += 1;
            }
        }
    }
    producer.close(Duration::from_secs(10)).await.unwrap();
    let agent = killer.await.unwrap();

    let transport = GrpcTransport::default();
    let mut seen: HashMap<u64, (u32, i64)> = HashMap::new();
    for partition in 0..PARTITIONS {
        let connection = transport.connect(&endpoint).await.unwrap();
        let records = PartitionReader::new(connection, "crash", partition, 0)
            .read_to_end()
            .await
            .unwrap();
        let mut last = None;
        for record in records {
            let i: u64 = std::str::from_utf8(record.value.as_deref().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                seen.insert(i, (partition, record.offset)).is_none(),
                "record {i} is in the log twice"
            );
            assert!(
                last < Some(i),
                "partition {partition} out of send order at {i}"
            );
            last = Some(i);
        }
    }
    for (i, at) in &acked {
        assert_eq!(
            seen.get(i),
            Some(at),
            "acknowledged record {i} missing or moved"
        );
    }
    println!(
        "{KILLS} SIGKILLs: {} records acknowledged (all in the log once), {failed} failed \
         as possibly persisted, {} records in the logs",
        acked.len(),
        seen.len()
    );
    assert!(
        acked.len() as u64 > RECORDS / 2,
        "the producer made progress between kills"
    );
    assert!(agent.terminate());
}
