//! [`ProducerStats`]: counters of what the producer sent and how it went.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters updated per batch by the sender (never per record).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) records_acked: AtomicU64,
    pub(crate) records_failed: AtomicU64,
    pub(crate) uncompressed_bytes: AtomicU64,
    pub(crate) wire_bytes: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) throttled: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) reroutes: AtomicU64,
    /// Shared with the transport retry layer's policy.
    pub(crate) request_retries: Arc<AtomicU64>,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ProducerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ProducerStats {
            requests: get(&self.requests),
            batches: get(&self.batches),
            records_acked: get(&self.records_acked),
            records_failed: get(&self.records_failed),
            uncompressed_bytes: get(&self.uncompressed_bytes),
            wire_bytes: get(&self.wire_bytes),
            retries: get(&self.retries),
            throttled: get(&self.throttled),
            duplicates: get(&self.duplicates),
            reroutes: get(&self.reroutes),
            request_retries: get(&self.request_retries),
        }
    }
}

/// What a producer has done so far. Batches and bytes count each batch once, at its first
/// send; retries are counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ProducerStats {
    /// Produce requests sent (each attempt of the transport's retry layer is one request to
    /// the transport, counted once here).
    pub requests: u64,
    /// Batches sent.
    pub batches: u64,
    /// Records acknowledged by the agent.
    pub records_acked: u64,
    /// Records that failed.
    pub records_failed: u64,
    /// Encoded size of the batches before compression.
    pub uncompressed_bytes: u64,
    /// Size of the batches as sent (after compression).
    pub wire_bytes: u64,
    /// Batches queued again after a retriable failure.
    pub retries: u64,
    /// Answers that asked this producer to hold off (`throttle_ms` > 0); it sent nothing more
    /// to that agent for that long.
    pub throttled: u64,
    /// Batches the agent answered `DUPLICATE_SEQUENCE`: a retry of a batch it had already
    /// appended (an earlier answer was lost), resolved with the original offset.
    pub duplicates: u64,
    /// Partitions sent to another agent at once because a `NOT_LEADER` answer named the new
    /// leader (agent groups), without waiting for discovery.
    pub reroutes: u64,
    /// Requests sent again by the transport retry layer after a retriable transport error or
    /// a timeout (connection lost, agent unreachable).
    pub request_retries: u64,
}

impl ProducerStats {
    /// Uncompressed over compressed batch bytes (1.0 without compression).
    pub fn compression_ratio(&self) -> f64 {
        if self.wire_bytes == 0 {
            1.0
        } else {
            self.uncompressed_bytes as f64 / self.wire_bytes as f64
        }
    }
}
