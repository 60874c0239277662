//! Issue 11's data-safety defects at the agent's edge: each test drives the reference agent
//! through its service (the same one every transport serves) and failed on the code before
//! its fix.

use bytes::Bytes;
use streamhouse::batch::{Batch, BatchBuilder, DecodeLimits, ProducerStamp};
use streamhouse::codec::{Codecs, NoCompression};
use streamhouse::transport::{AgentService, Request, RequestMessage, Response};
use streamhouse_agent::{Agent, AgentConfig, AgentError};
use streamhouse_proto::v1::{
    Acks, ErrorCode, FetchRequest, FetchResponse, PartitionBatch, PartitionResult, ProduceRequest,
};
use tower::ServiceExt;

/// A batch of `records` values of `value_len` bytes, tagged with `n`.
fn batch(n: usize, records: usize, value_len: usize, stamp: ProducerStamp) -> Bytes {
    let mut b = BatchBuilder::new();
    for r in 0..records {
        let mut value = format!("{n}-{r}-").into_bytes();
        value.resize(value_len, b'v');
        b.append(1_700_000_000_000, None, Some(&value), &[])
            .unwrap();
    }
    b.finish(stamp, &NoCompression).unwrap()
}

async fn produce(service: &AgentService, acks: Acks, batches: Vec<Bytes>) -> Vec<PartitionResult> {
    let request = ProduceRequest {
        acks: acks as i32,
        timeout_ms: 10_000,
        batches: batches
            .into_iter()
            .map(|batch| PartitionBatch {
                topic: "t".into(),
                partition: 0,
                batch,
            })
            .collect(),
    };
    match service
        .clone()
        .oneshot(Request::new(RequestMessage::Produce(request)))
        .await
        .unwrap()
    {
        Response::Produce(r) => r.results,
        other => panic!("{other:?}"),
    }
}

async fn fetch(service: &AgentService, offset: i64) -> FetchResponse {
    fetch_waiting(service, offset, 0).await
}

async fn fetch_waiting(service: &AgentService, offset: i64, max_wait_ms: u32) -> FetchResponse {
    let request = FetchRequest {
        topic: "t".into(),
        partition: 0,
        offset,
        max_bytes: 1 << 20,
        max_wait_ms,
    };
    match service
        .clone()
        .oneshot(Request::new(RequestMessage::Fetch(request)))
        .await
        .unwrap()
    {
        Response::Fetch(r) => r,
        other => panic!("{other:?}"),
    }
}

/// Every record value of partition t-0, in offset order, checking offsets are contiguous.
async fn read_all(service: &AgentService) -> Vec<Bytes> {
    let mut values = Vec::new();
    let mut offset = 0;
    loop {
        let response = fetch(service, offset).await;
        assert_eq!(response.error_code, 0, "{}", response.error_message);
        if response.batches.is_empty() {
            return values;
        }
        for bytes in response.batches {
            let batch = Batch::parse(bytes, &DecodeLimits::default()).unwrap();
            for record in batch.records(&Codecs::new()).unwrap() {
                let record = record.unwrap();
                if record.offset >= offset {
                    assert_eq!(record.offset, values.len() as i64);
                    values.push(record.value.unwrap());
                }
            }
            offset = batch.header().last_offset() + 1;
        }
    }
}

/// Defect 1: recovery applied the *new* `--max-batch-bytes` to stored batches, called the
/// larger ones corrupt and cut the log there (seen: 60,000 acknowledged records → 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_lower_batch_limit_keeps_every_stored_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new(dir.path()).topic("t", 1);
    config.segment_bytes = 64 << 10;
    let agent = Agent::open(config.clone()).await.unwrap();
    let service = agent.service();
    for n in 0..30 {
        let results = produce(
            &service,
            Acks::Durable,
            vec![batch(n, 20, 1000, ProducerStamp::NONE)],
        )
        .await;
        assert_eq!(results[0].error_code, 0, "{}", results[0].error_message);
    }
    agent.shutdown().await;
    drop((agent, service));

    config.max_batch_bytes = 8 << 10;
    let agent = Agent::open(config).await.unwrap();
    let service = agent.service();
    assert_eq!(agent.recovery()[0].report.truncated_bytes, 0);
    assert_eq!(agent.next_offset("t", 0), Some(600));
    assert_eq!(read_all(&service).await.len(), 600);
    // The lower limit applies to new traffic.
    let results = produce(
        &service,
        Acks::Durable,
        vec![batch(99, 20, 1000, ProducerStamp::NONE)],
    )
    .await;
    assert_eq!(results[0].error_code, ErrorCode::BatchTooLarge as i32);
    agent.shutdown().await;
}

/// Defect 3: nothing stopped a second agent on the same data directory; both handed out
/// offsets 0..N and a restart kept 500 of 2,000 acknowledged records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = AgentConfig::new(dir.path()).topic("t", 1);
    let first = Agent::open(config.clone()).await.unwrap();
    let second = Agent::open(config.clone()).await.unwrap_err();
    assert!(matches!(second, AgentError::Locked { .. }), "{second:?}");
    assert!(
        second.to_string().contains("in use by another agent"),
        "{second}"
    );
    // The first one goes on serving.
    let results = produce(
        &first.service(),
        Acks::Durable,
        vec![batch(0, 1, 10, ProducerStamp::NONE)],
    )
    .await;
    assert_eq!(results[0].base_offset, 0);
    // Once it has shut down, the directory is free.
    first.shutdown().await;
    let again = Agent::open(config).await.unwrap();
    assert_eq!(again.next_offset("t", 0), Some(1));
    again.shutdown().await;
}

/// Defect 5, from outside: producer A writes two batches, then 5,000 other producers write one
/// batch each, then A's retries of both arrive. Past 4,096 producers the agent forgot A and
/// appended both retries a second time; now it still knows them as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_5000_other_producers_is_still_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::open(AgentConfig::new(dir.path()).topic("t", 1))
        .await
        .unwrap();
    let service = agent.service();
    let stamp = |pid: i64, seq: i32| ProducerStamp {
        producer_id: pid,
        producer_epoch: 0,
        base_sequence: seq,
    };
    let a = vec![batch(0, 2, 10, stamp(1, 0)), batch(1, 3, 10, stamp(1, 2))];
    let first = produce(&service, Acks::Leader, a.clone()).await;
    assert_eq!((first[0].base_offset, first[1].base_offset), (0, 2));
    for chunk in (2..5_002).collect::<Vec<i64>>().chunks(500) {
        let batches = chunk
            .iter()
            .map(|&pid| batch(pid as usize, 1, 10, stamp(pid, 0)))
            .collect();
        for r in produce(&service, Acks::Leader, batches).await {
            assert_eq!(r.error_code, 0, "{}", r.error_message);
        }
    }
    let retried = produce(&service, Acks::Leader, a).await;
    for (r, offset) in retried.iter().zip([0, 2]) {
        assert_eq!(
            r.error_code,
            ErrorCode::DuplicateSequence as i32,
            "{}",
            r.error_message
        );
        assert_eq!(r.base_offset, offset);
    }
    assert_eq!(agent.next_offset("t", 0), Some(5 + 5_000));
    agent.shutdown().await;
}

/// Defect 4: the mock answered acks=none requests with the log's real codes while the
/// reference agent answers before the log, so no test saw what an acks=none producer sees.
/// Both now answer a gap the same way: NONE, offset unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_none_is_answered_alike_by_the_mock_and_the_reference_agent() {
    let gap = || {
        batch(
            0,
            1,
            10,
            ProducerStamp {
                producer_id: 5,
                producer_epoch: 0,
                base_sequence: 7,
            },
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::open(AgentConfig::new(dir.path()).topic("t", 1))
        .await
        .unwrap();
    let mock = streamhouse::mock::MockAgent::new().with_topic("t", 1);
    for service in [agent.service(), mock.service()] {
        let answer = &produce(&service, Acks::None, vec![gap()]).await[0];
        assert_eq!((answer.error_code, answer.base_offset), (0, -1));
        // acks=leader shows what acks=none hides.
        let answer = &produce(&service, Acks::Leader, vec![gap()]).await[0];
        assert_eq!(answer.error_code, ErrorCode::UnknownProducerId as i32);
    }
    agent.shutdown().await;
}

/// Defect 8: `Fetch` ignored `max_wait_ms`, so a consumer at the end of the log spun. A fetch
/// at the end now waits for the next append (or its `max_wait_ms`) and answers with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_at_the_end_of_the_log_waits_for_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::open(AgentConfig::new(dir.path()).topic("t", 1))
        .await
        .unwrap();
    let service = agent.service();
    // Nothing arrives: the wait ends at max_wait_ms with an empty answer.
    let idle = fetch_waiting(&service, 0, 50).await;
    assert_eq!((idle.error_code, idle.batches.len()), (0, 0));

    let waiting = tokio::spawn({
        let service = service.clone();
        async move { fetch_waiting(&service, 0, 30_000).await }
    });
    // Give the fetch time to start waiting (if it has not, it reads the batch at once: the
    // assertion holds either way; this only makes the test bite on an agent that never waits).
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let sent = produce(
        &service,
        Acks::Leader,
        vec![batch(0, 1, 10, ProducerStamp::NONE)],
    )
    .await;
    assert_eq!(sent[0].base_offset, 0);
    let answer = waiting.await.unwrap();
    assert_eq!(
        answer.batches.len(),
        1,
        "the fetch answered with the appended batch"
    );
    assert_eq!(answer.high_watermark, 1);
    agent.shutdown().await;
}

/// Found by an outside review: the data-directory lock did not cover a partition directory
/// reached through a symlink from a second data directory; two agents both appended to it and
/// handed out the same offsets. Each partition directory is locked too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_directory_shared_through_a_symlink_is_refused() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = Agent::open(AgentConfig::new(a.path()).topic("t", 1))
        .await
        .unwrap();
    std::os::unix::fs::symlink(a.path().join("t-0"), b.path().join("t-0")).unwrap();
    let second = Agent::open(AgentConfig::new(b.path()).topic("t", 1)).await;
    let error = second.expect_err("a second agent on the same partition");
    assert!(error.to_string().contains("t-0"), "{error}");
    first.shutdown().await;
}
