//! Accepting TCP connections within the server's bounds.
//!
//! [`Incoming`] is the stream of connections [`serve`](crate::serve) hands to tonic. Each
//! accepted socket is admitted by the shared [`ServerBounds`] (total and per-peer caps; one
//! past a cap is closed at once, counted in `streamhouse_limit_hits_total`) and wrapped in a
//! [`Conn`] that closes itself after the idle timeout without a request, with the receive
//! window [`ConnectionPass::grant_window`] gave it (which [`serve`](crate::serve) uses to pick
//! the HTTP/2 server it goes to). When `accept` fails —
//! out of descriptors (`EMFILE`/`ENFILE`), out of memory — the listener backs off instead of
//! spinning on the error, and new connections wait in the kernel's backlog meanwhile.

use futures_core::Stream;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use streamhouse::serve::{ConnectionPass, ServerBounds, ServerLimits, WindowGrant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

/// The first pause after a failed `accept`; doubled up to [`MAX_BACKOFF`] while it keeps failing.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Accepted, admitted connections from a listener.
pub(crate) struct Incoming {
    listener: TcpListener,
    bounds: ServerBounds,
    /// The HTTP/2 connection window a connection gets when the window pool has room.
    window: u64,
    backoff: Duration,
    pause: Option<Pin<Box<Sleep>>>,
}

impl Incoming {
    pub(crate) fn new(listener: TcpListener, bounds: ServerBounds, window: u32) -> Incoming {
        Incoming {
            listener,
            bounds,
            window: window.into(),
            backoff: FIRST_BACKOFF,
            pause: None,
        }
    }
}

impl Stream for Incoming {
    type Item = Result<Conn, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(pause) = &mut this.pause {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, peer)) => {
                    this.backoff = FIRST_BACKOFF;
                    match this.bounds.admit(peer.ip()) {
                        Ok(pass) => {
                            let _ = stream.set_nodelay(true);
                            let window = pass.grant_window(this.window);
                            return Poll::Ready(Some(Ok(Conn::new(
                                stream,
                                peer,
                                pass,
                                window,
                                this.bounds.limits().clone(),
                            ))));
                        }
                        Err(refused) => {
                            // Dropped: the peer sees the connection closed right away instead
                            // of a handshake that never completes.
                            tracing::debug!(%peer, %refused, "connection refused");
                        }
                    }
                }
                Err(e) => {
                    // Out of descriptors or memory (or a connection reset before it was
                    // accepted): pause so the error is not retried in a busy loop.
                    metrics::counter!("streamhouse_accept_errors_total").increment(1);
                    tracing::warn!(error = %e, pause = ?this.backoff, "accept failed");
                    this.pause = Some(Box::pin(tokio::time::sleep(this.backoff)));
                    this.backoff = (this.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// One admitted TCP connection: it holds its slot until dropped, and ends (reads fail with
/// `TimedOut`) once it has gone `idle_timeout` without a request in progress (before its
/// first request, `first_request_timeout`), or when the server closes it
/// ([`ConnectionPass::close`]).
pub(crate) struct Conn {
    stream: TcpStream,
    info: ConnInfo,
    /// Held while the connection is open; the pool gets it back when it closes.
    window: WindowGrant,
    limits: ServerLimits,
    idle_check: Pin<Box<Sleep>>,
    /// Resolves when the server asks for this connection to be closed.
    closed: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Conn {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        pass: ConnectionPass,
        window: WindowGrant,
        limits: ServerLimits,
    ) -> Conn {
        let pass = Arc::new(pass);
        let closed = {
            let pass = pass.clone();
            Box::pin(async move { pass.closed().await })
        };
        Conn {
            stream,
            info: ConnInfo { peer, pass },
            window,
            idle_check: Box::pin(tokio::time::sleep(
                limits.first_request_timeout.min(limits.idle_timeout),
            )),
            limits,
            closed,
        }
    }

    /// The HTTP/2 connection window granted to this connection.
    pub(crate) fn window(&self) -> u64 {
        self.window.bytes()
    }

    /// Whether the idle timeout has passed; re-arms the check otherwise.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        while self.idle_check.as_mut().poll(cx).is_ready() {
            let next = match self.info.pass.idle_left(&self.limits) {
                Some(Duration::ZERO) => return true,
                Some(left) => left,
                None => self.limits.idle_timeout,
            };
            let at = tokio::time::Instant::now() + next;
            self.idle_check.as_mut().reset(at);
        }
        false
    }
}

/// What the gRPC service learns about a connection (from the request's extensions).
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) pass: Arc<ConnectionPass>,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending if this.poll_idle(cx) => {
                tracing::debug!(peer = %this.info.peer, "idle connection closed");
                metrics::counter!("streamhouse_idle_connections_closed_total").increment(1);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within the idle timeout",
                )))
            }
            Poll::Pending if this.closed.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "an answer was not read within the request timeout",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
