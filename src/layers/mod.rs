//! Middleware around agent connections: retry, timeout, fault injection — tower layers.
//!
//! Each agent connection is wrapped once, outermost first:
//!
//! ```text
//! Retry(RetryPolicy) → Timeout(request_timeout) → user layers (e.g. FaultLayer) → Connection
//! ```
//!
//! - [`RetryPolicy`] (a `tower::retry::Policy`) retries a whole request after a *transport*
//!   error that [`TransportError::is_retriable`](crate::transport::TransportError) allows, with
//!   jittered exponential backoff, never past the request's deadline. Refusals inside a response
//!   (an `ErrorCode` per batch) are the sender's to retry, batch by batch.
//! - tower's own `Timeout` bounds each attempt by `request_timeout`.
//! - [`CredentialsLayer`] writes a [`Credentials`] provider's credentials (a [`BearerToken`])
//!   into each request's metadata; [`WithCredentials`] puts it around a whole transport, so
//!   discovery and reads carry them too.
//! - [`FaultLayer`] injects seeded faults for tests: error codes, lost answers after the agent
//!   applied the request, duplicated requests, delay.
//!
//! Users add their own layers with
//! [`ProducerBuilder::layer`](crate::producer::ProducerBuilder::layer); they sit between the
//! timeout and the connection, over the type-erased [`BoxConnection`].

mod credentials;
mod fault;
mod retry;

pub use credentials::{
    ApplyCredentials, BearerToken, Credentials, CredentialsLayer, FetchedToken, RefreshingToken,
    WithCredentials,
};
pub use fault::{FaultConfig, FaultLayer, FaultService, FaultStats};
pub use retry::{Backoff, RetryPolicy};
pub(crate) use retry::{is_retriable, may_have_been_applied};

use crate::transport::{Connection, Request, Response};
use std::sync::Arc;
use std::time::Duration;
use tower::util::BoxCloneService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// A connection after layering: errors are `tower::BoxError` (a [`TransportError`], or a
/// layer's own, such as tower's `Elapsed`).
///
/// [`TransportError`]: crate::transport::TransportError
pub type BoxConnection = BoxCloneService<Request, Response, BoxError>;

/// A user layer, type-erased.
pub(crate) type LayerFn = Arc<dyn Fn(BoxConnection) -> BoxConnection + Send + Sync>;

/// Wraps a fresh connection in the producer's stack.
pub(crate) fn stack(
    connection: Connection,
    user_layers: &[LayerFn],
    request_timeout: Duration,
    retry: RetryPolicy,
) -> BoxConnection {
    let mut service = BoxCloneService::new(connection.map_err(BoxError::from));
    // The first layer added is the outermost of the user layers, as with ServiceBuilder.
    for layer in user_layers.iter().rev() {
        service = layer(service);
    }
    BoxCloneService::new(
        ServiceBuilder::new()
            .retry(retry)
            .timeout(request_timeout)
            .service(service),
    )
}
