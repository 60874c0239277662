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
//! topic, peer address — never the credential) and counted:
//!
//! | metric | labels |
//! |---|---|
//! | `streamhouse_auth_failures_total` | `reason`: `missing`, `malformed`, `too_large`, `invalid`, `expired`, `not_yet_valid`, `claim` |
//! | `streamhouse_auth_denied_total` | `operation` |
//! | `streamhouse_quota_throttled_total` | answers that told a client to hold off |
//! | `streamhouse_quota_refusals_total` | requests refused `THROTTLED` (sent while in debt) |

use crate::{Admission, AuthError, Authenticator, Authorizer, Operation, Principal, Quotas};
use std::sync::Arc;
use std::time::Duration;
use streamhouse::proto::v1::{
    AdminResponse, ErrorCode, FetchResponse, MetadataResponse, PartitionResult, ProduceRequest,
    ProduceResponse, TopicMetadata, admin_request::Action,
};
use streamhouse::transport::{AgentService, Peer, Request, RequestMessage, Response};
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
    guard_with_quotas(agent, authenticator, authorizer, Arc::new(Quotas::new()))
}

/// [`guard`], with produce [`Quotas`] per principal: a request within its principal's rate
/// passes and its answer carries the `throttle_ms` that keeps the principal at the rate; one
/// sent while the principal is still in debt is refused `THROTTLED` whole.
pub fn guard_with_quotas(
    agent: AgentService,
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
    quotas: Arc<Quotas>,
) -> AgentService {
    let guard = Arc::new(Guard {
        authenticator,
        authorizer,
        quotas,
    });
    AgentService::new(tower::service_fn(move |request: Request| {
        let (guard, agent) = (guard.clone(), agent.clone());
        async move { guard.handle(agent, request).await }
    }))
}

struct Guard {
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
    quotas: Arc<Quotas>,
}

impl Guard {
    async fn handle(
        &self,
        agent: AgentService,
        mut request: Request,
    ) -> Result<Response, BoxError> {
        let peer = request.peer.clone().unwrap_or_default();
        let principal = match self.authenticator.authenticate(&peer, &request.metadata) {
            Ok(principal) => principal,
            Err(error) => return Ok(self.unauthenticated(&peer, &request.message, &error)),
        };
        // The agent decides some things by principal itself (auto-creation).
        request.principal = Some(principal.name().into());
        let allowed = |operation: Operation, topic: &str| {
            let allowed = self.authorizer.allowed(&principal, operation, topic);
            if !allowed {
                denied(&principal, operation, topic, &peer);
            }
            allowed
        };
        match &request.message {
            RequestMessage::Produce(produce) => {
                let verdicts: Vec<bool> = produce
                    .batches
                    .iter()
                    .map(|b| allowed(Operation::Produce, &b.topic))
                    .collect();
                let bytes: u64 = produce
                    .batches
                    .iter()
                    .zip(&verdicts)
                    .filter(|(_, ok)| **ok)
                    .map(|(b, _)| b.batch.len() as u64)
                    .sum();
                let throttle = match self.quotas.admit(&principal, bytes, Instant::now()) {
                    Admission::Pass { throttle } => throttle,
                    Admission::Refuse { throttle } => {
                        metrics::counter!("streamhouse_quota_refusals_total").increment(1);
                        return Ok(throttled(produce, &verdicts, throttle));
                    }
                };
                let mut response = if verdicts.iter().all(|&ok| ok) {
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
                        self.authorizer
                            .allowed(&principal, Operation::Describe, &t.name)
                    });
                }
                Ok(response)
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
            RequestMessage::Admin(admin) => {
                let (operation, topic) = match &admin.action {
                    Some(Action::CreateTopic(c)) => (Operation::Create, c.name.as_str()),
                    Some(Action::DeleteTopic(d)) => (Operation::Delete, d.name.as_str()),
                    Some(Action::AlterTopic(a)) => (Operation::Admin, a.name.as_str()),
                    // Nothing asked: the agent answers it as malformed.
                    None => return agent.oneshot(request).await,
                };
                if allowed(operation, topic) {
                    return agent.oneshot(request).await;
                }
                Ok(Response::Admin(AdminResponse {
                    error_code: ErrorCode::Unauthorized as i32,
                    error_message: format!("{principal} may not {operation} {topic}"),
                    topic: None,
                }))
            }
            // A kind this guard does not know is not let through unchecked.
            _ => Err("request kind not covered by authorization".into()),
        }
    }

    fn unauthenticated(
        &self,
        peer: &Peer,
        message: &RequestMessage,
        error: &AuthError,
    ) -> Response {
        metrics::counter!("streamhouse_auth_failures_total", "reason" => error.reason())
            .increment(1);
        tracing::warn!(
            target: "streamhouse::audit",
            peer = ?peer.addr,
            request = kind(message),
            reason = error.reason(),
            "authentication failed: {error}"
        );
        refuse_whole(message, ErrorCode::Unauthenticated, &error.to_string())
    }
}

fn denied(principal: &Principal, operation: Operation, topic: &str, peer: &Peer) {
    metrics::counter!("streamhouse_auth_denied_total", "operation" => operation.name())
        .increment(1);
    tracing::warn!(
        target: "streamhouse::audit",
        %principal,
        %operation,
        topic,
        peer = ?peer.addr,
        "operation denied"
    );
}

/// A produce request some of whose batches are refused: the allowed ones go to the agent,
/// and the answers are put back in the request's order.
async fn produce_in_part(
    agent: AgentService,
    mut request: Request,
    produce: &ProduceRequest,
    verdicts: &[bool],
) -> Result<Response, BoxError> {
    let allowed: Vec<_> = produce
        .batches
        .iter()
        .zip(verdicts)
        .filter(|(_, ok)| **ok)
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
        .map(|(batch, ok)| {
            let refused = || PartitionResult {
                topic: batch.topic.clone(),
                partition: batch.partition,
                error_code: ErrorCode::Unauthorized as i32,
                error_message: format!("may not produce to {}", batch.topic),
                ..PartitionResult::default()
            };
            match ok {
                true => answered.next().unwrap_or_else(|| PartitionResult {
                    error_code: ErrorCode::Internal as i32,
                    error_message: "the agent answered fewer batches than it was sent".into(),
                    ..refused()
                }),
                false => refused(),
            }
        })
        .collect();
    Ok(Response::Produce(answer))
}

/// A produce request refused for its principal's quota: the batches it may send are answered
/// `THROTTLED` (retriable), the others `UNAUTHORIZED`; nothing is appended.
fn throttled(produce: &ProduceRequest, verdicts: &[bool], throttle: Duration) -> Response {
    Response::Produce(ProduceResponse {
        results: produce
            .batches
            .iter()
            .zip(verdicts)
            .map(|(b, ok)| PartitionResult {
                topic: b.topic.clone(),
                partition: b.partition,
                error_code: if *ok {
                    ErrorCode::Throttled as i32
                } else {
                    ErrorCode::Unauthorized as i32
                },
                error_message: if *ok {
                    "produce quota exceeded".into()
                } else {
                    format!("may not produce to {}", b.topic)
                },
                ..PartitionResult::default()
            })
            .collect(),
        throttle_ms: millis(throttle),
        ..ProduceResponse::default()
    })
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis().max(1)).unwrap_or(u32::MAX)
}

/// An answer refusing all of `message` with `code`.
fn refuse_whole(message: &RequestMessage, code: ErrorCode, text: &str) -> Response {
    let code = code as i32;
    match message {
        RequestMessage::Produce(produce) => Response::Produce(ProduceResponse {
            results: produce
                .batches
                .iter()
                .map(|b| PartitionResult {
                    topic: b.topic.clone(),
                    partition: b.partition,
                    error_code: code,
                    error_message: text.to_owned(),
                    ..PartitionResult::default()
                })
                .collect(),
            ..ProduceResponse::default()
        }),
        RequestMessage::Fetch(fetch) => Response::Fetch(FetchResponse {
            topic: fetch.topic.clone(),
            partition: fetch.partition,
            error_code: code,
            error_message: text.to_owned(),
            ..FetchResponse::default()
        }),
        RequestMessage::Admin(_) => Response::Admin(AdminResponse {
            error_code: code,
            error_message: text.to_owned(),
            topic: None,
        }),
        _ => Response::Metadata(MetadataResponse {
            error_code: code,
            error_message: text.to_owned(),
            ..MetadataResponse::default()
        }),
    }
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
