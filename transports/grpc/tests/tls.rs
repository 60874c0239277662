//! TLS (feature `tls`): a trusted server works over `grpcs://`; an untrusted one, a plaintext
//! client, and a client without the certificate mTLS requires are refused.
#![cfg(feature = "tls")]

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, Issuer, KeyPair};
use std::time::Duration;
use streamhouse::mock::MockAgent;
use streamhouse::proto::v1::MetadataRequest;
use streamhouse::transport::{Endpoint, Request, RequestMessage, Response, Transport};
use streamhouse_grpc::{ClientTls, GrpcConfig, GrpcTransport, ServerTls};
use tower::ServiceExt;

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `name` signed by `issuer`: (cert PEM, key PEM).
fn leaf(name: &str, issuer: &Issuer<'_, KeyPair>) -> (Vec<u8>, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, issuer)
        .unwrap();
    (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
}

struct Server {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(tls: ServerTls) -> Server {
    let agent = MockAgent::new().with_topic("t", 1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = GrpcConfig::default();
    config.server_tls = Some(tls);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(streamhouse_grpc::serve(
        agent.service(),
        listener,
        config,
        async {
            let _ = stopped.await;
        },
    ));
    Server {
        port,
        stop: Some(stop),
    }
}

/// Connects with `tls` (or none) and asks for metadata: Ok if the exchange worked.
async fn metadata(scheme: &str, port: u16, tls: Option<ClientTls>) -> Result<(), String> {
    let mut config = GrpcConfig::default();
    config.client_tls = tls;
    config.connect_timeout = Duration::from_secs(2);
    let endpoint: Endpoint = format!("{scheme}://localhost:{port}").parse().unwrap();
    let connection = GrpcTransport::new(config)
        .connect(&endpoint)
        .await
        .map_err(|e| e.to_string())?;
    let request = Request::new(RequestMessage::Metadata(MetadataRequest::default()));
    match tokio::time::timeout(Duration::from_secs(5), connection.oneshot(request)).await {
        Ok(Ok(Response::Metadata(m))) if m.topics.len() == 1 => Ok(()),
        Ok(Ok(other)) => Err(format!("unexpected {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

fn client(
    ca: &CertifiedIssuer<'static, KeyPair>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> ClientTls {
    ClientTls {
        ca_pem: ca.pem().into_bytes(),
        server_name: None,
        identity,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificates_are_verified() {
    let ca = ca("streamhouse test ca");
    let (cert_pem, key_pem) = leaf("localhost", &ca);
    let server = serve(ServerTls {
        cert_pem,
        key_pem,
        client_ca_pem: None,
    })
    .await;
    metadata("grpcs", server.port, Some(client(&ca, None)))
        .await
        .unwrap();

    let stranger = self::ca("some other ca");
    assert!(
        metadata("grpcs", server.port, Some(client(&stranger, None)))
            .await
            .is_err(),
        "untrusted CA"
    );
    assert!(
        metadata("grpc", server.port, None).await.is_err(),
        "plaintext to a TLS server"
    );
    let err = metadata("grpcs", server.port, None).await.unwrap_err();
    assert!(err.contains("tls"), "grpcs without client_tls: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate() {
    let ca = ca("streamhouse test ca");
    let (cert_pem, key_pem) = leaf("localhost", &ca);
    let server = serve(ServerTls {
        cert_pem,
        key_pem,
        client_ca_pem: Some(ca.pem().into_bytes()),
    })
    .await;
    assert!(
        metadata("grpcs", server.port, Some(client(&ca, None)))
            .await
            .is_err(),
        "no client cert"
    );
    let stranger = self::ca("some other ca");
    let foreign = leaf("producer", &stranger);
    assert!(
        metadata("grpcs", server.port, Some(client(&ca, Some(foreign))))
            .await
            .is_err(),
        "client cert from an untrusted CA"
    );
    let identity = leaf("producer", &ca);
    metadata("grpcs", server.port, Some(client(&ca, Some(identity))))
        .await
        .unwrap();
}
