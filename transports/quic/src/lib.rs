//! QUIC transport for StreamHouse, on quinn with rustls (ring).
//!
//! - [`QuicTransport`] is a [`Transport`](streamhouse::transport::Transport) for `quic://`
//!   endpoints: one QUIC connection per agent, one bidirectional stream per request carrying one
//!   length-prefixed frame each way ([`streamhouse::transport::frame`]: the same protobuf
//!   messages gRPC carries), ALPN `streamhouse/1`, idle timeout and keep-alive, 0-RTT off (a
//!   replayed produce request could be applied twice).
//! - [`QuicServer`] drives any [`AgentService`](streamhouse::transport::AgentService): every
//!   stream is read with the frame limit checked before allocating; a bad stream is reset with an
//!   error code and only that stream ends.
//! - Certificates come from PEM files ([`ClientTls`], [`ServerTls`]); [`dev_certificate`] writes
//!   a self-signed one for development. Certificate verification is never skipped.
//!
//! Stream error codes (QUIC application codes on `RESET_STREAM` / `STOP_SENDING`):
//!
//! | code | meaning | client sees |
//! |---:|---|---|
//! | 1 | frame over the limit | `TransportError::FrameTooLarge` |
//! | 2 | malformed frame or message | `TransportError::Protocol` |
//! | 3 | agent shutting down | `TransportError::Unavailable` |
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use streamhouse::discovery::StaticDiscovery;
//! use streamhouse::mock::MockAgent;
//! use streamhouse::producer::{Producer, ProducerRecord};
//! use streamhouse_quic::{dev_certificate, ClientTls, QuicConfig, QuicServer, QuicTransport, ServerTls};
//!
//! let certs = tempfile::tempdir()?;
//! let dev = dev_certificate(certs.path())?;
//! let agent = MockAgent::new().with_topic("t", 1);
//! let server = QuicServer::bind("127.0.0.1:0".parse()?, QuicConfig::default(), &ServerTls::from_files(&dev.cert, &dev.key)?)?;
//! let endpoint = format!("quic://localhost:{}", server.local_addr()?.port()).parse()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let serving = tokio::spawn(server.serve(agent.service(), async { let _ = stopped.await; }));
//!
//! let transport = QuicTransport::new(QuicConfig::default(), &ClientTls::from_ca_file(&dev.cert)?)?;
//! let producer = Producer::builder(transport, StaticDiscovery::new().with_topic("t", 1, &endpoint)).build()?;
//! let meta = producer.send_and_wait(ProducerRecord::new("t", b"over quic")).await?;
//! assert_eq!(meta.offset, 0);
//! producer.close(std::time::Duration::from_secs(5)).await?;
//! let _ = stop.send(());
//! serving.await?;
//! # Ok(()) }
//! ```

mod client;
mod config;
mod error;
mod network;
mod server;
mod tls;

pub use client::QuicTransport;
pub use config::QuicConfig;
pub use error::QuicError;
pub use network::QuicNetwork;
/// The quinn crate this transport is built on, for callers of
/// [`QuicTransport::open_raw_stream`].
pub use quinn;
pub use server::{Closer, QuicServer};
pub use streamhouse::transport::tls::{ClientTls, ServerTls};
pub use tls::{ALPN, DevCertificate, dev_certificate};

/// The QUIC application error codes the server resets a stream with (see the table above).
pub mod reset {
    pub use crate::error::{
        FRAME_TOO_LARGE, IDLE, MALFORMED, READ_TIMEOUT, UNAVAILABLE, WRITE_TIMEOUT,
    };
}
