//! Credentials on every request: a [`Credentials`] provider writes them into each request's
//! metadata, as a tower layer ([`CredentialsLayer`]) or around a whole transport
//! ([`WithCredentials`]) so that produce, metadata and fetch requests all carry them.
//!
//! ```
//! use std::sync::Arc;
//! use streamhouse::layers::{BearerToken, WithCredentials};
//! use streamhouse::mock::MockTransport;
//!
//! let token = BearerToken::new("s3cret").unwrap();
//! // Every connection this transport opens sends `authorization: Bearer s3cret`.
//! let transport = WithCredentials::new(MockTransport::new(), Arc::new(token));
//! ```

use crate::transport::{
    BoxFuture, Connection, Endpoint, Metadata, MetadataError, Request, Transport, TransportError,
};
use std::sync::Arc;
use tower::Layer;
use tower::util::BoxCloneService;

/// Writes credentials into a request's metadata. Called for every request, so it reads what
/// it holds (a provider that refreshes a token does so in the background and swaps it in).
pub trait Credentials: Send + Sync + 'static {
    /// Adds the credentials to `metadata`.
    fn apply(&self, metadata: &mut Metadata);
}

/// A static bearer token: `authorization: Bearer TOKEN`.
#[derive(Clone)]
pub struct BearerToken {
    value: Arc<str>,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(…)") // never the secret
    }
}

impl BearerToken {
    /// A bearer token, refused up front if metadata cannot carry it (spaces, control
    /// characters, non-ASCII).
    pub fn new(token: &str) -> Result<BearerToken, MetadataError> {
        let value = format!("Bearer {token}");
        if token.is_empty() || token.contains(' ') || !Metadata::valid_value(&value) {
            return Err(MetadataError::InvalidValue("authorization".into()));
        }
        Ok(BearerToken {
            value: value.into(),
        })
    }
}

impl Credentials for BearerToken {
    fn apply(&self, metadata: &mut Metadata) {
        // Checked in `new`.
        let _ = metadata.set("authorization", &*self.value);
    }
}

/// A tower layer that applies [`Credentials`] to every request.
#[derive(Clone)]
pub struct CredentialsLayer {
    credentials: Arc<dyn Credentials>,
}

impl CredentialsLayer {
    /// The layer for `credentials`.
    pub fn new(credentials: Arc<dyn Credentials>) -> CredentialsLayer {
        CredentialsLayer { credentials }
    }
}

impl<S> Layer<S> for CredentialsLayer {
    type Service = ApplyCredentials<S>;

    fn layer(&self, inner: S) -> ApplyCredentials<S> {
        ApplyCredentials {
            inner,
            credentials: self.credentials.clone(),
        }
    }
}

/// The service [`CredentialsLayer`] makes.
#[derive(Clone)]
pub struct ApplyCredentials<S> {
    inner: S,
    credentials: Arc<dyn Credentials>,
}

impl<S: tower::Service<Request>> tower::Service<Request> for ApplyCredentials<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> S::Future {
        self.credentials.apply(&mut request.metadata);
        self.inner.call(request)
    }
}

/// A transport whose every connection applies [`Credentials`]: everything that talks through
/// it — the producer's requests, `Bootstrap`'s metadata requests, a `PartitionReader`'s
/// fetches — carries them.
#[derive(Clone)]
pub struct WithCredentials<T> {
    inner: T,
    layer: CredentialsLayer,
}

impl<T: Transport> WithCredentials<T> {
    /// `inner`, with `credentials` on every request.
    pub fn new(inner: T, credentials: Arc<dyn Credentials>) -> WithCredentials<T> {
        WithCredentials {
            inner,
            layer: CredentialsLayer::new(credentials),
        }
    }
}

impl<T: Transport> Transport for WithCredentials<T> {
    fn connect(
        &self,
        endpoint: &Endpoint,
    ) -> BoxFuture<'static, Result<Connection, TransportError>> {
        let connecting = self.inner.connect(endpoint);
        let layer = self.layer.clone();
        Box::pin(async move {
            let connection = connecting.await?;
            Ok(BoxCloneService::new(layer.layer(connection)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{RequestMessage, Response};
    use streamhouse_proto::v1::{MetadataRequest, MetadataResponse};
    use tower::ServiceExt;

    #[tokio::test]
    async fn the_token_replaces_any_authorization_the_request_had() {
        let token = BearerToken::new("abc.def").unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let inner = tower::service_fn(move |r: Request| {
            record.lock().unwrap().push(r.metadata.clone());
            async { Ok::<_, TransportError>(Response::Metadata(MetadataResponse::default())) }
        });
        let service = CredentialsLayer::new(Arc::new(token)).layer(inner);
        let mut request = Request::new(RequestMessage::Metadata(MetadataRequest::default()));
        request
            .metadata
            .insert("authorization", "Bearer old")
            .unwrap();
        request.metadata.insert("x-keep", "1").unwrap();
        service.oneshot(request).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen[0].iter().collect::<Vec<_>>(),
            vec![("x-keep", "1"), ("authorization", "Bearer abc.def")]
        );
        assert!(BearerToken::new("two words").is_err());
        assert!(BearerToken::new("").is_err());
        assert!(BearerToken::new("nl\n").is_err());
        assert_eq!(
            format!("{:?}", BearerToken::new("abc").unwrap()),
            "BearerToken(…)"
        );
    }
}
