//! Agent semantics, sans-IO: what an agent decides about each batch it receives.
//!
//! Validation ([`validate_batch`], [`validate_topic_name`]), idempotence and offset assignment
//! ([`PartitionState`]) live here, with no storage and no network, so the in-memory mock agent
//! and the reference agent with its durable log run exactly the same rules — and tests against
//! the mock test the real behaviour.
//!
//! ```text
//! PartitionBatch ─▶ validate_topic_name ─▶ validate_batch ─▶ PartitionState::admit
//!                                                              │ Append    → stamp offset, store,
//!                                                              │             PartitionState::append
//!                                                              │ Duplicate → answer the original offset
//!                                                              └ Rejection → answer its ErrorCode
//! ```

mod bounds;
mod budget;
mod partition;
mod validate;
mod window;

pub use bounds::{
    ConnectionPass, ConnectionRefused, InFlight, RequestRefused, ServerBounds, ServerLimits,
    client_answers, for_client,
};
pub use budget::{ByteBudget, Lease, RequestBudget, RequestLease};
pub use window::{MIN_WINDOW, WindowGrant, window_sizes};

pub use partition::{
    Admission, DEDUP_WINDOW, PartitionState, ProducerLimits, ProducerSnapshot, RememberedBatch,
};
pub use validate::{
    MAX_TOPIC_NAME_LEN, validate_batch, validate_batch_within, validate_topic_name,
};

use crate::batch::BatchError;
use streamhouse_proto::v1::ErrorCode;

/// A producer id for an `InitProducerId` answer from an agent that does not bind ids to
/// principals: 63 random bits, as producers pick for themselves.
pub fn new_producer_id() -> i64 {
    (crate::rng::Rng::from_entropy().next_u64() >> 1) as i64
}

/// Why an agent refuses a batch: the code it answers with, and a message for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct Rejection {
    /// The protocol code.
    pub code: ErrorCode,
    /// Detail for humans; never parsed.
    pub message: String,
}

impl Rejection {
    /// A rejection with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Rejection {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

impl From<BatchError> for Rejection {
    fn from(e: BatchError) -> Rejection {
        Rejection::new(e.code(), e.to_string())
    }
}
