//! An agent group under fire, with real processes: three agents share a metadata store and
//! object storage and lead the partitions of one topic by lease, while a producer
//! (acks=durable, idempotence on) streams records through `Bootstrap` or the store's own
//! discovery. Agents are SIGKILLed and restarted (some on an empty data directory), paused with
//! SIGSTOP for longer than the lease time (they must be fenced: their partitions move, their
//! late commits are refused), and cut off from the store (their answers from it lost). At the
//! end every partition is read back from its leader and the history checker must find nothing
//! acknowledged lost, duplicated, reordered or moved.
//!
//! The failover time of a partition is measured from the fault to the acknowledgement of its
//! first record sent after the fault (what a client sees).
//!
//! CI runs bounded versions. The full run of issue 14 — 300,000 records, 12 partitions, 10
//! kills (5 wiping the data directory), 3 pauses and 3 store cuts, through each discovery, on
//! PostgreSQL and the S3 server — is one command (with `eval "$(scripts/services start)"` run
//! first):
//!
//! ```text
//! cargo test --release -p streamhouse-cli --all-features --test group -- --ignored --nocapture
//! ```

mod support;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use streamhouse::discovery::{Bootstrap, Discovery};
use streamhouse::history::{History, Outcome, RecordId};
use streamhouse::producer::{Acks, Producer, ProducerRecord};
use streamhouse::transport::{Endpoint, Transport};
use streamhouse_grpc::GrpcTransport;
use streamhouse_metastore::{MetadataStore, StoreDiscovery};
use support::AgentProcess;
use support::proxy::{Jitter, TcpProxy};
use tokio::time::Instant;

const TOPIC: &str = "group";
const GROUP: &str = "chaos";
const AGENTS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Storage {
    /// SQLite and `file://` objects.
    Embedded,
    /// PostgreSQL and the S3 server; each agent reaches PostgreSQL through a proxy of its own
    /// (so its link to the store can be cut).
    Real,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Discover {
    Bootstrap,
    Store,
}

struct Plan {
    storage: Storage,
    discover: Discover,
    partitions: u32,
    records: u64,
    kills: usize,
    wipes: usize,
    pauses: usize,
    cuts: usize,
    ttl: Duration,
    duration: Duration,
    seed: u64,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill { wipe: bool },
    Pause,
    Cut,
}

/// One agent of the group: its data, its ports, its link to the store.
struct Member {
    id: u32,
    data: PathBuf,
    /// Its standard error, across restarts (outside the data directory, which kills wipe).
    log: PathBuf,
    grpc_port: u16,
    store_link: Option<TcpProxy>,
    process: Option<AgentProcess>,
}

/// `postgres://user@host:port/db` → `host:port`.
fn pg_addr(url: &str) -> SocketAddr {
    let rest = url.split_once('@').unwrap().1;
    rest.split_once('/').unwrap().0.parse().unwrap()
}

/// A group member's arguments: `--id`, the group, its lease time, the topic, the store.
fn agent_args(
    ttl: Duration,
    partitions: u32,
    id: u32,
    metadata: &str,
    objects: &str,
    s3: &[String],
) -> Vec<String> {
    let mut args = vec![
        "--id".to_owned(),
        id.to_string(),
        "--group".to_owned(),
        GROUP.to_owned(),
        "--lease-ttl".to_owned(),
        format!("{}ms", ttl.as_millis()),
        "--topic".to_owned(),
        format!("{TOPIC}:{partitions}"),
        "--metadata".to_owned(),
        metadata.to_owned(),
        "--objects".to_owned(),
        objects.to_owned(),
        "--flush-interval".to_owned(),
        "20ms".to_owned(),
    ];
    args.extend_from_slice(s3);
    args
}

/// A SQLite store and a `file://` object directory in a fresh temporary directory, with the
/// test topic of `partitions` partitions: (directory, metadata URL, objects URL, store).
async fn embedded_store(
    partitions: u32,
) -> (tempfile::TempDir, String, String, Arc<dyn MetadataStore>) {
    let base = tempfile::tempdir().unwrap();
    let metadata = format!("sqlite://{}/meta.db", base.path().display());
    let objects = format!("file://{}/objects", base.path().display());
    let store = streamhouse_metastore::open(&metadata).await.unwrap();
    store.ensure_topic(TOPIC, partitions).await.unwrap();
    (base, metadata, objects, store)
}

/// Polls the store until every partition has a live lease holder (bounded).
async fn until_all_led(store: &dyn MetadataStore, partitions: u32, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let view = store.group(GROUP).await.unwrap();
        let led = (0..partitions)
            .filter(|p| view.holder(TOPIC, *p).is_some())
            .count();
        if led == partitions as usize {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {led} of {partitions} partitions led after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A partition's records, read from its current leader; a leader that refuses (it is still
/// opening a partition it just took) is asked again, with the leader looked up afresh, for at
/// most 30 s.
async fn read_partition(
    store: &dyn MetadataStore,
    partition: u32,
) -> Vec<streamhouse::batch::Record> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let transport = GrpcTransport::default();
    loop {
        let view = store.group(GROUP).await.unwrap();
        let leader = view.holder(TOPIC, partition).map(|l| l.id.agent_id);
        let endpoint = leader.and_then(|leader| {
            view.live()
                .find(|a| a.agent_id == leader)?
                .endpoints
                .iter()
                .find(|e| e.starts_with("grpc://"))?
                .parse::<Endpoint>()
                .ok()
        });
        let result = match endpoint {
            Some(endpoint) => match transport.connect(&endpoint).await {
                Ok(connection) => {
                    streamhouse::reader::PartitionReader::new(connection, TOPIC, partition, 0)
                        .read_to_end()
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            },
            None => Err("no live leader".to_owned()),
        };
        match result {
            Ok(records) => return records,
            Err(e) => assert!(
                Instant::now() < deadline,
                "reading partition {partition} from agent {leader:?}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Who held each partition (agent, epoch) at a moment, as the watcher sampled it.
type Samples = Vec<(Instant, Vec<Option<(u32, i64)>>)>;

/// Per partition, when each acknowledged record was sent and when it was acknowledged.
type AckTimes = BTreeMap<u32, Vec<(Instant, Instant)>>;

/// Records a delivery's outcome, and when an acknowledged one was acknowledged.
#[allow(clippy::too_many_arguments)]
fn settle(
    acks: &Mutex<AckTimes>,
    history: &mut History,
    id: RecordId,
    partition: u32,
    sent: Instant,
    result: &Result<streamhouse::producer::RecordMetadata, streamhouse::producer::ProduceError>,
    at: Instant,
) {
    if let Ok(meta) = result {
        acks.lock()
            .unwrap()
            .entry(meta.partition)
            .or_default()
            .push((sent, at));
    }
    history.record(id, Outcome::of(partition, result));
}

/// What one run measured.
struct Summary {
    failovers: Vec<Duration>,
    takeovers: Vec<Duration>,
    fenced_pauses: usize,
}

async fn group_chaos(plan: Plan) -> Summary {
    if let Some(path) = std::env::var_os("PRODUCER_LOG") {
        // The producer's own account (debug), to read next to the agents' (AGENT_STDERR).
        let file = std::fs::File::create(path).unwrap();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("streamhouse=trace")
            .with_ansi(false)
            .with_writer(Mutex::new(file))
            .try_init();
    }
    let base = tempfile::tempdir().unwrap();
    let (metadata, objects, s3) = match plan.storage {
        Storage::Embedded => (
            format!("sqlite://{}/meta.db", base.path().display()),
            format!("file://{}/objects", base.path().display()),
            Vec::new(),
        ),
        Storage::Real => {
            let metadata = streamhouse_metastore::testing::fresh_postgres().await;
            let (endpoint, bucket) = streamhouse_metastore::testing::s3();
            let prefix = metadata.rsplit('/').next().unwrap().to_owned();
            let s3 = [
                "--s3-endpoint",
                &endpoint,
                "--s3-region",
                "us-east-1",
                "--s3-access-key-id",
                "test",
                "--s3-secret-access-key",
                "test",
            ]
            .map(String::from)
            .to_vec();
            (metadata, format!("s3://{bucket}/{prefix}"), s3)
        }
    };
    let store = streamhouse_metastore::open(&metadata).await.unwrap();
    store.ensure_topic(TOPIC, plan.partitions).await.unwrap();

    // Start the agents, each (on PostgreSQL) through its own proxy to the store.
    let mut members = Vec::new();
    for id in 1..=AGENTS {
        let data = base.path().join(format!("agent-{id}"));
        let (link, url) = match plan.storage {
            Storage::Real => {
                let proxy = TcpProxy::start(
                    pg_addr(&metadata),
                    Duration::ZERO,
                    plan.seed + u64::from(id),
                )
                .await;
                let url =
                    metadata.replace(&pg_addr(&metadata).to_string(), &proxy.addr.to_string());
                (Some(proxy), url)
            }
            Storage::Embedded => (None, metadata.clone()),
        };
        let args = agent_args(plan.ttl, plan.partitions, id, &url, &objects, &s3);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = base.path().join(format!("agent-{id}.log"));
        let process = AgentProcess::start_logged(&data, 0, &args, &log);
        members.push(Member {
            id,
            data,
            log,
            grpc_port: process.port,
            store_link: link,
            process: Some(process),
        });
    }
    let args_of: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let url = match &m.store_link {
                Some(proxy) => {
                    metadata.replace(&pg_addr(&metadata).to_string(), &proxy.addr.to_string())
                }
                None => metadata.clone(),
            };
            agent_args(plan.ttl, plan.partitions, m.id, &url, &objects, &s3)
        })
        .collect();
    until_all_led(store.as_ref(), plan.partitions, Duration::from_secs(30)).await;
    let seeds: Vec<Endpoint> = members
        .iter()
        .map(|m| format!("grpc://127.0.0.1:{}", m.grpc_port).parse().unwrap())
        .collect();

    let discovery: Arc<dyn Discovery> = match plan.discover {
        Discover::Bootstrap => Arc::new(
            Bootstrap::new(GrpcTransport::default(), seeds.clone())
                .timeout(Duration::from_millis(500)),
        ),
        Discover::Store => Arc::new(StoreDiscovery::new(store.clone(), GROUP, "grpc")),
    };
    let producer = Producer::builder(GrpcTransport::default(), discovery)
        .acks(Acks::Durable)
        .idempotence(true)
        .batch_size(16 * 1024)
        .linger(Duration::from_millis(2))
        .request_timeout(Duration::from_secs(1))
        .delivery_timeout(Duration::from_secs(120))
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build()
        .unwrap();

    // Who held what (agent, epoch), sampled every 50 ms.
    let samples: Arc<Mutex<Samples>> = Arc::default();
    let watcher = {
        let (store, samples, partitions) = (store.clone(), samples.clone(), plan.partitions);
        tokio::spawn(async move {
            loop {
                if let Ok(view) = store.group(GROUP).await {
                    let holders = (0..partitions)
                        .map(|p| view.holder(TOPIC, p).map(|l| (l.id.agent_id, l.id.epoch)))
                        .collect();
                    samples.lock().unwrap().push((Instant::now(), holders));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // The faults, at evenly spread times, one after another.
    let mut schedule: Vec<Fault> = Vec::new();
    for k in 0..plan.kills {
        schedule.push(Fault::Kill {
            wipe: k * plan.wipes / plan.kills.max(1) != (k + 1) * plan.wipes / plan.kills.max(1),
        });
    }
    schedule.extend(std::iter::repeat_n(Fault::Pause, plan.pauses));
    schedule.extend(std::iter::repeat_n(Fault::Cut, plan.cuts));
    let jitter = Jitter::new(plan.seed);
    // Interleave the kinds: a seeded shuffle.
    for i in (1..schedule.len()).rev() {
        let j = (jitter.unit() * (i + 1) as f64) as usize % (i + 1);
        schedule.swap(i, j);
    }
    let start = Instant::now();
    let events = schedule.len();
    let (ttl, duration) = (plan.ttl, plan.duration);
    let fault_task = tokio::spawn(async move {
        let mut done: Vec<(Instant, u32, Fault)> = Vec::new();
        for (e, fault) in schedule.into_iter().enumerate() {
            let at = start + duration.mul_f64((e + 1) as f64 / (events + 1) as f64);
            tokio::time::sleep_until(at.max(Instant::now())).await;
            let victim = (jitter.unit() * f64::from(AGENTS)) as usize % AGENTS as usize;
            let member = &mut members[victim];
            let now = Instant::now();
            match fault {
                Fault::Kill { wipe } => {
                    let old = member.process.take().unwrap();
                    let (data, port) = (member.data.clone(), member.grpc_port);
                    let log = member.log.clone();
                    let args = args_of[victim].clone();
                    let down =
                        Duration::from_millis(100) + jitter.delay(Duration::from_millis(400));
                    member.process = Some(
                        tokio::task::spawn_blocking(move || {
                            old.kill();
                            if wipe {
                                std::fs::remove_dir_all(&data).unwrap();
                            }
                            std::thread::sleep(down);
                            let args: Vec<&str> = args.iter().map(String::as_str).collect();
                            AgentProcess::start_logged(&data, port, &args, &log)
                        })
                        .await
                        .unwrap(),
                    );
                }
                Fault::Pause => {
                    let process = member.process.as_ref().unwrap();
                    process.signal("STOP");
                    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
                    process.signal("CONT");
                }
                Fault::Cut => {
                    // The store link goes dark: requests still reach the store (and may take
                    // effect), answers are lost; then every connection is cut.
                    let link = member.store_link.as_ref().expect("a store link to cut");
                    link.mute_answers();
                    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
                    link.cut();
                }
            }
            done.push((now, member.id, fault));
        }
        (members, done)
    });

    // Sends at an even rate; each acknowledgement is timed.
    let acks: Arc<Mutex<AckTimes>> = Arc::default();
    let mut pending = FuturesUnordered::new();
    let mut history = History::new();
    for seq in 0..plan.records {
        let due = start + plan.duration.mul_f64(seq as f64 / plan.records as f64);
        if due > Instant::now() + Duration::from_millis(2) {
            tokio::time::sleep_until(due).await;
        }
        let id = RecordId::new(0, seq);
        let key = format!("k{}", seq % 1009);
        let value = id.value(40);
        let record = ProducerRecord::new(TOPIC, &value).key(key.as_bytes());
        let delivery = producer.send(record).await.unwrap();
        let sent = Instant::now();
        let partition = delivery.partition();
        pending.push(async move { (id, partition, sent, delivery.await, Instant::now()) });
        while let Some(Some((id, partition, sent, result, at))) =
            futures_util::FutureExt::now_or_never(pending.next())
        {
            settle(&acks, &mut history, id, partition, sent, &result, at);
        }
    }
    while let Some((id, partition, sent, result, at)) = pending.next().await {
        settle(&acks, &mut history, id, partition, sent, &result, at);
    }
    let stats = producer.stats();
    producer.close(Duration::from_secs(10)).await.unwrap();
    drop(producer);
    let (members, faults) = fault_task.await.unwrap();
    watcher.abort();

    // Read every partition back from its leader (the last rebalances may still be settling: a
    // lease just taken is served once the partition is open, so a refusal is retried).
    let mut logs = Vec::new();
    for partition in 0..plan.partitions {
        logs.push((partition, read_partition(store.as_ref(), partition).await));
    }
    let report = history.check(logs);
    let (acked, failed, unknown) = history.outcomes();
    // Commits the store refused because the lease had moved on, as the agents reported them.
    let mut fenced_commits = 0;
    for member in &members {
        let log = std::fs::read_to_string(&member.log).unwrap_or_default();
        fenced_commits += log
            .lines()
            .filter(|l| l.contains("lost the partition's lease"))
            .count();
        if let Some(path) = std::env::var_os("AGENT_STDERR") {
            use std::io::Write;
            let mut all = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            writeln!(all, "==== agent {} ====\n{log}", member.id).unwrap();
        }
    }

    // Failover: per fault, per partition its victim held just before it, the time to the
    // acknowledgement of that partition's first record sent after the fault.
    let samples = samples.lock().unwrap();
    let acks = acks.lock().unwrap();
    let mut failovers = Vec::new();
    let mut takeovers = Vec::new();
    let mut fenced_pauses = 0;
    for (at, victim, fault) in &faults {
        let Some((_, holders)) = samples.iter().rev().find(|(t, _)| t < at) else {
            continue;
        };
        let held: Vec<u32> = (0..plan.partitions)
            .filter(|p| holders[*p as usize].is_some_and(|(a, _)| a == *victim))
            .collect();
        if matches!(fault, Fault::Pause) {
            // Fenced: during the pause some of its partitions went to another agent.
            let moved = samples.iter().any(|(t, hs)| {
                t > at
                    && *t < *at + ttl + Duration::from_secs(1)
                    && held
                        .iter()
                        .any(|p| hs[*p as usize].is_some_and(|(h, _)| h != *victim))
            });
            fenced_pauses += usize::from(moved);
        }
        if !matches!(fault, Fault::Kill { .. }) {
            // In the store: from the fault to another agent taking the lease. (A killed
            // agent restarts under its own id and takes its own leases back, unseen here.)
            for p in &held {
                if let Some((t, _)) = samples
                    .iter()
                    .find(|(t, hs)| t > at && hs[*p as usize].is_some_and(|(h, _)| h != *victim))
                {
                    takeovers.push(*t - *at);
                }
            }
        }
        for p in held {
            if let Some((_, acked_at)) = acks.get(&p).and_then(|list| {
                list.iter()
                    .filter(|(sent, _)| sent >= at)
                    .min_by_key(|(s, _)| *s)
            }) {
                failovers.push(*acked_at - *at);
                if std::env::var_os("GROUP_CHAOS_DETAIL").is_some() {
                    println!(
                        "  {fault:?} of agent {victim} at {:?}: partition {p} acked again after {:?}",
                        *at - start,
                        *acked_at - *at
                    );
                }
            }
        }
    }
    failovers.sort();
    takeovers.sort();
    let pct = |list: &[Duration], q: f64| {
        list.get(((list.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    let agents_stats = members.len();
    println!(
        "group chaos ({:?}, {:?} discovery, {} agents, {} partitions, lease {:?}): {} faults \
         ({} kills of which {} wiped, {} pauses, {} store cuts); {} records: {acked} acked, \
         {failed} failed, {unknown} unknown; {} requests, {} request retries, {} batch \
         retries, {} duplicate answers, {} reroutes to a leader named in a NOT_LEADER answer; \
         {fenced_commits} commits fenced; failover seen by the producer (fault → first ack of a record sent after it) over {} \
         partitions: p50 {:?}, p99 {:?}, max {:?}; lease taken over by another agent (pauses, \
         store cuts) over {} partitions: p50 {:?}, p99 {:?}, max {:?}; pauses fenced: \
         {fenced_pauses}/{}\n{report}",
        plan.storage,
        plan.discover,
        agents_stats,
        plan.partitions,
        plan.ttl,
        faults.len(),
        plan.kills,
        plan.wipes,
        plan.pauses,
        plan.cuts,
        plan.records,
        stats.requests,
        stats.request_retries,
        stats.retries,
        stats.duplicates,
        stats.reroutes,
        failovers.len(),
        pct(&failovers, 0.5),
        pct(&failovers, 0.99),
        failovers.last().copied().unwrap_or_default(),
        takeovers.len(),
        pct(&takeovers, 0.5),
        pct(&takeovers, 0.99),
        takeovers.last().copied().unwrap_or_default(),
        plan.pauses,
    );
    assert_eq!(
        faults.len(),
        plan.kills + plan.pauses + plan.cuts,
        "every fault happened"
    );
    assert!(report.is_clean(), "history violations:\n{report}");
    assert_eq!(acked + failed + unknown, plan.records);
    assert_eq!(
        failed + unknown,
        0,
        "every record was acknowledged within the delivery timeout"
    );
    for member in members {
        if let Some(process) = member.process {
            assert!(
                process.terminate(),
                "agent {} exits cleanly on SIGTERM",
                member.id
            );
        }
    }
    Summary {
        failovers,
        takeovers,
        fenced_pauses,
    }
}

/// Bounded (CI): 3 agents on SQLite and files, 30,000 records, 2 kills (1 wiping), through
/// Bootstrap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_on_sqlite_survives_kills() {
    group_chaos(Plan {
        storage: Storage::Embedded,
        discover: Discover::Bootstrap,
        partitions: 6,
        records: 30_000,
        kills: 2,
        wipes: 1,
        pauses: 0,
        cuts: 0,
        ttl: Duration::from_secs(2),
        duration: Duration::from_secs(8),
        seed: 41,
    })
    .await;
}

/// Bounded (CI): 3 agents on PostgreSQL and S3, through the store's discovery, with a kill, a
/// pause past the lease time and a store cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_on_postgres_survives_a_kill_a_pause_and_a_store_cut() {
    let summary = group_chaos(Plan {
        storage: Storage::Real,
        discover: Discover::Store,
        partitions: 6,
        records: 30_000,
        kills: 1,
        wipes: 1,
        pauses: 1,
        cuts: 1,
        ttl: Duration::from_secs(2),
        duration: Duration::from_secs(12),
        seed: 42,
    })
    .await;
    assert_eq!(
        summary.fenced_pauses, 1,
        "the paused leader lost its partitions"
    );
}

/// The failover run of issue 14, through each discovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 300,000 records, 10 kills, 3 pauses, 3 store cuts per discovery"]
async fn full_group_failover_run() {
    for (discover, seed) in [(Discover::Bootstrap, 51), (Discover::Store, 52)] {
        let ttl = Duration::from_secs(3);
        let summary = group_chaos(Plan {
            storage: Storage::Real,
            discover,
            partitions: 12,
            records: 300_000,
            kills: 10,
            wipes: 5,
            pauses: 3,
            cuts: 3,
            ttl,
            duration: Duration::from_secs(90),
            seed,
        })
        .await;
        assert_eq!(
            summary.fenced_pauses, 3,
            "every paused leader lost its partitions"
        );
        let p99 = summary.failovers
            [((summary.failovers.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)];
        let taken = summary.takeovers.last().copied().unwrap_or_default();
        println!(
            "failover p99 {p99:?} (goal: lease {ttl:?} + 1 s); slowest takeover in the store {taken:?}"
        );
    }
}

/// `streamhouse cluster status` against a group of two: both agents live, every partition led
/// by one of them with the leases split; and with its reader gone (`| head`) it still exits
/// cleanly (it panicked on the broken pipe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_shows_agents_leases_and_survives_a_closed_pipe() {
    let (base, metadata, objects, store) = embedded_store(4).await;
    let agents: Vec<AgentProcess> = (1..=2)
        .map(|id| {
            let args = agent_args(Duration::from_secs(2), 4, id, &metadata, &objects, &[]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            AgentProcess::start(&base.path().join(format!("agent-{id}")), 0, &args)
        })
        .collect();
    until_all_led(store.as_ref(), 4, Duration::from_secs(30)).await;
    let status = |stdout: std::process::Stdio| {
        std::process::Command::new(support::BIN)
            .args([
                "cluster",
                "status",
                "--metadata",
                &metadata,
                "--group",
                GROUP,
            ])
            .stdout(stdout)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = status(std::process::Stdio::piped())
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("group {GROUP}: 2 live agent(s) of 2 registered")),
        "{text}"
    );
    let leases: u32 = text
        .lines()
        .filter(|l| l.trim_start().starts_with(['1', '2']) && l.contains("live"))
        .map(|l| l.split_whitespace().nth(4).unwrap().parse::<u32>().unwrap())
        .sum();
    assert_eq!(leases, 4, "every partition's lease counted once:\n{text}");
    let led = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() > 2 && w[0] == TOPIC && w[1].parse::<u32>().is_ok())
        .filter(|w| matches!(w[2], "1" | "2"))
        .count();
    assert_eq!(led, 4, "every partition has a leader:\n{text}");

    // The reader closes the pipe before anything is written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = status(writer.into()).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("panicked"),
        "{stderr}"
    );
    for agent in agents {
        assert!(agent.terminate());
    }
}

/// Runs `streamhouse` to completion; (success, stderr).
fn run_cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(support::BIN)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Found by an outside review: a second agent with an id already in use (or the default id
/// twice) joined silently, both led every partition under one lease epoch, and acknowledged
/// records overlapped; an agent of another group on the same store led the first group's
/// partitions; a huge lease time panicked; `cluster status` created a store at a mistyped path
/// and described a group that does not exist with another group's leases. Each is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_refuses_a_second_agent_with_the_same_id_or_another_group() {
    let (base, metadata, objects, store) = embedded_store(2).await;
    let common = |group: &str, id: u32, ttl: &str| -> Vec<String> {
        [
            "--id",
            &id.to_string(),
            "--group",
            group,
            "--lease-ttl",
            ttl,
            "--metadata",
            &metadata,
            "--objects",
            &objects,
        ]
        .map(String::from)
        .to_vec()
    };
    let first_args = common(GROUP, 1, "1s");
    let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let first = AgentProcess::start(&base.path().join("a1"), 0, &first_args);
    until_all_led(store.as_ref(), 2, Duration::from_secs(30)).await;

    let data = base.path().join("a2");
    let agent = |extra: &[String]| {
        let mut args = vec![
            "agent".to_owned(),
            "--data".to_owned(),
            data.display().to_string(),
            "--grpc".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        args.extend_from_slice(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&args)
    };
    let (ok, stderr) = agent(&common(GROUP, 1, "1s"));
    assert!(!ok && stderr.contains("agent id 1 is in use"), "{stderr}");
    let (ok, stderr) = agent(&common("other", 2, "1s"));
    assert!(
        !ok && stderr.contains("already serves agent group [\"chaos\"]"),
        "{stderr}"
    );
    for ttl in ["1ms", "18446744073709551615s", "153722867280912931m"] {
        let (ok, stderr) = agent(&common(GROUP, 2, ttl));
        assert!(!ok && !stderr.contains("panicked"), "{ttl}: {stderr}");
    }

    let missing = format!("sqlite://{}/nothere.db", base.path().display());
    let (ok, stderr) = run_cli(&[
        "cluster",
        "status",
        "--metadata",
        &missing,
        "--group",
        GROUP,
    ]);
    assert!(!ok && stderr.contains("does not exist"), "{stderr}");
    assert!(!base.path().join("nothere.db").exists());
    let (ok, stderr) = run_cli(&[
        "cluster",
        "status",
        "--metadata",
        &metadata,
        "--group",
        "nope",
    ]);
    assert!(
        !ok && stderr.contains("no agent has registered in group \"nope\""),
        "{stderr}"
    );
    assert!(first.terminate());
}
