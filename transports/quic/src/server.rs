//! [`QuicServer`]: any agent service over QUIC, one request per stream.

use crate::error::{FRAME_TOO_LARGE, MALFORMED, READ_TIMEOUT, UNAVAILABLE};
use crate::{QuicConfig, QuicError, ServerTls, tls};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use streamhouse::transport::frame::{self, FrameError, decode_request, read_frame};
use streamhouse::transport::{AgentService, Request};
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
                        connections.spawn(connection(
                            incoming,
                            agent.clone(),
                            Limits {
                                frame: self.config.max_frame_size,
                                read_timeout: self.config.read_timeout,
                            },
                            stop_rx.clone(),
                        ));
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
struct Limits {
    frame: usize,
    read_timeout: std::time::Duration,
}

/// One connection: its streams, each handled in its own task.
async fn connection(
    incoming: quinn::Incoming,
    agent: AgentService,
    limit: Limits,
    mut stopping: watch::Receiver<bool>,
) {
    let Ok(connection) = incoming.await else {
        // Failed handshake (wrong ALPN, untrusted client certificate, garbage): only this
        // connection is affected.
        return;
    };
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(stream(send, recv, agent.clone(), limit));
                }
                Err(_) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            _ = stopping.changed() => break,
        }
    }
    while streams.join_next().await.is_some() {}
}

fn server_config(config: &QuicConfig, tls: &ServerTls) -> Result<quinn::ServerConfig, QuicError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls::server_config(tls)?)
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(config.transport());
    Ok(server)
}

/// One request: read a frame (limit checked before allocating, the whole frame within the
/// read timeout), answer it, finish.
async fn stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    agent: AgentService,
    limits: Limits,
) {
    let limit = limits.frame;
    let refuse = |send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, code: u32| {
        let code = quinn::VarInt::from_u32(code);
        let _ = recv.stop(code);
        let _ = send.reset(code);
    };
    let Ok(read) = tokio::time::timeout(limits.read_timeout, read_frame(&mut recv, limit)).await
    else {
        // A peer that starts a message and stops holds the stream no longer than this.
        return refuse(&mut send, &mut recv, READ_TIMEOUT);
    };
    let request = match read {
        Ok(Some((kind, body))) => match decode_request(kind, &body) {
            Ok(message) => message,
            Err(_) => return refuse(&mut send, &mut recv, MALFORMED),
        },
        Ok(None) => {
            let _ = send.finish();
            return;
        }
        Err(FrameError::TooLarge { .. }) => return refuse(&mut send, &mut recv, FRAME_TOO_LARGE),
        Err(_) => return refuse(&mut send, &mut recv, MALFORMED),
    };
    let answer = match agent.oneshot(Request::new(request)).await {
        Ok(response) => match frame::encode_response(&response, limit) {
            Ok(frame) => frame,
            Err(_) => return refuse(&mut send, &mut recv, FRAME_TOO_LARGE),
        },
        Err(e) => {
            let _ = send.write_all(&frame::encode_error(&e.to_string())).await;
            return refuse(&mut send, &mut recv, UNAVAILABLE);
        }
    };
    if send.write_all(&answer).await.is_ok() {
        let _ = send.finish();
        // Wait until the client has the whole answer before the stream is dropped.
        let _ = send.stopped().await;
    }
}
