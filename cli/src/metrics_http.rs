//! The agent's `/metrics` endpoint: Prometheus text at `GET /metrics` and nothing else (other
//! paths 404, other methods 405), optionally behind a bearer token. The metric names carry
//! topic names, so it listens on loopback unless told otherwise (see `agent --metrics`).

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How often histograms are folded (the exporter's upkeep).
const UPKEEP: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder and serves it on `addr`; returns the bound address.
/// With `token`, a scrape must send `Authorization: Bearer TOKEN`.
pub(crate) async fn serve(addr: SocketAddr, token: Option<String>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP).await;
            upkeep.run_upkeep();
        }
    });
    let state = Arc::new(State {
        handle,
        token: token.map(|t| Sha256::digest(t.as_bytes()).into()),
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(state.answer(&request)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

struct State {
    handle: PrometheusHandle,
    /// SHA-256 of the token, compared hash to hash.
    token: Option<[u8; 32]>,
}

impl State {
    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path() != "/metrics" {
            return plain(StatusCode::NOT_FOUND, "not found: GET /metrics\n");
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics only\n");
            response.headers_mut().insert(
                hyper::header::ALLOW,
                "GET, HEAD".parse().expect("a header value"),
            );
            return response;
        }
        if let Some(expected) = &self.token {
            let presented = request
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token)
                .map(|t| <[u8; 32]>::from(Sha256::digest(t.as_bytes())));
            if presented.as_ref() != Some(expected) {
                let mut response = plain(StatusCode::UNAUTHORIZED, "bearer token required\n");
                response.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    "Bearer".parse().expect("a header value"),
                );
                return response;
            }
        }
        let mut response = Response::new(Full::new(Bytes::from(self.handle.render())));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            "text/plain; version=0.0.4".parse().expect("a header value"),
        );
        response
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}
