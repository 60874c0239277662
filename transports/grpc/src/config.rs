//! [`GrpcConfig`]: limits, timeouts and HTTP/2 tuning shared by client and server.

use std::time::Duration;

/// gRPC settings. The defaults suit batch traffic: messages up to 16 MiB (above the producer's
/// 1 MiB `max_request_size`, and a bound on what one peer can make the other buffer), HTTP/2
/// windows of 2 MiB per stream and 8 MiB per connection (five 1 MiB requests in flight fit; they are also what
/// a server buffers per connection before reading, so raise them only for links with a large
/// bandwidth-delay product), and keep-alive pings so a dead peer is noticed within seconds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GrpcConfig {
    /// Largest message either side accepts or sends. Default 16 MiB.
    pub max_message_size: usize,
    /// How long to wait for a TCP (and TLS) connection. Default 5 s.
    pub connect_timeout: Duration,
    /// HTTP/2 ping interval on idle and busy connections. Default 10 s.
    pub keep_alive_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped. Default 5 s.
    pub keep_alive_timeout: Duration,
    /// HTTP/2 initial stream window. Default 2 MiB.
    pub stream_window: u32,
    /// HTTP/2 initial connection window: also what a server may buffer per connection for
    /// requests it has not read yet (HTTP/2 takes whatever the window allows). Default 8 MiB
    /// (a producer's five requests in flight fit). [`serve`](crate::serve) gives it while the
    /// bounds' window pool has room and smaller windows after, so a crowd of connections cannot
    /// make it hold connections × this.
    pub connection_window: u32,
    /// Server: streams one connection may have open at once (HTTP/2
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`). Default 100.
    pub max_concurrent_streams: u32,
    /// Server: longest a request may take, reading its message included — a client that sends
    /// half a message and stops holds the stream at most this long. Above the agent's own
    /// longest wait (a fetch's 30 s). Default 60 s.
    pub request_timeout: Duration,
    /// Server: connections (total, per peer), idle timeout and request-byte budgets; share one
    /// [`ServerBounds`](streamhouse::serve::ServerBounds) between servers to count them once.
    pub bounds: streamhouse::serve::ServerBounds,
    /// Client TLS settings; required for `grpcs://` endpoints.
    #[cfg(feature = "tls")]
    pub client_tls: Option<crate::ClientTls>,
    /// Server TLS settings; when set, [`serve`](crate::serve) accepts only TLS.
    #[cfg(feature = "tls")]
    pub server_tls: Option<crate::ServerTls>,
}

impl Default for GrpcConfig {
    fn default() -> GrpcConfig {
        GrpcConfig {
            max_message_size: 16 << 20,
            connect_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            stream_window: 2 << 20,
            connection_window: 8 << 20,
            max_concurrent_streams: 100,
            request_timeout: Duration::from_secs(60),
            bounds: streamhouse::serve::ServerBounds::default(),
            #[cfg(feature = "tls")]
            client_tls: None,
            #[cfg(feature = "tls")]
            server_tls: None,
        }
    }
}
