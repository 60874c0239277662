//! Issue 12, seen: "every segment keeps an open descriptor, so a log of more than ~1,000
//! segments cannot be reopened (an agent with 1,200 segments refused to start)". Only the active
//! segment keeps its file open now. Its own test binary: it counts this process's descriptors,
//! so no other test may run beside it.

use bytes::Bytes;
use streamhouse::batch::{BatchBuilder, ProducerStamp};
use streamhouse::codec::NoCompression;
use streamhouse::transport::{Request, RequestMessage, Response};
use streamhouse_agent::{Agent, AgentConfig};
use streamhouse_proto::v1::{Acks, FetchRequest, PartitionBatch, ProduceRequest};
use tower::ServiceExt;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn batch(n: usize) -> Bytes {
    let mut b = BatchBuilder::new();
    b.append(1, None, Some(format!("record {n}").as_bytes()), &[])
        .unwrap();
    b.finish(ProducerStamp::NONE, &NoCompression).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_1200_segments_reopens_with_a_handful_of_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new(dir.path()).topic("t", 1);
    config.segment_bytes = 64; // every batch rolls a segment
    let agent = Agent::open(config.clone()).await.unwrap();
    for chunk in 0..12 {
        let request = ProduceRequest {
            acks: Acks::Leader as i32,
            timeout_ms: 10_000,
            batches: (0..100)
                .map(|i| PartitionBatch {
                    topic: "t".into(),
                    partition: 0,
                    batch: batch(chunk * 100 + i),
                })
                .collect(),
        };
        let request = Request::new(RequestMessage::Produce(request));
        let Response::Produce(answer) = agent.service().oneshot(request).await.unwrap() else {
            panic!()
        };
        assert!(answer.results.iter().all(|r| r.error_code == 0));
    }
    // Even while running, rolled segments were let go.
    let running = open_descriptors();
    agent.shutdown().await;
    drop(agent);
    let segments = std::fs::read_dir(dir.path().join("t-0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert!(segments >= 1_200, "{segments} segments");

    let before = open_descriptors();
    // Recovery too must do with a handful: under a limit of 100 more than are open now, the
    // 1,200 segments could not all be open at once (an outside run saw "Too many open files"
    // at start with 1,500 segments under 1,024).
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let tight = Rlimit {
        current: Some(before as u64 + 100),
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, tight).unwrap();
    let opened = Agent::open(config).await;
    setrlimit(Resource::Nofile, limit).unwrap();
    let agent = opened.unwrap();
    let after = open_descriptors();
    assert!(
        after < before + 50,
        "{before} descriptors before opening, {after} after"
    );
    assert!(running < before + 50, "{running} while writing");
    // Every segment is still readable (opened per read).
    let mut offset = 0;
    while offset < 1_200 {
        let request = Request::new(RequestMessage::Fetch(FetchRequest {
            topic: "t".into(),
            partition: 0,
            offset,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
        }));
        let Response::Fetch(answer) = agent.service().oneshot(request).await.unwrap() else {
            panic!()
        };
        assert_eq!(answer.error_code, 0, "{}", answer.error_message);
        assert!(!answer.batches.is_empty());
        offset += answer.batches.len() as i64;
    }
    assert!(open_descriptors() < before + 50);
    agent.shutdown().await;
}
