//! [`MockTransport`]: connects to in-process agent services by endpoint.

use super::MockAgent;
use crate::transport::{
    AgentService, BoxFuture, Connection, Endpoint, Peer, Request, Response, Transport,
    TransportError, frame,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use tokio::sync::Notify;
use tower::ServiceExt;
use tower::util::BoxCloneService;

/// A transport whose connections call agent services directly, in process. Several agents can
/// be registered (a test moving leadership between them); connecting to an endpoint with no
/// agent fails with [`TransportError::Connect`], as an unreachable address would. Removing an
/// agent cuts its open connections: requests in flight fail with
/// [`TransportError::ConnectionLost`], and later requests on the connection reach whichever
/// agent serves the endpoint then (or fail with [`TransportError::Connect`]). A request whose deadline passes fails with
/// [`TransportError::Timeout`], and one larger than the message limit (16 MiB, as the network
/// transports) with [`TransportError::FrameTooLarge`].
#[derive(Clone)]
pub struct MockTransport {
    agents: Arc<RwLock<HashMap<Endpoint, Registration>>>,
    max_message_size: usize,
}

impl Default for MockTransport {
    fn default() -> MockTransport {
        MockTransport {
            agents: Arc::default(),
            max_message_size: frame::MAX_FRAME,
        }
    }
}

#[derive(Clone)]
struct Registration {
    service: AgentService,
    closed: Arc<Closed>,
}

/// Set when the agent is removed. A `Notify` rather than a `watch` channel: `notify_waiters`
/// wakes in registration order, while `watch` spreads waiters over randomly chosen slots, and
/// a deterministic simulation must wake cut requests in the same order every run.
#[derive(Default)]
struct Closed {
    flag: AtomicBool,
    notify: Notify,
}

impl Closed {
    fn close(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

impl std::fmt::Debug for MockTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let agents = self.agents.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_set().entries(agents.keys()).finish()
    }
}

impl MockTransport {
    /// A transport reaching no agent yet.
    pub fn new() -> MockTransport {
        MockTransport::default()
    }

    /// Refuses requests larger than `bytes` (encoded), as a network transport would.
    #[must_use]
    pub fn with_max_message_size(mut self, bytes: usize) -> MockTransport {
        self.max_message_size = bytes;
        self
    }

    /// Makes `agent` reachable at its endpoint.
    #[must_use]
    pub fn with_agent(self, agent: MockAgent) -> MockTransport {
        self.add_agent(agent);
        self
    }

    /// Makes `agent` reachable at its endpoint.
    pub fn add_agent(&self, agent: MockAgent) {
        self.serve(agent.endpoint(), agent.service());
    }

    /// Makes any agent service reachable at `endpoint` (replacing, and cutting, what was there).
    pub fn serve(&self, endpoint: Endpoint, service: AgentService) {
        let registration = Registration {
            service,
            closed: Arc::default(),
        };
        let previous = self
            .agents
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(endpoint, registration);
        if let Some(previous) = previous {
            previous.closed.close();
        }
    }

    /// Makes the agent at `endpoint` unreachable and cuts its open connections.
    pub fn remove_agent(&self, endpoint: &Endpoint) {
        let removed = self
            .agents
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(endpoint);
        if let Some(removed) = removed {
            removed.closed.close();
        }
    }
}

impl MockTransport {
    fn registration(&self, endpoint: &Endpoint) -> Result<Registration, TransportError> {
        self.agents
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(endpoint)
            .cloned()
            .ok_or_else(|| TransportError::Connect {
                endpoint: endpoint.to_string(),
                source: None,
            })
    }
}

impl Transport for MockTransport {
    fn connect(
        &self,
        endpoint: &Endpoint,
    ) -> BoxFuture<'static, Result<Connection, TransportError>> {
        let registered = self.registration(endpoint).map(|_| ());
        let transport = self.clone();
        let endpoint = endpoint.clone();
        Box::pin(async move {
            registered?;
            // Each request reaches whichever agent serves the endpoint now, as a network
            // connection re-dials after the agent restarts.
            let connection = tower::service_fn(move |mut request: Request| {
                // As a server adaptor does: the peer is the agent side's to fill in, whatever
                // the client put there. In process there is no address or certificate.
                request.peer = Some(Arc::new(Peer::default()));
                request.principal = None;
                let registration = transport.registration(&endpoint);
                let limit = transport.max_message_size;
                async move {
                    let size = frame::request_len(&request.message);
                    if size > limit {
                        return Err(TransportError::FrameTooLarge { size, limit });
                    }
                    let Registration { service, closed } = registration?;
                    let cut = closed.notify.notified();
                    let mut cut = std::pin::pin!(cut);
                    cut.as_mut().enable();
                    if closed.flag.load(Ordering::SeqCst) {
                        return Err(TransportError::connection_lost("agent removed"));
                    }
                    let deadline = request.deadline;
                    let call = async {
                        service
                            .oneshot(request)
                            .await
                            .map_err(|e| TransportError::Unavailable(Some(e)))
                    };
                    let timed = async {
                        match deadline {
                            Some(at) => tokio::time::timeout_at(at, call)
                                .await
                                .unwrap_or(Err(TransportError::Timeout)),
                            None => call.await,
                        }
                    };
                    // Biased, so a simulation replays: tokio picks a random branch otherwise.
                    tokio::select! {
                        biased;
                        result = timed => result,
                        () = cut => Err(TransportError::connection_lost("agent removed")),
                    }
                }
            });
            Ok(BoxCloneService::new(connection)
                as BoxCloneService<Request, Response, TransportError>)
        })
    }
}
