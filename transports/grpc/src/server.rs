//! [`serve`]: any agent service as the `streamhouse.v1.Agent` gRPC service.

use crate::GrpcConfig;
use crate::bounds::BoundsLayer;
use crate::incoming::{Conn, Incoming};
use crate::status::from_agent_error;
use futures_core::Stream;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use streamhouse::serve::window_sizes;
use streamhouse::transport::{
    AgentService, ConnectionToken, Metadata, Peer, Request, RequestMessage, Response,
};
use streamhouse_proto::v1::agent_server::{Agent, AgentServer};
use streamhouse_proto::v1::{
    AdminRequest, AdminResponse, FetchRequest, FetchResponse, MetadataRequest, MetadataResponse,
    ProduceRequest, ProduceResponse,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::server::{Connected, Router};
use tonic::{Status, async_trait};
use tower::ServiceExt;
use tower::layer::util::{Identity, Stack};

/// The server could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The HTTP/2 server failed (listener error, TLS configuration).
    #[error("grpc server failed")]
    Server(#[from] tonic::transport::Error),
    /// A server task panicked or was cancelled.
    #[error("grpc server task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Serves `agent` on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish, and returns.
///
/// Message size limits, HTTP/2 windows and timeouts come from `config`; connections, the
/// request bytes they may hold and their receive windows from `config.bounds` (see
/// [`ServerBounds`]); with the `tls` feature and `config.server_tls` set, only TLS
/// connections are accepted.
///
/// A connection gets `config.connection_window` while the bounds' window pool has room, and
/// a smaller window once it runs low ([`ConnectionPass::grant_window`]). tonic fixes windows per
/// server, so there is one HTTP/2 server per window size, each fed the connections granted it.
///
/// [`ServerBounds`]: streamhouse::serve::ServerBounds
/// [`ConnectionPass::grant_window`]: streamhouse::serve::ConnectionPass::grant_window
pub async fn serve(
    agent: AgentService,
    listener: TcpListener,
    config: GrpcConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut lanes = Vec::new();
    let mut servers = JoinSet::new();
    for window in window_sizes(config.connection_window.into()) {
        let (send, receive) = mpsc::channel(LANE_QUEUE);
        let mut lane = config.clone();
        lane.connection_window = u32::try_from(window).unwrap_or(u32::MAX);
        lane.stream_window = config.stream_window.min(lane.connection_window);
        let server = router(agent.clone(), &lane)?
            // Ends when the lane's sender is dropped; `pending` makes that end graceful
            // (connections finish their requests).
            .serve_with_incoming_shutdown(Lane(receive), std::future::pending());
        servers.spawn(server);
        lanes.push((window, send));
    }
    // Boxed, so that dropping it when shutdown begins closes the listening socket at once (new
    // clients are refused instead of hanging while requests in flight finish).
    let mut incoming = Box::pin(Incoming::new(
        listener,
        config.bounds.clone(),
        config.connection_window,
    ));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            conn = std::future::poll_fn(|cx| incoming.as_mut().poll_next(cx)) => {
                let Some(Ok(conn)) = conn else { break };
                let window = conn.window();
                // Sizes are largest first, and every grant is one of them.
                let lane = lanes.iter().find(|(size, _)| *size <= window).unwrap_or(&lanes[0]);
                if lane.1.send(conn).await.is_err() {
                    break;
                }
            }
            Some(ended) = servers.join_next() => {
                // A server ends early only when it fails.
                ended.map_err(ServeError::Task)??;
            }
            () = &mut shutdown => break,
        }
    }
    drop(incoming);
    drop(lanes);
    while let Some(ended) = servers.join_next().await {
        ended.map_err(ServeError::Task)??;
    }
    Ok(())
}

/// Largest header list (request metadata included) a request may carry: 128 KiB.
const MAX_HEADER_LIST_SIZE: u32 = 128 << 10;

/// Connections waiting for their HTTP/2 server to take them.
const LANE_QUEUE: usize = 16;

/// The connections granted one window size, as the incoming stream of its server.
struct Lane(mpsc::Receiver<Conn>);

impl Stream for Lane {
    type Item = Result<Conn, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|conn| conn.map(Ok))
    }
}

/// Serves `agent` on connections from `incoming` — any stream of accepted byte streams, such as
/// a simulated network's listener or a Unix socket's — until `shutdown` resolves. Otherwise as
/// [`serve`], except that connection counts, idle timeouts, request-byte budgets and window
/// grants apply only to connections `serve` accepted itself: these all get
/// `config.connection_window`.
pub async fn serve_incoming<I, IO, E>(
    agent: AgentService,
    incoming: I,
    config: GrpcConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError>
where
    I: Stream<Item = Result<IO, E>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    E: Into<tower::BoxError>,
{
    router(agent, &config)?
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// The HTTP/2 server for `agent` with the settings of `config`.
fn router(
    agent: AgentService,
    config: &GrpcConfig,
) -> Result<Router<Stack<BoundsLayer, Identity>>, ServeError> {
    let service = AgentServer::new(Adaptor { agent })
        .max_decoding_message_size(config.max_message_size)
        .max_encoding_message_size(config.max_message_size);
    let builder = tonic::transport::Server::builder()
        .layer(BoundsLayer {
            deliver_within: config.request_timeout,
        })
        .tcp_nodelay(true)
        .initial_stream_window_size(config.stream_window)
        .initial_connection_window_size(config.connection_window)
        .http2_keepalive_interval(Some(config.keep_alive_interval))
        .http2_keepalive_timeout(Some(config.keep_alive_timeout))
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        // Room for request metadata past HTTP/2's usual 16 KiB, so that an oversized credential
        // reaches the agent's authenticator and is answered UNAUTHENTICATED, as on QUIC,
        // instead of failing the stream with an opaque protocol error.
        .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
        .timeout(config.request_timeout);
    #[cfg(feature = "tls")]
    let builder = match &config.server_tls {
        Some(tls) => builder.tls_config(crate::tls::server(tls))?,
        None => builder,
    };
    let mut builder = builder;
    Ok(builder.add_service(service))
}

/// Implements the generated service trait by calling the agent service.
struct Adaptor {
    agent: AgentService,
}

impl Adaptor {
    /// Calls the agent, as the request's client when its connection is known (the agent counts
    /// what it holds for each client).
    async fn call<T>(
        &self,
        request: tonic::Request<T>,
        message: impl FnOnce(T) -> RequestMessage,
    ) -> Result<Response, Status> {
        let pass = crate::bounds::connection_of(request.extensions()).map(|c| c.pass.clone());
        let peer = Arc::new(peer_of(&request));
        let metadata =
            Metadata::received(request.metadata().iter().filter_map(|pair| match pair {
                tonic::metadata::KeyAndValueRef::Ascii(key, value) => {
                    Some((key.as_str().to_owned(), value.to_str().ok()?.to_owned()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            }));
        let call = self.agent.clone().oneshot(Request::received(
            message(request.into_inner()),
            metadata,
            peer,
        ));
        let answer = match pass {
            Some(pass) => streamhouse::serve::for_client(pass, call).await,
            None => call.await,
        };
        answer.map_err(|e| from_agent_error(e.as_ref()))
    }
}

/// The client's address and, over TLS, the certificate chain it presented (verified). Our own
/// listener's connections carry [`ConnInfo`](crate::incoming::ConnInfo), which tonic's
/// `remote_addr`/`peer_certs` do not look for; other incoming streams (`serve_incoming`) carry
/// their own, read through tonic's accessors.
fn peer_of<T>(request: &tonic::Request<T>) -> Peer {
    let connection = crate::bounds::connection_of(request.extensions());
    let addr = connection.map(|c| c.peer).or_else(|| request.remote_addr());
    let peer = match connection {
        // The connection's pass lives exactly as long as the connection.
        Some(c) => Peer::at(addr).on(ConnectionToken::of(&c.pass)),
        None => Peer::at(addr),
    };
    #[cfg(feature = "tls")]
    let peer = {
        use tonic::transport::server::TlsConnectInfo;
        let chain = request
            .extensions()
            .get::<TlsConnectInfo<crate::incoming::ConnInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
            .or_else(|| request.peer_certs());
        match chain {
            Some(chain) => peer.with_certificates(chain.iter().map(|c| c.to_vec()).collect()),
            None => peer,
        }
    };
    peer
}

fn mismatched() -> Status {
    Status::internal("agent answered with the wrong response type")
}

#[async_trait]
impl Agent for Adaptor {
    async fn produce(
        &self,
        request: tonic::Request<ProduceRequest>,
    ) -> Result<tonic::Response<ProduceResponse>, Status> {
        match self.call(request, RequestMessage::Produce).await? {
            Response::Produce(r) => Ok(tonic::Response::new(r)),
            _ => Err(mismatched()),
        }
    }

    async fn metadata(
        &self,
        request: tonic::Request<MetadataRequest>,
    ) -> Result<tonic::Response<MetadataResponse>, Status> {
        match self.call(request, RequestMessage::Metadata).await? {
            Response::Metadata(r) => Ok(tonic::Response::new(r)),
            _ => Err(mismatched()),
        }
    }

    async fn fetch(
        &self,
        request: tonic::Request<FetchRequest>,
    ) -> Result<tonic::Response<FetchResponse>, Status> {
        match self.call(request, RequestMessage::Fetch).await? {
            Response::Fetch(r) => {
                // The batches count against the agent's answer budget until delivered.
                let keep = crate::bounds::Keep::new(r.batches.clone());
                let mut response = tonic::Response::new(r);
                response.extensions_mut().insert(keep);
                Ok(response)
            }
            _ => Err(mismatched()),
        }
    }

    async fn admin(
        &self,
        request: tonic::Request<AdminRequest>,
    ) -> Result<tonic::Response<AdminResponse>, Status> {
        match self.call(request, RequestMessage::Admin).await? {
            Response::Admin(r) => Ok(tonic::Response::new(r)),
            _ => Err(mismatched()),
        }
    }
}
