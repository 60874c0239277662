//! Issue 12's gRPC server bounds, each named after what was seen, checked with a raw HTTP/2
//! client (`h2`) that behaves as no well-meaning client would.

use std::time::Duration;
use streamhouse::mock::MockAgent;
use streamhouse::serve::{ServerBounds, ServerLimits};
use streamhouse_grpc::{GrpcConfig, serve};
use tokio::net::{TcpListener, TcpStream};

/// A gRPC call of `method` on the agent service at `addr`, as raw HTTP/2 headers.
fn grpc_call(addr: std::net::SocketAddr, method: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/streamhouse.v1.Agent/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

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
    let (send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    // Drive the connection through one answered request: the server's SETTINGS come first.
    let (response, _) = send
        .ready()
        .await
        .unwrap()
        .send_request(grpc_call(addr, "NoSuchMethod"), true)
        .unwrap();
    tokio::select! {
        ended = &mut connection => panic!("connection ended: {ended:?}"),
        answered = response => { answered.unwrap(); }
    }
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

/// Waits (up to 10 s, checking every 10 ms) while `pending` holds; fails with `what` if it
/// never stops holding.
async fn wait_while(what: &str, mut pending: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pending() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn bounded(set: impl FnOnce(&mut ServerLimits)) -> (GrpcConfig, ServerBounds) {
    let mut limits = ServerLimits::default();
    set(&mut limits);
    let bounds = ServerBounds::new(limits);
    let mut config = GrpcConfig::default();
    config.bounds = bounds.clone();
    (config, bounds)
}

/// An HTTP/2 connection the server serves (it answers a request on it), or `None` when the
/// server closed it instead.
async fn connect(addr: std::net::SocketAddr) -> Option<h2::client::SendRequest<bytes::Bytes>> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    // h2 offers at most its send buffer (400 KiB by default) as capacity, whatever the window.
    let (send, connection) = h2::client::Builder::new()
        .max_send_buffer_size(64 << 20)
        .handshake(tcp)
        .await
        .ok()?;
    tokio::spawn(connection);
    let mut ready = send.clone().ready().await.ok()?;
    let probe = grpc_call(addr, "NoSuchMethod");
    let (response, _) = ready.send_request(probe, true).ok()?;
    let answered = tokio::time::timeout(Duration::from_secs(10), response).await;
    matches!(answered, Ok(Ok(_))).then_some(send)
}

/// Seen: "at 1,100 idle connections the accept loop spins ... and new clients time out".
/// Connections past the cap are closed as soon as they are accepted, and a closed connection
/// gives its slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_at_once_and_slots_come_back() {
    let (config, bounds) = bounded(|l| l.max_connections = 3);
    let addr = start(config).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(addr).await.expect("within the limit"));
    }
    assert_eq!(bounds.open_connections(), 3);
    assert!(
        connect(addr).await.is_none(),
        "a fourth connection was served"
    );
    open.pop();
    // The server notices the closed connection when it reads its end.
    wait_while("slot never freed", || bounds.open_connections() > 2).await;
    assert!(
        connect(addr).await.is_some(),
        "the freed slot was not reused"
    );
}

/// Seen: "Idle connections are never closed". A connection without a request for the idle
/// timeout is closed, though the client answers every keep-alive ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let (mut config, bounds) = bounded(|l| l.idle_timeout = Duration::from_millis(500));
    config.keep_alive_interval = Duration::from_millis(100);
    let addr = start(config).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection): (h2::client::SendRequest<bytes::Bytes>, _) =
        h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    // One request, answered; then nothing but pings.
    let mut ready = send.ready().await.unwrap();
    let probe = grpc_call(addr, "NoSuchMethod");
    let (response, _) = ready.send_request(probe, true).unwrap();
    response.await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(20), connection).await;
    assert!(ended.is_ok(), "the idle connection was kept open");
    wait_while("slot never freed", || bounds.open_connections() > 0).await;
}

/// Found by an outside run: 768 silent sockets (or half-sent TLS ClientHellos) held every
/// connection slot for the whole 10-minute idle timeout. A connection that has not started a
/// request within the first-request timeout is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_the_first_request_timeout() {
    let (config, bounds) = bounded(|l| l.first_request_timeout = Duration::from_millis(500));
    let addr = start(config).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        // The server's SETTINGS may arrive first; then the end of the stream.
        while silent.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    assert!(closed.is_ok(), "the silent connection was kept open");
    wait_while("slot never freed", || bounds.open_connections() > 0).await;
}

/// Starts a produce request whose gRPC message declares 8 MiB, sends `bytes` of it and never
/// finishes. Returns the stream, to keep it open.
async fn half_send(
    send: h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    bytes: usize,
) -> h2::SendStream<bytes::Bytes> {
    let mut send = send.ready().await.unwrap();
    let request = grpc_call(addr, "Produce");
    let (_response, mut body) = send.send_request(request, false).unwrap();
    let mut data = vec![0u8, 0, 0x80, 0, 0];
    data.resize(bytes, 0);
    body.send_data(bytes::Bytes::from(data), false).unwrap();
    body
}

/// Seen: "gRPC buffers up to 16 MiB per stream with unlimited streams (+267 MiB for 45 s)".
/// Request bytes are read only within the connection's and the server's budgets: past them
/// the server stops reading and flow control holds the sender back; an ordinary request on
/// another connection is served again once the half-sent ones time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_messages_hold_at_most_the_request_budgets() {
    let (mut config, bounds) = bounded(|l| {
        l.max_request_bytes = 2 << 20;
        l.max_connection_request_bytes = 1 << 20;
    });
    config.request_timeout = Duration::from_secs(2);
    let addr = start(config).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let send = connect(addr).await.unwrap();
        // Four streams of 3 MiB each on one connection: 12 MiB offered.
        for _ in 0..4 {
            held.push(half_send(send.clone(), addr, 3 << 20).await);
        }
    }
    // The two connections (one address, holding more than the reserve is for) fill the
    // server's budget but for its reserved quarter.
    let full = (2 << 20) - (2 << 20) / 4;
    wait_while("budgets never filled", || {
        bounds.request_bytes_held() < full
    })
    .await;
    assert_eq!(bounds.request_bytes_held(), full);
    // An honest producer waits for the budget, and is served once the request timeout has
    // dropped the half-sent messages.
    let transport = streamhouse_grpc::GrpcTransport::new(GrpcConfig::default());
    let endpoint = format!("grpc://{addr}").parse().unwrap();
    let producer = streamhouse::producer::Producer::builder(
        transport,
        streamhouse::discovery::StaticDiscovery::new().with_topic("t", 1, &endpoint),
    )
    .build()
    .unwrap();
    let sent = tokio::time::timeout(
        Duration::from_secs(30),
        producer.send_and_wait(streamhouse::producer::ProducerRecord::new("t", b"honest")),
    )
    .await
    .expect("the honest producer was never served");
    assert!(sent.is_ok(), "{sent:?}");
    drop(held);
}

/// The bytes a new request stream on `send` may send before the server reads any: the smaller
/// of the server's stream and connection windows.
async fn send_window(
    send: h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
) -> u64 {
    let mut send = send.ready().await.unwrap();
    let (_response, mut body) = send
        .send_request(grpc_call(addr, "Produce"), false)
        .unwrap();
    body.reserve_capacity(64 << 20);
    let granted = std::future::poll_fn(|cx| body.poll_capacity(cx)).await;
    granted.unwrap().unwrap() as u64
}

/// Found by an outside run: "half-sent with 10 connections +141 MiB, with 20 +293 MiB" — each
/// connection could fill its own 8 MiB HTTP/2 window, however tight the request budgets. The
/// windows now come from one pool: the first connection gets the whole window, later ones
/// smaller windows as the pool empties, and closed connections give theirs back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_connections_shares_one_pool_of_receive_windows() {
    let (mut config, bounds) = bounded(|l| l.max_window_bytes = 8 << 20);
    config.connection_window = 4 << 20;
    config.stream_window = 4 << 20;
    let addr = start(config).await;
    let mut connections = Vec::new();
    let mut windows = Vec::new();
    for _ in 0..12 {
        let send = connect(addr).await.expect("served");
        windows.push(send_window(send.clone(), addr).await);
        connections.push(send);
    }
    assert_eq!(
        windows[0],
        4 << 20,
        "the first connection gets the whole window"
    );
    assert!(
        windows.windows(2).all(|w| w[0] >= w[1]),
        "a later connection never gets more: {windows:?}"
    );
    let min = streamhouse::serve::MIN_WINDOW;
    assert_eq!(*windows.last().unwrap(), min, "{windows:?}");
    let total: u64 = windows.iter().sum();
    assert!(
        total <= (8 << 20) + 12 * min,
        "windows beyond the pool: {windows:?}"
    );
    assert!(bounds.window_bytes_granted() <= 8 << 20);
    drop(connections);
    wait_while("closed connections kept their windows", || {
        bounds.window_bytes_granted() > 0
    })
    .await;
    let send = connect(addr).await.expect("served");
    assert_eq!(
        send_window(send, addr).await,
        4 << 20,
        "the pool is whole again"
    );
}

/// Found in review: the listening socket stayed open while shutdown waited for requests in
/// flight, so new clients connected and then hung. It is closed as soon as shutdown begins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_are_refused_as_soon_as_shutdown_begins() {
    let (mut config, bounds) = bounded(|_| {});
    config.request_timeout = Duration::from_secs(60);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = MockAgent::new().with_topic("t", 1);
    let server = tokio::spawn(serve(agent.service(), listener, config, async {
        let _ = stopped.await;
    }));
    // A half-sent request keeps the drain going for the whole request timeout.
    let send = connect(addr).await.expect("served");
    let _held = half_send(send, addr, 1_000).await;
    wait_while("request never read", || bounds.request_bytes_held() == 0).await;
    stop.send(()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await;
        match attempt {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still accepting connections after shutdown began"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    if server.is_finished() {
        panic!("the drain should still be waiting: {:?}", server.await);
    }
    server.abort();
}

/// Found by an outside run: every open stream cost memory whether or not it sent a byte
/// (200 connections × 100 streams: +264 MiB). Past `max_requests_per_peer` a new request is
/// refused at once, as UNAVAILABLE (the producer retries it), before anything is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_per_address_cap_are_refused_at_once() {
    let (config, bounds) = bounded(|l| l.max_requests_per_peer = 3);
    let addr = start(config).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let send = connect(addr).await.expect("served");
        held.push(half_send(send, addr, 1_000).await);
    }
    wait_while("requests never started", || {
        bounds.requests_in_progress() < 3
    })
    .await;
    let send = connect(addr).await.expect("served");
    let mut ready = send.ready().await.unwrap();
    let (response, _) = ready
        .send_request(grpc_call(addr, "Metadata"), true)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answered at once")
        .unwrap();
    let status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(status.as_deref(), Some("14"), "UNAVAILABLE: {response:?}");
    assert_eq!(bounds.requests_in_progress(), 3);
    drop(held);
}
