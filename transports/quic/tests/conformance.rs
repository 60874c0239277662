//! The transport conformance suite against QUIC.

use std::net::SocketAddr;
use std::sync::Arc;
use streamhouse::conformance::{self, Harness};
use streamhouse::transport::{AgentService, Endpoint, Transport};
use streamhouse_quic::{
    ClientTls, Closer, QuicConfig, QuicServer, QuicTransport, ServerTls, dev_certificate,
};
use tokio::task::JoinHandle;

struct QuicHarness {
    _certs: tempfile::TempDir,
    tls: ServerTls,
    trusted: ClientTls,
    untrusted: ClientTls,
    addr: Option<SocketAddr>,
    server: Option<(Closer, JoinHandle<()>)>,
}

impl QuicHarness {
    fn new() -> QuicHarness {
        let certs = tempfile::tempdir().unwrap();
        let dev = dev_certificate(&certs.path().join("agent")).unwrap();
        let other = dev_certificate(&certs.path().join("other")).unwrap();
        QuicHarness {
            tls: ServerTls::from_files(&dev.cert, &dev.key).unwrap(),
            trusted: ClientTls::from_ca_file(&dev.cert).unwrap(),
            untrusted: ClientTls::from_ca_file(&other.cert).unwrap(),
            _certs: certs,
            addr: None,
            server: None,
        }
    }
}

#[async_trait::async_trait]
impl Harness for QuicHarness {
    fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(QuicTransport::new(QuicConfig::default(), &self.trusted).unwrap())
    }

    fn untrusted_transport(&self) -> Option<Arc<dyn Transport>> {
        Some(Arc::new(
            QuicTransport::new(QuicConfig::default(), &self.untrusted).unwrap(),
        ))
    }

    fn max_message_size(&self) -> usize {
        QuicConfig::default().max_frame_size
    }

    async fn start(&mut self, agent: AgentService) -> Endpoint {
        let bind = self.addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        // The previous server's socket is released when its endpoint driver ends: retry briefly.
        let mut attempts = 0;
        let server = loop {
            match QuicServer::bind(bind, QuicConfig::default(), &self.tls) {
                Ok(server) => break server,
                Err(_) if attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot bind {bind}: {e}"),
            }
        };
        let addr = server.local_addr().unwrap();
        self.addr = Some(addr);
        let closer = server.closer();
        let task = tokio::spawn(server.serve(agent, std::future::pending()));
        self.server = Some((closer, task));
        format!("quic://localhost:{}", addr.port()).parse().unwrap()
    }

    async fn stop(&mut self) {
        if let Some((closer, task)) = self.server.take() {
            closer.close_now();
            task.abort();
            let _ = task.await;
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), closer.wait_idle()).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_conforms() {
    let report = conformance::run(&mut QuicHarness::new()).await;
    println!("{report}");
    report.assert_passed();
}
