//! gRPC transport for StreamHouse, on tonic.
//!
//! - [`GrpcTransport`] is a [`Transport`](streamhouse::transport::Transport): one HTTP/2 channel
//!   per agent endpoint (`grpc://host:port`, or `grpcs://` with the `tls` feature), with
//!   connect timeout, HTTP/2 keep-alive, explicit message size limits and window sizes. Each
//!   request becomes one unary RPC of the `streamhouse.v1.Agent` service; a tonic `Status` is
//!   mapped to a typed [`TransportError`](streamhouse::transport::TransportError) so retry
//!   decisions work from its kind.
//! - [`serve`] drives any [`AgentService`](streamhouse::transport::AgentService) — the reference
//!   agent, or the mock agent in tests — as that gRPC service on a listener, until a shutdown
//!   future resolves; [`serve_incoming`] does the same on any stream of accepted connections,
//!   and [`GrpcTransport::with_dialer`] dials through your code instead of TCP (the
//!   deterministic simulation runs both over turmoil's simulated network).
//!
//! Reconnecting is layered: tonic re-dials a dropped HTTP/2 connection on the next call, and the
//! producer's sender drops a connection that failed and dials again after a jittered backoff.
//!
//! # Feature flags
//!
//! - `tls`: rustls with the ring provider (no aws-lc, no cmake). Server certificate, optional
//!   client certificates (mTLS), and `grpcs://` endpoints.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use streamhouse::mock::MockAgent;
//! use streamhouse::producer::{Producer, ProducerRecord};
//! use streamhouse::discovery::StaticDiscovery;
//! use streamhouse_grpc::{GrpcConfig, GrpcTransport};
//!
//! // An agent served over gRPC on a loopback port.
//! let agent = MockAgent::new().with_topic("t", 1);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let endpoint = format!("grpc://{}", listener.local_addr()?).parse()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(streamhouse_grpc::serve(
//!     agent.service(), listener, GrpcConfig::default(), async { let _ = stopped.await; },
//! ));
//!
//! let producer = Producer::builder(
//!     GrpcTransport::new(GrpcConfig::default()),
//!     StaticDiscovery::new().with_topic("t", 1, &endpoint),
//! ).build()?;
//! let meta = producer.send_and_wait(ProducerRecord::new("t", b"over the wire")).await?;
//! assert_eq!(meta.offset, 0);
//! producer.close(std::time::Duration::from_secs(5)).await?;
//! let _ = stop.send(());
//! server.await??;
//! # Ok(()) }
//! ```

mod bounds;
mod client;
mod config;
mod incoming;
mod server;
mod status;
#[cfg(feature = "tls")]
mod tls;

pub use client::{DialedIo, Dialer, GrpcTransport};
pub use config::GrpcConfig;
pub use server::{ServeError, serve, serve_incoming};
#[cfg(feature = "tls")]
pub use streamhouse::transport::tls::{ClientTls, ServerTls};
/// The trait a stream served by [`serve_incoming`] implements, to report its peer.
pub use tonic::transport::server::Connected;
