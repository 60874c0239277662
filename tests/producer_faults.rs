//! Faults between producer and agent (seeded FaultLayer): with idempotence every record is in
//! the log exactly once and in order; without it, the duplicates retries cause are counted.

use std::collections::HashMap;
use std::time::Duration;
use streamhouse::layers::{FaultConfig, FaultLayer};
use streamhouse::mock::MockAgent;
use streamhouse::producer::{Acks, Producer, ProducerRecord};
use streamhouse::proto::v1::ErrorCode;

const RECORDS: u64 = 40_000;
const PARTITIONS: u32 = 8;

struct Run {
    /// Copies of each record found in the logs, by send index.
    copies: HashMap<u64, usize>,
    /// Per partition, send indexes in log order.
    logs: Vec<Vec<u64>>,
    acked: u64,
    errors_injected: u64,
    responses_dropped: u64,
    agent_dedup_hits: u64,
}

async fn run(idempotence: bool, seed: u64) -> Run {
    let agent = MockAgent::new().with_topic("events", PARTITIONS);
    let faults = FaultLayer::new(FaultConfig {
        error_rate: 0.05,
        error_code: ErrorCode::Unavailable,
        drop_response_rate: 0.02,
        ..FaultConfig::new(seed)
    });
    let stats = faults.stats();
    let producer = Producer::builder(agent.transport(), agent.discovery())
        .acks(Acks::Leader)
        .idempotence(idempotence)
        .batch_size(1024)
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(50))
        .layer(faults)
        .seed(seed)
        .build()
        .unwrap();

    let mut deliveries = Vec::with_capacity(RECORDS as usize);
    for i in 0..RECORDS {
        let key = format!("device-{}", i % 997);
        let value = format!("{i:012}");
        let record = ProducerRecord::new("events", value.as_bytes()).key(key.as_bytes());
        deliveries.push(producer.send(record).await.unwrap());
        if i % 16 == 0 {
            // Let the sender run between sends, as on a busy runtime: many small requests.
            tokio::task::yield_now().await;
        }
    }
    let mut acked = 0;
    for delivery in deliveries {
        delivery
            .await
            .expect("every record is acknowledged despite the faults");
        acked += 1;
    }
    producer.close(Duration::from_secs(30)).await.unwrap();

    let mut copies = HashMap::new();
    let mut logs = Vec::new();
    for partition in 0..PARTITIONS {
        let log: Vec<u64> = agent
            .records("events", partition)
            .iter()
            .map(|r| {
                std::str::from_utf8(r.value.as_deref().unwrap())
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        for &i in &log {
            *copies.entry(i).or_insert(0) += 1;
        }
        logs.push(log);
    }
    println!(
        "{} requests through the fault layer, {} produce requests at the agent",
        stats.requests(),
        agent.stats().produce_requests
    );
    Run {
        copies,
        logs,
        acked,
        errors_injected: stats.errors(),
        responses_dropped: stats.dropped(),
        agent_dedup_hits: agent.stats().duplicates,
    }
}

#[tokio::test(start_paused = true)]
async fn idempotence_keeps_every_record_exactly_once_and_in_order() {
    for seed in [7, 8, 9] {
        check_exactly_once(run(true, seed).await);
    }
}

fn check_exactly_once(run: Run) {
    assert!(
        run.errors_injected > 0 && run.responses_dropped > 0,
        "faults must bite"
    );
    assert!(
        run.agent_dedup_hits > 0,
        "lost answers were retried and deduplicated"
    );
    assert_eq!(run.acked, RECORDS);
    let duplicated = run.copies.values().filter(|&&n| n > 1).count();
    let missing = (0..RECORDS).filter(|i| !run.copies.contains_key(i)).count();
    assert_eq!((duplicated, missing), (0, 0), "duplicates and gaps");
    for (partition, log) in run.logs.iter().enumerate() {
        assert!(
            log.windows(2).all(|w| w[0] < w[1]),
            "partition {partition} reordered"
        );
    }
    println!(
        "idempotence on: {} errors injected, {} answers dropped, {} dedup hits, 0 duplicates",
        run.errors_injected, run.responses_dropped, run.agent_dedup_hits
    );
}

#[tokio::test(start_paused = true)]
async fn without_idempotence_lost_answers_duplicate_records() {
    let run = run(false, 7).await;
    assert!(run.responses_dropped > 0);
    assert_eq!(run.acked, RECORDS);
    assert_eq!(run.agent_dedup_hits, 0, "nothing to deduplicate by");
    let missing = (0..RECORDS).filter(|i| !run.copies.contains_key(i)).count();
    assert_eq!(missing, 0, "retries still deliver everything");
    let duplicates: usize = run.copies.values().map(|&n| n - 1).sum();
    // Each dropped answer makes the retry append its batches again.
    assert!(duplicates > 0, "dropped answers must show up as duplicates");
    for (partition, log) in run.logs.iter().enumerate() {
        // Retries re-send a partition's batches before anything newer, so the first copies
        // still appear in send order.
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<u64> = log.iter().copied().filter(|i| seen.insert(*i)).collect();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "partition {partition} reordered"
        );
    }
    println!(
        "idempotence off: {} answers dropped, {duplicates} duplicate records in the logs",
        run.responses_dropped
    );
}

#[tokio::test(start_paused = true)]
async fn duplicated_and_delayed_requests_are_absorbed_by_idempotence() {
    let agent = MockAgent::new().with_topic("t", 2);
    let faults = FaultLayer::new(FaultConfig {
        duplicate_rate: 1.0,
        max_delay: Duration::from_millis(20),
        ..FaultConfig::new(3)
    });
    let stats = faults.stats();
    let producer = Producer::builder(agent.transport(), agent.discovery())
        .layer(faults)
        .batch_size(1024)
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    let mut last = None;
    for i in 0..2_000u32 {
        last = Some(
            producer
                .send(ProducerRecord::new("t", &i.to_be_bytes()))
                .await
                .unwrap(),
        );
    }
    last.unwrap().await.unwrap();
    producer.close(Duration::from_secs(5)).await.unwrap();
    assert!(start.elapsed() > Duration::ZERO, "delays were injected");
    assert_eq!(
        stats.duplicated(),
        stats.requests(),
        "every request went twice"
    );
    let logged: usize = (0..2).map(|p| agent.records("t", p).len()).sum();
    assert_eq!(logged, 2_000, "no record appended twice");
    assert_eq!(agent.stats().duplicates, agent.stats().batches_appended);
}
