//! A batch on its way: open, sealed and queued, in flight, or queued again for a retry.

use super::super::Persistence;
use super::super::delivery::Completion;
use crate::batch::{BatchBuilder, ProducerStamp};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

/// The records of a batch: still a builder until first sent, then the encoded wire bytes
/// (kept for retries, so a retry re-sends exactly the same bytes).
#[derive(Debug)]
pub(crate) enum Payload {
    Built(BatchBuilder),
    Encoded(Bytes),
    /// Transiently, while the sender encodes it.
    Taken,
}

impl Payload {
    /// Bytes it will take in a request (uncompressed size until encoded: an upper bound).
    pub(crate) fn len(&self) -> usize {
        match self {
            Payload::Built(b) => b.encoded_len(),
            Payload::Encoded(b) => b.len(),
            Payload::Taken => 0,
        }
    }
}

/// A sealed batch, in a partition queue or in flight.
#[derive(Debug)]
pub(crate) struct QueuedBatch {
    pub(crate) id: u64,
    pub(crate) topic: Arc<str>,
    pub(crate) partition: u32,
    /// When its first record was appended: linger and delivery timeout count from here.
    pub(crate) created: Instant,
    /// When it was sealed (or queued again for a retry): how long it has been waiting to go.
    pub(crate) ready_since: Instant,
    pub(crate) completion: Arc<Completion>,
    pub(crate) record_count: u32,
    pub(crate) payload: Payload,
    /// Producer id, epoch and base sequence; assigned when first drained (idempotence only).
    pub(crate) stamp: Option<ProducerStamp>,
    /// Times it was handed to the transport.
    pub(crate) attempts: u32,
    /// Whether an earlier attempt may have been appended although it failed.
    pub(crate) maybe_applied: bool,
    /// Not to be sent before this instant (retry backoff).
    pub(crate) retry_at: Option<Instant>,
}

impl QueuedBatch {
    /// Whether the batch may be in the log should it fail now: the one place that says so.
    pub(crate) fn persistence(&self) -> Persistence {
        if self.maybe_applied {
            Persistence::PossiblyPersisted
        } else {
            Persistence::NotPersisted
        }
    }
}

/// The batch a partition is appending to.
#[derive(Debug)]
pub(super) struct OpenBatch {
    pub(super) id: u64,
    pub(super) builder: BatchBuilder,
    pub(super) created: Instant,
    pub(super) completion: Arc<Completion>,
}
