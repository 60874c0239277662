//! Real-process chaos, over gRPC and over QUIC: the agent runs as a child process and is
//! SIGKILLed and restarted on the same ports and data while a producer (acks=durable,
//! idempotence on) streams records through a loopback proxy that adds 0–50 ms of delay and
//! cuts the link. At the end every partition is read back and the history checker
//! ([`streamhouse::history`]) must find nothing lost, duplicated, reordered or moved.
//!
//! CI runs a bounded version (40,000 records, 3 kills, 5 cuts per transport). The full run —
//! 200,000 records, 10 kills, 20 cuts per transport — is one command:
//!
//! ```text
//! cargo test --release -p streamhouse-cli --test chaos -- --ignored --nocapture
//! ```

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use streamhouse::discovery::StaticDiscovery;
use streamhouse::history::{History, RecordId};
use streamhouse::producer::{Acks, Producer, ProducerRecord};
use streamhouse::reader::PartitionReader;
use streamhouse::transport::tls::ClientTls;
use streamhouse::transport::{Endpoint, Transport};
use streamhouse_grpc::GrpcTransport;
use streamhouse_quic::{QuicConfig, QuicTransport};
use support::AgentProcess;
use support::proxy::{Jitter, TcpProxy, UdpProxy};
use tokio::sync::mpsc;

const TOPIC: &str = "chaos";
const PARTITIONS: u32 = 4;
const MAX_DELAY: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Grpc,
    Quic,
}

struct Plan {
    kind: Kind,
    records: u64,
    kills: usize,
    cuts: usize,
    seed: u64,
    /// How long the sends are spread over.
    duration: Duration,
}

enum Fault {
    Kill,
    Cut,
}

enum Proxy {
    Tcp(TcpProxy),
    Udp(UdpProxy),
}

impl Proxy {
    fn addr(&self) -> SocketAddr {
        match self {
            Proxy::Tcp(p) => p.addr,
            Proxy::Udp(p) => p.addr,
        }
    }
    fn cuts(&self) -> u64 {
        match self {
            Proxy::Tcp(p) => p.cuts(),
            Proxy::Udp(p) => p.cuts(),
        }
    }
}

fn addr_of(url: &str) -> SocketAddr {
    url.split_once("://").unwrap().1.parse().unwrap()
}

/// The agent's arguments: the topic, and QUIC on `quic_port` with the dev certificate.
fn agent_args(certs: &Path, quic_port: u16) -> Vec<String> {
    vec![
        "--topic".into(),
        format!("{TOPIC}:{PARTITIONS}"),
        "--quic".into(),
        format!("127.0.0.1:{quic_port}"),
        "--dev-cert".into(),
        certs.display().to_string(),
    ]
}

fn start_agent(data: &Path, certs: &Path, grpc_port: u16, quic_port: u16) -> AgentProcess {
    let args = agent_args(certs, quic_port);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    AgentProcess::start(data, grpc_port, &args)
}

fn transport(kind: Kind, certs: &Path) -> Arc<dyn Transport> {
    match kind {
        Kind::Grpc => Arc::new(GrpcTransport::default()),
        Kind::Quic => {
            let tls = ClientTls::from_ca_file(&certs.join("cert.pem")).unwrap();
            // A short idle timeout, so a blackout longer than it really ends the connection.
            let mut config = QuicConfig::default();
            config.idle_timeout = Duration::from_millis(800);
            config.keep_alive = Duration::from_millis(200);
            Arc::new(QuicTransport::new(config, &tls).unwrap())
        }
    }
}

async fn chaos(plan: Plan) {
    let data = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let agent = start_agent(data.path(), certs.path(), 0, 0);
    let grpc = addr_of(agent.url_of("grpc"));
    let quic = addr_of(agent.url_of("quic"));
    let (scheme, proxy) = match plan.kind {
        Kind::Grpc => (
            "grpc",
            Proxy::Tcp(TcpProxy::start(grpc, MAX_DELAY, plan.seed).await),
        ),
        Kind::Quic => (
            "quic",
            Proxy::Udp(UdpProxy::start(quic, MAX_DELAY, plan.seed).await),
        ),
    };
    let proxy = Arc::new(proxy);
    let through_proxy: Endpoint = format!("{scheme}://{}", proxy.addr()).parse().unwrap();
    let direct: Endpoint = format!(
        "{scheme}://{}",
        if plan.kind == Kind::Grpc { grpc } else { quic }
    )
    .parse()
    .unwrap();

    // The fault task: kills restart the agent on the same ports and data; cuts go to the proxy.
    let (faults, mut fault_rx) = mpsc::unbounded_channel::<Fault>();
    let fault_task = {
        let proxy = proxy.clone();
        let (data, certs) = (data.path().to_owned(), certs.path().to_owned());
        let jitter = Jitter::new(plan.seed ^ 0xC0FFEE);
        tokio::spawn(async move {
            let mut agent = Some(agent);
            let mut kills = 0u64;
            while let Some(fault) = fault_rx.recv().await {
                match fault {
                    Fault::Kill => {
                        let (data, certs) = (data.clone(), certs.clone());
                        let old = agent.take().unwrap();
                        let down =
                            Duration::from_millis(50) + jitter.delay(Duration::from_millis(250));
                        agent = Some(
                            tokio::task::spawn_blocking(move || {
                                old.kill();
                                std::thread::sleep(down);
                                start_agent(&data, &certs, grpc.port(), quic.port())
                            })
                            .await
                            .unwrap(),
                        );
                        kills += 1;
                    }
                    Fault::Cut => match &*proxy {
                        Proxy::Tcp(p) => p.cut(),
                        Proxy::Udp(p) => p.cut(
                            Duration::from_millis(300) + jitter.delay(Duration::from_millis(900)),
                        ),
                    },
                }
            }
            (agent.unwrap(), kills)
        })
    };

    let producer = Producer::builder(
        transport(plan.kind, certs.path()),
        StaticDiscovery::new().with_topic(TOPIC, PARTITIONS, &through_proxy),
    )
    .acks(Acks::Durable)
    .batch_size(16 * 1024)
    .linger(Duration::from_millis(2))
    .request_timeout(Duration::from_secs(2))
    .delivery_timeout(Duration::from_secs(120))
    .retry_backoff(Duration::from_millis(20), Duration::from_millis(300))
    .build()
    .unwrap();

    // Records are sent at an even rate over `plan.duration`, and the faults come at evenly
    // spread times of it, kills and cuts interleaved, so each one lands on batches in flight.
    let events = plan.kills + plan.cuts;
    let start = tokio::time::Instant::now();
    let scheduler = tokio::spawn(async move {
        for e in 0..events {
            let at = start + plan.duration.mul_f64((e + 1) as f64 / (events + 1) as f64);
            tokio::time::sleep_until(at).await;
            // Kills spread evenly among the cuts.
            let kill = e * plan.kills / events != (e + 1) * plan.kills / events;
            let _ = faults.send(if kill { Fault::Kill } else { Fault::Cut });
        }
    });
    let mut deliveries = Vec::with_capacity(plan.records as usize);
    for seq in 0..plan.records {
        let due = start + plan.duration.mul_f64(seq as f64 / plan.records as f64);
        if due > tokio::time::Instant::now() + Duration::from_millis(2) {
            tokio::time::sleep_until(due).await;
        }
        let id = RecordId::new(0, seq);
        let key = format!("k{}", seq % 101);
        let value = id.value(40);
        let record = ProducerRecord::new(TOPIC, &value).key(key.as_bytes());
        deliveries.push((id, producer.send(record).await.unwrap()));
    }
    scheduler.await.unwrap();
    let mut history = History::new();
    for (id, delivery) in deliveries {
        history.record_delivery(id, delivery).await;
    }
    let stats = producer.stats();
    producer.close(Duration::from_secs(10)).await.unwrap();
    let (agent, kills) = fault_task.await.unwrap();

    // Heal: read every partition back straight from the agent.
    let reader = transport(plan.kind, certs.path());
    let mut logs = Vec::new();
    for partition in 0..PARTITIONS {
        let connection = reader.connect(&direct).await.unwrap();
        let records = PartitionReader::new(connection, TOPIC, partition, 0)
            .read_to_end()
            .await
            .unwrap();
        logs.push((partition, records));
    }
    let report = history.check(logs);
    let (acked, failed, unknown) = history.outcomes();
    println!(
        "{:?} chaos: {kills} SIGKILLs, {} link cuts, 0–{} ms delay; {} records: {acked} acked, \
         {failed} failed, {unknown} unknown; {} requests, {} request retries, {} batch retries\n{report}",
        plan.kind,
        proxy.cuts(),
        MAX_DELAY.as_millis(),
        plan.records,
        stats.requests,
        stats.request_retries,
        stats.retries,
    );
    assert_eq!(kills, plan.kills as u64, "every kill happened");
    assert_eq!(proxy.cuts(), plan.cuts as u64, "every cut happened");
    assert!(
        stats.request_retries + stats.retries > 0,
        "the faults bit: requests were retried"
    );
    assert!(report.is_clean(), "history violations:\n{report}");
    // Every record has an outcome (within the delivery timeout, however loaded the machine),
    // and the producer got records through the faults.
    assert_eq!(acked + failed + unknown, plan.records);
    assert!(acked > 0, "the producer kept making progress");
    assert!(agent.terminate(), "the agent exits cleanly on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_survives_kills_and_cuts() {
    chaos(Plan {
        kind: Kind::Grpc,
        records: 40_000,
        kills: 3,
        cuts: 5,
        seed: 1,
        duration: Duration::from_secs(6),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_survives_kills_and_cuts() {
    chaos(Plan {
        kind: Kind::Quic,
        records: 40_000,
        kills: 3,
        cuts: 5,
        seed: 2,
        duration: Duration::from_secs(6),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 200,000 records, 10 kills, 20 cuts per transport"]
async fn full_chaos_run() {
    for (kind, seed) in [(Kind::Grpc, 11), (Kind::Quic, 12)] {
        chaos(Plan {
            kind,
            records: 200_000,
            kills: 10,
            cuts: 20,
            seed,
            duration: Duration::from_secs(30),
        })
        .await;
    }
}
