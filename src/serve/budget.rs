//! Byte budgets: counting semaphores for what requests and answers hold in memory.
//!
//! A [`ByteBudget`] is a byte-counting semaphore: [`Lease`]s hold bytes and give them back
//! when dropped. Waiting for a full budget counts in `streamhouse_limit_hits_total{limit}`.
//! A [`RequestBudget`] is three of them — the connection's, its peer address's and the
//! server's — taken together, so one connection cannot take a peer's share and one peer
//! cannot take everyone's. A quarter of the server's budget is kept back for peer addresses
//! that hold little of it (at most 1/32 of the server's budget), so a few addresses that
//! fill their shares cannot hold every other client back.
//!
//! ```
//! use streamhouse::serve::ByteBudget;
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let budget = ByteBudget::new("example", 100);
//! let mut lease = budget.take(60).await;
//! assert!(budget.try_take(50).is_none(), "only 40 left");
//! lease.shrink_to(10);
//! assert_eq!(budget.available(), 90);
//! drop(lease);
//! assert_eq!(budget.available(), 100);
//! # });
//! ```

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Request bytes of one connection: counted against its own budget, its peer address's and
/// the server-wide one, so one connection cannot take a peer's share and one peer cannot take
/// everyone's.
#[derive(Debug, Clone)]
pub struct RequestBudget {
    connection: ByteBudget,
    peer: ByteBudget,
    all: ByteBudget,
    /// Kept for peers holding at most `reserve_for` bytes, when `all` is spent.
    reserve: ByteBudget,
    reserve_for: usize,
}

impl RequestBudget {
    /// Bytes counted against `connection`, `peer` and `all` together (or `reserve` in place of
    /// `all`, for a peer that holds little).
    pub(super) fn new(
        connection: ByteBudget,
        peer: ByteBudget,
        all: ByteBudget,
        reserve: ByteBudget,
    ) -> RequestBudget {
        let reserve_for = (all.total() + reserve.total()) / 32;
        RequestBudget {
            connection,
            peer,
            all,
            reserve,
            reserve_for,
        }
    }

    /// Whether this peer, holding what it holds now, may draw on the reserve.
    fn may_use_reserve(&self) -> bool {
        self.peer.leased() <= self.reserve_for
    }

    /// Waits until `n` more bytes fit the budgets and adds them to `lease`.
    pub async fn grow(&self, lease: &mut RequestLease, n: usize) {
        let connection = self.connection.take(n).await;
        let peer = self.peer.take(n).await;
        let (all, reserve) = match self.try_server(n) {
            Some(taken) => taken,
            None if self.may_use_reserve() => tokio::select! {
                all = self.all.take(n) => (all, self.reserve.empty()),
                reserve = self.reserve.take(n) => (self.all.empty(), reserve),
            },
            None => (self.all.take(n).await, self.reserve.empty()),
        };
        lease.connection.merge(connection);
        lease.peer.merge(peer);
        lease.all.merge(all);
        lease.reserve.merge(reserve);
    }

    /// `n` bytes of the server's budget, or of its reserve when this peer may use it, if free
    /// now.
    fn try_server(&self, n: usize) -> Option<(Lease, Lease)> {
        if let Some(all) = self.all.try_take(n) {
            return Some((all, self.reserve.empty()));
        }
        let reserve = self
            .may_use_reserve()
            .then(|| self.reserve.try_take(n))
            .flatten()?;
        Some((self.all.empty(), reserve))
    }

    /// Waits until `n` bytes fit both budgets; an owned future, for poll-based callers.
    pub fn take(
        &self,
        n: usize,
    ) -> impl std::future::Future<Output = RequestLease> + Send + 'static {
        let budget = self.clone();
        async move {
            let mut lease = budget.lease();
            budget.grow(&mut lease, n).await;
            lease
        }
    }

    /// `n` bytes from the budgets if they are free now.
    pub fn try_take(&self, n: usize) -> Option<RequestLease> {
        let connection = self.connection.try_take(n)?;
        let peer = self.peer.try_take(n)?;
        let (all, reserve) = self.try_server(n)?;
        Some(RequestLease {
            connection,
            peer,
            all,
            reserve,
        })
    }

    /// An empty lease to grow.
    pub fn lease(&self) -> RequestLease {
        RequestLease {
            connection: self.connection.empty(),
            peer: self.peer.empty(),
            all: self.all.empty(),
            reserve: self.reserve.empty(),
        }
    }
}

/// Bytes held in a [`RequestBudget`], given back when dropped.
#[derive(Debug)]
pub struct RequestLease {
    connection: Lease,
    peer: Lease,
    all: Lease,
    reserve: Lease,
}

impl RequestLease {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.connection.bytes()
    }

    /// Gives back all but `n` bytes.
    pub fn shrink_to(&mut self, n: usize) {
        self.connection.shrink_to(n);
        self.peer.shrink_to(n);
        // The server's part is split between the budget and the reserve: the reserve goes
        // back first.
        self.reserve.shrink_to(n.saturating_sub(self.all.bytes()));
        self.all.shrink_to(n);
    }

    /// Adds `other`'s bytes (from the same budget) to this lease.
    pub fn merge(&mut self, other: RequestLease) {
        self.connection.merge(other.connection);
        self.peer.merge(other.peer);
        self.all.merge(other.all);
        self.reserve.merge(other.reserve);
    }
}

/// A byte-counting semaphore: at most `total` bytes are leased at once.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    name: &'static str,
    total: usize,
    semaphore: Arc<Semaphore>,
}

impl ByteBudget {
    /// A budget of `total` bytes; `name` labels its metric.
    pub fn new(name: &'static str, total: usize) -> ByteBudget {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        ByteBudget {
            name,
            total,
            semaphore: Arc::new(Semaphore::new(total)),
        }
    }

    /// The budget's size.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes not leased now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// Bytes leased now.
    pub fn leased(&self) -> usize {
        self.total - self.available()
    }

    /// A lease of nothing, to [`merge`](Lease::merge) others into.
    pub fn empty(&self) -> Lease {
        Lease {
            permit: None,
            semaphore: self.semaphore.clone(),
        }
    }

    /// Leases `n` bytes (at most the whole budget), waiting until they are free.
    pub async fn take(&self, n: usize) -> Lease {
        if let Some(lease) = self.try_take(n) {
            return lease;
        }
        metrics::counter!("streamhouse_limit_hits_total", "limit" => self.name).increment(1);
        let n = self.clamp(n);
        let permit = self
            .semaphore
            .clone()
            .acquire_many_owned(n)
            .await
            // The semaphore is never closed.
            .ok();
        Lease {
            permit,
            semaphore: self.semaphore.clone(),
        }
    }

    /// Leases `n` bytes (at most the whole budget) if they are free now.
    pub fn try_take(&self, n: usize) -> Option<Lease> {
        if n == 0 {
            return Some(self.empty());
        }
        let permit = self
            .semaphore
            .clone()
            .try_acquire_many_owned(self.clamp(n))
            .ok()?;
        Some(Lease {
            permit: Some(permit),
            semaphore: self.semaphore.clone(),
        })
    }

    fn clamp(&self, n: usize) -> u32 {
        n.min(self.total).min(u32::MAX as usize) as u32
    }
}

/// Bytes held in a [`ByteBudget`], given back when dropped.
#[derive(Debug)]
pub struct Lease {
    permit: Option<OwnedSemaphorePermit>,
    semaphore: Arc<Semaphore>,
}

impl Lease {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Gives back all but `n` bytes.
    pub fn shrink_to(&mut self, n: usize) {
        let held = self.bytes();
        if let Some(permit) = &mut self.permit
            && held > n
        {
            drop(permit.split(held - n));
        }
    }

    /// Adds `other`'s bytes to this lease (both from the same budget).
    pub fn merge(&mut self, other: Lease) {
        debug_assert!(Arc::ptr_eq(&self.semaphore, &other.semaphore));
        match (&mut self.permit, other.permit) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lease_larger_than_the_budget_takes_the_whole_budget() {
        let budget = ByteBudget::new("test", 10);
        let lease = budget.take(1_000).await;
        assert_eq!((lease.bytes(), budget.available()), (10, 0));
    }
}
