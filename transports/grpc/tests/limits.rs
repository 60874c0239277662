//! Issue 12's gRPC server bounds, each named after what was seen, checked with a raw HTTP/2
//! client (`h2`) that behaves as no well-meaning client would.

use std::time::Duration;
use streamhouse::mock::MockAgent;
use streamhouse_grpc::{GrpcConfig, serve};
use tokio::net::{TcpListener, TcpStream};

async fn start(config: GrpcConfig) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let agent = MockAgent::new().with_topic("t", 1);
    tokio::spawn(serve(
        agent.service(),
        listener,
        config,
        std::future::pending(),
    ));
    addr
}

/// Seen: "No `SETTINGS_MAX_CONCURRENT_STREAMS` is sent; 1,000 streams per connection are
/// accepted." The server now advertises a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_bounds_concurrent_streams_per_connection() {
    let addr = start(GrpcConfig::default()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (_send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    // Drive the connection long enough to take the server's SETTINGS.
    let _ = tokio::time::timeout(Duration::from_millis(300), &mut connection).await;
    assert_eq!(connection.max_concurrent_send_streams(), 100);
}

/// Seen: "Half-sent messages are held indefinitely: no body-read timeout". A request whose
/// message never finishes is ended at the server's request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_message_is_dropped_at_the_request_timeout() {
    let mut config = GrpcConfig::default();
    config.request_timeout = Duration::from_secs(1);
    let addr = start(config).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/streamhouse.v1.Agent/Produce"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = send.send_request(request, false).unwrap();
    // A gRPC frame header declaring 1 MiB, then ten bytes, then nothing.
    let mut half = vec![0u8, 0, 0x10, 0, 0];
    half.extend_from_slice(&[0u8; 10]);
    body.send_data(bytes::Bytes::from(half), false).unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .expect("the server ended the stream");
    // Either an HTTP response with a grpc-status (deadline) or a reset stream: not held.
    if let Ok(response) = answered {
        let status = response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_ne!(
            status.as_deref(),
            Some("0"),
            "a half-sent request succeeded"
        );
    }
}
