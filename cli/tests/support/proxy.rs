//! Loopback proxies that add delay and cut links, between a producer and an agent process.
//!
//! - [`TcpProxy`] (gRPC): every chunk is held 0..`max_delay` (order kept, so the stream stays
//!   valid); [`TcpProxy::cut`] aborts every open connection at once.
//! - [`UdpProxy`] (QUIC): every datagram is held 0..`max_delay`, order kept (heavy reordering
//!   reads as loss to QUIC's congestion control and says nothing about our code); [`UdpProxy::cut`] drops everything in both directions for a
//!   while — longer than the client's idle timeout, it ends the QUIC connection.
//!
//! Both bind 127.0.0.1 port 0 and stop when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A tiny seeded generator (splitmix64): delays differ per chunk but a seed replays them.
#[derive(Debug)]
pub struct Jitter(AtomicU64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(AtomicU64::new(seed))
    }

    /// A uniform number in 0..1.
    pub fn unit(&self) -> f64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform duration in 0..max.
    pub fn delay(&self, max: Duration) -> Duration {
        max.mul_f64(self.unit())
    }
}

/// A TCP proxy adding 0..`max_delay` per chunk, whose connections can be cut.
pub struct TcpProxy {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    cuts: AtomicU64,
    /// While set, what the backend sends is dropped (answers lost on the way back).
    muted: Arc<AtomicBool>,
}

impl TcpProxy {
    pub async fn start(backend: SocketAddr, max_delay: Duration, seed: u64) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let registry = links.clone();
        let jitter = Arc::new(Jitter::new(seed));
        let muted = Arc::new(AtomicBool::new(false));
        let mute = muted.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let jitter = jitter.clone();
                let mute = mute.clone();
                let link = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(backend).await else {
                        return; // agent down: the client sees the connection close
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = pipe(client_read, server_write, jitter.clone(), max_delay, None);
                    let down = pipe(server_read, client_write, jitter, max_delay, Some(mute));
                    // Either direction ending ends the link, as a cut does.
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
                let mut links = registry.lock().unwrap();
                links.retain(|l| !l.is_finished());
                links.push(link);
            }
        });
        TcpProxy {
            addr,
            accept,
            links,
            cuts: AtomicU64::new(0),
            muted,
        }
    }

    /// From now until the next cut, drops everything the backend sends: requests still
    /// arrive and are handled, their answers are lost.
    pub fn mute_answers(&self) {
        self.muted.store(true, Ordering::Relaxed);
    }

    /// Closes every open connection (and ends a mute); new ones are accepted again at once.
    pub fn cut(&self) {
        self.muted.store(false, Ordering::Relaxed);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
        self.cuts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies `from` to `to`, holding each chunk until a random deadline no earlier than the
/// previous chunk's, so order is kept while latency varies.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    jitter: Arc<Jitter>,
    max_delay: Duration,
    muted: Option<Arc<AtomicBool>>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut last = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) if muted.as_ref().is_some_and(|m| m.load(Ordering::Relaxed)) => {}
                Ok(n) => {
                    last = last.max(Instant::now() + jitter.delay(max_delay));
                    if tx.send((last, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
}

/// A UDP proxy for one client, adding 0..`max_delay` per datagram, with blackout cuts.
pub struct UdpProxy {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    blackout_until: Arc<Mutex<Option<Instant>>>,
    cuts: AtomicU64,
}

impl UdpProxy {
    pub async fn start(backend: SocketAddr, max_delay: Duration, seed: u64) -> UdpProxy {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(backend).await.unwrap();
        let addr = front.local_addr().unwrap();
        let blackout_until: Arc<Mutex<Option<Instant>>> = Arc::default();
        let blackout = blackout_until.clone();
        let jitter = Arc::new(Jitter::new(seed));
        let task = tokio::spawn(async move {
            let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
            let dark = move || blackout.lock().unwrap().is_some_and(|t| Instant::now() < t);
            let up_tx = delayed_sender(back.clone(), None);
            let down_tx = delayed_sender(front.clone(), Some(client.clone()));
            let (mut up_last, mut down_last) = (Instant::now(), Instant::now());
            let mut up = vec![0u8; 65_536];
            let mut down = vec![0u8; 65_536];
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut up) => {
                        *client.lock().unwrap() = Some(from);
                        if !dark() {
                            up_last = up_last.max(Instant::now() + jitter.delay(max_delay));
                            let _ = up_tx.send((up_last, up[..n].to_vec()));
                        }
                    }
                    Ok(n) = back.recv(&mut down) => {
                        if !dark() {
                            down_last = down_last.max(Instant::now() + jitter.delay(max_delay));
                            let _ = down_tx.send((down_last, down[..n].to_vec()));
                        }
                    }
                    // Both receives failed at once (ICMP unreachable while the agent restarts).
                    else => {}
                }
            }
        });
        UdpProxy {
            addr,
            task,
            blackout_until,
            cuts: AtomicU64::new(0),
        }
    }

    /// Drops every datagram in both directions for `length`.
    pub fn cut(&self, length: Duration) {
        *self.blackout_until.lock().unwrap() = Some(Instant::now() + length);
        self.cuts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }
}

/// A task sending datagrams at their deadlines, in order: to the connected peer, or to the
/// client address last seen.
fn delayed_sender(
    socket: Arc<UdpSocket>,
    client: Option<Arc<Mutex<Option<SocketAddr>>>>,
) -> mpsc::UnboundedSender<(Instant, Vec<u8>)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((at, datagram)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            let _ = match &client {
                Some(client) => match *client.lock().unwrap() {
                    Some(to) => socket.try_send_to(&datagram, to),
                    None => continue,
                },
                None => socket.try_send(&datagram),
            };
        }
    });
    tx
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
