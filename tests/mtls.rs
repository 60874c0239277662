//! Mutual TLS on the reference agent, over gRPC+TLS and QUIC: a client certificate's first DNS
//! name is its principal under the ACLs; an unknown CA, an expired certificate or none at all
//! is refused at the handshake; a certificate without a DNS name is `UNAUTHENTICATED`.

use bytes::Bytes;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, Issuer, KeyPair,
    date_time_ymd,
};
use std::sync::Arc;
use streamhouse::batch::{BatchBuilder, ProducerStamp};
use streamhouse::codec::NoCompression;
use streamhouse::proto::v1::{Acks, ErrorCode, PartitionBatch, ProduceRequest};
use streamhouse::transport::tls::{ClientTls, ServerTls};
use streamhouse::transport::{
    Endpoint, Request, RequestMessage, Response, Transport, TransportError,
};
use streamhouse_agent::{Agent, AgentConfig, ListenOptions, Listeners, Security, TopicSpec};
use streamhouse_auth::{Acls, CertificateNames};
use streamhouse_grpc::{GrpcConfig, GrpcTransport};
use streamhouse_quic::{QuicConfig, QuicTransport};
use tower::ServiceExt;

/// A client's (certificate PEM, key PEM).
type Identity = (Vec<u8>, Vec<u8>);

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// (cert PEM, key PEM) of a leaf with these DNS names (none: a common name only), signed by
/// `issuer`, expired if asked.
fn leaf(names: &[&str], expired: bool, issuer: &Issuer<'_, KeyPair>) -> (Vec<u8>, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "payments");
    if expired {
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
}

fn produce() -> Request {
    let mut builder = BatchBuilder::new();
    builder.append(1, None, Some(b"v"), &[]).unwrap();
    let batch: Bytes = builder.finish(ProducerStamp::NONE, &NoCompression).unwrap();
    Request::new(RequestMessage::Produce(ProduceRequest {
        acks: Acks::Leader as i32,
        timeout_ms: 5_000,
        batches: vec![PartitionBatch {
            topic: "orders".into(),
            partition: 0,
            batch,
        }],
    }))
}

/// What a client with `identity` gets for one produce request over `scheme`.
async fn attempt(
    scheme: &str,
    endpoint: &Endpoint,
    server_ca: &[u8],
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<ErrorCode, TransportError> {
    let tls = ClientTls {
        ca_pem: server_ca.to_vec(),
        server_name: None,
        identity,
    };
    let transport: Arc<dyn Transport> = match scheme {
        "grpcs" => {
            let mut config = GrpcConfig::default();
            config.client_tls = Some(tls);
            Arc::new(GrpcTransport::new(config))
        }
        _ => Arc::new(QuicTransport::new(QuicConfig::default(), &tls).unwrap()),
    };
    let connection = transport.connect(endpoint).await?;
    match connection.oneshot(produce()).await? {
        Response::Produce(r) => Ok(ErrorCode::from_wire(r.results[0].error_code)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_principals_and_bad_ones_are_refused() {
    let server_ca = ca("server-ca");
    let client_ca = ca("client-ca");
    let stranger_ca = ca("stranger-ca");
    let (server_cert, server_key) = leaf(&["localhost", "127.0.0.1"], false, &server_ca);
    let data = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new(data.path());
    config.topics = vec!["orders:1".parse::<TopicSpec>().unwrap()];
    let agent = Agent::open(config).await.unwrap();
    let acls: Acls = "allow payments.clients produce,describe orders"
        .parse()
        .unwrap();
    let listeners = Listeners::bind(ListenOptions {
        grpc: Some("127.0.0.1:0".parse().unwrap()),
        quic: Some("127.0.0.1:0".parse().unwrap()),
        grpc_tls: true,
        tls: Some(ServerTls {
            cert_pem: server_cert,
            key_pem: server_key,
            client_ca_pem: Some(client_ca.pem().into_bytes()),
        }),
        security: Some(Security {
            authenticator: Arc::new(CertificateNames),
            authorizer: Arc::new(acls),
            quotas: Arc::default(),
            producer_ids: None,
            max_connections_per_principal: None,
        }),
        ..ListenOptions::default()
    })
    .await
    .unwrap();
    let serving = listeners.serve(&agent);
    let server_ca_pem = server_ca.pem().into_bytes();
    let appended = || agent.next_offset("orders", 0).unwrap();
    for scheme in ["grpcs", "quic"] {
        let endpoint = serving.endpoint(scheme).unwrap().clone();
        let good = leaf(&["payments.clients"], false, &client_ca);
        let before = appended();
        assert_eq!(
            attempt(scheme, &endpoint, &server_ca_pem, Some(good))
                .await
                .unwrap(),
            ErrorCode::None,
            "{scheme}: a certified client with a rule"
        );
        assert_eq!(appended(), before + 1);
        let rows: Vec<(&str, Option<Identity>, Option<ErrorCode>)> = vec![
            ("no client certificate", None, None),
            (
                "certificate from an unknown CA",
                Some(leaf(&["payments.clients"], false, &stranger_ca)),
                None,
            ),
            (
                "expired client certificate",
                Some(leaf(&["payments.clients"], true, &client_ca)),
                None,
            ),
            (
                "certificate without a DNS name",
                Some(leaf(&[], false, &client_ca)),
                Some(ErrorCode::Unauthenticated),
            ),
            (
                "certificate of another principal",
                Some(leaf(&["search.clients"], false, &client_ca)),
                Some(ErrorCode::Unauthorized),
            ),
        ];
        for (row, identity, expected) in rows {
            let before = appended();
            match expected {
                Some(code) => {
                    let outcome = attempt(scheme, &endpoint, &server_ca_pem, identity).await;
                    assert_eq!(outcome.unwrap(), code, "{scheme}: {row}");
                }
                None => {
                    let outcome = attempt(scheme, &endpoint, &server_ca_pem, identity);
                    let error = outcome.await.expect_err(row);
                    // Over gRPC too: the transport probes a mutual-TLS channel before it
                    // sends anything, so the refusal is never a broken pipe.
                    assert!(
                        matches!(error, TransportError::Tls(_)) && !error.is_retriable(),
                        "{scheme}: {row}: a TLS refusal, got {error:?}"
                    );
                }
            }
            assert_eq!(appended(), before, "{scheme}: {row}: nothing appended");
        }
    }
}
