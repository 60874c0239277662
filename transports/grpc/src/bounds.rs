//! The tower layer that applies a connection's bounds to each of its requests.
//!
//! Between tonic's HTTP/2 server and the generated service, [`BoundsLayer`]:
//!
//! - counts the request in progress on its connection (for the idle timeout);
//! - reads the request body only as fast as the connection's and the server's request-byte
//!   budgets allow: a full budget stops reading, HTTP/2 flow control then holds the client
//!   back, so half-sent messages cost at most the budgets (plus the HTTP/2 windows);
//! - hands the answer to HTTP/2 in 64 KiB pieces, each only once the client's flow-control
//!   window has room for it (HTTP/2 buffers whatever it is given, window or not), and keeps
//!   what the answer holds ([`Keep`]: a fetch's batches, which count against the agent's
//!   answer budget) until the last piece is handed over; an answer not delivered within the
//!   request timeout closes the connection, so a client that never reads holds it no longer.

use crate::incoming::ConnInfo;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use streamhouse::serve::{InFlight, RequestBudget, RequestLease};
use tonic::Status;
use tower::{Layer, Service};

/// What an answer keeps alive until it is delivered; put in a response's extensions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Keep {
    _batches: Vec<Bytes>,
}

impl Keep {
    pub(crate) fn new(batches: Vec<Bytes>) -> Keep {
        Keep { _batches: batches }
    }

    fn holds_something(&self) -> bool {
        self._batches.iter().any(|b| !b.is_empty())
    }
}

/// Closes a connection whose answer is not handed over within the request timeout; a timer
/// task, started only when an answer may wait on the client ([`arm`](Watchdog::arm)).
enum Watchdog {
    Unarmed(std::sync::Arc<streamhouse::serve::ConnectionPass>, Duration),
    Armed(tokio::task::AbortHandle),
}

impl Watchdog {
    fn arm(&mut self) {
        if let Watchdog::Unarmed(pass, within) = self {
            let (pass, within) = (pass.clone(), *within);
            let timer = tokio::spawn(async move {
                tokio::time::sleep(within).await;
                metrics::counter!(
                    "streamhouse_limit_hits_total",
                    "limit" => "answer_delivery_time"
                )
                .increment(1);
                tracing::debug!("answer not read in time: closing the connection");
                pass.close();
            });
            *self = Watchdog::Armed(timer.abort_handle());
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BoundsLayer {
    pub(crate) deliver_within: Duration,
}

impl<S> Layer<S> for BoundsLayer {
    type Service = Bounded<S>;

    fn layer(&self, inner: S) -> Bounded<S> {
        Bounded {
            inner,
            deliver_within: self.deliver_within,
        }
    }
}

/// [`BoundsLayer`]'s service.
#[derive(Debug, Clone)]
pub(crate) struct Bounded<S> {
    inner: S,
    deliver_within: Duration,
}

/// The connection a request came on, when `serve` accepted it (plain or TLS).
pub(crate) fn connection_of(extensions: &http::Extensions) -> Option<&ConnInfo> {
    let plain = extensions.get::<ConnInfo>();
    #[cfg(feature = "tls")]
    let plain = plain.or_else(|| {
        use tonic::transport::server::TlsConnectInfo;
        extensions
            .get::<TlsConnectInfo<ConnInfo>>()
            .map(TlsConnectInfo::get_ref)
    });
    plain
}

impl<S, B> Service<http::Request<tonic::body::Body>> for Bounded<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Default + Send + Unpin + 'static,
    B::Error: Into<tower::BoxError>,
{
    type Response = http::Response<Delivered<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // Connections not accepted by `serve` (a simulated network's) carry no pass.
        let pass = connection_of(request.extensions()).map(|c| c.pass.clone());
        let in_flight = match pass.as_ref().map(|p| p.begin()).transpose() {
            Ok(in_flight) => in_flight,
            Err(refused) => {
                // Refused before anything is read: the stream's memory goes at once. Retriable.
                let status = Status::unavailable(refused.to_string());
                let response = status.into_http::<B>().map(|inner| Delivered {
                    inner,
                    rest: Bytes::new(),
                    _keep: Keep::default(),
                    _in_flight: None,
                    watchdog: None,
                });
                return Box::pin(async move { Ok(response) });
            }
        };
        let request = match &pass {
            Some(pass) => {
                let budget = pass.requests().clone();
                request.map(|body| tonic::body::Body::new(Budgeted::new(body, budget)))
            }
            None => request,
        };
        let deliver_within = self.deliver_within;
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            let keep = response
                .extensions_mut()
                .remove::<Keep>()
                .unwrap_or_default();
            // HTTP/2 polls the body only as the client's window opens, so the deadline is
            // watched from outside: past it the whole connection is closed, which frees
            // everything its unread answers hold. Armed only for answers that hold something
            // or need more than one piece; a small answer that holds nothing (a produce's) is
            // bounded by HTTP/2's own buffers and costs no timer.
            let mut watchdog = pass.map(|pass| Watchdog::Unarmed(pass, deliver_within));
            if keep.holds_something()
                && let Some(watchdog) = &mut watchdog
            {
                watchdog.arm();
            }
            Ok(response.map(|inner| Delivered {
                inner,
                rest: Bytes::new(),
                _keep: keep,
                _in_flight: in_flight,
                watchdog,
            }))
        })
    }
}

/// A request body read within a [`RequestBudget`]: credit for the next HTTP/2 DATA frame is
/// leased *before* the frame is taken from the connection, so while the budget is spent the
/// bytes stay with HTTP/2, whose window then holds the client back. What was passed on stays
/// leased until the body is dropped (the message decoded).
struct Budgeted {
    inner: tonic::body::Body,
    budget: RequestBudget,
    lease: RequestLease,
    /// Bytes of the lease passed on so far; the rest is credit for the next frame.
    used: usize,
    /// More budget being waited for.
    paying: Option<Paying>,
    /// A frame larger than the credit, held until the rest of it is paid for.
    held: Option<Frame<Bytes>>,
}

type Paying = Pin<Box<dyn Future<Output = RequestLease> + Send>>;

/// Credit leased ahead of each read: one DATA frame at HTTP/2's default maximum frame size.
const FRAME_CREDIT: usize = 16 << 10;

impl Budgeted {
    fn new(inner: tonic::body::Body, budget: RequestBudget) -> Budgeted {
        Budgeted {
            inner,
            lease: budget.lease(),
            budget,
            used: 0,
            paying: None,
            held: None,
        }
    }

    /// Adds `n` bytes to the lease now, or starts waiting for them.
    fn pay(&mut self, n: usize) {
        match self.budget.try_take(n) {
            Some(paid) => self.lease.merge(paid),
            None => self.paying = Some(Box::pin(self.budget.take(n))),
        }
    }
}

impl Body for Budgeted {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some(paying) = &mut this.paying {
                let paid = ready!(paying.as_mut().poll(cx));
                this.lease.merge(paid);
                this.paying = None;
            }
            if let Some(frame) = this.held.take() {
                let n = frame.data_ref().map_or(0, Bytes::len);
                let needed = this.used + n;
                if needed <= this.lease.bytes() {
                    this.used = needed;
                    return Poll::Ready(Some(Ok(frame)));
                }
                this.held = Some(frame);
                this.pay(needed - this.lease.bytes());
                continue;
            }
            let credit = this.lease.bytes() - this.used;
            if credit < FRAME_CREDIT && !this.inner.is_end_stream() {
                this.pay(FRAME_CREDIT - credit);
                if this.paying.is_some() {
                    continue;
                }
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) if frame.is_data() => this.held = Some(frame),
                other => {
                    if other.is_none() {
                        this.lease.shrink_to(this.used);
                    }
                    return Poll::Ready(other);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its answer's leases (and its request counted in progress) until
/// it has been handed over whole; its watchdog closes the connection if that takes too long.
pub(crate) struct Delivered<B> {
    inner: B,
    /// What is left of the data frame being handed over.
    rest: Bytes,
    _keep: Keep,
    _in_flight: Option<InFlight>,
    watchdog: Option<Watchdog>,
}

impl<B> Drop for Delivered<B> {
    fn drop(&mut self) {
        if let Some(Watchdog::Armed(timer)) = &self.watchdog {
            timer.abort();
        }
    }
}

impl<B> Body for Delivered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<tower::BoxError>,
{
    type Data = Bytes;
    type Error = tower::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tower::BoxError>>> {
        let this = &mut *self;
        if this.rest.is_empty() {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => return Poll::Ready(None),
            }
        }
        // Handed over a piece at a time: HTTP/2 asks for the next piece only once the client's
        // window has room, so an unread answer stays here, counted, not in HTTP/2's buffers.
        let piece = this.rest.split_to(this.rest.len().min(PIECE));
        if !this.rest.is_empty()
            && let Some(watchdog) = &mut this.watchdog
        {
            watchdog.arm();
        }
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        hint.set_lower(hint.lower() + rest);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

/// The most of an answer handed to HTTP/2 at once.
const PIECE: usize = 64 << 10;
