//! The agent with its durable state in a metadata store and object storage: acknowledged
//! records survive the loss of its data directory, offsets continue where they were, and a
//! retry of a committed batch is answered as a duplicate with its original offset — on SQLite
//! with `file://` objects, and on PostgreSQL with an S3 server (both started by `scripts/test`;
//! without them those tests fail, never skip).

mod support;

use std::collections::HashMap;
use std::time::Duration;
use streamhouse::discovery::StaticDiscovery;
use streamhouse::producer::{Acks, Producer, ProducerRecord};
use streamhouse::transport::{Request, RequestMessage, Response};
use streamhouse_agent::{AgentConfig, RemoteConfig};
use streamhouse_proto::v1::{Durability, ErrorCode, PartitionBatch, ProduceRequest};
use support::agent::{Kind, RunningAgent};
use tower::ServiceExt;

const PARTITIONS: u32 = 3;

/// Where an agent's durable state lives in a test.
#[derive(Clone)]
struct Engines {
    metadata: String,
    objects: String,
    s3: Option<(String, String)>,
}

impl Engines {
    /// SQLite and a directory of objects, under `base`.
    fn embedded(base: &std::path::Path) -> Engines {
        Engines {
            metadata: format!("sqlite://{}/meta.db", base.display()),
            objects: format!("file://{}/objects", base.display()),
            s3: None,
        }
    }

    /// A fresh PostgreSQL database and a fresh prefix in the test bucket.
    async fn real() -> Engines {
        let metadata = streamhouse_metastore::testing::fresh_postgres().await;
        let (endpoint, bucket) = streamhouse_metastore::testing::s3();
        let prefix = metadata.rsplit('/').next().unwrap().to_owned();
        Engines {
            metadata,
            objects: format!("s3://{bucket}/{prefix}"),
            s3: Some((endpoint, "us-east-1".into())),
        }
    }

    fn config(&self, data: &std::path::Path) -> AgentConfig {
        let mut remote = RemoteConfig::new(&self.metadata, &self.objects);
        remote.flush_interval = Duration::from_millis(20);
        remote.flush_bytes = 256 << 10;
        if let Some((endpoint, region)) = &self.s3 {
            remote.s3.endpoint = Some(endpoint.clone());
            remote.s3.region = Some(region.clone());
            remote.s3.access_key_id = Some("test".into());
            remote.s3.secret_access_key = Some("test".into());
        }
        AgentConfig::new(data).topic("t", PARTITIONS).remote(remote)
    }
}

/// Sends `count` records from `from` with acks=durable, idempotence on; returns
/// (partition, offset) → record number.
async fn produce(agent: &RunningAgent, from: u64, count: u64) -> HashMap<(u32, i64), u64> {
    let producer = Producer::builder(
        agent.transport(Kind::Grpc),
        StaticDiscovery::new().with_topic("t", PARTITIONS, &agent.endpoint(Kind::Grpc)),
    )
    .acks(Acks::Durable)
    .idempotence(true)
    .build()
    .unwrap();
    let mut deliveries = Vec::new();
    for i in from..from + count {
        let (value, key) = (format!("{i:020}"), format!("k{i}"));
        let record = ProducerRecord::new("t", value.as_bytes()).key(key.as_bytes());
        deliveries.push((i, producer.send(record).await.unwrap()));
    }
    let mut acked = HashMap::new();
    for (i, delivery) in deliveries {
        let meta = delivery.await.expect("acknowledged");
        assert!(acked.insert((meta.partition, meta.offset), i).is_none());
    }
    producer.close(Duration::from_secs(10)).await.unwrap();
    acked
}

/// Every acknowledged record is read back at its offset, with nothing else in between.
async fn check(agent: &RunningAgent, acked: &HashMap<(u32, i64), u64>) {
    let mut seen = 0;
    for partition in 0..PARTITIONS {
        let records = agent.read(Kind::Grpc, "t", partition).await;
        for (position, record) in records.iter().enumerate() {
            assert_eq!(record.offset, position as i64, "partition {partition}");
            let sent: u64 = std::str::from_utf8(record.value.as_deref().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                acked.get(&(partition, record.offset)),
                Some(&sent),
                "partition {partition} offset {}",
                record.offset
            );
        }
        seen += records.len();
    }
    assert_eq!(seen, acked.len(), "every acknowledged record, nothing more");
}

async fn survive_a_lost_disk(engines: Engines) {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    let agent = RunningAgent::start(engines.config(&data)).await;
    let mut acked = produce(&agent, 0, 3_000).await;
    let stats = agent.agent.remote_stats().unwrap();
    assert!(stats.objects_written > 0 && stats.commits == stats.objects_written);
    agent.stop().await;

    // The machine's disk is gone.
    std::fs::remove_dir_all(&data).unwrap();
    let agent = RunningAgent::start(engines.config(&data)).await;
    check(&agent, &acked).await;
    assert!(
        agent.agent.remote_stats().unwrap().object_gets > 0,
        "read from objects"
    );
    // Appends continue at the committed offsets.
    acked.extend(produce(&agent, 3_000, 600).await);
    check(&agent, &acked).await;
    agent.stop().await;

    // And once more, without losing the disk: the local log and the store agree.
    let agent = RunningAgent::start(engines.config(&data)).await;
    check(&agent, &acked).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_a_lost_data_directory_on_sqlite_and_files() {
    let base = tempfile::tempdir().unwrap();
    survive_a_lost_disk(Engines::embedded(base.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_a_lost_data_directory_on_postgres_and_s3() {
    survive_a_lost_disk(Engines::real().await).await;
}

/// Sends one raw batch with acks=durable; (code, base offset, durability).
async fn send(agent: &RunningAgent, bytes: bytes::Bytes) -> (ErrorCode, i64, Durability) {
    let request = Request::new(RequestMessage::Produce(ProduceRequest {
        acks: 3,
        timeout_ms: 10_000,
        batches: vec![PartitionBatch {
            topic: "t".into(),
            partition: 1,
            batch: bytes,
        }],
    }));
    match agent.agent.service().oneshot(request).await.unwrap() {
        Response::Produce(r) => (
            ErrorCode::from_wire(r.results[0].error_code),
            r.results[0].base_offset,
            Durability::try_from(r.durability).unwrap(),
        ),
        other => panic!("{other:?}"),
    }
}

/// What the producer does after a lost answer, against an agent that lost its disk meanwhile:
/// the retry reaches the rebuilt agent, which must answer it as a duplicate with the original
/// offset (appending it again would duplicate the records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_committed_batch_after_a_wipe_is_a_duplicate_with_its_offset() {
    let base = tempfile::tempdir().unwrap();
    let engines = Engines::embedded(base.path());
    let data = base.path().join("data");
    let batch = |seq| support::idempotent_batch(4242, 0, seq, 5);
    let agent = RunningAgent::start(engines.config(&data)).await;
    for i in 0..3 {
        assert_eq!(
            send(&agent, batch(i * 5)).await,
            (ErrorCode::None, i64::from(i) * 5, Durability::ObjectStore)
        );
    }
    agent.stop().await;
    std::fs::remove_dir_all(&data).unwrap();

    let agent = RunningAgent::start(engines.config(&data)).await;
    // Retries of every remembered batch: duplicates, at their first offsets.
    for i in 0..3 {
        assert_eq!(
            send(&agent, batch(i * 5)).await,
            (
                ErrorCode::DuplicateSequence,
                i64::from(i) * 5,
                Durability::ObjectStore
            )
        );
    }
    // The next batch in sequence is appended after them; a gap is still refused.
    assert_eq!(send(&agent, batch(15)).await.0, ErrorCode::None);
    assert_eq!(
        send(&agent, batch(30)).await.0,
        ErrorCode::OutOfOrderSequence
    );
    assert_eq!(agent.agent.next_offset("t", 1), Some(20));
    agent.stop().await;
}

/// A producer that has sent all it may have in flight sends nothing more until answered: the
/// flusher must not wait for the interval (an hour here) or for `flush_bytes` (64 MiB) when
/// appends have stopped and durable answers wait. Before, this answer waited for the interval
/// and gave up after the durable timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_answer_does_not_wait_for_the_interval_once_appends_stop() {
    let base = tempfile::tempdir().unwrap();
    let engines = Engines::embedded(base.path());
    let mut config = engines.config(&base.path().join("data"));
    let remote = config.remote.as_mut().unwrap();
    remote.flush_interval = Duration::from_secs(3600);
    remote.flush_bytes = 64 << 20;
    remote.durable_timeout = Duration::from_secs(30);
    let agent = RunningAgent::start(config).await;
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        send(&agent, support::idempotent_batch(7, 0, 0, 3)),
    )
    .await
    .expect("the durable answer waited for the flush interval");
    assert_eq!(answer, (ErrorCode::None, 0, Durability::ObjectStore));
    agent.stop().await;
}

/// Local disk only: the answer says durable meant fsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_object_storage_durable_means_local_fsync() {
    let base = tempfile::tempdir().unwrap();
    let agent = RunningAgent::start(AgentConfig::new(base.path()).topic("t", PARTITIONS)).await;
    let (code, _, durability) = send(&agent, support::idempotent_batch(1, 0, 0, 1)).await;
    assert_eq!(
        (code, durability),
        (ErrorCode::None, Durability::LocalFsync)
    );
    agent.stop().await;
}

/// Bad URLs and unreachable engines stop the agent at start with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_unreachable_engines_are_refused_at_start() {
    let base = tempfile::tempdir().unwrap();
    let open = |metadata: &str, objects: &str| {
        let config =
            AgentConfig::new(base.path().join("data")).remote(RemoteConfig::new(metadata, objects));
        async move {
            streamhouse_agent::Agent::open(config)
                .await
                .expect_err("refused")
                .to_string()
        }
    };
    let sqlite = format!("sqlite://{}/meta.db", base.path().display());
    let files = format!("file://{}/objects", base.path().display());
    let error = open("mysql://nope", &files).await;
    assert!(
        error.contains("metadata store") && error.contains("mysql://nope"),
        "{error}"
    );
    let error = open(&sqlite, "ftp://nope").await;
    assert!(error.contains("object storage ftp://nope"), "{error}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = open(&format!("postgres://u:secret@127.0.0.1:{port}/db"), &files).await;
    assert!(error.contains("unreachable"), "{error}");
    assert!(!error.contains("secret"), "no password in errors: {error}");
    // A file:// directory the agent cannot write.
    let error = open(&sqlite, "file:///proc/streamhouse-objects").await;
    assert!(error.contains("object storage"), "{error}");
}

/// A data directory written without object storage, then opened with it: the records already
/// there are uploaded at start (within the flush interval, with no new appends), so the disk
/// can be lost right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_before_object_storage_was_configured_are_uploaded_at_start() {
    let base = tempfile::tempdir().unwrap();
    let engines = Engines::embedded(base.path());
    let data = base.path().join("data");
    let local = RunningAgent::start(AgentConfig::new(&data).topic("t", PARTITIONS)).await;
    let acked = produce(&local, 0, 500).await;
    local.stop().await;

    let agent = RunningAgent::start(engines.config(&data)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while agent.agent.remote_stats().unwrap().commits == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tail was never uploaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Uploaded by the flusher, not by the shutdown's last flush: kill the disk without one.
    let committed = agent.agent.remote_stats().unwrap();
    assert!(committed.bytes_written > 0);
    drop(agent); // no shutdown
    std::fs::remove_dir_all(&data).unwrap();
    let agent = RunningAgent::start(engines.config(&data)).await;
    check(&agent, &acked).await;
    agent.stop().await;
}

/// Two agents, each with its own disk, pointed at the same store and topic (a configuration
/// error the next issue's leases prevent): the second writer's commit conflicts, and its
/// partition is fenced instead of committing offsets the first already used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_to_a_partition_is_fenced_not_merged() {
    let base = tempfile::tempdir().unwrap();
    let engines = Engines::embedded(base.path());
    let first = RunningAgent::start(engines.config(&base.path().join("a"))).await;
    let second = RunningAgent::start(engines.config(&base.path().join("b"))).await;
    let batch = |id| support::idempotent_batch(id, 0, 0, 3);
    assert_eq!(send(&first, batch(1)).await.0, ErrorCode::None);
    let (code, _, _) = send(&second, batch(2)).await;
    assert_eq!(code, ErrorCode::NotLeader, "the second writer is refused");
    // Fenced: later batches are refused at once.
    let (code, _, _) = send(&second, support::idempotent_batch(3, 0, 0, 1)).await;
    assert_ne!(code, ErrorCode::None);
    // What the fenced writer holds past the committed offsets is never served.
    let fetch = streamhouse_proto::v1::FetchRequest {
        topic: "t".into(),
        partition: 1,
        offset: 0,
        ..Default::default()
    };
    match second
        .agent
        .service()
        .oneshot(Request::new(RequestMessage::Fetch(fetch)))
        .await
        .unwrap()
    {
        Response::Fetch(r) => {
            assert_eq!(ErrorCode::from_wire(r.error_code), ErrorCode::NotLeader);
            assert!(r.batches.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // The first writer goes on, and only its records are committed.
    assert_eq!(
        send(&first, support::idempotent_batch(1, 0, 3, 2)).await.0,
        ErrorCode::None
    );
    second.agent.shutdown().await;
    first.stop().await;
    let reader = RunningAgent::start(engines.config(&base.path().join("c"))).await;
    let records = reader.read(Kind::Grpc, "t", 1).await;
    assert_eq!(
        records.len(),
        5,
        "the first writer's 3 + 2 records, nothing of the second"
    );
    reader.stop().await;
}

/// Retention by bytes: the oldest committed ranges past the bound leave the index, their
/// objects are deleted once nothing points into them, and fetches below the new log start
/// answer OFFSET_OUT_OF_RANGE — also on an agent rebuilt from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_the_oldest_ranges_and_their_objects() {
    use streamhouse_proto::v1::{AdminRequest, AlterTopic, admin_request::Action};
    let base = tempfile::tempdir().unwrap();
    let engines = Engines::embedded(base.path());
    let data = base.path().join("data");
    let config = |data: &std::path::Path| {
        let mut config = engines.config(data);
        if let Some(remote) = &mut config.remote {
            remote.retention_check = Duration::from_millis(50);
        }
        config
    };
    let agent = RunningAgent::start(config(&data)).await;
    // Ten committed objects of one batch each for partition 1.
    for i in 0..10 {
        assert_eq!(
            send(&agent, support::idempotent_batch(9, 0, i * 5, 5))
                .await
                .0,
            ErrorCode::None
        );
    }
    let one_batch = support::idempotent_batch(9, 0, 0, 5).len() as i64;
    let admin = Request::new(RequestMessage::Admin(AdminRequest {
        action: Some(Action::AlterTopic(AlterTopic {
            name: "t".into(),
            retention_ms: 0,
            retention_bytes: 3 * one_batch,
        })),
    }));
    match agent.agent.service().oneshot(admin).await.unwrap() {
        Response::Admin(r) => assert_eq!(ErrorCode::from_wire(r.error_code), ErrorCode::None),
        other => panic!("{other:?}"),
    }
    let fetch = |offset| {
        let agent = &agent;
        async move {
            let r = fetch_response(agent, offset).await;
            (ErrorCode::from_wire(r.error_code), r.log_start_offset)
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // The log start moves at the store's commit; the objects are deleted right after it.
    while fetch(0).await.0 != ErrorCode::OffsetOutOfRange
        || agent.agent.remote_stats().unwrap().objects_deleted < 7
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Three batches of bytes are kept: offsets 35..50.
    assert_eq!(fetch(35).await, (ErrorCode::None, 35));
    assert_eq!(fetch(30).await.0, ErrorCode::OffsetOutOfRange);
    assert_eq!(agent.agent.remote_stats().unwrap().objects_deleted, 7);
    agent.stop().await;

    std::fs::remove_dir_all(&data).unwrap();
    let agent = RunningAgent::start(config(&data)).await;
    let fetch = |offset| {
        let agent = &agent;
        async move {
            let (code, batches, _) = fetch_one(agent, offset).await;
            (code, batches)
        }
    };
    assert_eq!(fetch(0).await.0, ErrorCode::OffsetOutOfRange);
    assert_eq!(fetch(35).await, (ErrorCode::None, 3));
    agent.stop().await;
}

/// Fetch `offset` of partition 1 straight from the agent.
async fn fetch_response(agent: &RunningAgent, offset: i64) -> streamhouse_proto::v1::FetchResponse {
    let request = Request::new(RequestMessage::Fetch(streamhouse_proto::v1::FetchRequest {
        topic: "t".into(),
        partition: 1,
        offset,
        ..Default::default()
    }));
    match agent.agent.service().oneshot(request).await.unwrap() {
        Response::Fetch(r) => r,
        other => panic!("{other:?}"),
    }
}

/// Fetch `offset` of partition 1 straight from the agent: (code, batches, message).
async fn fetch_one(agent: &RunningAgent, offset: i64) -> (ErrorCode, usize, String) {
    let r = fetch_response(agent, offset).await;
    (
        ErrorCode::from_wire(r.error_code),
        r.batches.len(),
        r.error_message,
    )
}

/// Outside review: a damaged byte in an older local segment (recovery checks only headers
/// there) made the partition unreadable while its object was intact. The local copy is a
/// cache: the committed copy is served instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_local_copy_is_served_from_objects() {
    let base = tempfile::tempdir().unwrap();
    let engines = Engines::embedded(base.path());
    let data = base.path().join("data");
    let config = || {
        let mut config = engines.config(&data);
        config.segment_bytes = 4096;
        config
    };
    let agent = RunningAgent::start(config()).await;
    for i in 0..20 {
        assert_eq!(
            send(&agent, support::idempotent_batch(5, 0, i * 20, 20))
                .await
                .0,
            ErrorCode::None
        );
    }
    agent.stop().await;
    // Flip a byte in the records of the first segment's first batch.
    let segment = data.join("t-1").join("00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[100] ^= 0xFF;
    std::fs::write(&segment, bytes).unwrap();
    let agent = RunningAgent::start(config()).await;
    let (code, batches, message) = fetch_one(&agent, 0).await;
    assert_eq!((code, message.as_str()), (ErrorCode::None, ""));
    assert!(batches > 0);
    assert_eq!(agent.read(Kind::Grpc, "t", 1).await.len(), 400);
    agent.stop().await;
}

/// Outside review: an index with a hole (an edited or damaged store) was served as if the
/// records after it were the ones asked for, and a range pointing into another partition's
/// bytes was served as this partition's records. Both are CORRUPT_BATCH now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_that_does_not_match_its_objects_is_refused_not_served() {
    let base = tempfile::tempdir().unwrap();
    let engines = Engines::embedded(base.path());
    let data = base.path().join("data");
    let agent = RunningAgent::start(engines.config(&data)).await;
    for i in 0..3 {
        send(&agent, support::idempotent_batch(6, 0, i * 5, 5)).await;
    }
    agent.stop().await;
    std::fs::remove_dir_all(&data).unwrap();
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&engines.metadata).await.unwrap();
    // A hole: the middle range of partition 1 is gone.
    sqlx::query("DELETE FROM sh_index WHERE partition_id = 1 AND first_offset = 5")
        .execute(&db)
        .await
        .unwrap();
    let agent = RunningAgent::start(engines.config(&data)).await;
    assert_eq!(
        fetch_one(&agent, 0).await.0,
        ErrorCode::None,
        "before the hole"
    );
    let (code, _, message) = fetch_one(&agent, 5).await;
    assert_eq!(code, ErrorCode::CorruptBatch, "{message}");
    assert_eq!(
        fetch_one(&agent, 10).await.0,
        ErrorCode::None,
        "after the hole"
    );
    agent.stop().await;
    // A range claiming other offsets than its batches hold.
    sqlx::query("UPDATE sh_index SET first_offset = 3, next_offset = 8 WHERE partition_id = 1 AND first_offset = 0")
        .execute(&db)
        .await
        .unwrap();
    std::fs::remove_dir_all(&data).unwrap();
    let agent = RunningAgent::start(engines.config(&data)).await;
    let (code, _, message) = fetch_one(&agent, 3).await;
    assert_eq!(code, ErrorCode::CorruptBatch, "{message}");
    agent.stop().await;
    db.close().await;
}

/// Outside review: a range past the end of a (truncated) object answered UNAVAILABLE, which
/// a client retries forever. It is damage: CORRUPT_BATCH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_object_is_corrupt_not_unavailable() {
    let base = tempfile::tempdir().unwrap();
    let engines = Engines::embedded(base.path());
    let data = base.path().join("data");
    let agent = RunningAgent::start(engines.config(&data)).await;
    send(&agent, support::idempotent_batch(7, 0, 0, 50)).await;
    agent.stop().await;
    std::fs::remove_dir_all(&data).unwrap();
    // Every object cut to 10 bytes.
    let mut dirs = vec![base.path().join("objects")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(10)
                    .unwrap();
            }
        }
    }
    let agent = RunningAgent::start(engines.config(&data)).await;
    let (code, _, message) = fetch_one(&agent, 0).await;
    assert_eq!(code, ErrorCode::CorruptBatch, "{message}");
    assert!(
        !message.contains(base.path().to_str().unwrap()),
        "no server paths: {message}"
    );
    agent.stop().await;
}

/// An agent with object storage and no configured topic: it learns topics from the store.
fn bare(engines: &Engines, data: &std::path::Path) -> AgentConfig {
    let mut config = engines.config(data);
    config.topics.clear();
    config
}

async fn admin(
    agent: &RunningAgent,
    action: streamhouse_proto::v1::admin_request::Action,
) -> ErrorCode {
    let request = Request::new(RequestMessage::Admin(streamhouse_proto::v1::AdminRequest {
        action: Some(action),
    }));
    match agent.agent.service().oneshot(request).await.unwrap() {
        Response::Admin(r) => ErrorCode::from_wire(r.error_code),
        other => panic!("{other:?}"),
    }
}

/// Outside review: a topic deleted through one agent came back when another agent restarted
/// on its old data directory (the local files were taken for data from before object
/// storage, adopted and uploaded again). Files of a topic the store no longer has are set
/// aside; a topic created again under the same name never takes the old one's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topic_does_not_come_back_from_a_stale_data_directory() {
    use streamhouse_proto::v1::{CreateTopic, DeleteTopic, admin_request::Action};
    let base = tempfile::tempdir().unwrap();
    let engines = Engines::embedded(base.path());
    let (a, b, d) = (
        base.path().join("a"),
        base.path().join("b"),
        base.path().join("d"),
    );
    // Two agents with the topic on their disks, one after the other: `d` holds offsets 0..3
    // of partition 1, as the topic created again below will (with other records).
    for data in [&d, &a] {
        let agent = RunningAgent::start(engines.config(data)).await;
        for i in 0..3 {
            send(&agent, support::idempotent_batch(11, 0, i, 1)).await;
        }
        agent.stop().await;
    }

    let other = RunningAgent::start(bare(&engines, &b)).await;
    let delete = Action::DeleteTopic(DeleteTopic { name: "t".into() });
    assert_eq!(admin(&other, delete).await, ErrorCode::None);
    assert!(
        other.agent.remote_stats().unwrap().objects_deleted > 0,
        "the deleted topic's objects are deleted too"
    );
    other.stop().await;
    let agent = RunningAgent::start(bare(&engines, &a)).await;
    assert_eq!(
        agent.agent.next_offset("t", 1),
        None,
        "the deleted topic stays deleted"
    );
    agent.stop().await;
    assert!(a.join("quarantine").exists(), "its files are set aside");

    // Created again, with new records: the other stale copy is not the new topic's.
    let other = RunningAgent::start(bare(&engines, &b)).await;
    let create = Action::CreateTopic(CreateTopic {
        name: "t".into(),
        partitions: PARTITIONS,
        ..Default::default()
    });
    assert_eq!(admin(&other, create).await, ErrorCode::None);
    send(&other, support::idempotent_batch(12, 0, 0, 2)).await;
    other.stop().await;
    let agent = RunningAgent::start(bare(&engines, &d)).await;
    let records = agent.read(Kind::Grpc, "t", 1).await;
    assert_eq!(records.len(), 2, "only the new topic's records");
    agent.stop().await;
}

/// Outside review: a create that failed part-way (it ran out of file descriptors at
/// partition 6,659 of 10,000) left the topic in the store and its directories on disk, and the
/// agent then failed at every start. Nothing of a failed create stays behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_fails_part_way_leaves_nothing_behind() {
    use streamhouse_proto::v1::{CreateTopic, admin_request::Action};
    let base = tempfile::tempdir().unwrap();
    let engines = Engines::embedded(base.path());
    let data = base.path().join("data");
    let agent = RunningAgent::start(bare(&engines, &data)).await;
    // Partition 2's directory cannot be created: a file has its name.
    std::fs::write(data.join("half-2"), b"in the way").unwrap();
    let create = Action::CreateTopic(CreateTopic {
        name: "half".into(),
        partitions: 4,
        ..Default::default()
    });
    assert_eq!(admin(&agent, create.clone()).await, ErrorCode::Internal);
    assert!(!data.join("half-0").exists() && !data.join("half-1").exists());
    assert_eq!(agent.agent.next_offset("half", 0), None);
    agent.stop().await;
    // The store does not have it: the agent starts, and the topic can be created once the
    // obstacle is gone.
    std::fs::remove_file(data.join("half-2")).unwrap();
    let agent = RunningAgent::start(bare(&engines, &data)).await;
    assert_eq!(agent.agent.next_offset("half", 0), None);
    assert_eq!(admin(&agent, create).await, ErrorCode::None);
    assert_eq!(agent.agent.next_offset("half", 3), Some(0));
    agent.stop().await;
}
