//! The agent the benchmark runs against: embedded (in this process, on loopback ports, in a
//! temporary directory removed afterwards) or an external one reached through `--bootstrap`.

use super::run::Target;
use anyhow::Context;
use std::sync::Arc;
use streamhouse::discovery::{Discovery, StaticDiscovery};
use streamhouse::transport::tls::{ClientTls, ServerTls};
use streamhouse::transport::{Endpoint, Transport};
use streamhouse_agent::{Agent, AgentConfig, ListenOptions, Listeners, Serving};
use streamhouse_grpc::GrpcTransport;
use streamhouse_quic::{QuicConfig, QuicTransport, dev_certificate};

/// An agent serving gRPC and QUIC on 127.0.0.1 from a temporary directory.
pub(crate) struct Embedded {
    agent: Agent,
    serving: Serving,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Embedded {
    pub(crate) async fn start(topic: &str, partitions: u32) -> anyhow::Result<Embedded> {
        let dir = tempfile::Builder::new()
            .prefix("streamhouse-bench-")
            .tempdir()
            .context("cannot create a temporary data directory")?;
        let dev = dev_certificate(&dir.path().join("certs"))?;
        let listeners = Listeners::bind(ListenOptions {
            grpc: Some("127.0.0.1:0".parse()?),
            quic: Some("127.0.0.1:0".parse()?),
            tls: Some(ServerTls::from_files(&dev.cert, &dev.key)?),
            ..ListenOptions::default()
        })
        .await?;
        let mut config = AgentConfig::new(dir.path().join("data")).topic(topic, partitions);
        config.endpoints = listeners.endpoints().to_vec();
        let agent = Agent::open(config).await?;
        let serving = listeners.serve(&agent);
        Ok(Embedded {
            agent,
            serving,
            ca: dev.cert,
            _dir: dir,
        })
    }

    /// How to reach the embedded agent over `scheme`.
    pub(crate) fn target(
        &self,
        scheme: &str,
        topic: &str,
        partitions: u32,
    ) -> anyhow::Result<Target> {
        let endpoint = self
            .serving
            .endpoint(scheme)
            .with_context(|| format!("the embedded agent does not serve {scheme}"))?
            .clone();
        let transport: Arc<dyn Transport> = match scheme {
            "quic" => Arc::new(QuicTransport::new(
                QuicConfig::default(),
                &ClientTls::from_ca_file(&self.ca)?,
            )?),
            _ => Arc::new(GrpcTransport::default()),
        };
        let discovery: Arc<dyn Discovery> =
            Arc::new(StaticDiscovery::new().with_topic(topic, partitions, &endpoint));
        Ok(Target {
            transport,
            discovery,
            endpoint,
            topic: topic.to_owned(),
            partitions,
        })
    }

    /// Stops serving, shuts the agent down; the directory is removed when `self` drops.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.serving.stop().await?;
        self.agent.shutdown().await;
        Ok(())
    }
}

/// An external agent: discovery through its bootstrap list; every partition of `topic` must be
/// led by one agent (the endpoint used for the raw ceiling).
pub(crate) async fn external(
    transport: Arc<dyn Transport>,
    discovery: streamhouse::discovery::Bootstrap,
    topic: &str,
) -> anyhow::Result<Target> {
    let metadata = discovery
        .topic(topic)
        .await
        .with_context(|| format!("cannot describe topic {topic:?} on the external agent (create it, or run the agent with --auto-create)"))?;
    let endpoint: Endpoint = metadata
        .leader(0)
        .map(|l| l.endpoint.clone())
        .context("topic has no partition 0")?;
    Ok(Target {
        transport,
        discovery: Arc::new(discovery),
        endpoint,
        topic: topic.to_owned(),
        partitions: metadata.partition_count().get(),
    })
}
