//! Issue 12's agent-side items, each named after what was seen, driven through the agent's
//! service (what every transport serves).

use streamhouse::transport::{AgentService, Request, RequestMessage, Response};
use streamhouse_agent::{Agent, AgentConfig, AgentError};
use streamhouse_proto::v1::{ErrorCode, MetadataRequest, MetadataResponse};
use tower::ServiceExt;

async fn metadata(service: &AgentService, topics: Vec<String>) -> MetadataResponse {
    let request = RequestMessage::Metadata(MetadataRequest { topics });
    match service
        .clone()
        .oneshot(Request::new(request))
        .await
        .unwrap()
    {
        Response::Metadata(r) => r,
        other => panic!("{other:?}"),
    }
}

/// Seen: "`--auto-create` creates topics from any request, Metadata included, without a cap:
/// one request made 3,000 topics in 10 s … `--auto-create 0` is accepted and the
/// zero-partition topics it makes break `streamhouse topics` for everyone". Auto-creation now
/// stops at `max_topics` with `LIMIT_EXCEEDED`, and zero partitions is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_create_stops_at_the_topic_limit_and_refuses_zero_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let mut zero = AgentConfig::new(dir.path());
    zero.auto_create_partitions = Some(0);
    assert!(matches!(
        Agent::open(zero).await,
        Err(AgentError::Config(_))
    ));

    let mut config = AgentConfig::new(dir.path()).topic("kept", 2);
    config.auto_create_partitions = Some(1);
    config.max_topics = 10;
    let agent = Agent::open(config).await.unwrap();
    let names: Vec<String> = (0..30).map(|i| format!("flood-{i}")).collect();
    let answer = metadata(&agent.service(), names).await;
    let created = answer.topics.iter().filter(|t| t.error_code == 0).count();
    let refused = answer
        .topics
        .iter()
        .filter(|t| t.error_code == ErrorCode::LimitExceeded as i32)
        .count();
    assert_eq!(
        (created, refused),
        (9, 21),
        "10 topics in all, 'kept' included"
    );
    let all = metadata(&agent.service(), Vec::new()).await;
    assert_eq!(all.topics.len(), 10);
    assert!(all.topics.iter().all(|t| t.partition_count >= 1));
    agent.shutdown().await;
}

/// A zstd batch of `records` records of a million zero bytes: ~N MB to inflate from a few KB.
fn zero_bomb(records: usize) -> bytes::Bytes {
    let mut b = streamhouse::batch::BatchBuilder::new();
    let zeros = vec![0u8; 1_000_000];
    for _ in 0..records {
        b.append(1, None, Some(&zeros), &[]).unwrap();
    }
    b.finish(
        streamhouse::batch::ProducerStamp::NONE,
        &streamhouse_codecs::Zstd::new(1),
    )
    .unwrap()
}

/// Sends a produce request of `batches` and checks the answer: `first` for the first batch,
/// `THROTTLED` (past the request's decompression budget) for every other.
async fn expect_first_then_throttled(agent: &Agent, batches: Vec<bytes::Bytes>, first: ErrorCode) {
    let request = produce_request(batches);
    let Response::Produce(answer) = agent.service().oneshot(request).await.unwrap() else {
        panic!("not a produce answer")
    };
    assert_eq!(
        answer.results[0].error_code, first as i32,
        "{}",
        answer.results[0].error_message
    );
    assert!(
        answer.results[1..]
            .iter()
            .all(|r| r.error_code == ErrorCode::Throttled as i32),
        "{:?}",
        answer.results[1]
    );
    assert!(answer.throttle_ms > 0);
}

fn produce_request(batches: Vec<bytes::Bytes>) -> Request {
    Request::new(RequestMessage::Produce(
        streamhouse_proto::v1::ProduceRequest {
            acks: streamhouse_proto::v1::Acks::Leader as i32,
            timeout_ms: 30_000,
            batches: batches
                .into_iter()
                .map(|batch| streamhouse_proto::v1::PartitionBatch {
                    topic: "t".into(),
                    partition: 0,
                    batch,
                })
                .collect(),
        },
    ))
}

/// Seen: "validation decompresses on tokio workers; a 2.18 MB request of zstd batches inflates
/// to 45 GiB of work: 16 s of CPU, metadata calls on other connections stalled 7.66 s". A
/// request decompresses within its budget (the rest answer `THROTTLED`, with `throttle_ms`),
/// on a blocking thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_is_refused_past_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new(dir.path()).topic("t", 1);
    config.max_request_decompressed_bytes = config.max_uncompressed_bytes;
    let agent = Agent::open(config).await.unwrap();
    expect_first_then_throttled(&agent, vec![zero_bomb(30); 40], ErrorCode::None).await;
    agent.shutdown().await;
}

/// Found by an outside re-run: a request of 1,000 zstd batches whose records block inflates
/// to 32 MiB and then proves corrupt cost 31 s of CPU, because only batches that passed were
/// charged to the budget. A corrupt batch is charged for what it decompressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_with_corrupt_records_are_charged_to_the_decompression_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new(dir.path()).topic("t", 1);
    config.max_request_decompressed_bytes = config.max_uncompressed_bytes;
    let agent = Agent::open(config).await.unwrap();
    // 30 records of a million zeros, declared as 31: corrupt once decompressed.
    let mut lying = zero_bomb(30).to_vec();
    lying[19..23].copy_from_slice(&30i32.to_be_bytes());
    lying[53..57].copy_from_slice(&31i32.to_be_bytes());
    let crc = crc32c::crc32c(&lying[17..]);
    lying[13..17].copy_from_slice(&crc.to_be_bytes());
    let lying = bytes::Bytes::from(lying);
    expect_first_then_throttled(&agent, vec![lying; 40], ErrorCode::CorruptBatch).await;
    agent.shutdown().await;
}

/// The same, for where the work runs: on a single-threaded runtime, a metadata call made while
/// a large request is being validated is answered before that request (it used to wait for all
/// of the decompression, which ran on the runtime's only thread).
#[tokio::test(flavor = "current_thread")]
async fn metadata_is_answered_while_a_large_request_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::open(AgentConfig::new(dir.path()).topic("t", 1))
        .await
        .unwrap();
    let service = agent.service();
    let large = produce_request(vec![zero_bomb(30); 8]);
    let produce = tokio::spawn(service.clone().oneshot(large));
    tokio::task::yield_now().await;
    let answer = metadata(&service, vec!["t".into()]).await;
    assert_eq!(answer.topics[0].error_code, 0);
    // Answered before the 240 MB of records were checked and appended.
    assert_eq!(
        agent.next_offset("t", 0),
        Some(0),
        "metadata waited behind the validation"
    );
    assert!(produce.await.unwrap().is_ok());
    assert_eq!(agent.next_offset("t", 0), Some(240));
    agent.shutdown().await;
}

/// A 1 MiB batch (uncompressed) of two records of 512 KiB.
fn mib_batch() -> bytes::Bytes {
    let mut b = streamhouse::batch::BatchBuilder::new();
    let half = vec![7u8; 512 << 10];
    for _ in 0..2 {
        b.append(1, None, Some(&half), &[]).unwrap();
    }
    b.finish(
        streamhouse::batch::ProducerStamp::NONE,
        &streamhouse::codec::NoCompression,
    )
    .unwrap()
}

/// An agent holding six 1 MiB batches in `t-0` (its largest allowed), with a fetch answer
/// budget of three of them.
async fn agent_with_data(dir: &std::path::Path) -> Agent {
    let mut config = AgentConfig::new(dir).topic("t", 1);
    config.max_batch_bytes = mib_batch().len();
    config.max_fetch_answer_bytes = 3 * mib_batch().len();
    let agent = Agent::open(config).await.unwrap();
    let stored = agent
        .service()
        .oneshot(produce_request(vec![mib_batch(); 6]))
        .await
        .unwrap();
    let Response::Produce(stored) = stored else {
        panic!("not a produce answer")
    };
    assert!(
        stored.results.iter().all(|r| r.error_code == 0),
        "{stored:?}"
    );
    agent
}

fn fetch(offset: i64) -> Request {
    Request::new(RequestMessage::Fetch(streamhouse_proto::v1::FetchRequest {
        topic: "t".into(),
        partition: 0,
        offset,
        max_bytes: 1 << 20,
        max_wait_ms: 0,
    }))
}

/// Seen: "Unread Fetch answers fill memory. One HTTP/2 connection sends 40 Fetch requests
/// (13 bytes each, `max_bytes` 8 MiB) and never reads: agent RSS +368 to +602 MiB." Answers
/// are leased from the answer budget until their batches are dropped (what a transport does
/// once the answer is delivered): past the budget the next fetch waits, and is served as soon
/// as an answer is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_fetch_answers_are_bounded_by_the_answer_budget() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with_data(dir.path()).await;
    let service = agent.service();
    // Three answers of one batch each, never "delivered": the whole budget.
    let mut unread = Vec::new();
    for offset in [0, 2, 4] {
        unread.push(service.clone().oneshot(fetch(offset)).await.unwrap());
    }
    assert_eq!(agent.fetch_answer_bytes_held(), 3 * mib_batch().len());
    let next = tokio::spawn(service.clone().oneshot(fetch(5)));
    let waited = tokio::time::timeout(std::time::Duration::from_millis(300), async {
        while !next.is_finished() {
            tokio::task::yield_now().await;
        }
    });
    assert!(
        waited.await.is_err(),
        "a fetch was answered past the budget"
    );
    unread.pop();
    let Response::Fetch(answer) = next.await.unwrap().unwrap() else {
        panic!("not a fetch answer")
    };
    assert_eq!(answer.batches.len(), 1);
    drop((answer, unread));
    assert_eq!(agent.fetch_answer_bytes_held(), 0);
    agent.shutdown().await;
}

/// The same over gRPC, from a client that asks and never reads: its answers wait in HTTP/2 for
/// a window that never opens, holding the budget until the request timeout closes the
/// connection; then the budget is whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_that_never_reads_its_answers_is_cut_off_at_the_request_timeout() {
    use streamhouse_agent::{ListenOptions, Listeners};
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with_data(dir.path()).await;
    let mut options = ListenOptions {
        grpc: Some("127.0.0.1:0".parse().unwrap()),
        ..ListenOptions::default()
    };
    options.grpc_config.request_timeout = std::time::Duration::from_secs(1);
    let serving = Listeners::bind(options).await.unwrap().serve(&agent);
    let addr = serving.endpoint("grpc").unwrap().authority().to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // A one-byte window per stream: nothing of an answer gets through.
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(1)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut streams = Vec::new();
    for offset in 0..6 {
        let mut ready = send.clone().ready().await.unwrap();
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/streamhouse.v1.Agent/Fetch"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut body) = ready.send_request(request, false).unwrap();
        let message = streamhouse_proto::prost::Message::encode_to_vec(
            &streamhouse_proto::v1::FetchRequest {
                topic: "t".into(),
                partition: 0,
                offset,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
            },
        );
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        body.send_data(bytes::Bytes::from(framed), true).unwrap();
        streams.push(response);
    }
    let budget = 3 * mib_batch().len();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while agent.fetch_answer_bytes_held() < 2 * mib_batch().len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "answers never built"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(agent.fetch_answer_bytes_held() <= budget);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), connection).await;
    assert!(
        ended.is_ok(),
        "the connection was kept open with its answers unread"
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while agent.fetch_answer_bytes_held() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "answer budget not given back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(streams);
    serving.stop().await.unwrap();
    agent.shutdown().await;
}

/// Found by an outside re-run: four unread 8 MiB fetches from one client blocked every other
/// client's fetches, whatever their address. Answers count against the client's share (per
/// peer address) as well as the agent's budget: one client that never reads waits on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_unread_answers_leave_the_other_clients_their_share() {
    use std::sync::Arc;
    use streamhouse::serve::{ServerBounds, ServerLimits, for_client};
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_with_data(dir.path()).await;
    let service = agent.service();
    let mut limits = ServerLimits::default();
    limits.max_peer_answer_bytes = mib_batch().len();
    let bounds = ServerBounds::new(limits);
    let greedy = Arc::new(bounds.admit([127, 0, 0, 1].into()).unwrap());
    let other = Arc::new(bounds.admit([127, 0, 0, 2].into()).unwrap());
    let unread = for_client(greedy.clone(), service.clone().oneshot(fetch(0)))
        .await
        .unwrap();
    // The greedy client's share is spent: its next fetch waits...
    let next = tokio::spawn(for_client(
        greedy.clone(),
        service.clone().oneshot(fetch(1)),
    ));
    // ...while another client is served at once.
    let served = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        for_client(other, service.clone().oneshot(fetch(2))),
    )
    .await
    .expect("another client's fetch waited for the greedy one");
    let Response::Fetch(served) = served.unwrap() else {
        panic!("not a fetch answer")
    };
    assert_eq!(served.batches.len(), 1);
    assert!(!next.is_finished(), "the greedy client went past its share");
    drop(unread);
    let Response::Fetch(answer) = next.await.unwrap().unwrap() else {
        panic!("not a fetch answer")
    };
    assert_eq!(answer.batches.len(), 1);
    agent.shutdown().await;
}
