//! Authentication and ACLs on the reference agent, over gRPC, gRPC+TLS and QUIC: each bad
//! credential or forbidden operation is a typed refusal, nothing is appended or readable, and
//! the agent serves the next good request.

use bytes::Bytes;
use std::sync::Arc;
use streamhouse::batch::{BatchBuilder, ProducerStamp};
use streamhouse::codec::NoCompression;
use streamhouse::proto::v1::{
    Acks, ErrorCode, FetchRequest, MetadataRequest, PartitionBatch, ProduceRequest,
};
use streamhouse::transport::tls::{ClientTls, ServerTls};
use streamhouse::transport::{Endpoint, Request, RequestMessage, Response, Transport};
use streamhouse_agent::{Agent, AgentConfig, ListenOptions, Listeners, Security, TopicSpec};
use streamhouse_auth::{Acls, FirstOf, Jwt, JwtAlgorithm, TokenFile};
use streamhouse_grpc::{GrpcConfig, GrpcTransport};
use streamhouse_quic::{QuicConfig, QuicTransport, dev_certificate};
use tower::ServiceExt;

const JWT_SECRET: &[u8] = b"a-shared-secret-of-32-bytes-or-more";

/// An HS256 JWT for `sub`, valid from `nbf` to `exp` (seconds from now), issued by `iss`.
fn jwt(sub: &str, nbf: i64, exp: i64, iss: &str, secret: &[u8]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({"sub": sub, "nbf": now + nbf, "exp": now + exp, "iss": iss});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

struct Secured {
    agent: Agent,
    endpoints: Vec<(&'static str, Endpoint, Arc<dyn Transport>)>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    _serving: Vec<streamhouse_agent::Serving>,
}

async fn secured() -> Secured {
    let data = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let dev = dev_certificate(certs.path()).unwrap();
    let tls = ServerTls::from_files(&dev.cert, &dev.key).unwrap();
    let tokens = format!(
        "{}{}",
        TokenFile::line("alpha", "payments"),
        TokenFile::line("beta", "search")
    );
    let acls: Acls = "allow payments produce,describe orders*\nallow search fetch,describe orders"
        .parse()
        .unwrap();
    let jwt = Jwt::new(JwtAlgorithm::Hs256, JWT_SECRET)
        .unwrap()
        .issuer("idp");
    let security = Security {
        authenticator: Arc::new(FirstOf::new(vec![
            Arc::new(TokenFile::parse(&tokens).unwrap()),
            Arc::new(jwt),
        ])),
        authorizer: Arc::new(acls),
        quotas: Arc::default(),
        producer_ids: None,
        max_connections_per_principal: None,
    };
    let mut config = AgentConfig::new(data.path());
    config.topics = ["orders:1", "order:1"]
        .iter()
        .map(|t| t.parse::<TopicSpec>().unwrap())
        .collect();
    let agent = Agent::open(config).await.unwrap();
    let client_tls = ClientTls::from_ca_file(&dev.cert).unwrap();
    let mut endpoints: Vec<(&'static str, Endpoint, Arc<dyn Transport>)> = Vec::new();
    let mut serving = Vec::new();
    for grpc_tls in [false, true] {
        let listeners = Listeners::bind(ListenOptions {
            grpc: Some("127.0.0.1:0".parse().unwrap()),
            quic: (!grpc_tls).then(|| "127.0.0.1:0".parse().unwrap()),
            tls: Some(tls.clone()),
            grpc_tls,
            security: Some(security.clone()),
            ..ListenOptions::default()
        })
        .await
        .unwrap();
        let s = listeners.serve(&agent);
        if grpc_tls {
            let mut config = GrpcConfig::default();
            config.client_tls = Some(client_tls.clone());
            let e = s.endpoint("grpcs").unwrap().clone();
            endpoints.push(("grpcs", e, Arc::new(GrpcTransport::new(config))));
        } else {
            let e = s.endpoint("grpc").unwrap().clone();
            endpoints.push(("grpc", e, Arc::new(GrpcTransport::default())));
            let e = s.endpoint("quic").unwrap().clone();
            let quic = QuicTransport::new(QuicConfig::default(), &client_tls).unwrap();
            endpoints.push(("quic", e, Arc::new(quic)));
        }
        serving.push(s);
    }
    Secured {
        agent,
        endpoints,
        _dirs: (data, certs),
        _serving: serving,
    }
}

fn produce(topic: &str) -> RequestMessage {
    let mut builder = BatchBuilder::new();
    builder.append(1, None, Some(b"v"), &[]).unwrap();
    let batch: Bytes = builder.finish(ProducerStamp::NONE, &NoCompression).unwrap();
    RequestMessage::Produce(ProduceRequest {
        acks: Acks::Leader as i32,
        timeout_ms: 5_000,
        batches: vec![PartitionBatch {
            topic: topic.into(),
            partition: 0,
            batch,
        }],
    })
}

fn fetch(topic: &str) -> RequestMessage {
    RequestMessage::Fetch(FetchRequest {
        topic: topic.into(),
        partition: 0,
        offset: 0,
        max_bytes: 1 << 20,
        max_wait_ms: 0,
    })
}

async fn call(
    transport: &Arc<dyn Transport>,
    endpoint: &Endpoint,
    authorization: Option<&str>,
    message: RequestMessage,
) -> (ErrorCode, usize) {
    let mut request = Request::new(message);
    if let Some(value) = authorization {
        request.metadata.insert("authorization", value).unwrap();
    }
    let connection = transport.connect(endpoint).await.unwrap();
    match connection.oneshot(request).await.unwrap() {
        Response::Produce(r) => (ErrorCode::from_wire(r.results[0].error_code), 0),
        Response::Fetch(r) => (ErrorCode::from_wire(r.error_code), r.batches.len()),
        Response::Metadata(r) => (ErrorCode::from_wire(r.error_code), r.topics.len()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bad_input_rows_are_refused_by_type_on_every_transport() {
    let s = secured().await;
    let oversize = format!("Bearer {}", "t".repeat(64 << 10));
    let bearer = |token: String| format!("Bearer {token}");
    let expired = bearer(jwt("payments", -600, -60, "idp", JWT_SECRET));
    let immature = bearer(jwt("payments", 600, 1200, "idp", JWT_SECRET));
    let wrong_issuer = bearer(jwt("payments", -60, 600, "evil", JWT_SECRET));
    let wrong_key = bearer(jwt(
        "payments",
        -60,
        600,
        "idp",
        b"not-the-secret-but-32-bytes-long!!",
    ));
    let search_jwt = bearer(jwt("search", -60, 600, "idp", JWT_SECRET));
    let payments_jwt = bearer(jwt("payments", -60, 600, "idp", JWT_SECRET));
    let rows: Vec<(&str, Option<&str>, RequestMessage, ErrorCode)> = vec![
        (
            "expired JWT",
            Some(&expired),
            produce("orders"),
            ErrorCode::Unauthenticated,
        ),
        (
            "JWT not yet valid",
            Some(&immature),
            produce("orders"),
            ErrorCode::Unauthenticated,
        ),
        (
            "JWT of another issuer",
            Some(&wrong_issuer),
            produce("orders"),
            ErrorCode::Unauthenticated,
        ),
        (
            "JWT with a wrong signature",
            Some(&wrong_key),
            produce("orders"),
            ErrorCode::Unauthenticated,
        ),
        (
            "JWT of a principal without produce",
            Some(&search_jwt),
            produce("orders"),
            ErrorCode::Unauthorized,
        ),
        (
            "JWT fetch without fetch",
            Some(&payments_jwt),
            fetch("orders"),
            ErrorCode::Unauthorized,
        ),
        (
            "no credentials",
            None,
            produce("orders"),
            ErrorCode::Unauthenticated,
        ),
        (
            "another scheme",
            Some("Basic YWxwaGE="),
            produce("orders"),
            ErrorCode::Unauthenticated,
        ),
        (
            "malformed token",
            Some("Bearer"),
            produce("orders"),
            ErrorCode::Unauthenticated,
        ),
        (
            "truncated token",
            Some("Bearer alph"),
            produce("orders"),
            ErrorCode::Unauthenticated,
        ),
        (
            "unknown token",
            Some("Bearer gamma"),
            produce("orders"),
            ErrorCode::Unauthenticated,
        ),
        (
            "oversize token (64 KiB)",
            Some(&oversize),
            produce("orders"),
            ErrorCode::Unauthenticated,
        ),
        (
            "metadata without credentials",
            None,
            RequestMessage::Metadata(MetadataRequest::default()),
            ErrorCode::Unauthenticated,
        ),
        (
            "prefix edge: order is not orders*",
            Some("Bearer alpha"),
            produce("order"),
            ErrorCode::Unauthorized,
        ),
        (
            "a token valid for another principal's topic",
            Some("Bearer beta"),
            produce("orders"),
            ErrorCode::Unauthorized,
        ),
        (
            "fetch without fetch",
            Some("Bearer alpha"),
            fetch("orders"),
            ErrorCode::Unauthorized,
        ),
        (
            "fetch of a topic without a rule",
            Some("Bearer beta"),
            fetch("order"),
            ErrorCode::Unauthorized,
        ),
    ];
    for (name, endpoint, transport) in &s.endpoints {
        for (row, authorization, message, expected) in &rows {
            let before = s.agent.next_offset("orders", 0).unwrap()
                + s.agent.next_offset("order", 0).unwrap();
            let (code, items) = call(transport, endpoint, *authorization, message.clone()).await;
            assert_eq!(code, *expected, "{name}: {row}");
            assert_eq!(items, 0, "{name}: {row}: nothing readable");
            let after = s.agent.next_offset("orders", 0).unwrap()
                + s.agent.next_offset("order", 0).unwrap();
            assert_eq!(before, after, "{name}: {row}: nothing appended");
            // The next good request is served.
            let (code, _) =
                call(transport, endpoint, Some("Bearer alpha"), produce("orders")).await;
            assert_eq!(code, ErrorCode::None, "{name}: after {row}");
        }
        // And what was appended is readable by the principal allowed to fetch it.
        let (code, batches) = call(transport, endpoint, Some("Bearer beta"), fetch("orders")).await;
        assert_eq!((code, batches > 0), (ErrorCode::None, true), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_creation_needs_the_create_permission() {
    let data = tempfile::tempdir().unwrap();
    let acls: Arc<Acls> = Arc::new(
        "allow payments produce,describe,create new-*\nallow search produce,describe new-*"
            .parse()
            .unwrap(),
    );
    let tokens = format!(
        "{}{}",
        TokenFile::line("alpha", "payments"),
        TokenFile::line("beta", "search")
    );
    let mut config = AgentConfig::new(data.path());
    config.auto_create_partitions = Some(1);
    let policy_acls = acls.clone();
    config.create_policy = Some(streamhouse_agent::CreatePolicy(Arc::new(move |p, t| {
        use streamhouse_auth::{Authorizer, Operation, Principal};
        policy_acls.allowed(&Principal::new(p), Operation::Create, t)
    })));
    let agent = Agent::open(config).await.unwrap();
    let listeners = Listeners::bind(ListenOptions {
        grpc: Some("127.0.0.1:0".parse().unwrap()),
        security: Some(Security {
            authenticator: Arc::new(TokenFile::parse(&tokens).unwrap()),
            authorizer: acls,
            quotas: Arc::default(),
            producer_ids: None,
            max_connections_per_principal: None,
        }),
        ..ListenOptions::default()
    })
    .await
    .unwrap();
    let serving = listeners.serve(&agent);
    let endpoint = serving.endpoint("grpc").unwrap().clone();
    let grpc: Arc<dyn Transport> = Arc::new(GrpcTransport::default());
    // Search may produce to new-* but not create: the unknown topic stays unknown.
    let (code, _) = call(&grpc, &endpoint, Some("Bearer beta"), produce("new-a")).await;
    assert_eq!(code, ErrorCode::Unauthorized);
    assert!(agent.next_offset("new-a", 0).is_none(), "not created");
    let (code, _) = call(
        &grpc,
        &endpoint,
        Some("Bearer beta"),
        RequestMessage::Metadata(MetadataRequest {
            topics: vec!["new-a".into()],
        }),
    )
    .await;
    assert_eq!(
        code,
        ErrorCode::None,
        "the request is fine, the topic refused"
    );
    assert!(
        agent.next_offset("new-a", 0).is_none(),
        "a metadata request creates nothing either"
    );
    // Payments may create it; then search may produce to it.
    let (code, _) = call(&grpc, &endpoint, Some("Bearer alpha"), produce("new-a")).await;
    assert_eq!(code, ErrorCode::None);
    let (code, _) = call(&grpc, &endpoint, Some("Bearer beta"), produce("new-a")).await;
    assert_eq!(code, ErrorCode::None);
    assert_eq!(agent.next_offset("new-a", 0), Some(2));
}

/// A produce request for one batch of `topic` stamped with `stamp`.
fn stamped(topic: &str, stamp: ProducerStamp) -> RequestMessage {
    let mut builder = BatchBuilder::new();
    builder.append(1, None, Some(b"v"), &[]).unwrap();
    let batch: Bytes = builder.finish(stamp, &NoCompression).unwrap();
    RequestMessage::Produce(ProduceRequest {
        acks: Acks::Leader as i32,
        timeout_ms: 5_000,
        batches: vec![PartitionBatch {
            topic: topic.into(),
            partition: 0,
            batch,
        }],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_write_or_fence_with_a_victims_producer_id() {
    use streamhouse::layers::{BearerToken, WithCredentials};
    let data = tempfile::tempdir().unwrap();
    let tokens = format!(
        "{}{}",
        TokenFile::line("alpha", "payments"),
        TokenFile::line("beta", "search")
    );
    let mut config = AgentConfig::new(data.path().join("data"));
    config.topics = vec!["orders:1".parse::<TopicSpec>().unwrap()];
    let agent = Agent::open(config).await.unwrap();
    let listeners = Listeners::bind(ListenOptions {
        grpc: Some("127.0.0.1:0".parse().unwrap()),
        security: Some(Security {
            authenticator: Arc::new(TokenFile::parse(&tokens).unwrap()),
            authorizer: Arc::new("allow * produce,describe orders".parse::<Acls>().unwrap()),
            quotas: Arc::default(),
            producer_ids: Some(Arc::new(
                streamhouse_auth::FileProducerIds::open(data.path().join("producer-ids")).unwrap(),
            )),
            max_connections_per_principal: None,
        }),
        ..ListenOptions::default()
    })
    .await
    .unwrap();
    let serving = listeners.serve(&agent);
    let endpoint = serving.endpoint("grpc").unwrap().clone();
    let grpc: Arc<dyn Transport> = Arc::new(GrpcTransport::default());
    let as_payments =
        WithCredentials::new(grpc.clone(), Arc::new(BearerToken::new("alpha").unwrap()));
    let victim = streamhouse::producer::init_producer_id(&as_payments, &endpoint)
        .await
        .unwrap();
    let stamp = |id, epoch, sequence| ProducerStamp {
        producer_id: id,
        producer_epoch: epoch,
        base_sequence: sequence,
    };
    let (code, _) = call(
        &grpc,
        &endpoint,
        Some("Bearer alpha"),
        stamped("orders", stamp(victim, 0, 0)),
    )
    .await;
    assert_eq!(code, ErrorCode::None, "the victim writes with its id");
    // The stranger, allowed to produce to the topic, tries the victim's id with a higher
    // epoch (which would fence the victim), and an id it made up.
    let (code, _) = call(
        &grpc,
        &endpoint,
        Some("Bearer beta"),
        stamped("orders", stamp(victim, 1, 0)),
    )
    .await;
    assert_eq!(code, ErrorCode::Unauthorized, "another principal's id");
    let (code, _) = call(
        &grpc,
        &endpoint,
        Some("Bearer beta"),
        stamped("orders", stamp(12_345, 0, 0)),
    )
    .await;
    assert_eq!(code, ErrorCode::Unauthorized, "an id nobody was given");
    // The victim is not fenced: its next batch in sequence is appended.
    let (code, _) = call(
        &grpc,
        &endpoint,
        Some("Bearer alpha"),
        stamped("orders", stamp(victim, 0, 1)),
    )
    .await;
    assert_eq!(code, ErrorCode::None, "the victim carries on");
    // The stranger's own id works for it; non-idempotent batches need no id.
    let as_search = WithCredentials::new(grpc.clone(), Arc::new(BearerToken::new("beta").unwrap()));
    let own = streamhouse::producer::init_producer_id(&as_search, &endpoint)
        .await
        .unwrap();
    assert_ne!(own, victim);
    let (code, _) = call(
        &grpc,
        &endpoint,
        Some("Bearer beta"),
        stamped("orders", stamp(own, 0, 0)),
    )
    .await;
    assert_eq!(code, ErrorCode::None);
    let (code, _) = call(
        &grpc,
        &endpoint,
        Some("Bearer beta"),
        stamped("orders", ProducerStamp::NONE),
    )
    .await;
    assert_eq!(code, ErrorCode::None);
    assert_eq!(agent.next_offset("orders", 0), Some(4));
    // Without credentials, no id.
    assert!(
        streamhouse::producer::init_producer_id(&*grpc, &endpoint)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_holds_at_most_its_connection_limit() {
    let data = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let dev = dev_certificate(certs.path()).unwrap();
    let tokens = format!(
        "{}{}",
        TokenFile::line("alpha", "payments"),
        TokenFile::line("beta", "search")
    );
    let mut config = AgentConfig::new(data.path());
    config.topics = vec!["orders:1".parse::<TopicSpec>().unwrap()];
    let agent = Agent::open(config).await.unwrap();
    let listeners = Listeners::bind(ListenOptions {
        grpc: Some("127.0.0.1:0".parse().unwrap()),
        quic: Some("127.0.0.1:0".parse().unwrap()),
        tls: Some(ServerTls::from_files(&dev.cert, &dev.key).unwrap()),
        security: Some(Security {
            authenticator: Arc::new(TokenFile::parse(&tokens).unwrap()),
            authorizer: Arc::new("allow * produce,describe orders".parse::<Acls>().unwrap()),
            quotas: Arc::default(),
            producer_ids: None,
            max_connections_per_principal: Some(2),
        }),
        ..ListenOptions::default()
    })
    .await
    .unwrap();
    let serving = listeners.serve(&agent);
    let client_tls = ClientTls::from_ca_file(&dev.cert).unwrap();
    for scheme in ["grpc", "quic"] {
        let endpoint = serving.endpoint(scheme).unwrap().clone();
        // Each transport value opens a connection of its own.
        let open = || -> Arc<dyn Transport> {
            match scheme {
                "grpc" => Arc::new(GrpcTransport::default()),
                _ => Arc::new(QuicTransport::new(QuicConfig::default(), &client_tls).unwrap()),
            }
        };
        let (first, second, third) = (open(), open(), open());
        let alpha = Some("Bearer alpha");
        assert_eq!(
            call(&first, &endpoint, alpha, produce("orders")).await.0,
            ErrorCode::None
        );
        assert_eq!(
            call(&second, &endpoint, alpha, produce("orders")).await.0,
            ErrorCode::None
        );
        // Again on a connection already counted: fine.
        assert_eq!(
            call(&first, &endpoint, alpha, produce("orders")).await.0,
            ErrorCode::None
        );
        let before = agent.next_offset("orders", 0).unwrap();
        assert_eq!(
            call(&third, &endpoint, alpha, produce("orders")).await.0,
            ErrorCode::LimitExceeded,
            "{scheme}: a third connection"
        );
        assert_eq!(
            agent.next_offset("orders", 0).unwrap(),
            before,
            "nothing appended"
        );
        // Another principal counts on its own.
        let other = open();
        assert_eq!(
            call(&other, &endpoint, Some("Bearer beta"), produce("orders"))
                .await
                .0,
            ErrorCode::None
        );
        // Once a connection closes, its place is free again.
        drop(first);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while call(&third, &endpoint, alpha, produce("orders")).await.0 != ErrorCode::None {
            assert!(
                std::time::Instant::now() < deadline,
                "{scheme}: a closed connection still counted"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
