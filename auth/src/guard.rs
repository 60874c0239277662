//! [`guard`]: authentication and authorization in front of any agent service.
//!
//! Every request is authenticated first; one that fails is answered `UNAUTHENTICATED` whole,
//! in the shape of its kind, and never reaches the agent. Then each topic it touches is
//! checked against the [`Authorizer`]: a produce request's refused batches are answered
//! `UNAUTHORIZED` while its allowed ones go on (as Kafka answers per partition), a Metadata
//! request's refused topics are answered `UNAUTHORIZED` (and a request for every topic lists
//! only those the principal may describe), a fetch or an administrative request is allowed
//! whole or refused whole. The agent behind the guard only sees what it may serve, so the mock
//! agent and the reference agent get the same rules.
//!
//! Failures and refusals are logged on the `streamhouse::audit` target (principal, operation,
//! topic, peer address — never the credential; at most [`crate::LINES_PER_SECOND`], then one line
//! saying how many were dropped) and every one is counted:
//!
//! | metric | labels |
//! |---|---|
//! | `streamhouse_auth_failures_total` | `reason`: `missing`, `malformed`, `too_large`, `invalid`, `expired`, `not_yet_valid`, `claim` |
//! | `streamhouse_auth_denied_total` | `operation` |
//! | `streamhouse_quota_throttled_total` | answers that told a client to hold off |
//! | `streamhouse_quota_refusals_total` | requests refused `THROTTLED` (sent while in debt) |

use crate::{
    Admission, AuthError, Authenticator, Authorizer, Operation, Principal, ProducerIds, Quotas,
};
use std::sync::Arc;
use std::time::Duration;
use streamhouse::batch::BatchHeader;
use streamhouse::proto::v1::{
    AdminResponse, ErrorCode, FetchResponse, MetadataResponse, PartitionResult, ProduceRequest,
    ProduceResponse, TopicMetadata, admin_request::Action,
};
use streamhouse::transport::{
    AgentService, ConnectionToken, Peer, Request, RequestMessage, Response,
};
use tokio::time::Instant;
use tower::{BoxError, ServiceExt};

/// `agent` behind `authenticator` and `authorizer`: see the module documentation.
///
/// ```
/// use std::sync::Arc;
/// use streamhouse::mock::MockAgent;
/// use streamhouse_auth::{Acls, TokenFile, guard};
///
/// let tokens = TokenFile::parse(&TokenFile::line("s3cret", "payments")).unwrap();
/// let acls: Acls = "allow payments produce,describe orders*".parse().unwrap();
/// let agent = guard(MockAgent::new().service(), Arc::new(tokens), Arc::new(acls));
/// ```
pub fn guard(
    agent: AgentService,
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
) -> AgentService {
    guard_with(
        agent,
        Policy {
            authenticator,
            authorizer,
            quotas: Arc::new(Quotas::new()),
            producer_ids: None,
            max_connections_per_principal: None,
        },
    )
}

/// Everything the guard applies: who sent a request, what they may do, their produce rate,
/// and (optionally) the producer ids bound to them.
#[derive(Clone)]
pub struct Policy {
    /// Tells who sent a request.
    pub authenticator: Arc<dyn Authenticator>,
    /// Decides what they may do.
    pub authorizer: Arc<dyn Authorizer>,
    /// Produce bytes per second per principal: a request within its principal's rate passes
    /// and its answer carries the `throttle_ms` that keeps the principal at the rate; one sent
    /// while the principal is still in debt is refused `THROTTLED` whole.
    pub quotas: Arc<Quotas>,
    /// Producer ids handed out by `InitProducerId` and bound to principals; with it, an
    /// idempotent batch whose id was not handed to the request's principal is refused.
    pub producer_ids: Option<Arc<dyn ProducerIds>>,
    /// Most connections one principal may hold open at once (requests on one more are
    /// refused `LIMIT_EXCEEDED`); connections a transport cannot tell apart are not counted.
    pub max_connections_per_principal: Option<usize>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("quotas", &self.quotas)
            .field("producer_ids", &self.producer_ids.is_some())
            .finish_non_exhaustive()
    }
}

/// [`guard`], with everything a [`Policy`] holds.
pub fn guard_with(agent: AgentService, policy: Policy) -> AgentService {
    let guard = Arc::new(Guard {
        policy,
        audit: crate::audit::AuditBudget::new(),
        connections: std::sync::Mutex::default(),
    });
    AgentService::new(tower::service_fn(move |request: Request| {
        let (guard, agent) = (guard.clone(), agent.clone());
        async move { guard.handle(agent, request).await }
    }))
}

struct Guard {
    policy: Policy,
    audit: crate::audit::AuditBudget,
    /// The open connections each principal has sent requests on.
    connections: std::sync::Mutex<std::collections::HashMap<Principal, Vec<ConnectionToken>>>,
}

impl Guard {
    async fn handle(
        &self,
        agent: AgentService,
        mut request: Request,
    ) -> Result<Response, BoxError> {
        let peer = request.peer.clone().unwrap_or_default();
        let principal = match self
            .policy
            .authenticator
            .authenticate(&peer, &request.metadata)
        {
            Ok(principal) => principal,
            Err(error) => return Ok(self.unauthenticated(&peer, &request.message, &error)),
        };
        if let Some(refusal) = self.count_connection(&principal, &peer, &request.message) {
            return Ok(refusal);
        }
        // The agent decides some things by principal itself (auto-creation).
        request.principal = Some(principal.name().into());
        let allowed = |operation: Operation, topic: &str| {
            let allowed = self.policy.authorizer.allowed(&principal, operation, topic);
            if !allowed {
                self.denied(&principal, operation, topic, &peer);
            }
            allowed
        };
        match &request.message {
            RequestMessage::Produce(produce) => {
                let mut verdicts: Vec<Verdict> = Vec::with_capacity(produce.batches.len());
                for batch in &produce.batches {
                    let verdict = if !allowed(Operation::Produce, &batch.topic) {
                        Err(format!("{principal} may not produce to {}", batch.topic))
                    } else {
                        self.check_producer_id(&principal, &batch.batch, &peer)
                            .await
                    };
                    verdicts.push(verdict);
                }
                let bytes: u64 = produce
                    .batches
                    .iter()
                    .zip(&verdicts)
                    .filter(|(_, v)| v.is_ok())
                    .map(|(b, _)| b.batch.len() as u64)
                    .sum();
                let throttle = match self.policy.quotas.admit(&principal, bytes, Instant::now()) {
                    Admission::Pass { throttle } => throttle,
                    Admission::Refuse { throttle } => {
                        metrics::counter!("streamhouse_quota_refusals_total").increment(1);
                        return Ok(throttled(produce, &verdicts, throttle));
                    }
                };
                let mut response = if verdicts.iter().all(Result::is_ok) {
                    agent.oneshot(request).await?
                } else {
                    let produce = produce.clone();
                    produce_in_part(agent, request, &produce, &verdicts).await?
                };
                if let Response::Produce(answer) = &mut response
                    && !throttle.is_zero()
                {
                    metrics::counter!("streamhouse_quota_throttled_total").increment(1);
                    answer.throttle_ms = answer.throttle_ms.max(millis(throttle));
                }
                Ok(response)
            }
            RequestMessage::Metadata(metadata) if metadata.topics.is_empty() => {
                // Every topic: list only those the principal may describe (and log nothing for
                // the rest — not knowing of a topic is not an attempt on it).
                let mut response = agent.oneshot(request).await?;
                if let Response::Metadata(answer) = &mut response {
                    answer.topics.retain(|t| {
                        self.policy
                            .authorizer
                            .allowed(&principal, Operation::Describe, &t.name)
                    });
                }
                Ok(response)
            }
            RequestMessage::Metadata(metadata) if metadata.topics.len() > MAX_METADATA_TOPICS => {
                Ok(Response::refusing(
                    &request.message,
                    ErrorCode::InvalidRequest,
                    &format!(
                        "{} topics in one metadata request; at most {MAX_METADATA_TOPICS}",
                        metadata.topics.len()
                    ),
                ))
            }
            RequestMessage::Metadata(metadata) => {
                let (asked, refused): (Vec<String>, Vec<String>) = metadata
                    .topics
                    .iter()
                    .cloned()
                    .partition(|t| allowed(Operation::Describe, t));
                if refused.is_empty() {
                    return agent.oneshot(request).await;
                }
                let mut answer = if asked.is_empty() {
                    // Not an empty request: that would ask for every topic.
                    MetadataResponse::default()
                } else {
                    let mut narrowed = request;
                    narrowed.message =
                        RequestMessage::Metadata(streamhouse::proto::v1::MetadataRequest {
                            topics: asked,
                        });
                    match agent.oneshot(narrowed).await? {
                        Response::Metadata(answer) => answer,
                        other => return Ok(other),
                    }
                };
                answer
                    .topics
                    .extend(refused.into_iter().map(|name| TopicMetadata {
                        error_code: ErrorCode::Unauthorized as i32,
                        error_message: format!("{principal} may not describe {name}"),
                        name,
                        ..TopicMetadata::default()
                    }));
                Ok(Response::Metadata(answer))
            }
            RequestMessage::Fetch(fetch) => {
                if allowed(Operation::Fetch, &fetch.topic) {
                    return agent.oneshot(request).await;
                }
                Ok(Response::Fetch(FetchResponse {
                    topic: fetch.topic.clone(),
                    partition: fetch.partition,
                    error_code: ErrorCode::Unauthorized as i32,
                    error_message: format!("{principal} may not fetch from {}", fetch.topic),
                    ..FetchResponse::default()
                }))
            }
            RequestMessage::Admin(admin)
                if matches!(admin.action, Some(Action::InitProducerId(_))) =>
            {
                let Some(ids) = &self.policy.producer_ids else {
                    // Ids are not bound here: the agent hands out one of its own.
                    return agent.oneshot(request).await;
                };
                Ok(Response::Admin(match ids.allocate(&principal).await {
                    Ok(id) => AdminResponse {
                        producer_id: id,
                        ..AdminResponse::default()
                    },
                    Err(why) => AdminResponse {
                        error_code: ErrorCode::Unavailable as i32,
                        error_message: why,
                        ..AdminResponse::default()
                    },
                }))
            }
            RequestMessage::Admin(admin) => {
                let (operation, topic) = match &admin.action {
                    Some(Action::CreateTopic(c)) => (Operation::Create, c.name.as_str()),
                    Some(Action::DeleteTopic(d)) => (Operation::Delete, d.name.as_str()),
                    Some(Action::AlterTopic(a)) => (Operation::Admin, a.name.as_str()),
                    // Nothing asked (or a kind of this build's future): the agent answers it.
                    _ => return agent.oneshot(request).await,
                };
                if allowed(operation, topic) {
                    return agent.oneshot(request).await;
                }
                Ok(Response::Admin(AdminResponse {
                    error_code: ErrorCode::Unauthorized as i32,
                    error_message: format!("{principal} may not {operation} {topic}"),
                    ..AdminResponse::default()
                }))
            }
            // A kind this guard does not know is not let through unchecked.
            _ => Err("request kind not covered by authorization".into()),
        }
    }

    /// With producer ids bound to principals: whether the batch's producer id (if it has one)
    /// was handed to `principal`.
    async fn check_producer_id(&self, principal: &Principal, batch: &[u8], peer: &Peer) -> Verdict {
        let Some(ids) = &self.policy.producer_ids else {
            return Ok(());
        };
        // A batch whose header does not parse is the agent's to refuse (CORRUPT_BATCH).
        let Ok(header) = BatchHeader::read(batch) else {
            return Ok(());
        };
        let id = header.producer.producer_id;
        if id < 0 {
            return Ok(()); // not idempotent: no id to protect
        }
        match ids.owner(id).await {
            Ok(Some(owner)) if owner == *principal => Ok(()),
            Ok(owner) => {
                metrics::counter!("streamhouse_auth_denied_total", "operation" => "producer_id")
                    .increment(1);
                self.audit.take().then(|| {
                    tracing::warn!(
                        target: "streamhouse::audit",
                        principal = ?principal.name(),
                        producer_id = id,
                        issued = owner.is_some(),
                        peer = ?peer.addr,
                        "producer id not issued to this principal"
                    )
                });
                Err(format!(
                    "producer id {id} was not issued to {principal}: ask the agent for one (InitProducerId)"
                ))
            }
            Err(why) => Err(format!("cannot check producer id {id}: {why}")),
        }
    }

    /// With a connection limit per principal: counts the request's connection for its
    /// principal, or refuses the request if that would pass the limit.
    fn count_connection(
        &self,
        principal: &Principal,
        peer: &Peer,
        message: &RequestMessage,
    ) -> Option<Response> {
        let (Some(max), Some(token)) =
            (self.policy.max_connections_per_principal, &peer.connection)
        else {
            return None;
        };
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = connections.entry(principal.clone()).or_default();
        if open.contains(token) {
            return None;
        }
        open.retain(ConnectionToken::is_open);
        if open.len() < max {
            open.push(token.clone());
            return None;
        }
        metrics::counter!("streamhouse_auth_denied_total", "operation" => "connection")
            .increment(1);
        if self.audit.take() {
            tracing::warn!(
                target: "streamhouse::audit",
                principal = ?principal.name(),
                open = open.len(),
                peer = ?peer.addr,
                "connection refused: the principal's connection limit is reached"
            );
        }
        Some(Response::refusing(
            message,
            ErrorCode::LimitExceeded,
            &format!(
                "{principal} already has {max} connections open (the agent's limit per principal)"
            ),
        ))
    }

    fn unauthenticated(
        &self,
        peer: &Peer,
        message: &RequestMessage,
        error: &AuthError,
    ) -> Response {
        metrics::counter!("streamhouse_auth_failures_total", "reason" => error.reason())
            .increment(1);
        if self.audit.take() {
            tracing::warn!(
                target: "streamhouse::audit",
                peer = ?peer.addr,
                request = kind(message),
                reason = error.reason(),
                "authentication failed: {error}"
            );
        }
        Response::refusing(message, ErrorCode::Unauthenticated, &error.to_string())
    }

    fn denied(&self, principal: &Principal, operation: Operation, topic: &str, peer: &Peer) {
        metrics::counter!("streamhouse_auth_denied_total", "operation" => operation.name())
            .increment(1);
        if self.audit.take() {
            tracing::warn!(
                target: "streamhouse::audit",
                principal = ?principal.name(),
                %operation,
                topic,
                peer = ?peer.addr,
                "operation denied"
            );
        }
    }
}

/// A produce request some of whose batches are refused: the allowed ones go to the agent,
/// and the answers are put back in the request's order.
async fn produce_in_part(
    agent: AgentService,
    mut request: Request,
    produce: &ProduceRequest,
    verdicts: &[Verdict],
) -> Result<Response, BoxError> {
    let allowed: Vec<_> = produce
        .batches
        .iter()
        .zip(verdicts)
        .filter(|(_, v)| v.is_ok())
        .map(|(b, _)| b.clone())
        .collect();
    let mut answer = if allowed.is_empty() {
        ProduceResponse::default()
    } else {
        request.message = RequestMessage::Produce(ProduceRequest {
            batches: allowed,
            ..produce.clone()
        });
        match agent.oneshot(request).await? {
            Response::Produce(answer) => answer,
            other => return Ok(other),
        }
    };
    let mut answered = std::mem::take(&mut answer.results).into_iter();
    answer.results = produce
        .batches
        .iter()
        .zip(verdicts)
        .map(|(batch, verdict)| match verdict {
            Ok(()) => answered.next().unwrap_or_else(|| PartitionResult {
                topic: batch.topic.clone(),
                partition: batch.partition,
                error_code: ErrorCode::Internal as i32,
                error_message: "the agent answered fewer batches than it was sent".into(),
                base_offset: -1,
                ..PartitionResult::default()
            }),
            Err(why) => PartitionResult {
                topic: batch.topic.clone(),
                partition: batch.partition,
                error_code: ErrorCode::Unauthorized as i32,
                error_message: why.clone(),
                base_offset: -1,
                ..PartitionResult::default()
            },
        })
        .collect();
    Ok(Response::Produce(answer))
}

/// A produce request refused for its principal's quota: the batches it may send are answered
/// `THROTTLED` (retriable), the others `UNAUTHORIZED`; nothing is appended.
fn throttled(produce: &ProduceRequest, verdicts: &[Verdict], throttle: Duration) -> Response {
    Response::Produce(ProduceResponse {
        results: produce
            .batches
            .iter()
            .zip(verdicts)
            .map(|(b, verdict)| {
                let (code, message) = match verdict {
                    Ok(()) => (ErrorCode::Throttled, "produce quota exceeded".to_owned()),
                    Err(why) => (ErrorCode::Unauthorized, why.clone()),
                };
                PartitionResult {
                    topic: b.topic.clone(),
                    partition: b.partition,
                    error_code: code as i32,
                    error_message: message,
                    base_offset: -1,
                    ..PartitionResult::default()
                }
            })
            .collect(),
        throttle_ms: millis(throttle),
        ..ProduceResponse::default()
    })
}

/// Most topics one Metadata request may name (each is authorized, and may be audited).
pub const MAX_METADATA_TOPICS: usize = 10_000;

/// Whether one batch of a produce request may go on to the agent, or why not.
type Verdict = Result<(), String>;

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis().max(1)).unwrap_or(u32::MAX)
}

fn kind(message: &RequestMessage) -> &'static str {
    match message {
        RequestMessage::Produce(_) => "produce",
        RequestMessage::Metadata(_) => "metadata",
        RequestMessage::Fetch(_) => "fetch",
        RequestMessage::Admin(_) => "admin",
        _ => "other",
    }
}
