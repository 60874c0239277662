//! The transport seam: how a producer reaches an agent.
//!
//! A [`Transport`] turns an [`Endpoint`] into a [`Connection`]: a
//! `tower::Service<Request, Response = Response, Error = TransportError>` carrying the protocol
//! messages of `streamhouse-proto`. Everything above it — retry, timeout, fault injection, the
//! producer's sender — is written against that service, so gRPC, QUIC and the in-memory mock are
//! interchangeable. A transport crate provides two things: a client (this trait) and a server
//! adaptor that drives an agent service; the mock does both in process.
//!
//! Runtime choice goes through the type-erased [`Connection`] (`BoxCloneService`); a transport
//! known at compile time can still be used generically through [`Transport`] itself.
//!
//! # Example: a transport that answers every request itself
//!
//! ```
//! use streamhouse::proto::v1::MetadataResponse;
//! use streamhouse::transport::{BoxFuture, Connection, Endpoint, Response, Transport, TransportError};
//! use tower::{service_fn, util::BoxCloneService};
//!
//! struct Canned;
//!
//! impl Transport for Canned {
//!     fn connect(&self, _: &Endpoint) -> BoxFuture<'static, Result<Connection, TransportError>> {
//!         let svc = service_fn(|_req| async {
//!             Ok::<_, TransportError>(Response::Metadata(MetadataResponse::default()))
//!         });
//!         Box::pin(async move { Ok(BoxCloneService::new(svc)) })
//!     }
//! }
//! ```

mod endpoint;
mod error;
pub mod frame;
mod message;
mod metadata;
mod schemes;
pub mod tls;

pub use endpoint::{Endpoint, EndpointError};
pub use error::TransportError;
pub use message::{Request, RequestMessage, Response};
pub use metadata::{ConnectionToken, Metadata, MetadataError, Peer};
pub use schemes::SchemeTransport;

use std::future::Future;
use std::pin::Pin;
use tower::BoxError;
use tower::util::{BoxCloneService, BoxCloneSyncService};

/// A boxed, sendable future (the shape trait objects return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One agent connection: the tower service every layer wraps. Cloning it is cheap and shares
/// the underlying connection.
pub type Connection = BoxCloneService<Request, Response, TransportError>;

/// An agent as a transport's server adaptor drives it: a cloneable, shareable service from
/// requests to responses. The reference agent and the mock agent both provide one; an error
/// means the agent could not handle the request at all (shutting down) — refusals travel as
/// error codes inside the response.
pub type AgentService = BoxCloneSyncService<Request, Response, BoxError>;

/// Opens connections to agents.
///
/// Object safe: the producer holds it as `Arc<dyn Transport>`. `connect` should fail fast with
/// [`TransportError::Connect`] when the agent is unreachable; reconnecting an established
/// connection after it drops is the connection's own business.
pub trait Transport: Send + Sync + 'static {
    /// Opens (or reuses) a connection to `endpoint`.
    fn connect(
        &self,
        endpoint: &Endpoint,
    ) -> BoxFuture<'static, Result<Connection, TransportError>>;
}

impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    fn connect(
        &self,
        endpoint: &Endpoint,
    ) -> BoxFuture<'static, Result<Connection, TransportError>> {
        (**self).connect(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _object_safe(_: &dyn Transport) {}
}
