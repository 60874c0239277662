//! [`FaultLayer`]: seeded fault injection between the producer and an agent, for tests.

use crate::rng::Rng;
use crate::transport::{BoxFuture, Request, RequestMessage, Response, TransportError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use streamhouse_proto::v1::ErrorCode;
use tower::{BoxError, Layer, Service, ServiceExt};

/// Which faults to inject, and how often. Each request draws one number from the seeded
/// generator and gets at most one of the faults, by the rates in this order.
///
/// ```
/// use streamhouse::layers::{FaultConfig, FaultLayer};
/// use streamhouse::proto::v1::ErrorCode;
///
/// let layer = FaultLayer::new(FaultConfig {
///     error_rate: 0.05,
///     error_code: ErrorCode::Unavailable,
///     drop_response_rate: 0.02,
///     ..FaultConfig::new(42)
/// });
/// let stats = layer.stats(); // how many faults actually bit
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Seed of the generator.
    pub seed: u64,
    /// Answer a produce request with `error_code` for every batch, without passing it on.
    /// Other requests fail with [`TransportError::Unavailable`].
    pub error_rate: f64,
    /// The code of injected errors.
    pub error_code: ErrorCode,
    /// Lose the request on the way: the agent never sees it, and the caller hears nothing until
    /// its deadline (or its timeout layer) ends the wait with [`TransportError::Timeout`].
    pub drop_request_rate: f64,
    /// Pass the request on, let the agent apply it, then lose the answer
    /// ([`TransportError::ConnectionLost`]): the case idempotence exists for.
    pub drop_response_rate: f64,
    /// Deliver the request twice (the second copy after the first is answered) and return the
    /// first answer.
    pub duplicate_rate: f64,
    /// Delay every request by a uniform random time up to this.
    pub max_delay: Duration,
}

impl FaultConfig {
    /// No faults, with this seed.
    pub fn new(seed: u64) -> FaultConfig {
        FaultConfig {
            seed,
            error_rate: 0.0,
            error_code: ErrorCode::Unavailable,
            drop_request_rate: 0.0,
            drop_response_rate: 0.0,
            duplicate_rate: 0.0,
            max_delay: Duration::ZERO,
        }
    }
}

/// Counts of faults injected, so a test can prove they happened.
#[derive(Debug, Default)]
pub struct FaultStats {
    requests: AtomicU64,
    errors: AtomicU64,
    lost: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
}

impl FaultStats {
    /// Requests seen.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    /// Requests answered with the injected error.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    /// Requests lost before reaching the agent.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
    /// Requests applied whose answer was lost.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    /// Requests delivered twice.
    pub fn duplicated(&self) -> u64 {
        self.duplicated.load(Ordering::Relaxed)
    }
}

/// The layer; see [`FaultConfig`].
#[derive(Debug, Clone)]
pub struct FaultLayer {
    config: Arc<FaultConfig>,
    rng: Arc<Rng>,
    stats: Arc<FaultStats>,
}

impl FaultLayer {
    /// A layer injecting the faults of `config`. All services it wraps share one generator and
    /// one set of counters.
    pub fn new(config: FaultConfig) -> FaultLayer {
        FaultLayer {
            rng: Arc::new(Rng::seeded(config.seed)),
            config: Arc::new(config),
            stats: Arc::new(FaultStats::default()),
        }
    }

    /// The counters of faults injected.
    pub fn stats(&self) -> Arc<FaultStats> {
        self.stats.clone()
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> FaultService<S> {
        FaultService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`FaultLayer`].
#[derive(Debug, Clone)]
pub struct FaultService<S> {
    inner: S,
    layer: FaultLayer,
}

enum Fault {
    None,
    Error,
    Lose,
    Drop,
    Duplicate,
}

impl<S> Service<Request> for FaultService<S>
where
    S: Service<Request, Response = Response, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let FaultLayer { config, rng, stats } = self.layer.clone();
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let roll = rng.unit();
        let delay = config.max_delay.mul_f64(rng.unit());
        let lose = config.error_rate + config.drop_request_rate;
        let fault = if roll < config.error_rate {
            Fault::Error
        } else if roll < lose {
            Fault::Lose
        } else if roll < lose + config.drop_response_rate {
            Fault::Drop
        } else if roll < lose + config.drop_response_rate + config.duplicate_rate {
            Fault::Duplicate
        } else {
            Fault::None
        };
        // Use the service that was made ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match fault {
                Fault::None => inner.call(request).await,
                Fault::Error => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    injected_error(&request, config.error_code)
                }
                Fault::Lose => {
                    stats.lost.fetch_add(1, Ordering::Relaxed);
                    match request.deadline {
                        Some(deadline) => tokio::time::sleep_until(deadline).await,
                        None => std::future::pending().await,
                    }
                    Err(TransportError::Timeout.into())
                }
                Fault::Drop => {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    let _applied = inner.call(request).await;
                    Err(TransportError::connection_lost("fault injected: answer lost").into())
                }
                Fault::Duplicate => {
                    stats.duplicated.fetch_add(1, Ordering::Relaxed);
                    let copy = request.clone();
                    let first = inner.clone().call(request).await;
                    let _second = inner.ready().await?.call(copy).await;
                    first
                }
            }
        })
    }
}

fn injected_error(request: &Request, code: ErrorCode) -> Result<Response, BoxError> {
    match &request.message {
        RequestMessage::Produce(_) => {
            Ok(Response::refusing(&request.message, code, "fault injected"))
        }
        _ => Err(TransportError::Unavailable(None).into()),
    }
}
