//! The transport conformance suite against gRPC (over TLS when the `tls` feature is on).

use std::net::SocketAddr;
use std::sync::Arc;
use streamhouse::conformance::{self, Harness};
use streamhouse::transport::{AgentService, Endpoint, Transport};
use streamhouse_grpc::{GrpcConfig, GrpcTransport};
use tokio::task::JoinHandle;

/// A loopback TCP proxy whose connections can all be cut at once: how the harness makes
/// "the server went away" real for clients (aborting tonic's accept loop leaves its open
/// connections running).
struct Proxy {
    accept: JoinHandle<()>,
    links: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(listen: SocketAddr, backend: SocketAddr) -> (Proxy, SocketAddr) {
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let registry = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                registry.lock().unwrap().push(link);
            }
        });
        (Proxy { accept, links }, addr)
    }

    /// Stops accepting and closes every proxied connection.
    async fn cut(self) {
        self.accept.abort();
        let _ = self.accept.await;
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

struct GrpcHarness {
    addr: Option<SocketAddr>,
    server: Option<JoinHandle<()>>,
    proxy: Option<Proxy>,
    client: GrpcConfig,
    untrusted: Option<GrpcConfig>,
    server_config: GrpcConfig,
    scheme: &'static str,
}

impl GrpcHarness {
    fn plain() -> GrpcHarness {
        GrpcHarness {
            addr: None,
            server: None,
            proxy: None,
            client: GrpcConfig::default(),
            untrusted: None,
            server_config: GrpcConfig::default(),
            scheme: "grpc",
        }
    }

    #[cfg(feature = "tls")]
    fn tls() -> GrpcHarness {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        use streamhouse_grpc::{ClientTls, ServerTls};
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let trusted = ca("trusted");
        let other = ca("other");
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &trusted)
            .unwrap();
        let mut server_config = GrpcConfig::default();
        server_config.server_tls = Some(ServerTls {
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
            client_ca_pem: None,
        });
        let client_for = |ca: &CertifiedIssuer<'static, KeyPair>| {
            let mut config = GrpcConfig::default();
            config.client_tls = Some(ClientTls {
                ca_pem: ca.pem().into_bytes(),
                server_name: Some("localhost".into()),
                identity: None,
            });
            config
        };
        GrpcHarness {
            addr: None,
            server: None,
            proxy: None,
            client: client_for(&trusted),
            untrusted: Some(client_for(&other)),
            server_config,
            scheme: "grpcs",
        }
    }
}

#[async_trait::async_trait]
impl Harness for GrpcHarness {
    fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(GrpcTransport::new(self.client.clone()))
    }

    fn untrusted_transport(&self) -> Option<Arc<dyn Transport>> {
        self.untrusted
            .clone()
            .map(|c| Arc::new(GrpcTransport::new(c)) as Arc<dyn Transport>)
    }

    fn max_message_size(&self) -> usize {
        self.client.max_message_size
    }

    async fn start(&mut self, agent: AgentService) -> Endpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        let config = self.server_config.clone();
        self.server = Some(tokio::spawn(async move {
            let _ = streamhouse_grpc::serve(agent, listener, config, std::future::pending()).await;
        }));
        let listen = self.addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let (proxy, addr) = Proxy::start(listen, backend).await;
        self.proxy = Some(proxy);
        self.addr = Some(addr);
        format!("{}://localhost:{}", self.scheme, addr.port())
            .parse()
            .unwrap()
    }

    async fn stop(&mut self) {
        // Cut every client connection, even mid-request, then stop the server.
        if let Some(proxy) = self.proxy.take() {
            proxy.cut().await;
        }
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_conforms() {
    let report = conformance::run(&mut GrpcHarness::plain()).await;
    println!("{report}");
    report.assert_passed();
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_conforms() {
    let report = conformance::run(&mut GrpcHarness::tls()).await;
    println!("{report}");
    report.assert_passed();
}
