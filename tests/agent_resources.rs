//! Issue 12's agent-side items, each named after what was seen, driven through the agent's
//! service (what every transport serves).

use streamhouse::transport::{AgentService, Request, RequestMessage, Response};
use streamhouse_agent::{Agent, AgentConfig, AgentError};
use streamhouse_proto::v1::{ErrorCode, MetadataRequest, MetadataResponse};
use tower::ServiceExt;

async fn metadata(service: &AgentService, topics: Vec<String>) -> MetadataResponse {
    let request = RequestMessage::Metadata(MetadataRequest { topics });
    match service
        .clone()
        .oneshot(Request::new(request))
        .await
        .unwrap()
    {
        Response::Metadata(r) => r,
        other => panic!("{other:?}"),
    }
}

/// Seen: "`--auto-create` creates topics from any request, Metadata included, without a cap:
/// one request made 3,000 topics in 10 s … `--auto-create 0` is accepted and the
/// zero-partition topics it makes break `streamhouse topics` for everyone". Auto-creation now
/// stops at `max_topics` with `LIMIT_EXCEEDED`, and zero partitions is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_create_stops_at_the_topic_limit_and_refuses_zero_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let mut zero = AgentConfig::new(dir.path());
    zero.auto_create_partitions = Some(0);
    assert!(matches!(
        Agent::open(zero).await,
        Err(AgentError::Config(_))
    ));

    let mut config = AgentConfig::new(dir.path()).topic("kept", 2);
    config.auto_create_partitions = Some(1);
    config.max_topics = 10;
    let agent = Agent::open(config).await.unwrap();
    let names: Vec<String> = (0..30).map(|i| format!("flood-{i}")).collect();
    let answer = metadata(&agent.service(), names).await;
    let created = answer.topics.iter().filter(|t| t.error_code == 0).count();
    let refused = answer
        .topics
        .iter()
        .filter(|t| t.error_code == ErrorCode::LimitExceeded as i32)
        .count();
    assert_eq!(
        (created, refused),
        (9, 21),
        "10 topics in all, 'kept' included"
    );
    let all = metadata(&agent.service(), Vec::new()).await;
    assert_eq!(all.topics.len(), 10);
    assert!(all.topics.iter().all(|t| t.partition_count >= 1));
    agent.shutdown().await;
}
