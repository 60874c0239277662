//! [`RetryPolicy`]: retry transport failures with jittered exponential backoff, within the
//! request's deadline.

use crate::rng::Rng;
use crate::transport::{Request, Response, TransportError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower::BoxError;
use tower::retry::Policy;

/// Exponential backoff with ±20 % jitter (as Kafka's `retry.backoff.ms` /
/// `retry.backoff.max.ms`).
///
/// ```
/// use std::time::Duration;
/// use streamhouse::layers::Backoff;
///
/// let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
/// assert_eq!(b.base(0), Duration::from_millis(100));
/// assert_eq!(b.base(3), Duration::from_millis(800));
/// assert_eq!(b.base(10), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// Doubling from `initial`, capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
        }
    }

    /// The backoff before retry number `attempt + 1`, without jitter.
    pub fn base(&self, attempt: u32) -> Duration {
        self.initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max)
    }

    /// The backoff with jitter; `unit` is uniform in `[0, 1)`.
    pub fn jittered(&self, attempt: u32, unit: f64) -> Duration {
        self.base(attempt).mul_f64(0.8 + 0.4 * unit).min(self.max)
    }
}

/// A `tower::retry::Policy` for agent requests.
///
/// Retries when the error is retriable by kind — a [`TransportError`] whose
/// [`is_retriable`](TransportError::is_retriable) holds, or tower's timeout — and never past
/// [`Request::deadline`]: a retry that could not start before it is not attempted. Responses
/// are never retried here (per-batch codes are the sender's business). `max_retries` bounds
/// the attempts too, deadline or not.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    backoff: Backoff,
    attempt: u32,
    max_retries: u32,
    rng: Arc<Rng>,
    retried: Option<Arc<AtomicU64>>,
    at_most_once: bool,
    retry_timeouts: bool,
}

impl RetryPolicy {
    /// Retries with `backoff`, at most 10 times.
    pub fn new(backoff: Backoff) -> RetryPolicy {
        RetryPolicy {
            backoff,
            attempt: 0,
            max_retries: 10,
            rng: Arc::new(Rng::from_entropy()),
            retried: None,
            at_most_once: false,
            retry_timeouts: true,
        }
    }

    /// Bounds the retries of one request (its deadline may end them sooner).
    #[must_use]
    pub fn max_retries(mut self, max_retries: u32) -> RetryPolicy {
        self.max_retries = max_retries;
        self
    }

    /// Counts every retry in `counter` (shared by all clones of the policy).
    #[must_use]
    pub fn with_counter(mut self, counter: Arc<AtomicU64>) -> RetryPolicy {
        self.retried = Some(counter);
        self
    }

    /// Never retries a request the agent may have applied (a lost connection, a timeout): only
    /// failures that say nothing was sent. For producers without idempotence that must not
    /// duplicate (`acks=none` is at most once).
    #[must_use]
    pub fn at_most_once(mut self) -> RetryPolicy {
        self.at_most_once = true;
        self
    }

    /// Never retries a request whose attempt timed out: the caller learns at once. An agent
    /// that does not answer within the request timeout is more likely stopped or cut off than
    /// slow, and the producer's sender would rather ask discovery again (a group may have
    /// moved the partition) than spend two more timeouts on the same agent.
    #[must_use]
    pub fn without_timeout_retries(mut self) -> RetryPolicy {
        self.retry_timeouts = false;
        self
    }

    /// Seeds the jitter, for repeatable tests.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> RetryPolicy {
        self.rng = Arc::new(Rng::seeded(seed));
        self
    }
}

impl Policy<Request, Response, BoxError> for RetryPolicy {
    type Future = Sleep;

    fn retry(
        &mut self,
        request: &mut Request,
        result: &mut Result<Response, BoxError>,
    ) -> Option<Sleep> {
        let error = result.as_ref().err()?;
        if !is_retriable(error.as_ref())
            || (self.at_most_once && may_have_been_applied(error.as_ref()))
            || (!self.retry_timeouts && is_timeout(error.as_ref()))
        {
            return None;
        }
        let delay = self.backoff.jittered(self.attempt, self.rng.unit());
        let start = Instant::now() + delay;
        if self.attempt >= self.max_retries
            || request.deadline.is_some_and(|deadline| start >= deadline)
        {
            return None;
        }
        self.attempt += 1;
        if let Some(counter) = &self.retried {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Some(tokio::time::sleep_until(start))
    }

    fn clone_request(&mut self, request: &Request) -> Option<Request> {
        Some(request.clone())
    }
}

/// Whether a layered connection's error may go away on retry.
pub(crate) fn is_retriable(error: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(e) = error.downcast_ref::<TransportError>() {
        return e.is_retriable();
    }
    error.is::<tower::timeout::error::Elapsed>()
}

/// Whether the attempt ran out of time (tower's timeout layer, or the transport's own).
fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    error.is::<tower::timeout::error::Elapsed>()
        || matches!(
            error.downcast_ref::<TransportError>(),
            Some(TransportError::Timeout)
        )
}

/// Whether a layered connection's error leaves open that the agent applied the request
/// (anything not known to have stopped before sending).
pub(crate) fn may_have_been_applied(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<TransportError>()
        .is_none_or(TransportError::may_have_been_applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{RequestMessage, Response};
    use std::sync::atomic::{AtomicU32, Ordering};
    use streamhouse_proto::v1::{MetadataRequest, MetadataResponse};
    use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

    fn request(deadline: Option<Instant>) -> Request {
        let mut request = Request::new(RequestMessage::Metadata(MetadataRequest::default()));
        request.deadline = deadline;
        request
    }

    /// A service failing its first `failures` calls with `error()`.
    fn flaky(
        failures: u32,
        error: fn() -> TransportError,
    ) -> (
        impl Service<Request, Response = Response, Error = BoxError> + Clone,
        Arc<AtomicU32>,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let svc = service_fn(move |_req: Request| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < failures {
                    Err(BoxError::from(error()))
                } else {
                    Ok(Response::Metadata(MetadataResponse::default()))
                }
            }
        });
        (svc, calls)
    }

    fn policy() -> RetryPolicy {
        RetryPolicy::new(Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
        ))
        .with_seed(1)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_retriable_errors_with_growing_backoff() {
        let (svc, calls) = flaky(3, || TransportError::Timeout);
        let svc = ServiceBuilder::new().retry(policy()).service(svc);
        let start = Instant::now();
        svc.oneshot(request(None)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // 100 + 200 + 400 ms, each ±20 %.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(560) && waited <= Duration::from_millis(840),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_errors_are_not_retried() {
        let (svc, calls) = flaky(1, || TransportError::Protocol("bad frame".into()));
        let svc = ServiceBuilder::new().retry(policy()).service(svc);
        let err = svc.oneshot(request(None)).await.unwrap_err();
        assert!(err.downcast_ref::<TransportError>().is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_before_the_deadline() {
        let (svc, calls) = flaky(u32::MAX, || TransportError::Unavailable(None));
        let svc = ServiceBuilder::new().retry(policy()).service(svc);
        let deadline = Instant::now() + Duration::from_millis(1_000);
        svc.oneshot(request(Some(deadline))).await.unwrap_err();
        assert!(
            Instant::now() < deadline,
            "no retry starts at or after the deadline"
        );
        // 100, 200, 400 ms fit; the fourth backoff (800 ms) would end past the deadline.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_deadline_max_retries_bounds_attempts() {
        let (svc, calls) = flaky(u32::MAX, || TransportError::Unavailable(None));
        let svc = ServiceBuilder::new()
            .retry(policy().max_retries(2))
            .service(svc);
        svc.oneshot(request(None)).await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn without_timeout_retries_a_timed_out_attempt_comes_back_at_once() {
        let (svc, calls) = flaky(u32::MAX, || TransportError::Timeout);
        let svc = ServiceBuilder::new()
            .retry(policy().without_timeout_retries())
            .service(svc);
        svc.oneshot(request(None)).await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Other retriable failures are still retried.
        let (svc, calls) = flaky(2, || TransportError::Unavailable(None));
        let svc = ServiceBuilder::new()
            .retry(policy().without_timeout_retries())
            .service(svc);
        svc.oneshot(request(None)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.jittered(1, 0.0), Duration::from_millis(160));
        let top = b.jittered(1, 0.999_999);
        assert!(top > Duration::from_micros(239_990) && top < Duration::from_millis(240));
        assert_eq!(b.jittered(9, 0.999), Duration::from_secs(1));
    }
}
