//! [`QuicNetwork`]: where QUIC endpoints get their UDP sockets and addresses — the operating
//! system by default, or a simulated network (the deterministic simulation runs QUIC over
//! turmoil's UDP this way).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use streamhouse::transport::BoxFuture;

/// Resolves agent addresses and opens client UDP sockets for [`QuicTransport`]
/// (see [`QuicTransport::with_network`]); the server side takes its socket directly
/// ([`QuicServer::with_socket`]).
///
/// Sockets are quinn's [`AsyncUdpSocket`](quinn::AsyncUdpSocket); timers and tasks use tokio.
///
/// [`QuicTransport`]: crate::QuicTransport
/// [`QuicTransport::with_network`]: crate::QuicTransport::with_network
/// [`QuicServer::with_socket`]: crate::QuicServer::with_socket
pub trait QuicNetwork: Send + Sync + 'static {
    /// The address of `host:port`.
    fn resolve(&self, authority: &str) -> BoxFuture<'static, io::Result<SocketAddr>>;

    /// A client socket from which to reach `remote`.
    fn bind(
        &self,
        remote: SocketAddr,
    ) -> BoxFuture<'static, io::Result<Arc<dyn quinn::AsyncUdpSocket>>>;
}

/// A quinn endpoint over `socket`, on tokio.
pub(crate) fn endpoint(
    socket: Arc<dyn quinn::AsyncUdpSocket>,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}
