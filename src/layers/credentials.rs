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

/// A bearer token that is replaced before it expires: `fetch` is called at start and again
/// when four fifths of the current token's lifetime have passed (at least a second later), in
/// a background task that ends when the last clone is dropped. A failed fetch keeps the
/// current token and is tried again after 2 s, backing off to about a minute.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::{Duration, SystemTime};
/// use streamhouse::layers::RefreshingToken;
///
/// // E.g. a token from an identity provider, or a file a secret manager rewrites.
/// let token = RefreshingToken::start(|| async {
///     Ok(("fresh-token".to_string(), SystemTime::now() + Duration::from_secs(3600)))
/// })
/// .await
/// .unwrap();
/// assert_eq!(token.current(), "fresh-token");
/// # }
/// ```
#[derive(Clone)]
pub struct RefreshingToken {
    value: Arc<std::sync::RwLock<Arc<str>>>,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for RefreshingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshingToken(…)")
    }
}

/// What a token fetch returns: the token and when it expires.
pub type FetchedToken = Result<(String, std::time::SystemTime), String>;

impl RefreshingToken {
    /// Fetches the first token (failing if that fails or it cannot travel as metadata), then
    /// keeps it fresh.
    pub async fn start<F, Fut>(fetch: F) -> Result<RefreshingToken, String>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = FetchedToken> + Send + 'static,
    {
        let (token, expires) = fetch().await?;
        let value = Arc::new(std::sync::RwLock::new(bearer(&token)?));
        let shared = value.clone();
        let task = tokio::spawn(async move {
            let mut expires = expires;
            let mut failures = 0u32;
            loop {
                let left = expires
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                let wait = if failures == 0 {
                    (left * 4 / 5).max(std::time::Duration::from_secs(1))
                } else {
                    std::time::Duration::from_secs(1 << failures.min(6))
                };
                tokio::time::sleep(wait).await;
                match fetch().await.and_then(|(t, e)| Ok((bearer(&t)?, e))) {
                    Ok((token, at)) => {
                        *shared
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = token;
                        expires = at;
                        failures = 0;
                    }
                    Err(why) => {
                        failures += 1;
                        tracing::warn!(%why, failures, "token refresh failed; keeping the current token");
                    }
                }
            }
        });
        Ok(RefreshingToken {
            value,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }

    /// The token in force.
    pub fn current(&self) -> String {
        let value = self
            .value
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        value.strip_prefix("Bearer ").unwrap_or(&value).to_owned()
    }
}

/// `Bearer TOKEN`, refused if metadata cannot carry it.
fn bearer(token: &str) -> Result<Arc<str>, String> {
    BearerToken::new(token)
        .map(|t| t.value)
        .map_err(|_| "the token is empty or holds characters metadata cannot carry".to_owned())
}

impl Credentials for RefreshingToken {
    fn apply(&self, metadata: &mut Metadata) {
        let value = self
            .value
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let _ = metadata.set("authorization", &*value);
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

    #[tokio::test(start_paused = true)]
    async fn a_refreshing_token_is_replaced_before_it_expires_and_kept_when_a_fetch_fails() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::time::{Duration, SystemTime};
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        // Expiries are wall-clock instants; the paused tokio clock drives the waits. Each token
        // lives 100 s from when it was fetched, on the paused clock's reckoning.
        let start = tokio::time::Instant::now();
        let token = RefreshingToken::start(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let lived = start.elapsed();
            async move {
                match n {
                    // The second fetch fails: the first token stays.
                    1 => Err("identity provider down".to_owned()),
                    _ => Ok((
                        format!("t{n}"),
                        SystemTime::now() + Duration::from_secs(100) - lived,
                    )),
                }
            }
        })
        .await
        .unwrap();
        let seen = |t: &RefreshingToken| {
            let mut m = Metadata::new();
            t.apply(&mut m);
            m.get("authorization").unwrap().to_owned()
        };
        assert_eq!(seen(&token), "Bearer t0");
        assert_eq!(format!("{token:?}"), "RefreshingToken(…)");
        // Four fifths of the lifetime (80 s): a refresh, which fails; the token stays.
        tokio::time::sleep(Duration::from_secs(81)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(seen(&token), "Bearer t0");
        // The retry, two seconds later, succeeds.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(seen(&token), "Bearer t2");
        assert_eq!(token.current(), "t2");
        let refused =
            RefreshingToken::start(|| async { Ok(("two words".to_owned(), SystemTime::now())) })
                .await;
        assert!(refused.is_err());
    }
}
