//! Receive windows handed out of one pool, so a crowd of connections cannot multiply them.
//!
//! HTTP/2 and QUIC let a peer send as much as the receiver's window allows before the receiver
//! reads a byte, and both buffer what arrives: each connection's receive window is memory any
//! client can make the server hold, however tight the request budgets behind it. A fixed window
//! per connection makes that memory grow with the number of connections; a pool bounds it.
//!
//! [`ConnectionPass::grant_window`](super::ConnectionPass::grant_window) gives a new
//! connection the window its transport wants while that is at most half of what the pool has
//! left and fits in what is left of its peer address's share (half the pool), then the
//! largest of [`window_sizes`] that does — so the first connections (a producer's) get the
//! full window, one address cannot take more than half of the pool, and a flood of
//! connections gets ever smaller windows, down to [`MIN_WINDOW`], which every connection gets
//! even from an empty pool (HTTP/2's own default window). The grant goes back to the pool
//! when the connection closes.
//!
//! ```
//! use std::net::Ipv4Addr;
//! use streamhouse::serve::{ServerBounds, ServerLimits};
//! let mut limits = ServerLimits::default();
//! limits.max_window_bytes = 32 << 20;
//! let bounds = ServerBounds::new(limits);
//! let (a, b) = (Ipv4Addr::new(127, 0, 0, 1).into(), Ipv4Addr::new(127, 0, 0, 2).into());
//! let mut open = Vec::new(); // connections and their grants, held open
//! let mut connect = |peer| {
//!     let pass = bounds.admit(peer).unwrap();
//!     let grant = pass.grant_window(8 << 20);
//!     let bytes = grant.bytes();
//!     open.push((pass, grant));
//!     bytes
//! };
//! assert_eq!(connect(a), 8 << 20, "the full window");
//! assert_eq!(connect(a), 8 << 20, "the rest of this address's half of the pool");
//! assert_eq!(connect(a), 65_535, "this address has had its half");
//! assert_eq!(connect(b), 8 << 20, "another address still gets the full window");
//! ```

use super::budget::{ByteBudget, Lease};

/// The smallest window a connection is granted, even when the pool is empty: HTTP/2's default
/// initial window, 65,535 bytes.
pub const MIN_WINDOW: u64 = 65_535;

/// The window sizes a connection that wants `wanted` may be granted, largest first: `wanted`,
/// then a quarter of it, a sixteenth, … while at least twice [`MIN_WINDOW`], then
/// `MIN_WINDOW`. A
/// transport that fixes windows per server (tonic) runs one server per size.
///
/// ```
/// use streamhouse::serve::window_sizes;
/// assert_eq!(window_sizes(1 << 20), vec![1 << 20, 256 << 10, 65_535]);
/// assert_eq!(window_sizes(16 << 10), vec![16 << 10]);
/// ```
pub fn window_sizes(wanted: u64) -> Vec<u64> {
    let mut sizes = vec![wanted];
    let mut size = wanted / 4;
    while size >= 2 * MIN_WINDOW {
        sizes.push(size);
        size /= 4;
    }
    if wanted > MIN_WINDOW {
        sizes.push(MIN_WINDOW);
    }
    sizes
}

/// The receive window granted to one connection; dropping it gives the bytes back.
#[derive(Debug)]
pub struct WindowGrant {
    bytes: u64,
    _leases: (Lease, Lease),
}

impl WindowGrant {
    /// The window, in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The pool windows are granted from.
#[derive(Debug, Clone)]
pub(super) struct WindowPool {
    budget: ByteBudget,
}

impl WindowPool {
    pub(super) fn new(bytes: usize) -> WindowPool {
        WindowPool {
            budget: ByteBudget::new("window_bytes", bytes),
        }
    }

    /// Bytes granted to open connections.
    pub(super) fn granted(&self) -> usize {
        self.budget.leased()
    }

    /// A window for a connection whose peer address's share is `peer`.
    pub(super) fn grant(&self, wanted: u64, peer: &ByteBudget) -> WindowGrant {
        let sizes = window_sizes(wanted);
        let granted = sizes.iter().find_map(|&size| {
            let size_bytes = usize::try_from(size).ok()?;
            let fits = size_bytes <= self.budget.available() / 2 && size_bytes <= peer.available();
            if !fits {
                return None;
            }
            // Another connection may take the bytes between the check and the leases.
            let all = self.budget.try_take(size_bytes)?;
            let own = peer.try_take(size_bytes)?;
            Some(WindowGrant {
                bytes: size,
                _leases: (all, own),
            })
        });
        let granted = granted.unwrap_or_else(|| WindowGrant {
            bytes: *sizes.last().expect("never empty"),
            _leases: (self.budget.empty(), peer.empty()),
        });
        if granted.bytes < wanted {
            metrics::counter!("streamhouse_limit_hits_total", "limit" => "window_bytes")
                .increment(1);
        }
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_shrink_as_the_pool_empties_and_grow_back_when_connections_close() {
        let pool = WindowPool::new(8 << 20);
        let peer = ByteBudget::new("peer", 8 << 20);
        let wanted = 4 << 20;
        let grants: Vec<WindowGrant> = (0..12).map(|_| pool.grant(wanted, &peer)).collect();
        let sizes: Vec<u64> = grants.iter().map(WindowGrant::bytes).collect();
        assert_eq!(
            sizes[0], wanted,
            "the first connection gets the whole window"
        );
        assert!(
            sizes.windows(2).all(|w| w[0] >= w[1]),
            "never larger than an earlier one: {sizes:?}"
        );
        assert_eq!(*sizes.last().unwrap(), MIN_WINDOW);
        let leased: u64 = sizes.iter().sum();
        assert!(
            leased <= (8 << 20) + 12 * MIN_WINDOW,
            "the pool plus the smallest window per connection: {sizes:?}"
        );
        assert!(pool.granted() <= 8 << 20);
        drop(grants);
        assert_eq!(pool.granted(), 0);
        assert_eq!(
            pool.grant(wanted, &peer).bytes(),
            wanted,
            "all of it came back"
        );
    }

    #[test]
    fn a_window_below_the_smallest_is_granted_as_asked() {
        let pool = WindowPool::new(1);
        let peer = ByteBudget::new("peer", 1);
        assert_eq!(pool.grant(16 << 10, &peer).bytes(), 16 << 10);
    }
}
