//! [`QuicTransport`]: one QUIC connection per agent, one stream per request.

use crate::error::{connection_error, read_error, write_error};
use crate::{ClientTls, QuicConfig, QuicError, QuicNetwork, tls};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use streamhouse::transport::frame::{self, decode_response, read_frame};
use streamhouse::transport::{
    BoxFuture, Connection, Endpoint, Request, Response, Transport, TransportError,
};
use tower::Service;
use tower::util::BoxCloneService;

/// Connects to agents over QUIC. Cheap to clone; the connection to an endpoint is shared by
/// every [`Connection`] made for it while alive, and re-dialled by the next request once lost
/// (the retry layer's jittered backoff paces the attempts while the agent is away).
#[derive(Clone)]
pub struct QuicTransport {
    inner: Arc<Inner>,
}

struct Inner {
    config: QuicConfig,
    client: quinn::ClientConfig,
    server_name: Option<String>,
    /// Client endpoints (UDP sockets), one per address family, bound on first use.
    sockets: tokio::sync::Mutex<(Option<quinn::Endpoint>, Option<quinn::Endpoint>)>,
    connections: Mutex<HashMap<Endpoint, quinn::Connection>>,
    /// Per endpoint, held while dialling it, so requests finding a connection lost dial it
    /// once — and an unreachable agent's handshake never delays dialling another.
    dialing: Mutex<HashMap<Endpoint, Arc<tokio::sync::Mutex<()>>>>,
    /// Where sockets and addresses come from; `None`: the operating system.
    network: Option<Arc<dyn QuicNetwork>>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// A transport trusting the certificates of `tls`.
    pub fn new(config: QuicConfig, tls: &ClientTls) -> Result<QuicTransport, QuicError> {
        QuicTransport::build(config, tls, None)
    }

    /// A transport whose sockets and address lookups come from `network` instead of the
    /// operating system: a simulated network, or a socket with special options.
    pub fn with_network(
        config: QuicConfig,
        tls: &ClientTls,
        network: Arc<dyn QuicNetwork>,
    ) -> Result<QuicTransport, QuicError> {
        QuicTransport::build(config, tls, Some(network))
    }

    fn build(
        config: QuicConfig,
        tls: &ClientTls,
        network: Option<Arc<dyn QuicNetwork>>,
    ) -> Result<QuicTransport, QuicError> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls::client_config(tls)?)
            .map_err(|e| QuicError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(config.transport());
        Ok(QuicTransport {
            inner: Arc::new(Inner {
                config,
                client,
                server_name: tls.server_name.clone(),
                sockets: tokio::sync::Mutex::new((None, None)),
                connections: Mutex::new(HashMap::new()),
                dialing: Mutex::new(HashMap::new()),
                network,
            }),
        })
    }

    async fn socket(&self, remote: SocketAddr) -> Result<quinn::Endpoint, TransportError> {
        let mut sockets = self.inner.sockets.lock().await;
        let (slot, bind) = if remote.is_ipv6() {
            (&mut sockets.1, "[::]:0")
        } else {
            (&mut sockets.0, "0.0.0.0:0")
        };
        if let Some(endpoint) = slot {
            return Ok(endpoint.clone());
        }
        let connect_error = |e: std::io::Error| TransportError::Connect {
            endpoint: remote.to_string(),
            source: Some(Box::new(e)),
        };
        let endpoint = match &self.inner.network {
            Some(network) => {
                let socket = network.bind(remote).await.map_err(connect_error)?;
                crate::network::endpoint(socket, None).map_err(connect_error)?
            }
            None => {
                let bind = bind
                    .parse()
                    .map_err(|_| TransportError::Protocol("bind address".into()))?;
                quinn::Endpoint::client(bind).map_err(connect_error)?
            }
        };
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    async fn dial(&self, endpoint: &Endpoint) -> Result<quinn::Connection, TransportError> {
        let connect_error =
            |source: Box<dyn std::error::Error + Send + Sync>| TransportError::Connect {
                endpoint: endpoint.to_string(),
                source: Some(source),
            };
        let remote = match &self.inner.network {
            Some(network) => network
                .resolve(endpoint.authority())
                .await
                .map_err(|e| connect_error(Box::new(e)))?,
            None => tokio::net::lookup_host(endpoint.authority())
                .await
                .map_err(|e| connect_error(Box::new(e)))?
                .next()
                .ok_or_else(|| connect_error("the host name resolves to no address".into()))?,
        };
        let name = self.inner.server_name.as_deref().unwrap_or(endpoint.host());
        let socket = self.socket(remote).await?;
        let connecting = socket
            .connect_with(self.inner.client.clone(), remote, name)
            .map_err(|e| connect_error(Box::new(e)))?;
        match tokio::time::timeout(self.inner.config.connect_timeout, connecting).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(e)) => Err(match connection_error(e) {
                tls @ TransportError::Tls(_) => tls,
                other => connect_error(Box::new(other)),
            }),
            Err(_) => Err(connect_error("handshake timed out".into())),
        }
    }
}

impl QuicTransport {
    /// The open connection to `endpoint`, dialled if there is none or it was lost.
    async fn live(&self, endpoint: &Endpoint) -> Result<quinn::Connection, TransportError> {
        if let Some(connection) = self.cached(endpoint) {
            return Ok(connection);
        }
        let lock = self
            .inner
            .dialing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(endpoint.clone())
            .or_default()
            .clone();
        let _dialing = lock.lock().await;
        // Another request may have dialled while this one waited.
        if let Some(connection) = self.cached(endpoint) {
            return Ok(connection);
        }
        let connection = self.dial(endpoint).await?;
        self.inner
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(endpoint.clone(), connection.clone());
        Ok(connection)
    }

    /// Opens a bare bidirectional stream on the live connection to `endpoint`, for tools and
    /// tests that speak the frame protocol themselves ([`streamhouse::transport::frame`]): a
    /// protocol debugger, or a test sending the server malformed frames.
    ///
    /// ```no_run
    /// # async fn demo(transport: streamhouse_quic::QuicTransport) -> Result<(), Box<dyn std::error::Error>> {
    /// let endpoint = "quic://127.0.0.1:9093".parse()?;
    /// let (mut send, mut recv) = transport.open_raw_stream(&endpoint).await?;
    /// send.write_all(&[0x80, 0, 0, 0]).await?; // a 2 GiB length prefix
    /// send.finish()?;
    /// // The server resets the stream with streamhouse_quic::reset::FRAME_TOO_LARGE.
    /// # Ok(()) }
    /// ```
    pub async fn open_raw_stream(
        &self,
        endpoint: &Endpoint,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        let connection = self.live(endpoint).await?;
        connection.open_bi().await.map_err(connection_error)
    }

    fn cached(&self, endpoint: &Endpoint) -> Option<quinn::Connection> {
        self.inner
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(endpoint)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }
}

impl Transport for QuicTransport {
    fn connect(
        &self,
        endpoint: &Endpoint,
    ) -> BoxFuture<'static, Result<Connection, TransportError>> {
        let transport = self.clone();
        let endpoint = endpoint.clone();
        Box::pin(async move {
            if endpoint.scheme() != "quic" {
                return Err(TransportError::UnsupportedEndpoint(endpoint.to_string()));
            }
            // Fail fast when the agent is unreachable now; later losses re-dial per request.
            transport.live(&endpoint).await?;
            let max_frame = transport.inner.config.max_frame_size;
            Ok(BoxCloneService::new(QuicConnection {
                transport,
                endpoint,
                max_frame,
            }))
        })
    }
}

/// A connection as the producer sees it: requests go over the transport's live connection to
/// the endpoint, re-dialled after a loss.
#[derive(Clone)]
struct QuicConnection {
    transport: QuicTransport,
    endpoint: Endpoint,
    max_frame: usize,
}

impl Service<Request> for QuicConnection {
    type Response = Response;
    type Error = TransportError;
    type Future = BoxFuture<'static, Result<Response, TransportError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let transport = self.transport.clone();
        let endpoint = self.endpoint.clone();
        let limit = self.max_frame;
        Box::pin(async move {
            let frame = frame::encode_request_frames(&request, limit)?;
            let exchange = async {
                let connection = transport.live(&endpoint).await?;
                let (mut send, mut recv) = connection.open_bi().await.map_err(connection_error)?;
                send.write_all(&frame)
                    .await
                    .map_err(|e| write_error(e, limit))?;
                // The request is complete; the agent answers on the other half.
                let _ = send.finish();
                let (kind, body) = read_frame(&mut recv, limit)
                    .await
                    .map_err(|e| read_error(e, limit))?
                    .ok_or_else(|| {
                        TransportError::connection_lost("stream ended without an answer")
                    })?;
                decode_response(kind, &body).map_err(TransportError::from)
            };
            match request.deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, exchange)
                    .await
                    .unwrap_or(Err(TransportError::Timeout)),
                None => exchange.await,
            }
        })
    }
}
