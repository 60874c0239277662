//! Engine outages under load: the agent keeps its durable state in PostgreSQL and an S3
//! server of this test's own; PostgreSQL is stopped for 5 s mid-run, then the S3 server frozen
//! for 5 s. While either is down no `acks=durable` answer arrives (nothing is acknowledged
//! without a commit), the waiting batches are answered `STORAGE_ERROR` after
//! `--durable-timeout` and retried, and once the engines are back the run completes with the
//! history checker finding nothing lost, duplicated, reordered or moved.

mod support;

use std::sync::Arc;
use std::time::Duration;
use streamhouse::discovery::StaticDiscovery;
use streamhouse::history::{History, RecordId};
use streamhouse::producer::{Acks, Producer, ProducerRecord};
use streamhouse::transport::{Endpoint, Transport};
use streamhouse_grpc::GrpcTransport;
use support::AgentProcess;
use support::services::{PrivatePostgres, PrivateS3};

const TOPIC: &str = "outage";
const PARTITIONS: u32 = 4;
const RECORDS: u64 = 30_000;
const RUN: Duration = Duration::from_secs(20);
const OUTAGE: Duration = Duration::from_secs(5);
/// Answers already on their way when an engine stops.
const GRACE: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_outages_hold_durable_acks_and_lose_nothing() {
    let postgres = PrivatePostgres::start();
    let s3 = Arc::new(PrivateS3::start("outages"));
    let data = tempfile::tempdir().unwrap();
    let args = [
        "--topic".to_owned(),
        format!("{TOPIC}:{PARTITIONS}"),
        "--metadata".to_owned(),
        postgres.url(),
        "--objects".to_owned(),
        "s3://outages/run".to_owned(),
        "--s3-endpoint".to_owned(),
        s3.endpoint.clone(),
        "--s3-region".to_owned(),
        "us-east-1".to_owned(),
        "--s3-access-key-id".to_owned(),
        "test".to_owned(),
        "--s3-secret-access-key".to_owned(),
        "test".to_owned(),
        "--flush-interval".to_owned(),
        "20ms".to_owned(),
        "--durable-timeout".to_owned(),
        "1s".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = AgentProcess::start(data.path(), 0, &args);
    let endpoint: Endpoint = agent.url().parse().unwrap();
    let transport: Arc<dyn Transport> = Arc::new(GrpcTransport::default());
    let producer = Producer::builder(
        transport.clone(),
        StaticDiscovery::new().with_topic(TOPIC, PARTITIONS, &endpoint),
    )
    .acks(Acks::Durable)
    .batch_size(16 * 1024)
    .linger(Duration::from_millis(2))
    .request_timeout(Duration::from_secs(3))
    .delivery_timeout(Duration::from_secs(120))
    .retry_backoff(Duration::from_millis(20), Duration::from_millis(300))
    .build()
    .unwrap();

    // The outages, at 4 s (PostgreSQL) and 11 s (S3): acks counted just after each starts and
    // just before it ends.
    let start = tokio::time::Instant::now();
    let outages = {
        let (producer, s3) = (producer.clone(), s3.clone());
        tokio::spawn(async move {
            let mut held = Vec::new();
            for (at, engine) in [(4u64, "postgres"), (11, "s3")] {
                tokio::time::sleep_until(start + Duration::from_secs(at)).await;
                match engine {
                    "postgres" => tokio::task::block_in_place(|| postgres.stop()),
                    _ => s3.freeze(),
                }
                tokio::time::sleep(GRACE).await;
                let before = producer.stats().records_acked;
                tokio::time::sleep(OUTAGE - GRACE).await;
                let after = producer.stats().records_acked;
                match engine {
                    "postgres" => tokio::task::block_in_place(|| postgres.resume()),
                    _ => s3.thaw(),
                }
                held.push((engine, before, after));
            }
            (held, postgres)
        })
    };

    let mut deliveries = Vec::with_capacity(RECORDS as usize);
    for seq in 0..RECORDS {
        let due = start + RUN.mul_f64(seq as f64 / RECORDS as f64);
        if due > tokio::time::Instant::now() + Duration::from_millis(2) {
            tokio::time::sleep_until(due).await;
        }
        let id = RecordId::new(0, seq);
        let key = format!("k{}", seq % 101);
        let value = id.value(40);
        let record = ProducerRecord::new(TOPIC, &value).key(key.as_bytes());
        deliveries.push((id, producer.send(record).await.unwrap()));
    }
    let (held, _postgres) = outages.await.unwrap();
    let mut history = History::new();
    for (id, delivery) in deliveries {
        history.record_delivery(id, delivery).await;
    }
    let stats = producer.stats();
    producer.close(Duration::from_secs(10)).await.unwrap();

    let logs = support::read_back(transport.as_ref(), &endpoint, TOPIC, PARTITIONS).await;
    let report = history.check(logs);
    let (acked, failed, unknown) = history.outcomes();
    println!(
        "outages {held:?} (engine, acked records 0.5 s into the outage, at its end); {RECORDS} \
         records: {acked} acked, {failed} failed, {unknown} unknown; {} batch retries\n{report}",
        stats.retries
    );
    for (engine, before, after) in held {
        assert_eq!(
            before, after,
            "no acknowledgement while {engine} was down (nothing durable without a commit)"
        );
    }
    assert!(
        stats.retries > 0,
        "waiting batches were answered with a retriable error and retried"
    );
    assert!(report.is_clean(), "history violations:\n{report}");
    assert_eq!(
        acked, RECORDS,
        "every record acknowledged once the engines were back"
    );
    assert!(agent.terminate(), "the agent exits cleanly");
}
