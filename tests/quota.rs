//! Produce quotas on the reference agent: a principal limited to 1 MB/s sustains that rate
//! (± 10 %) for 20 s with no failed record — the producer slows down on `throttle_ms` instead
//! — while an unlimited principal on the same agent is never throttled and runs far faster.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhouse::discovery::Bootstrap;
use streamhouse::layers::{BearerToken, WithCredentials};
use streamhouse::producer::{Producer, ProducerRecord, ProducerStats};
use streamhouse::transport::Endpoint;
use streamhouse_agent::{Agent, AgentConfig, ListenOptions, Listeners, Security, TopicSpec};
use streamhouse_auth::{Acls, Quotas, TokenFile};
use streamhouse_grpc::GrpcTransport;

const VALUE: usize = 1_000;
const RUN: Duration = Duration::from_secs(20);
const LIMIT: u64 = 1_000_000;

/// Sends 1 kB records to `topic` as fast as the producer takes them for `RUN`, keeping at
/// most 20,000 deliveries outstanding; returns acknowledged records, the time from the first
/// send to the last acknowledgement, and the producer's counters.
async fn flood(producer: Producer, topic: &'static str) -> (u64, Duration, ProducerStats) {
    let value = vec![b'q'; VALUE];
    let start = Instant::now();
    let mut pending = VecDeque::new();
    let mut acked = 0u64;
    while start.elapsed() < RUN {
        let delivery = producer
            .send(ProducerRecord::new(topic, &value))
            .await
            .expect("the producer takes the record");
        pending.push_back(delivery);
        if pending.len() > 20_000 {
            pending.pop_front().unwrap().await.expect("acknowledged");
            acked += 1;
        }
    }
    for delivery in pending {
        delivery.await.expect("acknowledged");
        acked += 1;
    }
    let took = start.elapsed();
    let stats = producer.stats();
    producer.close(Duration::from_secs(10)).await.unwrap();
    (acked, took, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_principal_keeps_its_rate_and_an_unlimited_one_is_unaffected() {
    let data = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new(data.path());
    config.topics = vec![
        "metered:4".parse::<TopicSpec>().unwrap(),
        "free:4".parse().unwrap(),
    ];
    let agent = Agent::open(config).await.unwrap();
    let tokens = format!(
        "{}{}",
        TokenFile::line("alpha", "payments"),
        TokenFile::line("beta", "search")
    );
    let acls: Acls = "allow payments produce,describe metered\nallow search produce,describe free"
        .parse()
        .unwrap();
    let listeners = Listeners::bind(ListenOptions {
        grpc: Some("127.0.0.1:0".parse().unwrap()),
        security: Some(Security {
            authenticator: Arc::new(TokenFile::parse(&tokens).unwrap()),
            authorizer: Arc::new(acls),
            quotas: Arc::new(Quotas::new().limit("payments", LIMIT)),
            producer_ids: None,
            max_connections_per_principal: None,
        }),
        ..ListenOptions::default()
    })
    .await
    .unwrap();
    let serving = listeners.serve(&agent);
    let endpoint: Endpoint = serving.endpoint("grpc").unwrap().clone();
    let producer = |token: &str| {
        let transport = WithCredentials::new(
            GrpcTransport::default(),
            Arc::new(BearerToken::new(token).unwrap()),
        );
        let discovery = Bootstrap::new(transport.clone(), vec![endpoint.clone()]);
        Producer::builder(transport, discovery)
            // A small buffer: what waits in it when the run ends drains within a second.
            .buffer_memory(256 << 10)
            .build()
            .unwrap()
    };
    let metered = tokio::spawn(flood(producer("alpha"), "metered"));
    let free = tokio::spawn(flood(producer("beta"), "free"));
    let (metered_acked, metered_took, metered_stats) = metered.await.unwrap();
    let (free_acked, free_took, free_stats) = free.await.unwrap();

    let rate = |acked: u64, took: Duration| (acked * VALUE as u64) as f64 / took.as_secs_f64();
    let metered_rate = rate(metered_acked, metered_took);
    let free_rate = rate(free_acked, free_took);
    eprintln!(
        "limited: {metered_acked} records in {metered_took:?} = {:.3} MB/s of values, {} throttled answers, {} retries; \
         unlimited: {:.1} MB/s, {} throttled",
        metered_rate / 1e6,
        metered_stats.throttled,
        metered_stats.retries,
        free_rate / 1e6,
        free_stats.throttled
    );
    // Values are ~98 % of the batch bytes the quota counts.
    assert!(
        (0.9..=1.1).contains(&(metered_rate / LIMIT as f64)),
        "limited principal at {metered_rate:.0} B/s, limit {LIMIT}"
    );
    assert_eq!(metered_stats.records_failed, 0);
    assert!(metered_stats.throttled > 0, "the limit was felt");
    assert_eq!(free_stats.records_failed, 0);
    assert_eq!(
        free_stats.throttled, 0,
        "the unlimited principal is never throttled"
    );
    assert!(
        free_rate > 3.0 * LIMIT as f64,
        "the unlimited principal ran at {free_rate:.0} B/s"
    );
    assert_eq!(
        agent.next_offset("metered", 0).unwrap()
            + agent.next_offset("metered", 1).unwrap()
            + agent.next_offset("metered", 2).unwrap()
            + agent.next_offset("metered", 3).unwrap(),
        metered_acked as i64,
        "every acknowledged record is in the log once"
    );
}
