//! [`SchemeTransport`]: one transport per URL scheme, chosen at run time.

use super::{BoxFuture, Connection, Endpoint, Transport, TransportError};
use std::sync::Arc;

/// Routes each endpoint to the transport registered for its scheme, so one program speaks
/// every transport it was built with: `grpc://` endpoints go over gRPC, `quic://` over QUIC.
/// An endpoint whose scheme has no transport fails with
/// [`TransportError::UnsupportedEndpoint`].
///
/// ```
/// use streamhouse::mock::MockTransport;
/// use streamhouse::transport::SchemeTransport;
///
/// let transport = SchemeTransport::new().with("mock", MockTransport::new());
/// assert_eq!(transport.schemes().collect::<Vec<_>>(), ["mock"]);
/// ```
#[derive(Clone, Default)]
pub struct SchemeTransport {
    transports: Vec<(String, Arc<dyn Transport>)>,
}

impl std::fmt::Debug for SchemeTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.schemes()).finish()
    }
}

impl SchemeTransport {
    /// No schemes yet.
    pub fn new() -> SchemeTransport {
        SchemeTransport::default()
    }

    /// Uses `transport` for endpoints with `scheme` (replacing an earlier one).
    #[must_use]
    pub fn with(self, scheme: &str, transport: impl Transport) -> SchemeTransport {
        self.with_arc(scheme, Arc::new(transport))
    }

    /// Uses a shared `transport` for endpoints with `scheme`.
    #[must_use]
    pub fn with_arc(mut self, scheme: &str, transport: Arc<dyn Transport>) -> SchemeTransport {
        self.transports.retain(|(s, _)| s != scheme);
        self.transports.push((scheme.to_owned(), transport));
        self
    }

    /// The schemes served, in registration order.
    pub fn schemes(&self) -> impl Iterator<Item = &str> {
        self.transports.iter().map(|(s, _)| s.as_str())
    }
}

impl Transport for SchemeTransport {
    fn connect(
        &self,
        endpoint: &Endpoint,
    ) -> BoxFuture<'static, Result<Connection, TransportError>> {
        match self.transports.iter().find(|(s, _)| s == endpoint.scheme()) {
            Some((_, transport)) => transport.connect(endpoint),
            None => {
                let error = TransportError::UnsupportedEndpoint(endpoint.to_string());
                Box::pin(async move { Err(error) })
            }
        }
    }
}
