//! `streamhouse agent`.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use streamhouse::transport::Endpoint;
use streamhouse_agent::{Agent, AgentConfig, TopicSpec};
use streamhouse_grpc::GrpcConfig;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Directory of the partition logs (created if missing).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Address to serve gRPC on; port 0 picks a free port (printed at start).
    #[arg(long, value_name = "ADDR")]
    grpc: SocketAddr,
    /// Topic to create if missing, as NAME:PARTITIONS (repeatable).
    #[arg(long = "topic", value_name = "NAME:PARTITIONS")]
    topics: Vec<TopicSpec>,
    /// Create unknown topics on first use with this many partitions.
    #[arg(long, value_name = "PARTITIONS")]
    auto_create: Option<u32>,
    /// Serve Prometheus metrics on this address (`/metrics`).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// URL clients should use to reach this agent (default: grpc://<bound address>).
    #[arg(long, value_name = "URL")]
    advertise: Vec<Endpoint>,
    /// This agent's id in metadata.
    #[arg(long, default_value_t = 0)]
    id: u32,
    /// Roll segment files at this size in bytes.
    #[arg(long, value_name = "BYTES")]
    segment_bytes: Option<u64>,
    /// Refuse batches larger than this many bytes.
    #[arg(long, value_name = "BYTES")]
    max_batch_bytes: Option<usize>,
    /// Refuse records larger than this many bytes.
    #[arg(long, value_name = "BYTES")]
    max_record_bytes: Option<usize>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.grpc)
        .await
        .with_context(|| format!("cannot listen on {}", args.grpc))?;
    let bound = listener.local_addr()?;
    let mut config = AgentConfig::new(&args.data);
    config.id = args.id;
    config.topics = args.topics;
    config.auto_create_partitions = args.auto_create;
    config.endpoints = if args.advertise.is_empty() {
        vec![format!("grpc://{bound}").parse()?]
    } else {
        args.advertise
    };
    if let Some(bytes) = args.segment_bytes {
        config.segment_bytes = bytes;
    }
    if let Some(bytes) = args.max_batch_bytes {
        config.max_batch_bytes = bytes;
    }
    if let Some(bytes) = args.max_record_bytes {
        config.max_record_bytes = bytes;
    }
    if let Some(addr) = args.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    let agent = Agent::open(config)
        .await
        .with_context(|| format!("cannot open data directory {}", args.data.display()))?;
    for recovered in agent.recovery() {
        if recovered.report.truncated_bytes > 0 {
            eprintln!(
                "recovered {}-{}: cut {} bytes of a torn or corrupt tail",
                recovered.topic, recovered.partition, recovered.report.truncated_bytes
            );
        }
    }
    // The first line of standard output says where to connect (useful with port 0).
    println!("grpc listening on {bound}");
    let served = streamhouse_grpc::serve(
        agent.service(),
        listener,
        GrpcConfig::default(),
        shutdown_signal(),
    )
    .await;
    agent.shutdown().await;
    served.context("grpc server failed")?;
    eprintln!("agent stopped cleanly");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
