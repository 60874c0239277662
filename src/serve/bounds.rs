//! What one client can make a server hold: connections, and bytes of requests being read.
//!
//! Both transport servers (gRPC and QUIC) take their bounds from one [`ServerBounds`], so an
//! agent serving both counts every connection and every buffered request byte once:
//!
//! ```text
//! accept ─▶ ServerBounds::admit (total, per peer address) ─▶ ConnectionPass (per connection)
//!        └▶ ConnectionPass::grant_window ─▶ WindowGrant: the receive window this connection gets
//!   each request ─▶ ConnectionPass::begin (in progress: total, per peer address)
//!   request bytes as they arrive ─▶ RequestBudget::take (connection, peer, all connections)
//!   └ a full budget stops reading: the peer is held back by flow control, not buffered
//! ```
//!
//! What unread requests can make a server hold is therefore the receive windows it granted
//! (at most `max_window_bytes`, plus the smallest window per connection past it) and the
//! request budgets. The byte budgets themselves are in [`budget`](super::budget), the window
//! grants in [`window`](super::window).

use super::budget::{ByteBudget, RequestBudget};
use super::window::{WindowGrant, WindowPool};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Server bounds as numbers; [`ServerBounds::new`] turns them into the shared counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerLimits {
    /// Connections open at once, all peers together; more are closed as soon as accepted.
    /// Default 4,096 (the reference agent lowers it below its descriptor limit).
    pub max_connections: usize,
    /// Connections open at once from one peer IP address, so one host cannot take every slot.
    /// Default 256.
    pub max_connections_per_peer: usize,
    /// A connection with no request in progress for this long is closed. Default 10 min.
    pub idle_timeout: Duration,
    /// A connection that has not started a request this long after it opened is closed (a
    /// crowd of silent sockets or half-done TLS handshakes cannot hold the connection slots
    /// for the whole idle timeout). Default 30 s.
    pub first_request_timeout: Duration,
    /// Request bytes received and not yet handled, all connections together; a full budget
    /// stops reading (flow control holds the peers back). Default 64 MiB.
    pub max_request_bytes: usize,
    /// The same, for the connections of one peer address together. Default 32 MiB.
    pub max_peer_request_bytes: usize,
    /// Fetch answers built and not yet delivered for the connections of one peer address
    /// together (the agent's own budget bounds all of them): one client that never reads its
    /// answers cannot hold every other client's share. Default 16 MiB.
    pub max_peer_answer_bytes: usize,
    /// Requests in progress at once (HTTP/2 or QUIC streams being read, handled or answered),
    /// all connections together. Each costs memory beyond its bytes (stream state, buffers,
    /// headers up to 16 KiB); past it new requests are refused at once as unavailable
    /// (retriable). The last quarter is only for addresses with at most 1/32 of it in
    /// progress. Default 1,024.
    pub max_requests: usize,
    /// The same, for the connections of one peer address together. Default 256.
    pub max_requests_per_peer: usize,
    /// Receive-window bytes granted to connections, all together: what the transports may
    /// buffer of requests not read yet. A connection gets its transport's full window while
    /// that is at most half of what is left, then a quarter of it, a sixteenth, … down to
    /// 64 KiB, which every connection gets even with nothing left. The connections of one
    /// peer address get at most half of it. Default 32 MiB (three connections with the full
    /// 8 MiB window, then smaller ones).
    pub max_window_bytes: usize,
    /// The same, per connection. More than one largest message (with its framing), or that
    /// message could never be read whole. Default 20 MiB.
    pub max_connection_request_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> ServerLimits {
        ServerLimits {
            max_connections: 4_096,
            max_connections_per_peer: 256,
            idle_timeout: Duration::from_secs(600),
            first_request_timeout: Duration::from_secs(30),
            max_request_bytes: 64 << 20,
            max_peer_request_bytes: 32 << 20,
            max_peer_answer_bytes: 16 << 20,
            max_requests: 1_024,
            max_requests_per_peer: 256,
            max_window_bytes: 32 << 20,
            max_connection_request_bytes: 20 << 20,
        }
    }
}

/// The shared state of [`ServerLimits`]: one per agent, cloned into every transport server.
#[derive(Debug, Clone)]
pub struct ServerBounds {
    limits: ServerLimits,
    gate: Arc<Mutex<Gate>>,
    requests: ByteBudget,
    /// The part of the request budget kept for peers that hold little of it.
    reserve: ByteBudget,
    windows: WindowPool,
    /// Requests in progress, all connections.
    in_progress: Arc<AtomicUsize>,
}

impl Default for ServerBounds {
    fn default() -> ServerBounds {
        ServerBounds::new(ServerLimits::default())
    }
}

/// What the connections of one peer address share.
#[derive(Debug, Clone)]
struct PeerBudgets {
    requests: ByteBudget,
    answers: ByteBudget,
    windows: ByteBudget,
    in_progress: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct Gate {
    open: usize,
    /// Per peer address: its open connections, and the request bytes they share.
    per_peer: HashMap<IpAddr, (usize, PeerBudgets)>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionRefused {
    /// `max_connections` are open.
    #[error("{0} connections open (the limit)")]
    Total(usize),
    /// `max_connections_per_peer` are open from this address.
    #[error("{0} connections open from this address (the limit)")]
    Peer(usize),
}

impl ServerBounds {
    /// Counters for `limits`.
    pub fn new(limits: ServerLimits) -> ServerBounds {
        let reserved = limits.max_request_bytes / 4;
        let requests = ByteBudget::new("request_bytes", limits.max_request_bytes - reserved);
        let reserve = ByteBudget::new("reserved_request_bytes", reserved);
        let windows = WindowPool::new(limits.max_window_bytes);
        ServerBounds {
            limits,
            gate: Arc::default(),
            requests,
            reserve,
            windows,
            in_progress: Arc::default(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &ServerLimits {
        &self.limits
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.lock().open
    }

    /// Request bytes received and not yet handled, all connections together.
    pub fn request_bytes_held(&self) -> usize {
        self.requests.leased() + self.reserve.leased()
    }

    /// Requests in progress now, all connections.
    pub fn requests_in_progress(&self) -> usize {
        self.in_progress.load(Ordering::Acquire)
    }

    /// Receive-window bytes granted to open connections now (the smallest windows past
    /// `max_window_bytes` not counted).
    pub fn window_bytes_granted(&self) -> usize {
        self.windows.granted()
    }

    /// Admits a connection from `peer`, or says which bound it would cross. The pass gives the
    /// slot back when dropped.
    pub fn admit(&self, peer: IpAddr) -> Result<ConnectionPass, ConnectionRefused> {
        let mut gate = self.lock();
        let refused = if gate.open >= self.limits.max_connections {
            Some(("connections", ConnectionRefused::Total(gate.open)))
        } else {
            match gate.per_peer.get(&peer) {
                Some(&(n, _)) if n >= self.limits.max_connections_per_peer => {
                    Some(("connections_per_peer", ConnectionRefused::Peer(n)))
                }
                _ => None,
            }
        };
        if let Some((limit, refused)) = refused {
            metrics::counter!("streamhouse_limit_hits_total", "limit" => limit).increment(1);
            return Err(refused);
        }
        gate.open += 1;
        let limits = &self.limits;
        let (connections, shared) = gate.per_peer.entry(peer).or_insert_with(|| {
            let budgets = PeerBudgets {
                requests: ByteBudget::new("peer_request_bytes", limits.max_peer_request_bytes),
                answers: ByteBudget::new("peer_answer_bytes", limits.max_peer_answer_bytes),
                windows: ByteBudget::new("peer_window_bytes", limits.max_window_bytes / 2),
                in_progress: Arc::default(),
            };
            (0, budgets)
        });
        *connections += 1;
        let PeerBudgets {
            requests: peer_budget,
            answers,
            windows: peer_windows,
            in_progress: peer_in_progress,
        } = shared.clone();
        Ok(ConnectionPass {
            gate: self.gate.clone(),
            peer,
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
            started: std::sync::atomic::AtomicBool::new(false),
            closing: tokio::sync::Notify::new(),
            answers,
            requests: RequestBudget::new(
                ByteBudget::new(
                    "connection_request_bytes",
                    self.limits.max_connection_request_bytes,
                ),
                peer_budget,
                self.requests.clone(),
                self.reserve.clone(),
            ),
            windows: (self.windows.clone(), peer_windows),
            in_progress: Counts {
                all: (self.in_progress.clone(), self.limits.max_requests),
                peer: (peer_in_progress, self.limits.max_requests_per_peer),
            },
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gate> {
        // The counts stay consistent under a panic elsewhere: every change is one statement.
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One admitted connection: its slot in the counts, its request budget, and when it last
/// had a request (for the idle timeout).
#[derive(Debug)]
pub struct ConnectionPass {
    gate: Arc<Mutex<Gate>>,
    peer: IpAddr,
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` when the last request started or ended.
    last_active_ms: AtomicU64,
    /// Whether a request has ever started.
    started: std::sync::atomic::AtomicBool,
    closing: tokio::sync::Notify,
    requests: RequestBudget,
    /// Answer bytes of this peer address's connections together.
    answers: ByteBudget,
    /// The server's window pool and this peer address's share of it.
    windows: (WindowPool, ByteBudget),
    in_progress: Counts,
}

/// Requests in progress, all connections and this peer's, each with its limit.
#[derive(Debug)]
struct Counts {
    all: (Arc<AtomicUsize>, usize),
    peer: (Arc<AtomicUsize>, usize),
}

/// Why a request was not started ([`ConnectionPass::begin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestRefused {
    /// `max_requests` are in progress.
    #[error("{0} requests in progress (the limit)")]
    Total(usize),
    /// `max_requests_per_peer` are in progress from this address.
    #[error("{0} requests in progress from this address (the limit)")]
    Peer(usize),
}

impl ConnectionPass {
    /// The peer address counted.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// The budget for request bytes received on this connection.
    pub fn requests(&self) -> &RequestBudget {
        &self.requests
    }

    /// The budget for answers built for this peer address (the agent leases each fetch answer
    /// from it, and from its own, while the request runs in [`for_client`]).
    pub fn answers(&self) -> &ByteBudget {
        &self.answers
    }

    /// Marks a request in progress until the returned guard is dropped, or refuses it when
    /// `max_requests` (all connections) or `max_requests_per_peer` (this address) are in
    /// progress already; refuse the stream then, before reading anything.
    pub fn begin(self: &Arc<Self>) -> Result<InFlight, RequestRefused> {
        let Counts { all, peer } = &self.in_progress;
        if !take_one(&peer.0, peer.1) {
            metrics::counter!("streamhouse_limit_hits_total", "limit" => "requests_per_peer")
                .increment(1);
            return Err(RequestRefused::Peer(peer.1));
        }
        // The last quarter of the slots is kept for addresses with few requests in progress
        // (at most 1/32 of all), so a few busy addresses cannot lock every other client out.
        let few = peer.0.load(Ordering::Acquire) <= all.1 / 32;
        let open_to_this_peer = if few { all.1 } else { all.1 - all.1 / 4 };
        if !take_one(&all.0, open_to_this_peer) {
            peer.0.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("streamhouse_limit_hits_total", "limit" => "requests").increment(1);
            return Err(RequestRefused::Total(all.1));
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.store(true, Ordering::Release);
        self.touch();
        Ok(InFlight(self.clone()))
    }

    /// The receive window this connection gets, when its transport's is `wanted`: all of it
    /// while the pool has room, less as it runs out (see `max_window_bytes`). Hold the grant
    /// as long as the connection: dropping it gives the bytes back.
    pub fn grant_window(&self, wanted: u64) -> WindowGrant {
        self.windows.0.grant(wanted, &self.windows.1)
    }

    /// How much longer the connection may stay without a request under `limits` before it
    /// is closed: `None` while a request is in progress, zero once the time is up. Before its
    /// first request a connection gets `first_request_timeout`, after it `idle_timeout`.
    pub fn idle_left(&self, limits: &ServerLimits) -> Option<Duration> {
        let idle = self.idle_for()?;
        let allowed = if self.started.load(Ordering::Acquire) {
            limits.idle_timeout
        } else {
            limits.first_request_timeout
        };
        Some(allowed.saturating_sub(idle))
    }

    /// How long the connection has been without a request; `None` while one is in progress.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_active_ms.load(Ordering::Acquire));
        Some(self.opened.elapsed().saturating_sub(last))
    }

    /// Asks the transport to close this connection (an answer it could not deliver in time).
    pub fn close(&self) {
        self.closing.notify_one();
    }

    /// Resolves once [`close`](Self::close) is called.
    pub async fn closed(&self) {
        self.closing.notified().await;
    }

    fn touch(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last_active_ms.fetch_max(now, Ordering::AcqRel);
    }
}

/// A request in progress on a connection ([`ConnectionPass::begin`]).
#[derive(Debug)]
pub struct InFlight(Arc<ConnectionPass>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.in_progress.all.0.fetch_sub(1, Ordering::AcqRel);
        self.0.in_progress.peer.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Adds one to `count` unless it is at `limit` already.
fn take_one(count: &AtomicUsize, limit: usize) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

impl Drop for ConnectionPass {
    fn drop(&mut self) {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        gate.open -= 1;
        if let Some((n, _)) = gate.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                gate.per_peer.remove(&self.peer);
            }
        }
    }
}

tokio::task_local! {
    static CLIENT: Arc<ConnectionPass>;
}

/// Runs `request` (a call to the agent service) as coming from the connection of `pass`, so
/// that the agent can count what it builds for it against that client's share
/// ([`client_answers`]). Transports wrap each request in it.
pub async fn for_client<F: std::future::Future>(
    pass: Arc<ConnectionPass>,
    request: F,
) -> F::Output {
    CLIENT.scope(pass, request).await
}

/// The answer budget of the client whose request is running ([`for_client`]), if any.
pub fn client_answers() -> Option<ByteBudget> {
    CLIENT.try_with(|pass| pass.answers.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn connections_are_bounded_in_total_and_per_peer_and_slots_come_back() {
        let bounds = ServerBounds::new(ServerLimits {
            max_connections: 3,
            max_connections_per_peer: 2,
            ..ServerLimits::default()
        });
        let a1 = bounds.admit(local(1)).unwrap();
        let _a2 = bounds.admit(local(1)).unwrap();
        assert_eq!(
            bounds.admit(local(1)).unwrap_err(),
            ConnectionRefused::Peer(2)
        );
        let _b1 = bounds.admit(local(2)).unwrap();
        assert_eq!(
            bounds.admit(local(3)).unwrap_err(),
            ConnectionRefused::Total(3)
        );
        drop(a1);
        assert_eq!(bounds.open_connections(), 2);
        assert!(
            bounds.admit(local(1)).is_ok(),
            "a closed connection frees its slot"
        );
    }

    #[test]
    fn a_connection_is_never_idle_while_a_request_is_in_progress() {
        let pass = Arc::new(ServerBounds::default().admit(local(1)).unwrap());
        assert!(pass.idle_for().is_some());
        let request = pass.begin().unwrap();
        assert_eq!(pass.idle_for(), None);
        drop(request);
        assert!(pass.idle_for().unwrap() < Duration::from_secs(60));
    }

    #[tokio::test]
    async fn a_full_request_budget_waits_until_bytes_come_back() {
        let bounds = ServerBounds::new(ServerLimits {
            max_request_bytes: 100,
            max_connection_request_bytes: 80,
            ..ServerLimits::default()
        });
        let one = bounds.admit(local(1)).unwrap();
        let two = bounds.admit(local(2)).unwrap();
        let mut first = one.requests().lease();
        one.requests().grow(&mut first, 80).await;
        assert_eq!(first.bytes(), 80);
        // The connection's own budget is spent: its next bytes wait.
        let mut more = one.requests().lease();
        let blocked =
            tokio::time::timeout(Duration::from_millis(20), one.requests().grow(&mut more, 1));
        assert!(blocked.await.is_err());
        // Another address holding nothing draws on the reserve (a quarter of the server's
        // budget, for addresses holding at most 1/32 of it: 3 bytes here)...
        let mut other = two.requests().lease();
        two.requests().grow(&mut other, 3).await;
        // (A lease larger than a budget takes the whole budget: 75 of the server's 100 are
        // outside the reserve.)
        assert_eq!(bounds.request_bytes_held(), 75 + 3);
        // ...but once it holds more, it waits for the server's budget like everyone.
        let waiting = tokio::spawn({
            let budget = two.requests().clone();
            async move {
                let mut lease = budget.lease();
                budget.grow(&mut lease, 30).await;
                lease.bytes()
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        assert_eq!(waiting.await.unwrap(), 30);
    }

    /// Found by an outside run: each open stream cost ~11 KiB (30 KiB with padded headers)
    /// whether or not it sent a byte, and nothing counted streams beyond 100 per connection:
    /// 200 connections grew the agent by 219 MiB without sending a body. Requests in progress
    /// are capped per address and in all, and the slots come back. Then: four busy addresses
    /// took all 1,024 slots and every other client was refused; the last quarter is kept for
    /// addresses with few requests in progress.
    #[test]
    fn requests_in_progress_are_capped_per_address_and_in_all() {
        let bounds = ServerBounds::new(ServerLimits {
            max_requests: 64,
            max_requests_per_peer: 20,
            ..ServerLimits::default()
        });
        let a = Arc::new(bounds.admit(local(1)).unwrap());
        let a2 = Arc::new(bounds.admit(local(1)).unwrap());
        let mut held: Vec<InFlight> = (0..19).map(|_| a.begin().unwrap()).collect();
        held.push(a2.begin().unwrap());
        assert_eq!(a.begin().unwrap_err(), RequestRefused::Peer(20));
        // Two more busy addresses reach the shared three quarters (48)...
        for last in [2, 3] {
            let pass = Arc::new(bounds.admit(local(last)).unwrap());
            while let Ok(request) = pass.begin() {
                held.push(request);
            }
        }
        assert_eq!(bounds.requests_in_progress(), 48);
        // ...and the last quarter is left to addresses with at most 2 (64/32) in progress.
        let quiet = Arc::new(bounds.admit(local(9)).unwrap());
        let quiet_requests = [quiet.begin().unwrap(), quiet.begin().unwrap()];
        assert_eq!(quiet.begin().unwrap_err(), RequestRefused::Total(64));
        drop(quiet_requests);
        held.remove(0); // one of the first address's
        assert!(a.begin().is_ok(), "an ended request frees its slot");
    }

    /// Found by an outside run: half-sent requests from two addresses filled the server's
    /// whole request budget (2 × 32 MiB) and a client on a third waited 20 s. A quarter is
    /// kept for addresses that hold little of it.
    #[tokio::test]
    async fn addresses_that_fill_their_shares_leave_the_reserve_to_others() {
        let bounds = ServerBounds::new(ServerLimits {
            max_request_bytes: 64 << 20,
            max_peer_request_bytes: 32 << 20,
            max_connection_request_bytes: 32 << 20,
            ..ServerLimits::default()
        });
        let attackers: Vec<_> = (1..=3).map(|i| bounds.admit(local(i)).unwrap()).collect();
        let mut held = Vec::new();
        for attacker in &attackers {
            // Each takes all it can get of the server's budget (not the reserve).
            while let Some(lease) = attacker.requests().try_take(1 << 20) {
                held.push(lease);
            }
        }
        // All but the reserve, of which the third took what an address holding little may.
        assert_eq!(bounds.request_bytes_held(), (48 + 2) << 20);
        let honest = bounds.admit(local(9)).unwrap();
        let lease = tokio::time::timeout(Duration::from_secs(5), honest.requests().take(1 << 20))
            .await
            .expect("the honest address waited behind the others");
        assert_eq!(lease.bytes(), 1 << 20);
    }

    #[test]
    fn the_connections_of_one_peer_share_its_request_budget() {
        let bounds = ServerBounds::new(ServerLimits {
            max_request_bytes: 200,
            max_peer_request_bytes: 50,
            max_connection_request_bytes: 40,
            ..ServerLimits::default()
        });
        let (a, b) = (
            bounds.admit(local(1)).unwrap(),
            bounds.admit(local(1)).unwrap(),
        );
        let other = bounds.admit(local(2)).unwrap();
        let _a = a.requests().try_take(40).unwrap();
        assert!(b.requests().try_take(20).is_none(), "the peer has 10 left");
        let _b = b.requests().try_take(10).unwrap();
        assert!(
            other.requests().try_take(40).is_some(),
            "another peer has its own"
        );
    }
}
