//! [`QuicServer`]: any agent service over QUIC, one request per stream.

use crate::error::{FRAME_TOO_LARGE, IDLE, MALFORMED, READ_TIMEOUT, UNAVAILABLE, WRITE_TIMEOUT};
use crate::{QuicConfig, QuicError, ServerTls, tls};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use streamhouse::serve::{ConnectionPass, MIN_WINDOW, WindowGrant};
use streamhouse::transport::frame::{self, FrameError, decode_request, read_frame_within};
use streamhouse::transport::{AgentService, ConnectionToken, Metadata, Peer, Request};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// How long shutdown waits for requests in flight before closing connections.
const DRAIN: Duration = Duration::from_secs(10);

/// A QUIC server bound to a UDP address, ready to serve an agent.
#[derive(Debug)]
pub struct QuicServer {
    endpoint: quinn::Endpoint,
    config: QuicConfig,
}

impl QuicServer {
    /// Binds `addr` (port 0 picks one) with the certificate of `tls`.
    pub fn bind(
        addr: SocketAddr,
        config: QuicConfig,
        tls: &ServerTls,
    ) -> Result<QuicServer, QuicError> {
        let endpoint = quinn::Endpoint::server(server_config(&config, tls)?, addr)?;
        Ok(QuicServer { endpoint, config })
    }

    /// A server on a socket of your own (a simulated network's, see
    /// [`QuicNetwork`](crate::QuicNetwork)) instead of one bound by the operating system.
    pub fn with_socket(
        socket: Arc<dyn quinn::AsyncUdpSocket>,
        config: QuicConfig,
        tls: &ServerTls,
    ) -> Result<QuicServer, QuicError> {
        let endpoint = crate::network::endpoint(socket, Some(server_config(&config, tls)?))?;
        Ok(QuicServer { endpoint, config })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// A handle that closes every connection at once, without waiting for requests in flight
    /// (what a crash looks like to clients; tests use it).
    pub fn closer(&self) -> Closer {
        Closer {
            endpoint: self.endpoint.clone(),
        }
    }

    /// Serves `agent` until `shutdown` resolves; then stops accepting connections and streams,
    /// lets requests in flight finish (up to 10 s), closes every connection and returns.
    pub async fn serve(self, agent: AgentService, shutdown: impl Future<Output = ()>) {
        let (stopping, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => {
                        let peer = incoming.remote_address().ip();
                        match self.config.bounds.admit(peer) {
                            Ok(pass) => {
                                let window =
                                    pass.grant_window(self.config.connection_window.into());
                                connections.spawn(connection(
                                    incoming,
                                    Arc::new(pass),
                                    window,
                                    agent.clone(),
                                    StreamLimits {
                                        frame: self.config.max_frame_size,
                                        read_timeout: self.config.read_timeout,
                                        write_timeout: self.config.write_timeout,
                                    },
                                    self.config.bounds.limits().clone(),
                                    stop_rx.clone(),
                                ));
                            }
                            Err(refused) => {
                                // Before the handshake: refusing costs one packet.
                                tracing::debug!(%peer, %refused, "connection refused");
                                incoming.refuse();
                            }
                        }
                    }
                    None => break,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        self.endpoint.set_server_config(None);
        let _ = stopping.send(true);
        let _ = tokio::time::timeout(DRAIN, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"agent stopped");
        self.endpoint.wait_idle().await;
    }
}

/// Closes a [`QuicServer`]'s connections immediately; see [`QuicServer::closer`].
#[derive(Debug, Clone)]
pub struct Closer {
    endpoint: quinn::Endpoint,
}

impl Closer {
    /// Closes every connection now and refuses new ones.
    pub fn close_now(&self) {
        self.endpoint.set_server_config(None);
        self.endpoint
            .close(quinn::VarInt::from_u32(UNAVAILABLE), b"agent went away");
    }

    /// Waits until the closed connections have drained (the UDP socket is released once the
    /// server and every `Closer` are dropped).
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

/// What one stream may cost the server.
#[derive(Debug, Clone, Copy)]
struct StreamLimits {
    frame: usize,
    read_timeout: Duration,
    write_timeout: Duration,
}

/// One connection: its streams, each handled in its own task. Closed after `idle_timeout`
/// without a request in progress, or `first_request_timeout` before its first (QUIC
/// keep-alives alone do not keep it open). Its receive window is `window`, granted from the
/// bounds' pool and held until the connection ends (the handshake offers only the smallest).
async fn connection(
    incoming: quinn::Incoming,
    pass: Arc<ConnectionPass>,
    window: WindowGrant,
    agent: AgentService,
    stream_limits: StreamLimits,
    limits: streamhouse::serve::ServerLimits,
    mut stopping: watch::Receiver<bool>,
) {
    let Ok(connection) = incoming.await else {
        // Failed handshake (wrong ALPN, untrusted client certificate, garbage): only this
        // connection is affected.
        return;
    };
    let peer = Arc::new(peer_of(&connection).on(ConnectionToken::of(&pass)));
    connection
        .set_receive_window(quinn::VarInt::from_u64(window.bytes()).unwrap_or(quinn::VarInt::MAX));
    let mut streams = JoinSet::new();
    let idle_check = tokio::time::sleep(limits.first_request_timeout.min(limits.idle_timeout));
    tokio::pin!(idle_check);
    loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(stream(
                        send,
                        recv,
                        pass.clone(),
                        peer.clone(),
                        agent.clone(),
                        stream_limits,
                    ));
                }
                Err(_) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            () = &mut idle_check => {
                let next = match pass.idle_left(&limits) {
                    Some(Duration::ZERO) => {
                        metrics::counter!("streamhouse_idle_connections_closed_total")
                            .increment(1);
                        connection.close(quinn::VarInt::from_u32(IDLE), b"idle");
                        break;
                    }
                    Some(left) => left,
                    None => limits.idle_timeout,
                };
                idle_check.as_mut().reset(tokio::time::Instant::now() + next);
            }
            _ = stopping.changed() => break,
        }
    }
    while streams.join_next().await.is_some() {}
}

fn server_config(config: &QuicConfig, tls: &ServerTls) -> Result<quinn::ServerConfig, QuicError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls::server_config(tls)?)
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // The handshake offers the smallest window; each connection is raised to the window
    // granted it once established, so a crowd of connections shares one pool.
    let mut offered = config.clone();
    offered.connection_window = offered.connection_window.min(MIN_WINDOW as u32);
    server.transport_config(offered.transport());
    Ok(server)
}

/// The client's address and, when it presented one, its verified certificate chain.
fn peer_of(connection: &quinn::Connection) -> Peer {
    let certificates = connection
        .peer_identity()
        .and_then(|identity| {
            identity
                .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .map(|chain| chain.iter().map(|c| c.to_vec()).collect())
        .unwrap_or_default();
    Peer::at(Some(connection.remote_address())).with_certificates(certificates)
}

/// One request: read a frame (limit checked before allocating, each chunk leased from the
/// connection's request budget, the whole frame within the read timeout), answer it within the
/// write timeout, finish.
async fn stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    pass: Arc<ConnectionPass>,
    peer: Arc<Peer>,
    agent: AgentService,
    limits: StreamLimits,
) {
    let limit = limits.frame;
    let refuse = |send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, code: u32| {
        let code = quinn::VarInt::from_u32(code);
        let _ = recv.stop(code);
        let _ = send.reset(code);
    };
    let Ok(_in_flight) = pass.begin() else {
        // Too many requests in progress: refused before anything is read (retriable).
        return refuse(&mut send, &mut recv, UNAVAILABLE);
    };
    let budget = pass.requests();
    // The request's metadata frame, when it has one, then its message's frame; both within
    // the read timeout, each leased from the connection's request budget while it is read.
    let reading = async {
        let mut metadata = Metadata::new();
        let Some((mut kind, mut body, mut lease)) =
            read_frame_within(&mut recv, limit, budget).await?
        else {
            return Ok(None);
        };
        if kind == frame::HEADERS {
            metadata = frame::decode_headers(&body)?;
            drop((body, lease));
            (kind, body, lease) = read_frame_within(&mut recv, limit, budget)
                .await?
                .ok_or(FrameError::Truncated)?;
        }
        let message = decode_request(kind, &body)?;
        drop((body, lease));
        Ok::<_, FrameError>(Some((metadata, message)))
    };
    let Ok(read) = tokio::time::timeout(limits.read_timeout, reading).await else {
        // A peer that starts a message and stops holds the stream no longer than this.
        return refuse(&mut send, &mut recv, READ_TIMEOUT);
    };
    let (metadata, message) = match read {
        Ok(Some(request)) => request,
        Ok(None) => {
            let _ = send.finish();
            return;
        }
        Err(FrameError::TooLarge { .. }) => return refuse(&mut send, &mut recv, FRAME_TOO_LARGE),
        Err(_) => return refuse(&mut send, &mut recv, MALFORMED),
    };
    // The response lives until the answer is delivered: a fetch's batches count against the
    // agent's answer budget until then.
    let call = agent.oneshot(Request::received(message, metadata, peer));
    let (response, answer) = match streamhouse::serve::for_client(pass.clone(), call).await {
        Ok(response) => match frame::encode_response(&response, limit) {
            Ok(frame) => (response, frame),
            Err(_) => return refuse(&mut send, &mut recv, FRAME_TOO_LARGE),
        },
        Err(e) => {
            let _ = send.write_all(&frame::encode_error(&e.to_string())).await;
            return refuse(&mut send, &mut recv, UNAVAILABLE);
        }
    };
    let delivery = async {
        if send.write_all(&answer).await.is_ok() {
            let _ = send.finish();
            // Wait until the client has the whole answer before the stream is dropped.
            let _ = send.stopped().await;
        }
    };
    if tokio::time::timeout(limits.write_timeout, delivery)
        .await
        .is_err()
    {
        metrics::counter!("streamhouse_limit_hits_total", "limit" => "answer_delivery_time")
            .increment(1);
        refuse(&mut send, &mut recv, WRITE_TIMEOUT);
    }
    drop(response);
}
