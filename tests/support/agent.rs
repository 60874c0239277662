//! A reference agent served over gRPC and QUIC at once, on loopback ports, for integration
//! tests.

use std::sync::Arc;
use std::time::Duration;
use streamhouse::batch::Record;
use streamhouse::reader::PartitionReader;
use streamhouse::transport::tls::{ClientTls, ServerTls};
use streamhouse::transport::{Endpoint, Transport};
use streamhouse_agent::{Agent, AgentConfig, ListenOptions, Listeners, Serving};
use streamhouse_grpc::GrpcTransport;
use streamhouse_quic::{QuicConfig, QuicTransport, dev_certificate};

/// Which transport a test talks over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Grpc,
    Quic,
}

pub struct RunningAgent {
    pub agent: Agent,
    pub grpc: Endpoint,
    pub quic: Endpoint,
    certs: tempfile::TempDir,
    serving: Serving,
}

impl RunningAgent {
    /// Opens the agent on `config.data_dir` and serves it over gRPC and QUIC on 127.0.0.1.
    pub async fn start(mut config: AgentConfig) -> RunningAgent {
        let certs = tempfile::tempdir().unwrap();
        let dev = dev_certificate(certs.path()).unwrap();
        let listeners = Listeners::bind(ListenOptions {
            grpc: Some("127.0.0.1:0".parse().unwrap()),
            quic: Some("127.0.0.1:0".parse().unwrap()),
            tls: Some(ServerTls::from_files(&dev.cert, &dev.key).unwrap()),
            ..ListenOptions::default()
        })
        .await
        .unwrap();
        config.endpoints = listeners.endpoints().to_vec();
        let agent = Agent::open(config).await.expect("agent opens");
        let serving = listeners.serve(&agent);
        RunningAgent {
            grpc: serving.endpoint("grpc").unwrap().clone(),
            quic: serving.endpoint("quic").unwrap().clone(),
            agent,
            certs,
            serving,
        }
    }

    /// The endpoint of `kind`.
    pub fn endpoint(&self, kind: Kind) -> Endpoint {
        match kind {
            Kind::Grpc => self.grpc.clone(),
            Kind::Quic => self.quic.clone(),
        }
    }

    /// A client transport of `kind` that trusts this agent.
    pub fn transport(&self, kind: Kind) -> Arc<dyn Transport> {
        match kind {
            Kind::Grpc => Arc::new(GrpcTransport::default()),
            Kind::Quic => Arc::new(self.quic_transport()),
        }
    }

    /// A QUIC transport that trusts this agent.
    pub fn quic_transport(&self) -> QuicTransport {
        let tls = ClientTls::from_ca_file(&self.certs.path().join("cert.pem")).unwrap();
        QuicTransport::new(QuicConfig::default(), &tls).unwrap()
    }

    /// Stops serving, then shuts the agent down (queued appends finish, logs fsynced).
    pub async fn stop(self) {
        tokio::time::timeout(Duration::from_secs(20), self.serving.stop())
            .await
            .expect("servers stop")
            .unwrap();
        self.agent.shutdown().await;
    }

    /// Every record of a partition, read back through fetches over `kind`.
    pub async fn read(&self, kind: Kind, topic: &str, partition: u32) -> Vec<Record> {
        let connection = self
            .transport(kind)
            .connect(&self.endpoint(kind))
            .await
            .unwrap();
        PartitionReader::new(connection, topic, partition, 0)
            .with_codecs(streamhouse_codecs::all())
            .read_to_end()
            .await
            .unwrap()
    }
}
