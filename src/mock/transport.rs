//! [`MockTransport`]: connects to [`MockAgent`]s by endpoint, in process.

use super::MockAgent;
use crate::transport::{
    BoxFuture, Connection, Endpoint, Request, Response, Transport, TransportError,
};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use tower::service_fn;
use tower::util::BoxCloneService;

/// A transport whose connections call mock agents directly. Several agents can be registered
/// (a test moving leadership between them); connecting to an endpoint with no agent fails with
/// [`TransportError::Connect`], as an unreachable address would.
#[derive(Clone, Default)]
pub struct MockTransport {
    agents: Arc<RwLock<HashMap<Endpoint, MockAgent>>>,
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

    /// Makes `agent` reachable at its endpoint.
    #[must_use]
    pub fn with_agent(self, agent: MockAgent) -> MockTransport {
        self.add_agent(agent);
        self
    }

    /// Makes `agent` reachable at its endpoint.
    pub fn add_agent(&self, agent: MockAgent) {
        let mut agents = self.agents.write().unwrap_or_else(PoisonError::into_inner);
        agents.insert(agent.endpoint(), agent);
    }

    /// Makes the agent at `endpoint` unreachable for new connections.
    pub fn remove_agent(&self, endpoint: &Endpoint) {
        let mut agents = self.agents.write().unwrap_or_else(PoisonError::into_inner);
        agents.remove(endpoint);
    }
}

impl Transport for MockTransport {
    fn connect(
        &self,
        endpoint: &Endpoint,
    ) -> BoxFuture<'static, Result<Connection, TransportError>> {
        let agent = self
            .agents
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(endpoint)
            .cloned();
        let endpoint = endpoint.to_string();
        Box::pin(async move {
            let agent = agent.ok_or(TransportError::Connect {
                endpoint,
                source: None,
            })?;
            let service = service_fn(move |request: Request| {
                let answer = agent.handle(request);
                async move {
                    match answer {
                        Some(result) => result,
                        // Stalled: accepted, never answered.
                        None => std::future::pending::<Result<Response, TransportError>>().await,
                    }
                }
            });
            Ok(BoxCloneService::new(service))
        })
    }
}
