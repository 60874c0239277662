//! A reference agent served over gRPC and QUIC at once, on loopback ports, for integration
//! tests.

use std::sync::Arc;
use std::time::Duration;
use streamhouse::batch::Record;
use streamhouse::reader::PartitionReader;
use streamhouse::transport::{Endpoint, Transport};
use streamhouse_agent::{Agent, AgentConfig};
use streamhouse_grpc::{GrpcConfig, GrpcTransport, ServeError};
use streamhouse_quic::{
    ClientTls, QuicConfig, QuicServer, QuicTransport, ServerTls, dev_certificate,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
    stop: Vec<oneshot::Sender<()>>,
    grpc_server: Option<JoinHandle<Result<(), ServeError>>>,
    quic_server: Option<JoinHandle<()>>,
}

impl RunningAgent {
    /// Opens the agent on `config.data_dir` and serves it over gRPC and QUIC on 127.0.0.1.
    pub async fn start(mut config: AgentConfig) -> RunningAgent {
        let certs = tempfile::tempdir().unwrap();
        let dev = dev_certificate(certs.path()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc: Endpoint = format!("grpc://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let quic_server = QuicServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            QuicConfig::default(),
            &ServerTls::from_files(&dev.cert, &dev.key).unwrap(),
        )
        .unwrap();
        let quic: Endpoint = format!("quic://{}", quic_server.local_addr().unwrap())
            .parse()
            .unwrap();
        config.endpoints = vec![grpc.clone(), quic.clone()];
        let agent = Agent::open(config).await.expect("agent opens");
        let (stop_grpc, grpc_stopped) = oneshot::channel::<()>();
        let (stop_quic, quic_stopped) = oneshot::channel::<()>();
        let grpc_task = tokio::spawn(streamhouse_grpc::serve(
            agent.service(),
            listener,
            GrpcConfig::default(),
            async {
                let _ = grpc_stopped.await;
            },
        ));
        let quic_task = tokio::spawn(quic_server.serve(agent.service(), async {
            let _ = quic_stopped.await;
        }));
        RunningAgent {
            agent,
            grpc,
            quic,
            certs,
            stop: vec![stop_grpc, stop_quic],
            grpc_server: Some(grpc_task),
            quic_server: Some(quic_task),
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
            Kind::Quic => {
                let tls = ClientTls::from_ca_file(&self.certs.path().join("cert.pem")).unwrap();
                Arc::new(QuicTransport::new(QuicConfig::default(), &tls).unwrap())
            }
        }
    }

    /// Stops serving, then shuts the agent down (queued appends finish, logs fsynced).
    pub async fn stop(mut self) {
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
        if let Some(server) = self.grpc_server.take() {
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("grpc server stops")
                .unwrap()
                .unwrap();
        }
        if let Some(server) = self.quic_server.take() {
            tokio::time::timeout(Duration::from_secs(15), server)
                .await
                .expect("quic server stops")
                .unwrap();
        }
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
