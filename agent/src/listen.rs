//! Serving an agent over the network: gRPC and/or QUIC listeners on one set of logs.
//!
//! Listeners are bound first ([`Listeners::bind`]) so their real addresses — port 0 picks a
//! free one — can be advertised in the agent's metadata; then [`Listeners::serve`] drives the
//! agent on all of them until [`Serving::stop`] (graceful: in-flight requests finish).

use crate::Agent;
use std::net::SocketAddr;
use streamhouse::serve::{ServerBounds, ServerLimits};
use streamhouse::transport::Endpoint;
use streamhouse::transport::tls::ServerTls;
use streamhouse_grpc::GrpcConfig;
use streamhouse_quic::{QuicConfig, QuicServer};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// Where and how to listen.
#[derive(Debug, Clone, Default)]
pub struct ListenOptions {
    /// gRPC (TCP) address.
    pub grpc: Option<SocketAddr>,
    /// QUIC (UDP) address; needs `tls`.
    pub quic: Option<SocketAddr>,
    /// Certificate for QUIC, and for gRPC when `grpc_tls` is set.
    pub tls: Option<ServerTls>,
    /// Serve gRPC over TLS (`grpcs://`).
    pub grpc_tls: bool,
    /// gRPC limits and tuning.
    pub grpc_config: GrpcConfig,
    /// QUIC limits and tuning.
    pub quic_config: QuicConfig,
    /// Connections, idle timeout and request-byte budgets, counted once across gRPC and QUIC
    /// (they replace the `bounds` of `grpc_config` and `quic_config`).
    pub limits: ServerLimits,
    /// Authentication and authorization of every request on every listener; `None` serves
    /// anyone who reaches the ports.
    pub security: Option<Security>,
}

/// Who may do what: the policy [`streamhouse_auth::guard_with`] applies in front of the agent
/// on every listener.
pub type Security = streamhouse_auth::Policy;

/// Why listening failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// Neither gRPC nor QUIC was asked for.
    #[error("nothing to listen on: give a gRPC and/or a QUIC address")]
    Nothing,
    /// Request-byte budgets that could not hold a largest message.
    #[error("inconsistent limits: {0}")]
    Limits(String),
    /// QUIC (or gRPC over TLS) without a certificate.
    #[error("QUIC and gRPC over TLS need a certificate")]
    NoCertificate,
    /// A socket could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The QUIC endpoint could not be set up.
    #[error("QUIC setup failed")]
    Quic(#[from] streamhouse_quic::QuicError),
}

/// Bound, not yet serving.
#[derive(Debug)]
pub struct Listeners {
    grpc: Option<tokio::net::TcpListener>,
    quic: Option<QuicServer>,
    options: ListenOptions,
    endpoints: Vec<Endpoint>,
}

impl Listeners {
    /// Binds every listener asked for.
    pub async fn bind(mut options: ListenOptions) -> Result<Listeners, ListenError> {
        if options.grpc.is_none() && options.quic.is_none() {
            return Err(ListenError::Nothing);
        }
        if (options.quic.is_some() || options.grpc_tls) && options.tls.is_none() {
            return Err(ListenError::NoCertificate);
        }
        let limits = &options.limits;
        let largest = options
            .grpc_config
            .max_message_size
            .max(options.quic_config.max_frame_size);
        if limits.max_connection_request_bytes <= largest
            || limits.max_peer_request_bytes < limits.max_connection_request_bytes
            || limits.max_request_bytes < limits.max_peer_request_bytes
        {
            // A message larger than a budget could never be read whole.
            return Err(ListenError::Limits(format!(
                "request bytes must grow from one connection ({}) to one peer ({}) to all ({}), \
                 and one connection's must hold more than one largest message ({largest})",
                limits.max_connection_request_bytes,
                limits.max_peer_request_bytes,
                limits.max_request_bytes
            )));
        }
        let bounds = ServerBounds::new(options.limits.clone());
        options.grpc_config.bounds = bounds.clone();
        options.quic_config.bounds = bounds;
        let mut endpoints = Vec::new();
        let grpc = match options.grpc {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| ListenError::Bind { addr, source })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| ListenError::Bind { addr, source })?;
                let scheme = if options.grpc_tls { "grpcs" } else { "grpc" };
                endpoints.push(endpoint(scheme, bound));
                Some(listener)
            }
            None => None,
        };
        let quic = match (options.quic, &options.tls) {
            (Some(addr), Some(tls)) => {
                let server = QuicServer::bind(addr, options.quic_config.clone(), tls)?;
                let bound = server
                    .local_addr()
                    .map_err(|source| ListenError::Bind { addr, source })?;
                endpoints.push(endpoint("quic", bound));
                Some(server)
            }
            _ => None,
        };
        Ok(Listeners {
            grpc,
            quic,
            options,
            endpoints,
        })
    }

    /// The bound endpoints (`grpc://…`, `grpcs://…`, `quic://…`), to advertise.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Serves `agent` on every listener.
    pub fn serve(self, agent: &Agent) -> Serving {
        let (stop, _) = broadcast::channel::<()>(1);
        let stopped = |stop: &broadcast::Sender<()>| {
            let mut rx = stop.subscribe();
            async move {
                let _ = rx.recv().await;
            }
        };
        let service = match &self.options.security {
            Some(security) => streamhouse_auth::guard_with(agent.service(), security.clone()),
            None => agent.service(),
        };
        let grpc = self.grpc.map(|listener| {
            let mut config = self.options.grpc_config.clone();
            if self.options.grpc_tls {
                config.server_tls = self.options.tls.clone();
            }
            tokio::spawn(streamhouse_grpc::serve(
                service.clone(),
                listener,
                config,
                stopped(&stop),
            ))
        });
        let quic = self
            .quic
            .map(|server| tokio::spawn(server.serve(service.clone(), stopped(&stop))));
        Serving {
            endpoints: self.endpoints,
            stop,
            grpc,
            quic,
        }
    }
}

fn endpoint(scheme: &str, addr: SocketAddr) -> Endpoint {
    // A URL from a bound socket address always parses.
    Endpoint::parse(&format!("{scheme}://{addr}"))
        .unwrap_or_else(|_| Endpoint::parse("grpc://0.0.0.0:0").expect("literal"))
}

/// The agent being served.
#[derive(Debug)]
pub struct Serving {
    endpoints: Vec<Endpoint>,
    stop: broadcast::Sender<()>,
    grpc: Option<JoinHandle<Result<(), streamhouse_grpc::ServeError>>>,
    quic: Option<JoinHandle<()>>,
}

impl Serving {
    /// The endpoints served.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The endpoint with `scheme`, if served.
    pub fn endpoint(&self, scheme: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.scheme() == scheme)
    }

    /// Stops accepting and lets requests in flight finish for at most `timeout`; past it the
    /// listeners are dropped with whatever they still serve (a client that never finishes its
    /// request cannot hold a shutdown open). Returns whether everything finished in time.
    /// Shut the agent down afterwards ([`Agent::shutdown`]).
    pub async fn stop_within(
        mut self,
        timeout: std::time::Duration,
    ) -> Result<bool, streamhouse_grpc::ServeError> {
        let _ = self.stop.send(());
        let deadline = tokio::time::Instant::now() + timeout;
        let mut in_time = true;
        if let Some(mut quic) = self.quic.take()
            && tokio::time::timeout_at(deadline, &mut quic).await.is_err()
        {
            quic.abort();
            in_time = false;
        }
        let served = match self.grpc.take() {
            Some(mut grpc) => match tokio::time::timeout_at(deadline, &mut grpc).await {
                Ok(result) => result.unwrap_or(Ok(())),
                Err(_) => {
                    grpc.abort();
                    in_time = false;
                    Ok(())
                }
            },
            None => Ok(()),
        };
        served.map(|()| in_time)
    }

    /// Stops accepting, lets requests in flight finish, and returns once every listener is
    /// closed. Shut the agent down afterwards ([`Agent::shutdown`]).
    pub async fn stop(mut self) -> Result<(), streamhouse_grpc::ServeError> {
        let _ = self.stop.send(());
        if let Some(quic) = self.quic.take() {
            let _ = quic.await;
        }
        match self.grpc.take() {
            Some(grpc) => grpc.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}
