//! [`GrpcTransport`]: the client side, one HTTP/2 channel per agent endpoint.

use crate::GrpcConfig;
use crate::status::to_transport_error;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use streamhouse::transport::{
    BoxFuture, Connection, Endpoint, Metadata, Request, RequestMessage, Response, Transport,
    TransportError, frame,
};
use streamhouse_proto::v1::agent_client::AgentClient;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tonic::transport::Channel;
use tower::Service;
use tower::util::BoxCloneService;

/// A byte stream a [`Dialer`] opens: anything tokio can read and write.
pub trait DialedIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> DialedIo for T {}

/// Opens the byte stream to an agent, given its `host:port`, in place of a TCP connection: a
/// simulated network (turmoil), a Unix socket, an in-memory pipe, a proxy.
pub type Dialer =
    Arc<dyn Fn(String) -> BoxFuture<'static, io::Result<Box<dyn DialedIo>>> + Send + Sync>;

/// Connects to agents over gRPC. Cheap to clone; connections to the same endpoint share one
/// HTTP/2 channel (many requests multiplexed on one TCP connection).
#[derive(Clone)]
pub struct GrpcTransport {
    config: Arc<GrpcConfig>,
    channels: Arc<Mutex<HashMap<Endpoint, Channel>>>,
    dialer: Option<Dialer>,
}

impl std::fmt::Debug for GrpcTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTransport")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for GrpcTransport {
    fn default() -> GrpcTransport {
        GrpcTransport::new(GrpcConfig::default())
    }
}

impl GrpcTransport {
    /// A transport with these settings.
    pub fn new(config: GrpcConfig) -> GrpcTransport {
        GrpcTransport {
            config: Arc::new(config),
            channels: Arc::new(Mutex::new(HashMap::new())),
            dialer: None,
        }
    }

    /// A transport whose HTTP/2 connections run over streams that `dialer` opens instead of
    /// TCP (plaintext `grpc://` endpoints). HTTP/2 settings, limits and reconnection are as
    /// usual; tonic calls the dialer again whenever it reconnects.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use streamhouse_grpc::{Dialer, DialedIo, GrpcConfig, GrpcTransport};
    ///
    /// // Dial over TCP, as the default transport does, but through our own code.
    /// let dialer: Dialer = Arc::new(|authority: String| {
    ///     Box::pin(async move {
    ///         let stream = tokio::net::TcpStream::connect(authority).await?;
    ///         Ok(Box::new(stream) as Box<dyn DialedIo>)
    ///     })
    /// });
    /// let transport = GrpcTransport::with_dialer(GrpcConfig::default(), dialer);
    /// ```
    pub fn with_dialer(config: GrpcConfig, dialer: Dialer) -> GrpcTransport {
        GrpcTransport {
            dialer: Some(dialer),
            ..GrpcTransport::new(config)
        }
    }

    async fn open_channel(&self, endpoint: &Endpoint) -> Result<Channel, TransportError> {
        let channel = self.channel_endpoint(endpoint)?;
        #[cfg(feature = "tls")]
        if endpoint.scheme() == "grpcs"
            && self.dialer.is_none()
            && let Some(tls) = &self.config.client_tls
        {
            crate::tls::probe(tls, endpoint).await?;
        }
        let connected = match &self.dialer {
            None => channel.connect().await,
            Some(dialer) => {
                let dialer = dialer.clone();
                let authority = endpoint.authority().to_owned();
                channel
                    .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                        let dial = dialer(authority.clone());
                        async move { dial.await.map(TokioIo::new) }
                    }))
                    .await
            }
        };
        connected.map_err(|e| TransportError::Connect {
            endpoint: endpoint.to_string(),
            source: Some(Box::new(e)),
        })
    }

    fn channel_endpoint(
        &self,
        endpoint: &Endpoint,
    ) -> Result<tonic::transport::Endpoint, TransportError> {
        let scheme = match endpoint.scheme() {
            "grpc" => "http",
            #[cfg(feature = "tls")]
            "grpcs" => "https",
            _ => return Err(TransportError::UnsupportedEndpoint(endpoint.to_string())),
        };
        let config = &self.config;
        let uri = format!("{scheme}://{}", endpoint.authority());
        let channel = tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| TransportError::Connect {
                endpoint: endpoint.to_string(),
                source: Some(Box::new(e)),
            })?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(config.keep_alive_interval)
            .keep_alive_timeout(config.keep_alive_timeout)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(config.stream_window)
            .initial_connection_window_size(config.connection_window);
        #[cfg(feature = "tls")]
        let channel = if scheme == "https" {
            let tls = config.client_tls.as_ref().ok_or_else(|| {
                TransportError::Tls(Some(
                    format!("{endpoint} needs TLS but GrpcConfig::client_tls is not set").into(),
                ))
            })?;
            channel
                .tls_config(crate::tls::client(tls, endpoint))
                .map_err(|e| TransportError::Tls(Some(Box::new(e))))?
        } else {
            channel
        };
        Ok(channel)
    }
}

impl Transport for GrpcTransport {
    fn connect(
        &self,
        endpoint: &Endpoint,
    ) -> BoxFuture<'static, Result<Connection, TransportError>> {
        let transport = self.clone();
        let endpoint = endpoint.clone();
        Box::pin(async move {
            let cached = transport
                .channels
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&endpoint)
                .cloned();
            let channel = match cached {
                Some(channel) => channel,
                None => {
                    let channel = transport.open_channel(&endpoint).await?;
                    transport
                        .channels
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(endpoint.clone(), channel.clone());
                    channel
                }
            };
            let size = transport.config.max_message_size;
            let client = AgentClient::new(channel)
                .max_decoding_message_size(size)
                .max_encoding_message_size(size);
            Ok(BoxCloneService::new(GrpcConnection {
                client,
                max_message_size: size,
            }))
        })
    }
}

/// One agent connection: each request is a unary RPC on the shared channel.
#[derive(Clone)]
struct GrpcConnection {
    client: AgentClient<Channel>,
    max_message_size: usize,
}

impl Service<Request> for GrpcConnection {
    type Response = Response;
    type Error = TransportError;
    type Future = BoxFuture<'static, Result<Response, TransportError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        // The channel queues calls itself; readiness is checked inside each call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let mut client = self.client.clone();
        let max = self.max_message_size;
        Box::pin(async move {
            // Refused here, before encoding: tonic would reset the stream with an opaque error.
            let size = frame::request_len(&request.message);
            if size > max {
                return Err(TransportError::FrameTooLarge { size, limit: max });
            }
            let (deadline, metadata) = (request.deadline, &request.metadata);
            let result = match request.message {
                RequestMessage::Produce(m) => client
                    .produce(tonic_request(m, deadline, metadata))
                    .await
                    .map(|r| Response::Produce(r.into_inner())),
                RequestMessage::Metadata(m) => client
                    .metadata(tonic_request(m, deadline, metadata))
                    .await
                    .map(|r| Response::Metadata(r.into_inner())),
                RequestMessage::Fetch(m) => client
                    .fetch(tonic_request(m, deadline, metadata))
                    .await
                    .map(|r| Response::Fetch(r.into_inner())),
                RequestMessage::Admin(m) => client
                    .admin(tonic_request(m, deadline, metadata))
                    .await
                    .map(|r| Response::Admin(r.into_inner())),
                _ => return Err(TransportError::Protocol("unsupported request".into())),
            };
            result.map_err(|status| to_transport_error(status, max))
        })
    }
}

/// A tonic request carrying the remaining time as its `grpc-timeout` and the request's
/// metadata as gRPC metadata.
fn tonic_request<T>(
    message: T,
    deadline: Option<Instant>,
    metadata: &Metadata,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(deadline) = deadline {
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    }
    let map = request.metadata_mut();
    for (key, value) in metadata.iter() {
        // `Metadata` admits only what gRPC can carry, so neither parse fails.
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::AsciiMetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::AsciiMetadataValue::try_from(value),
        ) {
            map.append(key, value);
        }
    }
    request
}
