//! [`QuicConfig`]: frame limit, timeouts and flow-control windows.

use std::sync::Arc;
use std::time::Duration;
use streamhouse::transport::frame::MAX_FRAME;

/// QUIC settings shared by client and server. The receive windows (8 MiB per stream and per
/// connection) are what one peer can make the other buffer before it reads, so they stay
/// small; raise them for links with a large bandwidth-delay product. A server grants
/// connection windows from its bounds' pool (`ServerLimits::max_window_bytes`): the first
/// connections get `connection_window`, a crowd of them smaller ones.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QuicConfig {
    /// Largest frame (kind + message) either side accepts. Default 16 MiB.
    pub max_frame_size: usize,
    /// A connection with no traffic (keep-alives included) for this long is closed. Default 30 s.
    pub idle_timeout: Duration,
    /// Keep-alive interval. Default 10 s.
    pub keep_alive: Duration,
    /// How long the client waits for the handshake. Default 5 s.
    pub connect_timeout: Duration,
    /// Per-stream receive window. Default 8 MiB.
    pub stream_window: u32,
    /// Per-connection receive window: also what a server may buffer per connection for
    /// requests it has not read yet. Default 8 MiB (a producer's five 1 MiB requests in flight
    /// fit). A server gives it while its window pool has room, less after.
    pub connection_window: u32,
    /// Per-connection send window: what quinn buffers of answers (server) or requests (client)
    /// the peer has not acknowledged. Default 32 MiB.
    pub send_window: u64,
    /// Concurrent requests (streams) a peer may open on one connection. Default 100 (as gRPC's).
    pub max_concurrent_streams: u32,
    /// Server: longest a request's frame may take to arrive whole once its stream is open; past
    /// it the stream is reset (`reset::READ_TIMEOUT`), so a half-sent message is not held for as
    /// long as keep-alives keep the connection up. Default 30 s.
    pub read_timeout: Duration,
    /// Server: longest an answer may take to be read by the client; past it the stream is
    /// reset (`reset::WRITE_TIMEOUT`) and what the answer held is freed. Default 30 s.
    pub write_timeout: Duration,
    /// Server: connections (total, per peer), idle timeout (no request in progress) and
    /// request-byte budgets; share one
    /// [`ServerBounds`](streamhouse::serve::ServerBounds) between servers to count them once.
    pub bounds: streamhouse::serve::ServerBounds,
}

impl Default for QuicConfig {
    fn default() -> QuicConfig {
        QuicConfig {
            max_frame_size: MAX_FRAME,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            stream_window: 8 << 20,
            connection_window: 8 << 20,
            send_window: 32 << 20,
            max_concurrent_streams: 100,
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            bounds: streamhouse::serve::ServerBounds::default(),
        }
    }
}

impl QuicConfig {
    pub(crate) fn transport(&self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(quinn::IdleTimeout::try_from(self.idle_timeout).ok());
        t.keep_alive_interval(Some(self.keep_alive));
        t.stream_receive_window(quinn::VarInt::from_u32(self.stream_window));
        t.receive_window(quinn::VarInt::from_u32(self.connection_window));
        t.send_window(self.send_window);
        t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(self.max_concurrent_streams));
        t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
        Arc::new(t)
    }
}
