//! `streamhouse agent`.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use streamhouse::transport::Endpoint;
use streamhouse_agent::{Agent, AgentConfig, TopicSpec};
use streamhouse_grpc::GrpcConfig;
use streamhouse_quic::{QuicConfig, QuicServer, ServerTls, dev_certificate};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Directory of the partition logs (created if missing).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Address to serve gRPC on; port 0 picks a free port (printed at start).
    #[arg(long, value_name = "ADDR", required_unless_present = "quic")]
    grpc: Option<SocketAddr>,
    /// Address to serve QUIC on (UDP); needs a certificate (--tls-cert/--tls-key or
    /// --dev-cert). Both transports can run at once, on the same logs.
    #[arg(long, value_name = "ADDR")]
    quic: Option<SocketAddr>,
    /// PEM certificate (chain) for QUIC, and for gRPC with --grpc-tls.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "dev_cert"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Development only: use DIR/cert.pem and DIR/key.pem, writing a self-signed certificate
    /// for localhost, 127.0.0.1 and ::1 there first if missing. Clients trust it with
    /// `--ca DIR/cert.pem`.
    #[arg(long, value_name = "DIR")]
    dev_cert: Option<PathBuf>,
    /// Require clients to present a certificate signed by this CA (mutual TLS).
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// Serve gRPC over TLS too (grpcs://), with the same certificate as QUIC.
    #[arg(long, requires = "grpc")]
    grpc_tls: bool,
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

/// The agent's certificate, from files or the development directory.
fn certificate(args: &Args) -> anyhow::Result<Option<ServerTls>> {
    let files = match (&args.tls_cert, &args.tls_key, &args.dev_cert) {
        (Some(cert), Some(key), _) => (cert.clone(), key.clone()),
        (_, _, Some(dir)) => {
            let dev = dev_certificate(dir).with_context(|| {
                format!(
                    "cannot create a development certificate in {}",
                    dir.display()
                )
            })?;
            (dev.cert, dev.key)
        }
        _ => return Ok(None),
    };
    let mut tls =
        ServerTls::from_files(&files.0, &files.1).context("cannot load the certificate")?;
    if let Some(ca) = &args.client_ca {
        tls = tls
            .with_client_ca_file(ca)
            .context("cannot load --client-ca")?;
    }
    Ok(Some(tls))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let tls = certificate(&args)?;
    if (args.quic.is_some() || args.grpc_tls) && tls.is_none() {
        bail!(
            "QUIC and --grpc-tls need a certificate: --tls-cert FILE --tls-key FILE, or --dev-cert DIR"
        );
    }
    let grpc = match args.grpc {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            Some(listener)
        }
        None => None,
    };
    let quic = match (args.quic, &tls) {
        (Some(addr), Some(tls)) => Some(
            QuicServer::bind(addr, QuicConfig::default(), tls)
                .with_context(|| format!("cannot serve QUIC on {addr}"))?,
        ),
        _ => None,
    };
    let mut endpoints = Vec::new();
    if let Some(listener) = &grpc {
        let scheme = if args.grpc_tls { "grpcs" } else { "grpc" };
        endpoints.push(format!("{scheme}://{}", listener.local_addr()?).parse()?);
    }
    if let Some(server) = &quic {
        endpoints.push(format!("quic://{}", server.local_addr()?).parse()?);
    }
    let mut config = AgentConfig::new(&args.data);
    config.id = args.id;
    config.topics = args.topics;
    config.auto_create_partitions = args.auto_create;
    config.endpoints = if args.advertise.is_empty() {
        endpoints.clone()
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
    // The first lines of standard output say where to connect (useful with port 0).
    for endpoint in &endpoints {
        println!(
            "{} listening on {}",
            endpoint.scheme(),
            endpoint.authority()
        );
    }
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let stopped = |stop: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = stop.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    let grpc_task = grpc.map(|listener| {
        let mut config = GrpcConfig::default();
        if args.grpc_tls {
            config.server_tls = tls.clone();
        }
        tokio::spawn(streamhouse_grpc::serve(
            agent.service(),
            listener,
            config,
            stopped(&stop),
        ))
    });
    let quic_task = quic.map(|server| tokio::spawn(server.serve(agent.service(), stopped(&stop))));
    shutdown_signal().await;
    let _ = stop.send(());
    if let Some(task) = quic_task {
        task.await.context("QUIC server task failed")?;
    }
    if let Some(task) = grpc_task {
        task.await
            .context("gRPC server task failed")?
            .context("gRPC server failed")?;
    }
    agent.shutdown().await;
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
