//! A transport of your own, in under 150 lines: one TCP connection per request carrying the
//! library's length-prefixed frames — and the conformance suite proving it is a real one.
//!
//! `cargo run --example custom_transport`

use std::net::SocketAddr;
use std::sync::Arc;
use streamhouse::conformance::{self, Harness, Report};
use streamhouse::transport::frame::{self, MAX_FRAME};
use streamhouse::transport::{
    AgentService, BoxFuture, Connection, Endpoint, Peer, Request, Transport, TransportError,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;
use tower::util::BoxCloneService;

/// The client side: `tcp://host:port` endpoints.
struct TcpTransport;

impl Transport for TcpTransport {
    fn connect(
        &self,
        endpoint: &Endpoint,
    ) -> BoxFuture<'static, Result<Connection, TransportError>> {
        let addr = endpoint.authority().to_owned();
        let service = tower::service_fn(move |request: Request| exchange(addr.clone(), request));
        Box::pin(async move { Ok(BoxCloneService::new(service) as Connection) })
    }
}

/// One request: connect, send a frame, read the answer frame — within the deadline.
async fn exchange(
    addr: String,
    request: Request,
) -> Result<streamhouse::transport::Response, TransportError> {
    let work = async {
        let mut stream = TcpStream::connect(&addr)
            .await
            .map_err(|e| TransportError::Connect {
                endpoint: addr.clone(),
                source: Some(Box::new(e)),
            })?;
        frame::write_request(&mut stream, &request, MAX_FRAME).await?;
        let (kind, body) = frame::read_frame(&mut stream, MAX_FRAME)
            .await?
            .ok_or_else(|| TransportError::connection_lost("closed without an answer"))?;
        Ok(frame::decode_response(kind, &body)?)
    };
    match request.deadline {
        Some(at) => tokio::time::timeout_at(at, work)
            .await
            .unwrap_or(Err(TransportError::Timeout)),
        None => work.await,
    }
}

/// The server side: answers each connection's one frame with the agent's answer.
async fn serve(listener: TcpListener, agent: AgentService) {
    let mut connections = JoinSet::new();
    while let Ok((mut stream, addr)) = listener.accept().await {
        let agent = agent.clone();
        connections.spawn(async move {
            let reply = match frame::read_request(&mut stream, MAX_FRAME).await {
                Ok(Some((metadata, message))) => {
                    // The agent learns who asked (for authentication and audit).
                    let peer = Arc::new(Peer::at(Some(addr)));
                    match agent
                        .oneshot(Request::received(message, metadata, peer))
                        .await
                    {
                        Ok(response) => frame::encode_response(&response, MAX_FRAME)
                            .unwrap_or_else(|e| frame::encode_error(&e.to_string())),
                        Err(e) => frame::encode_error(&e.to_string()),
                    }
                }
                Ok(None) => return,
                // Oversized, truncated or garbage: answered, and only this connection dropped.
                Err(e) => frame::encode_error(&e.to_string()),
            };
            let _ = stream.write_all(&reply).await;
        });
    }
}

/// What the suite needs: start and stop a server in front of its agent.
#[derive(Default)]
struct TcpHarness {
    addr: Option<SocketAddr>,
    server: Option<JoinHandle<()>>,
}

#[async_trait::async_trait]
impl Harness for TcpHarness {
    fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(TcpTransport)
    }

    fn untrusted_transport(&self) -> Option<Arc<dyn Transport>> {
        None // no TLS in this toy
    }

    fn max_message_size(&self) -> usize {
        MAX_FRAME
    }

    async fn start(&mut self, agent: AgentService) -> Endpoint {
        let bind = self.addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let listener = TcpListener::bind(bind).await.expect("bind");
        let addr = listener.local_addr().expect("address");
        self.addr = Some(addr);
        self.server = Some(tokio::spawn(serve(listener, agent)));
        format!("tcp://{addr}").parse().expect("endpoint")
    }

    async fn stop(&mut self) {
        // Aborting the server drops its listener and every open connection.
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }
}

/// Runs the conformance suite against the toy transport.
pub async fn run_suite() -> Report {
    conformance::run(&mut TcpHarness::default()).await
}

#[tokio::main]
async fn main() {
    let report = run_suite().await;
    println!("toy TCP transport:\n{report}");
    report.assert_passed();
}
