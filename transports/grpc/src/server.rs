//! [`serve`]: any agent service as the `streamhouse.v1.Agent` gRPC service.

use crate::GrpcConfig;
use crate::status::from_agent_error;
use futures_core::Stream;
use std::future::Future;
use streamhouse::transport::{AgentService, Request, RequestMessage, Response};
use streamhouse_proto::v1::agent_server::{Agent, AgentServer};
use streamhouse_proto::v1::{
    FetchRequest, FetchResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tonic::transport::server::Connected;
use tonic::{Status, async_trait};
use tower::ServiceExt;

/// The server could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The HTTP/2 server failed (listener error, TLS configuration).
    #[error("grpc server failed")]
    Server(#[from] tonic::transport::Error),
}

/// Serves `agent` on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish, and returns.
///
/// Message size limits, HTTP/2 windows and timeouts come from `config`; connections and the
/// request bytes they may hold from `config.bounds` (see [`ServerBounds`]); with the `tls`
/// feature and `config.server_tls` set, only TLS connections are accepted.
///
/// [`ServerBounds`]: streamhouse::serve::ServerBounds
pub async fn serve(
    agent: AgentService,
    listener: TcpListener,
    config: GrpcConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let incoming = crate::incoming::Incoming::new(listener, config.bounds.clone());
    serve_incoming(agent, incoming, config, shutdown).await
}

/// Serves `agent` on connections from `incoming` — any stream of accepted byte streams, such as
/// a simulated network's listener or a Unix socket's — until `shutdown` resolves. Otherwise as
/// [`serve`], except that connection counts, idle timeouts and request-byte budgets apply only
/// to connections `serve` accepted itself.
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
    let service = AgentServer::new(Adaptor { agent })
        .max_decoding_message_size(config.max_message_size)
        .max_encoding_message_size(config.max_message_size);
    let builder = tonic::transport::Server::builder()
        .layer(crate::bounds::BoundsLayer {
            deliver_within: config.request_timeout,
        })
        .tcp_nodelay(true)
        .initial_stream_window_size(config.stream_window)
        .initial_connection_window_size(config.connection_window)
        .http2_keepalive_interval(Some(config.keep_alive_interval))
        .http2_keepalive_timeout(Some(config.keep_alive_timeout))
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        .timeout(config.request_timeout);
    #[cfg(feature = "tls")]
    let builder = match &config.server_tls {
        Some(tls) => builder.tls_config(crate::tls::server(tls))?,
        None => builder,
    };
    let mut builder = builder;
    builder
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
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
        let call = self
            .agent
            .clone()
            .oneshot(Request::new(message(request.into_inner())));
        let answer = match pass {
            Some(pass) => streamhouse::serve::for_client(pass, call).await,
            None => call.await,
        };
        answer.map_err(|e| from_agent_error(e.as_ref()))
    }
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
}
