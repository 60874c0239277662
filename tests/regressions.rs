//! Named regression scenarios at the transport layer, after librdkafka's idempotence tests
//! (0094, 0098, 0110-ish) and the Kafka bugs behind KIP-98/KIP-360. A scripted tower layer
//! between the producer and the agent decides, per request, to pass it, lose its answer after
//! the agent applied it, drop it before the agent sees it, or crash the agent; every scenario
//! ends with the history checker ([`streamhouse::history`]) reading the partitions back.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use streamhouse::batch::{Batch, DecodeLimits};
use streamhouse::discovery::{PartitionLeader, StaticDiscovery, TopicMetadata};
use streamhouse::history::{History, RecordId};
use streamhouse::layers::BoxConnection;
use streamhouse::mock::{MockAgent, MockTransport};
use streamhouse::producer::{
    Acks, ConfigError, DeliveryFuture, ProduceError, Producer, ProducerBuilder, ProducerRecord,
};
use streamhouse::proto::v1::{ErrorCode, PartitionBatch, ProduceRequest};
use streamhouse::reader::PartitionReader;
use streamhouse::transport::{
    BoxFuture, Endpoint, Request, RequestMessage, Response, Transport, TransportError,
};
use streamhouse_agent::{Agent, AgentConfig};
use tower::util::BoxCloneService;
use tower::{BoxError, ServiceExt};

/// One batch of a request as the script saw it: partition, base sequence, record count.
type Seen = (u32, i32, i32);

/// What the script does with one produce request.
type Plan = dyn Fn(usize, Request, BoxConnection) -> BoxFuture<'static, Result<Response, BoxError>>
    + Send
    + Sync;

/// A layer running `plan` on every produce request (numbered from 0) and recording its
/// batches; other requests pass.
#[derive(Clone)]
struct Script {
    count: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Vec<Seen>>>>,
    plan: Arc<Plan>,
}

impl Script {
    fn new(
        plan: impl Fn(usize, Request, BoxConnection) -> BoxFuture<'static, Result<Response, BoxError>>
        + Send
        + Sync
        + 'static,
    ) -> Script {
        Script {
            count: Arc::default(),
            seen: Arc::default(),
            plan: Arc::new(plan),
        }
    }

    /// Passes request `lose` to the agent and loses its answer; passes the rest.
    fn lose_answer(lose: usize) -> Script {
        Script::new(move |n, request, inner| {
            Box::pin(async move {
                let answer = inner.oneshot(request).await;
                if n == lose {
                    assert!(answer.is_ok(), "the agent applied it");
                    return Err(TransportError::connection_lost("scripted: answer lost").into());
                }
                answer
            })
        })
    }

    /// Drops request `drop` before the agent sees it; passes the rest.
    fn drop_request(drop: usize) -> Script {
        Script::new(move |n, request, inner| {
            Box::pin(async move {
                if n == drop {
                    return Err(TransportError::connection_lost("scripted: link cut").into());
                }
                inner.oneshot(request).await
            })
        })
    }

    fn requests(&self) -> Vec<Vec<Seen>> {
        self.seen.lock().unwrap().clone()
    }

    /// A small-batch producer for `agent`, through this script.
    fn producer(&self, agent: &MockAgent) -> Producer {
        self.install(small_batches(Producer::builder(
            agent.transport(),
            agent.discovery(),
        )))
        .build()
        .unwrap()
    }

    fn install(&self, builder: ProducerBuilder) -> ProducerBuilder {
        let script = self.clone();
        builder.layer(tower::layer::layer_fn(move |inner: BoxConnection| {
            let script = script.clone();
            BoxCloneService::new(tower::service_fn(move |request: Request| {
                let RequestMessage::Produce(produce) = &request.message else {
                    return Box::pin(inner.clone().oneshot(request)) as BoxFuture<'static, _>;
                };
                script.seen.lock().unwrap().push(seen(produce));
                let n = script.count.fetch_add(1, Ordering::SeqCst);
                (script.plan)(n, request, inner.clone())
            }))
        }))
    }
}

fn seen(produce: &ProduceRequest) -> Vec<Seen> {
    produce
        .batches
        .iter()
        .map(|b| {
            let batch = Batch::parse(b.batch.clone(), &DecodeLimits::default()).unwrap();
            let h = batch.header();
            (b.partition, h.producer.base_sequence, h.record_count)
        })
        .collect()
}

/// Sends `records` records to partition `partition` of "t" without yielding, so the sender
/// finds every full batch sealed at once (the last, open one follows after its linger);
/// returns their ids and futures.
async fn send_burst(
    producer: &Producer,
    partition: u32,
    first: u64,
    records: u64,
) -> Vec<(RecordId, DeliveryFuture)> {
    let mut out = Vec::new();
    for seq in first..first + records {
        let id = RecordId::new(0, seq);
        let value = id.value(100);
        let record = ProducerRecord::new("t", &value).partition(partition);
        out.push((id, producer.send(record).await.unwrap()));
    }
    out
}

async fn settle(history: &mut History, deliveries: Vec<(RecordId, DeliveryFuture)>) {
    for (id, delivery) in deliveries {
        history.record_delivery(id, delivery).await;
    }
}

/// Reads partitions back through `transport` and checks `history` against them.
async fn check(
    history: &History,
    transport: &MockTransport,
    endpoint: &Endpoint,
    partitions: u32,
) -> streamhouse::history::Report {
    let mut logs = Vec::new();
    for partition in 0..partitions {
        let connection = transport.connect(endpoint).await.unwrap();
        let records = PartitionReader::new(connection, "t", partition, 0)
            .read_to_end()
            .await
            .unwrap();
        logs.push((partition, records));
    }
    let report = history.check(logs);
    assert!(report.is_clean(), "{report}");
    report
}

/// A producer sending 8-record batches (one batch per ~1 KiB) to one partition.
fn small_batches(builder: ProducerBuilder) -> ProducerBuilder {
    builder
        .batch_size(1024)
        .linger(Duration::from_millis(1))
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
}

/// librdkafka 0094-ish: five batches go out in one request, the agent appends them, and the
/// answer is lost; a sixth batch is waiting. The retry must re-send the same five batches with
/// the same sequences before the sixth (the agent answers them as duplicates with their
/// original offsets), and the sixth is appended after them.
#[tokio::test(start_paused = true)]
async fn lost_answer_to_batches_1_to_5_is_retried_before_batch_6() {
    let agent = MockAgent::new().with_topic("t", 1);
    let script = Script::lose_answer(0);
    let producer = script.producer(&agent);
    // 6 batches' worth, sent before the sender runs.
    let deliveries = send_burst(&producer, 0, 0, 6 * 8).await;
    let mut history = History::new();
    settle(&mut history, deliveries).await;
    producer.close(Duration::from_secs(5)).await.unwrap();

    let requests = script.requests();
    let first = &requests[0];
    assert_eq!(
        first.len(),
        5,
        "one request carries at most 5 batches: {requests:?}"
    );
    assert_eq!(
        &requests[1][..5],
        &first[..],
        "the retry re-sends the same batches first: {requests:?}"
    );
    let sixth = requests
        .iter()
        .flatten()
        .position(|b| b.1 == 5 * 8)
        .unwrap();
    assert!(
        sixth >= 10,
        "batch 6 went out before the retry: {requests:?}"
    );
    assert_eq!(agent.stats().duplicates, 5, "the retry was deduplicated");
    let report = check(&history, &agent.transport(), &agent.endpoint(), 1).await;
    assert_eq!(report.total().acked, 48);
}

/// The agent side of the same story, batch by batch: batch 1's answer is lost while batches
/// 2..6 are appended and acknowledged, so batch 1 has left the 5-batch window by the time it
/// is retried. It must not be appended again, and it must not be called out of order either
/// (that would report persisted data as failed): it is a duplicate with an unknown offset.
#[tokio::test]
async fn a_retry_outside_the_five_batch_window_is_a_duplicate_not_an_append() {
    let agent = MockAgent::new().with_topic("t", 1);
    let connection = agent.transport().connect(&agent.endpoint()).await.unwrap();
    let batch = |seq: i32| support::idempotent_batch(77, 0, seq, 4);
    let produce = |bytes| {
        let connection = connection.clone();
        async move {
            let request = Request::new(RequestMessage::Produce(ProduceRequest {
                acks: 2,
                timeout_ms: 1_000,
                batches: vec![PartitionBatch {
                    topic: "t".into(),
                    partition: 0,
                    batch: bytes,
                }],
            }));
            match connection.oneshot(request).await.unwrap() {
                Response::Produce(r) => (
                    ErrorCode::from_wire(r.results[0].error_code),
                    r.results[0].base_offset,
                ),
                other => panic!("{other:?}"),
            }
        }
    };
    for i in 0..6 {
        // Batch 1's answer (i == 0) is "lost": nothing here looks at it.
        assert_eq!(
            produce(batch(i * 4)).await,
            (ErrorCode::None, i64::from(i) * 4)
        );
    }
    // Batch 2 is still in the window: its retry gets its original offset.
    assert_eq!(produce(batch(4)).await, (ErrorCode::DuplicateSequence, 4));
    // Batch 1 is not: appended before the window, offset no longer known.
    assert_eq!(produce(batch(0)).await, (ErrorCode::DuplicateSequence, -1));
    // A batch straddling the window's start is no batch this producer sent.
    assert_eq!(
        produce(support::idempotent_batch(77, 0, 2, 4)).await.0,
        ErrorCode::OutOfOrderSequence
    );
    assert_eq!(
        agent.next_offset("t", 0),
        Some(24),
        "nothing appended twice"
    );
}

/// The producer's side of an out-of-window duplicate: acknowledged, offset unknown (-1), never
/// failed and never retried forever.
#[tokio::test(start_paused = true)]
async fn an_out_of_window_duplicate_answer_acks_without_an_offset() {
    let agent = MockAgent::new().with_topic("t", 1);
    let script = Script::new(|n, request, inner| {
        Box::pin(async move {
            let mut answer = inner.oneshot(request).await?;
            if n == 0
                && let Response::Produce(r) = &mut answer
            {
                for result in &mut r.results {
                    result.error_code = ErrorCode::DuplicateSequence as i32;
                    result.base_offset = -1;
                }
            }
            Ok(answer)
        })
    });
    let producer = script.producer(&agent);
    let deliveries = send_burst(&producer, 0, 0, 8).await;
    for (_, delivery) in deliveries {
        let meta = delivery.await.expect("a duplicate is a success");
        assert_eq!(meta.offset, -1);
        assert!(!meta.has_offset());
    }
    producer.close(Duration::from_secs(5)).await.unwrap();
    assert_eq!(script.requests().len(), 1, "not retried");
}

/// librdkafka 0098-ish: the connection drops with 1..5 batches in flight, either before the
/// agent saw the request or after it applied it. Every case ends with each record once, in
/// order, at its acknowledged offset.
#[tokio::test(start_paused = true)]
async fn disconnect_with_1_to_5_batches_in_flight() {
    for in_flight in 1..=5u64 {
        for applied in [false, true] {
            let agent = MockAgent::new().with_topic("t", 1);
            let script = if applied {
                Script::lose_answer(0)
            } else {
                Script::drop_request(0)
            };
            let producer = script.producer(&agent);
            // One record more than k full batches: the k sealed batches go out together, the
            // last one after its linger.
            let deliveries = send_burst(&producer, 0, 0, in_flight * 8 + 1).await;
            let mut history = History::new();
            settle(&mut history, deliveries).await;
            producer.close(Duration::from_secs(5)).await.unwrap();
            let requests = script.requests();
            let case = format!("{in_flight} in flight, applied {applied}: {requests:?}");
            assert_eq!(requests[0].len() as u64, in_flight, "{case}");
            assert_eq!(requests[1], requests[0], "{case}");
            let expected_dups = if applied { in_flight } else { 0 };
            assert_eq!(agent.stats().duplicates, expected_dups, "{case}");
            check(&history, &agent.transport(), &agent.endpoint(), 1).await;
        }
    }
}

/// The reference agent fsyncs a durable append and, before its answer leaves, shuts down
/// (gracefully: `Agent::shutdown`, the process's page cache kept) and restarts. It rebuilds its
/// idempotence state from the log, so the producer's retry is answered as a duplicate with the
/// original offsets, and nothing is appended twice. (Power cuts of the real log code are
/// `log::crash_tests` in the agent crate.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_after_the_fsync_before_the_ack_answers_the_retry_as_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let config = AgentConfig::new(dir.path()).topic("t", 1);
    let endpoint: Endpoint = "mock://agent-crash".parse().unwrap();
    let transport = MockTransport::new();
    let agent = Agent::open(config.clone()).await.unwrap();
    transport.serve(endpoint.clone(), agent.service());
    let agents = Arc::new(Mutex::new(vec![agent]));

    let restart = {
        let (transport, endpoint, agents) = (transport.clone(), endpoint.clone(), agents.clone());
        Script::new(move |n, request, inner| {
            let (transport, endpoint, agents, config) = (
                transport.clone(),
                endpoint.clone(),
                agents.clone(),
                config.clone(),
            );
            Box::pin(async move {
                let answer = inner.oneshot(request).await?;
                if n != 0 {
                    return Ok(answer);
                }
                // Appended and fsynced (acks=durable answered). Now the process dies.
                transport.remove_agent(&endpoint);
                let old = agents.lock().unwrap().pop().unwrap();
                old.shutdown().await;
                drop(old);
                let recovered = Agent::open(config).await.unwrap();
                transport.serve(endpoint, recovered.service());
                agents.lock().unwrap().push(recovered);
                Err(TransportError::connection_lost("scripted: agent crashed").into())
            })
        })
    };
    let producer = restart
        .install(small_batches(Producer::builder(
            transport.clone(),
            StaticDiscovery::new().with_topic("t", 1, &endpoint),
        )))
        .acks(Acks::Durable)
        .build()
        .unwrap();
    let deliveries = send_burst(&producer, 0, 0, 3 * 8 + 1).await;
    let mut history = History::new();
    settle(&mut history, deliveries).await;
    producer.close(Duration::from_secs(5)).await.unwrap();

    let requests = restart.requests();
    // (On this multi-threaded runtime the sender may start before all three batches sealed.)
    let crashed_with = requests[0].len() as u64;
    assert_eq!(
        requests[1], requests[0],
        "the retry re-sent the same batches"
    );
    let report = check(&history, &transport, &endpoint, 1).await;
    assert_eq!(report.total().acked, 25);
    let agent = agents.lock().unwrap().pop().unwrap();
    assert_eq!(
        agent.recovery()[0].report.batches,
        crashed_with,
        "recovery found the fsynced batches"
    );
    assert_eq!(
        agent.next_offset("t", 0),
        Some(25),
        "nothing appended twice"
    );
    agent.shutdown().await;
}

/// A partition whose leader never answers outlives `delivery_timeout`: each of its records
/// fails exactly once, with `DeliveryTimeout`, by the deadline; the healthy partition's
/// records are all acknowledged meanwhile.
#[tokio::test(start_paused = true)]
async fn a_partition_outliving_delivery_timeout_fails_each_record_once_by_the_deadline() {
    let healthy = MockAgent::with_id(1).with_topic("t", 2);
    let stuck = MockAgent::with_id(2).with_topic("t", 2);
    stuck.set_stalled(true);
    let transport = MockTransport::new()
        .with_agent(healthy.clone())
        .with_agent(stuck.clone());
    let discovery = StaticDiscovery::new();
    discovery.set_topic(
        TopicMetadata::new(
            "t",
            vec![
                PartitionLeader {
                    agent_id: 1,
                    endpoint: healthy.endpoint(),
                },
                PartitionLeader {
                    agent_id: 2,
                    endpoint: stuck.endpoint(),
                },
            ],
        )
        .unwrap(),
    );
    let delivery_timeout = Duration::from_secs(8);
    let producer = small_batches(Producer::builder(transport, discovery))
        .request_timeout(Duration::from_secs(2))
        .delivery_timeout(delivery_timeout)
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    let mut ok = send_burst(&producer, 0, 0, 400).await;
    let failing = send_burst(&producer, 1, 400, 400).await;
    let mut failures = 0;
    for (_, delivery) in failing {
        match delivery.await {
            Err(ProduceError::DeliveryTimeout { timeout, .. }) => {
                assert_eq!(timeout, delivery_timeout);
                assert!(start.elapsed() <= delivery_timeout + Duration::from_millis(50));
                failures += 1;
            }
            other => panic!("expected a delivery timeout, got {other:?}"),
        }
    }
    for (_, delivery) in ok.drain(..) {
        delivery.await.expect("the healthy partition is unaffected");
    }
    let stats = producer.stats();
    assert_eq!(failures, 400);
    assert_eq!(stats.records_failed, 400, "each record failed exactly once");
    assert_eq!(stats.records_acked, 400);
    producer.close(Duration::from_secs(1)).await.unwrap();
    assert_eq!(healthy.next_offset("t", 0), Some(400));
    assert_eq!(stuck.stats().records_appended, 0);
}

/// More than 5 requests in flight cannot be deduplicated by a 5-batch window: a typed
/// configuration error with idempotence on, allowed with it off.
#[tokio::test]
async fn max_in_flight_over_5_with_idempotence_is_a_config_error() {
    let agent = MockAgent::new().with_topic("t", 1);
    let builder = || Producer::builder(agent.transport(), agent.discovery());
    match builder().max_in_flight(6).build() {
        Err(ConfigError::TooManyInFlightForIdempotence(6)) => {}
        other => panic!("expected a typed config error, got {:?}", other.map(|_| ())),
    }
    assert!(builder().max_in_flight(5).build().is_ok());
    assert!(
        builder()
            .max_in_flight(6)
            .idempotence(false)
            .build()
            .is_ok()
    );
}
