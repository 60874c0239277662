//! A reference agent served over gRPC on a loopback port, for integration tests.

use std::time::Duration;
use streamhouse::batch::Record;
use streamhouse::reader::PartitionReader;
use streamhouse::transport::{Endpoint, Transport};
use streamhouse_agent::{Agent, AgentConfig};
use streamhouse_grpc::{GrpcConfig, GrpcTransport, ServeError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct RunningAgent {
    pub agent: Agent,
    pub endpoint: Endpoint,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), ServeError>>>,
}

impl RunningAgent {
    /// Opens the agent on `config.data_dir` and serves it on 127.0.0.1, port 0.
    pub async fn start(mut config: AgentConfig) -> RunningAgent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint: Endpoint = format!("grpc://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        config.endpoints = vec![endpoint.clone()];
        let agent = Agent::open(config).await.expect("agent opens");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(streamhouse_grpc::serve(
            agent.service(),
            listener,
            GrpcConfig::default(),
            async {
                let _ = stopped.await;
            },
        ));
        RunningAgent {
            agent,
            endpoint,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Stops serving, then shuts the agent down (queued appends finish, logs fsynced).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("server stops")
                .unwrap()
                .unwrap();
        }
        self.agent.shutdown().await;
    }

    /// Every record of a partition, read back through gRPC fetches.
    pub async fn read(&self, topic: &str, partition: u32) -> Vec<Record> {
        let connection = GrpcTransport::default()
            .connect(&self.endpoint)
            .await
            .unwrap();
        PartitionReader::new(connection, topic, partition, 0)
            .with_codecs(streamhouse_codecs::all())
            .read_to_end()
            .await
            .unwrap()
    }
}
