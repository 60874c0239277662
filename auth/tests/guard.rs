//! The guard in front of the mock agent, through the mock transport: the bad-input rows of
//! authentication and authorization, each a typed refusal with nothing appended and the agent
//! serving the next good request; and a producer with a token going through discovery.

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use streamhouse::batch::{BatchBuilder, ProducerStamp};
use streamhouse::codec::NoCompression;
use streamhouse::discovery::{Bootstrap, DiscoveryError};
use streamhouse::layers::{BearerToken, WithCredentials};
use streamhouse::mock::{MockAgent, MockTransport};
use streamhouse::producer::{ProduceError, Producer, ProducerRecord};
use streamhouse::proto::v1::{
    Acks, AdminRequest, DeleteTopic, ErrorCode, FetchRequest, MetadataRequest, PartitionBatch,
    ProduceRequest, admin_request::Action,
};
use streamhouse::transport::{Request, RequestMessage, Response, Transport};
use streamhouse_auth::{Acls, TokenFile, guard};
use tower::ServiceExt;

const ACLS: &str = "\
allow payments produce,describe orders*
allow search fetch,describe orders
";

struct Fixture {
    agent: MockAgent,
    transport: MockTransport,
}

fn fixture() -> Fixture {
    let agent = MockAgent::new()
        .with_topic("orders", 1)
        .with_topic("orders-eu", 1)
        .with_topic("order", 1)
        .with_topic("secret", 1);
    let tokens = format!(
        "{}{}",
        TokenFile::line("alpha", "payments"),
        TokenFile::line("beta", "search")
    );
    let acls: Acls = ACLS.parse().unwrap();
    let transport = MockTransport::new();
    transport.serve(
        agent.endpoint(),
        guard(
            agent.service(),
            Arc::new(TokenFile::parse(&tokens).unwrap()),
            Arc::new(acls),
        ),
    );
    Fixture { agent, transport }
}

impl Fixture {
    async fn call(&self, authorization: Option<&str>, message: RequestMessage) -> Response {
        let mut request = Request::new(message);
        if let Some(value) = authorization {
            request.metadata.insert("authorization", value).unwrap();
        }
        let connection = self
            .transport
            .connect(&self.agent.endpoint())
            .await
            .unwrap();
        connection.oneshot(request).await.unwrap()
    }

    fn appended(&self) -> usize {
        ["orders", "orders-eu", "order", "secret"]
            .iter()
            .map(|t| self.agent.batches(t, 0).len())
            .sum()
    }
}

fn batch() -> Bytes {
    let mut builder = BatchBuilder::new();
    builder.append(1, None, Some(b"v"), &[]).unwrap();
    builder.finish(ProducerStamp::NONE, &NoCompression).unwrap()
}

fn produce(topics: &[&str]) -> RequestMessage {
    RequestMessage::Produce(ProduceRequest {
        acks: Acks::Leader as i32,
        timeout_ms: 5_000,
        batches: topics
            .iter()
            .map(|t| PartitionBatch {
                topic: (*t).into(),
                partition: 0,
                batch: batch(),
            })
            .collect(),
    })
}

fn codes(response: &Response) -> Vec<ErrorCode> {
    match response {
        Response::Produce(r) => r
            .results
            .iter()
            .map(|r| ErrorCode::from_wire(r.error_code))
            .collect(),
        Response::Fetch(r) => vec![ErrorCode::from_wire(r.error_code)],
        Response::Admin(r) => vec![ErrorCode::from_wire(r.error_code)],
        Response::Metadata(r) => std::iter::once(ErrorCode::from_wire(r.error_code))
            .chain(r.topics.iter().map(|t| ErrorCode::from_wire(t.error_code)))
            .collect(),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn bad_credentials_are_refused_whole_and_nothing_is_appended() {
    let f = fixture();
    let oversize = format!("Bearer {}", "x".repeat(64 << 10));
    for (row, authorization) in [
        ("no credentials", None),
        ("another scheme", Some("Basic YWxwaGE6")),
        ("no token", Some("Bearer")),
        ("unknown token", Some("Bearer gamma")),
        ("truncated token", Some("Bearer alph")),
        ("oversize token (64 KiB)", Some(oversize.as_str())),
    ] {
        let answer = f
            .call(authorization, produce(&["orders", "orders-eu"]))
            .await;
        assert_eq!(codes(&answer), vec![ErrorCode::Unauthenticated; 2], "{row}");
        let answer = f
            .call(
                authorization,
                RequestMessage::Metadata(MetadataRequest::default()),
            )
            .await;
        let Response::Metadata(metadata) = &answer else {
            panic!()
        };
        assert_eq!(codes(&answer), vec![ErrorCode::Unauthenticated], "{row}");
        assert!(
            metadata.topics.is_empty() && metadata.agents.is_empty(),
            "{row}"
        );
        assert_eq!(f.appended(), 0, "{row}: nothing appended");
        // The agent serves the next good request.
        let good = f.call(Some("Bearer alpha"), produce(&["orders"])).await;
        assert_eq!(codes(&good), vec![ErrorCode::None], "{row}");
        f.agent.crash(); // forget the good batch, so the next row counts from zero
    }
}

#[tokio::test]
async fn each_principal_does_only_what_its_rules_allow() {
    let f = fixture();
    // Prefix edges: orders* covers orders and orders-eu, not order. A mixed request appends
    // the allowed batches and refuses the other, in order.
    let answer = f
        .call(
            Some("Bearer alpha"),
            produce(&["orders", "order", "orders-eu"]),
        )
        .await;
    assert_eq!(
        codes(&answer),
        vec![ErrorCode::None, ErrorCode::Unauthorized, ErrorCode::None]
    );
    let Response::Produce(mixed) = &answer else {
        panic!()
    };
    assert_eq!(
        mixed.results[1].base_offset, -1,
        "a refused batch has no offset"
    );
    assert_eq!(f.agent.batches("order", 0).len(), 0);
    assert_eq!(f.agent.batches("orders", 0).len(), 1);
    assert_eq!(f.agent.batches("orders-eu", 0).len(), 1);
    // A token valid for another principal's topic.
    let answer = f.call(Some("Bearer beta"), produce(&["orders"])).await;
    assert_eq!(codes(&answer), vec![ErrorCode::Unauthorized]);
    assert_eq!(f.agent.batches("orders", 0).len(), 1);

    let fetch = |topic: &str| {
        RequestMessage::Fetch(FetchRequest {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
        })
    };
    // Fetch without `fetch`: nothing readable.
    let answer = f.call(Some("Bearer alpha"), fetch("orders")).await;
    let Response::Fetch(r) = &answer else {
        panic!()
    };
    assert_eq!(
        (codes(&answer), r.batches.len()),
        (vec![ErrorCode::Unauthorized], 0)
    );
    let answer = f.call(Some("Bearer beta"), fetch("orders")).await;
    let Response::Fetch(r) = &answer else {
        panic!()
    };
    assert_eq!(
        (codes(&answer), r.batches.len()),
        (vec![ErrorCode::None], 1)
    );
    let answer = f.call(Some("Bearer beta"), fetch("orders-eu")).await;
    assert_eq!(codes(&answer), vec![ErrorCode::Unauthorized]);

    // Metadata: all topics lists only the describable ones; named ones are refused by name;
    // a request naming only refused topics does not turn into "every topic".
    let names = |r: &Response| match r {
        Response::Metadata(m) => {
            let mut n: Vec<_> = m.topics.iter().map(|t| t.name.clone()).collect();
            n.sort();
            n
        }
        _ => unreachable!(),
    };
    let all = f
        .call(
            Some("Bearer alpha"),
            RequestMessage::Metadata(MetadataRequest::default()),
        )
        .await;
    assert_eq!(names(&all), ["orders", "orders-eu"]);
    let named = f
        .call(
            Some("Bearer alpha"),
            RequestMessage::Metadata(MetadataRequest {
                topics: vec!["orders".into(), "secret".into()],
            }),
        )
        .await;
    assert_eq!(names(&named), ["orders", "secret"]);
    let Response::Metadata(m) = &named else {
        panic!()
    };
    let secret = m.topics.iter().find(|t| t.name == "secret").unwrap();
    assert_eq!(
        ErrorCode::from_wire(secret.error_code),
        ErrorCode::Unauthorized
    );
    assert_eq!(secret.partition_count, 0, "nothing about it leaks");
    let only_refused = f
        .call(
            Some("Bearer alpha"),
            RequestMessage::Metadata(MetadataRequest {
                topics: vec!["secret".into()],
            }),
        )
        .await;
    assert_eq!(names(&only_refused), ["secret"]);

    // Found by an outside review: one request naming 100,000 topics wrote as many audit
    // lines. Such a request is refused whole.
    let many = f
        .call(
            Some("Bearer alpha"),
            RequestMessage::Metadata(MetadataRequest {
                topics: (0..=streamhouse_auth::MAX_METADATA_TOPICS)
                    .map(|i| format!("t{i}"))
                    .collect(),
            }),
        )
        .await;
    assert_eq!(codes(&many), vec![ErrorCode::InvalidRequest]);

    // Delete without `delete`: refused, the topic stays.
    let delete = RequestMessage::Admin(AdminRequest {
        action: Some(Action::DeleteTopic(DeleteTopic {
            name: "orders".into(),
        })),
    });
    let answer = f.call(Some("Bearer alpha"), delete).await;
    assert_eq!(codes(&answer), vec![ErrorCode::Unauthorized]);
    assert_eq!(f.agent.batches("orders", 0).len(), 1);
}

#[tokio::test]
async fn a_producer_with_a_token_sends_through_discovery_and_is_refused_by_type() {
    let f = fixture();
    let endpoint = f.agent.endpoint();
    let producer_with = |token: &str| {
        let transport = WithCredentials::new(
            f.transport.clone(),
            Arc::new(BearerToken::new(token).unwrap()),
        );
        let discovery = Bootstrap::new(transport.clone(), vec![endpoint.clone()]);
        Producer::builder(transport, discovery)
            .max_block(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let payments = producer_with("alpha");
    let sent = payments
        .send_and_wait(ProducerRecord::new("orders-eu", b"hello"))
        .await
        .unwrap();
    assert_eq!(sent.offset, 0);
    // The producer's principal may not describe `secret`: a typed refusal, not a timeout.
    let refused = payments
        .send_and_wait(ProducerRecord::new("secret", b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ProduceError::Discovery(DiscoveryError::Unauthorized(t)) if t == "secret"),
        "{refused:?}"
    );
    let stranger = producer_with("gamma");
    let refused = stranger
        .send_and_wait(ProducerRecord::new("orders", b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &refused,
            ProduceError::Discovery(DiscoveryError::Unauthenticated(_))
        ),
        "{refused:?}"
    );
    assert_eq!(f.agent.batches("orders", 0).len(), 0);
    assert_eq!(f.agent.batches("orders-eu", 0).len(), 1);
}
