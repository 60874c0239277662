//! The agent the benchmark runs against: embedded (in this process, on loopback ports, in a
//! temporary directory removed afterwards) or an external one reached through `--bootstrap`.

use super::run::StorageFigures;
use super::run::Target;
use anyhow::Context;
use std::sync::Arc;
use streamhouse::discovery::{Discovery, StaticDiscovery};
use streamhouse::layers::{BearerToken, WithCredentials};
use streamhouse::transport::tls::{ClientTls, ServerTls};
use streamhouse::transport::{Endpoint, Transport};
use streamhouse_agent::{
    Agent, AgentConfig, ListenOptions, Listeners, RemoteConfig, Security, Serving,
};
use streamhouse_grpc::GrpcTransport;
use streamhouse_quic::{QuicConfig, QuicTransport, dev_certificate};

/// Object storage for the embedded agent (`bench --objects`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Storage {
    /// `embedded` (a directory next to the cell's data), or an object storage URL.
    pub(crate) objects: String,
    /// The metadata store URL (default: SQLite next to the cell's data).
    pub(crate) metadata: Option<String>,
    pub(crate) s3_endpoint: Option<String>,
    pub(crate) flush_interval_ms: Option<f64>,
    pub(crate) flush_bytes: Option<usize>,
}

impl Storage {
    fn config(&self, dir: &std::path::Path) -> RemoteConfig {
        let objects = match self.objects.as_str() {
            "embedded" => format!("file://{}", dir.join("objects").display()),
            url => url.to_owned(),
        };
        let metadata = self
            .metadata
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.join("meta.db").display()));
        let mut remote = RemoteConfig::new(metadata, objects);
        remote.s3.endpoint = self.s3_endpoint.clone();
        if let Some(ms) = self.flush_interval_ms {
            remote.flush_interval = std::time::Duration::from_secs_f64(ms / 1000.0);
        }
        if let Some(bytes) = self.flush_bytes {
            remote.flush_bytes = bytes;
        }
        remote
    }
}

/// An agent serving gRPC and QUIC on 127.0.0.1 from a temporary directory.
pub(crate) struct Embedded {
    agent: Agent,
    serving: Serving,
    ca: std::path::PathBuf,
    /// The token every request presents when the agent authenticates.
    token: Option<Arc<BearerToken>>,
    _dir: tempfile::TempDir,
}

/// The bench's principal and token with `--auth token`, allowed everything by one ACL rule
/// (the cost measured is authenticating and authorizing every request, not denying).
const TOKEN: &str = "bench-token";

fn security(dir: &std::path::Path) -> anyhow::Result<Security> {
    let tokens =
        streamhouse_auth::TokenFile::parse(&streamhouse_auth::TokenFile::line(TOKEN, "bench"))?;
    let acls: streamhouse_auth::Acls = "allow bench all *".parse()?;
    Ok(Security {
        authenticator: Arc::new(tokens),
        authorizer: Arc::new(acls),
        quotas: Arc::default(),
        // As `streamhouse agent` does: producer ids bound to the principal that asked.
        producer_ids: Some(Arc::new(streamhouse_auth::FileProducerIds::open(
            dir.join("producer-ids"),
        )?)),
        max_connections_per_principal: Some(64),
    })
}

impl Embedded {
    pub(crate) async fn start(
        topic: &str,
        partitions: u32,
        storage: Option<&Storage>,
        auth: bool,
    ) -> anyhow::Result<Embedded> {
        let dir = tempfile::Builder::new()
            .prefix("streamhouse-bench-")
            .tempdir()
            .context("cannot create a temporary data directory")?;
        let dev = dev_certificate(&dir.path().join("certs"))?;
        let listeners = Listeners::bind(ListenOptions {
            grpc: Some("127.0.0.1:0".parse()?),
            quic: Some("127.0.0.1:0".parse()?),
            tls: Some(ServerTls::from_files(&dev.cert, &dev.key)?),
            security: if auth {
                Some(security(dir.path())?)
            } else {
                None
            },
            ..ListenOptions::default()
        })
        .await?;
        let mut config = AgentConfig::new(dir.path().join("data")).topic(topic, partitions);
        config.endpoints = listeners.endpoints().to_vec();
        config.remote = storage.map(|s| s.config(dir.path()));
        let agent = Agent::open(config).await?;
        let serving = listeners.serve(&agent);
        Ok(Embedded {
            agent,
            serving,
            ca: dev.cert,
            token: auth
                .then(|| BearerToken::new(TOKEN).map(Arc::new))
                .transpose()?,
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
        let transport: Arc<dyn Transport> = match &self.token {
            Some(token) => Arc::new(WithCredentials::new(transport, token.clone())),
            None => transport,
        };
        let discovery: Arc<dyn Discovery> =
            Arc::new(StaticDiscovery::new().with_topic(topic, partitions, &endpoint));
        Ok(Target {
            transport,
            discovery,
            endpoint,
            topic: topic.to_owned(),
            partitions,
            ask_producer_id: self.token.is_some(),
        })
    }

    /// Stops serving, shuts the agent down (with object storage: after its last flush);
    /// returns what it wrote to object storage. The directory is removed when `self` drops.
    pub(crate) async fn stop(self) -> anyhow::Result<Option<StorageFigures>> {
        self.serving.stop().await?;
        self.agent.shutdown().await;
        Ok(self.agent.remote_stats().map(|s| StorageFigures {
            objects: s.objects_written,
            bytes: s.bytes_written,
            commits: s.commits,
            errors: s.put_errors + s.commit_errors,
        }))
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
        // An agent that authenticates may bind ids to principals; one that does not hands out
        // an id of its own.
        ask_producer_id: true,
    })
}
