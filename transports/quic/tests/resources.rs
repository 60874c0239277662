//! Issue 12's client-side and file items for the QUIC transport, each named after what was seen.

use std::net::SocketAddr;
use streamhouse::mock::MockAgent;
use streamhouse::transport::{Endpoint, Transport};
use streamhouse_quic::{
    ClientTls, QuicConfig, QuicServer, QuicTransport, ServerTls, dev_certificate,
};

/// Seen: "QUIC dialling is serialised across all agents by one mutex, so one unreachable
/// agent's 5 s handshake blocks re-dials to every other". Dials are now serialised per agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_agent_does_not_delay_dialling_another() {
    let certs = tempfile::tempdir().unwrap();
    let dev = dev_certificate(certs.path()).unwrap();
    let agent = MockAgent::new().with_topic("t", 1);
    let server = QuicServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        QuicConfig::default(),
        &ServerTls::from_files(&dev.cert, &dev.key).unwrap(),
    )
    .unwrap();
    let addr: SocketAddr = server.local_addr().unwrap();
    tokio::spawn(server.serve(agent.service(), std::future::pending()));
    // A UDP port nobody answers on: the handshake waits for its timeout.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let unreachable: Endpoint = format!("quic://{}", silent.local_addr().unwrap())
        .parse()
        .unwrap();
    let reachable: Endpoint = format!("quic://{addr}").parse().unwrap();
    let transport = QuicTransport::new(
        QuicConfig::default(),
        &ClientTls::from_ca_file(&dev.cert).unwrap(),
    )
    .unwrap();
    let stuck = tokio::spawn({
        let (transport, unreachable) = (transport.clone(), unreachable.clone());
        async move { transport.connect(&unreachable).await.map(drop) }
    });
    // Let the first dial take the (old, global) lock.
    tokio::task::yield_now().await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    transport
        .connect(&reachable)
        .await
        .expect("the reachable agent is dialled");
    assert!(
        !stuck.is_finished(),
        "the unreachable agent's handshake is still pending: the dials ran side by side"
    );
    assert!(stuck.await.unwrap().is_err());
}

/// Seen: "the dev certificate's key.pem is written world-readable (0644)".
#[test]
fn the_dev_certificate_key_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let certs = tempfile::tempdir().unwrap();
    let dev = dev_certificate(certs.path()).unwrap();
    let mode = std::fs::metadata(&dev.key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key.pem mode {mode:o}");
}
