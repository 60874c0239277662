//! Producer errors: configuration, send, and delivery.

use crate::batch::BatchError;
use crate::discovery::DiscoveryError;
use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;
use streamhouse_proto::v1::ErrorCode;

/// What a failed delivery means for the record's data.
///
/// A record whose delivery succeeded is persisted (its future resolved with an offset); an
/// error says which of the two other cases holds, so a caller can decide between re-sending
/// and reconciling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Persistence {
    /// The record is not in the log: it was never sent, or the agent refused it.
    NotPersisted,
    /// The record may be in the log: it was sent, and no answer said whether it was appended
    /// (timeout, connection lost, producer closed while it was in flight).
    PossiblyPersisted,
}

/// Why a record could not be sent or delivered.
///
/// Cloneable: every record of a failed batch receives the same error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// `send` waited `max_block` for buffer memory and none was freed.
    #[error("no buffer memory freed within max_block ({0:?})")]
    BufferExhausted(Duration),
    /// The record alone is larger than `max_request_size` or `buffer_memory`.
    #[error("record of {size} bytes exceeds the limit of {limit}")]
    RecordTooLarge {
        /// Encoded size of the record in a batch.
        size: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// The record names a partition the topic does not have.
    #[error("partition {partition} does not exist; the topic has {partitions}")]
    UnknownPartition {
        /// The partition asked for.
        partition: u32,
        /// The topic's partition count.
        partitions: u32,
    },
    /// The partitioner returned a partition outside the topic.
    #[error("partitioner chose partition {partition} of a topic with {partitions}")]
    InvalidPartitioner {
        /// What it returned.
        partition: u32,
        /// The topic's partition count.
        partitions: u32,
    },
    /// The topic could not be looked up.
    #[error("metadata lookup failed")]
    Discovery(#[from] DiscoveryError),
    /// Discovery did not answer about the topic within `max_block` (Kafka's "topic not present
    /// in metadata after max.block.ms"). Nothing was sent.
    #[error("no metadata for topic {topic:?} within max_block ({max_block:?})")]
    MetadataTimeout {
        /// The topic.
        topic: String,
        /// The configured bound.
        max_block: Duration,
    },
    /// The agent refused the batch with a non-retriable code. That attempt appended nothing;
    /// `persistence` says whether an earlier attempt of the same batch may have (it went
    /// unanswered, or the agent lost track of the producer since).
    #[error("agent refused the batch: {code:?}: {message} ({persistence:?})")]
    Rejected {
        /// The agent's code.
        code: ErrorCode,
        /// The agent's message.
        message: String,
        /// Whether it may be in the log anyway.
        persistence: Persistence,
    },
    /// The batch could not be encoded (compression failure).
    #[error("batch could not be encoded")]
    Encoding(#[source] Arc<BatchError>),
    /// The record was not acknowledged within `delivery_timeout`.
    #[error("not acknowledged within the delivery timeout of {timeout:?} ({persistence:?})")]
    DeliveryTimeout {
        /// The configured timeout.
        timeout: Duration,
        /// Whether it may be in the log anyway.
        persistence: Persistence,
    },
    /// The transport failed with an error that retrying cannot fix.
    #[error("transport failed ({persistence:?})")]
    Transport {
        /// The transport's error.
        #[source]
        source: Arc<dyn StdError + Send + Sync>,
        /// Whether it may be in the log anyway.
        persistence: Persistence,
    },
    /// The producer was closed before the record was acknowledged.
    #[error("producer closed before the record was acknowledged ({persistence:?})")]
    Closed {
        /// Whether it may be in the log anyway.
        persistence: Persistence,
    },
    /// `close` returned before every record was acknowledged; those records failed with
    /// [`ProduceError::Closed`].
    #[error("close timed out with {unfinished_batches} batches unfinished")]
    CloseTimedOut {
        /// Batches that were failed.
        unfinished_batches: usize,
    },
}

impl ProduceError {
    /// Whether the failed record may be in the log.
    pub fn persistence(&self) -> Persistence {
        match self {
            ProduceError::DeliveryTimeout { persistence, .. }
            | ProduceError::Rejected { persistence, .. }
            | ProduceError::Transport { persistence, .. }
            | ProduceError::Closed { persistence } => *persistence,
            _ => Persistence::NotPersisted,
        }
    }
}

/// A producer configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `delivery_timeout` must cover at least one linger and one request.
    #[error(
        "delivery_timeout ({delivery:?}) must be at least linger ({linger:?}) + request_timeout ({request:?})"
    )]
    DeliveryTimeoutTooShort {
        /// Configured delivery timeout.
        delivery: Duration,
        /// Configured linger.
        linger: Duration,
        /// Configured request timeout.
        request: Duration,
    },
    /// A size or count that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// A batch cannot be larger than a request.
    #[error("batch_size ({batch_size}) must not exceed max_request_size ({max_request_size})")]
    BatchLargerThanRequest {
        /// Configured batch size.
        batch_size: usize,
        /// Configured request size limit.
        max_request_size: usize,
    },
    /// The buffer must hold at least one batch.
    #[error("buffer_memory ({buffer_memory}) must be at least batch_size ({batch_size})")]
    BufferSmallerThanBatch {
        /// Configured buffer memory.
        buffer_memory: usize,
        /// Configured batch size.
        batch_size: usize,
    },
    /// With idempotence the agent remembers 5 batches per producer and partition, so no more
    /// may be unacknowledged.
    #[error("max_in_flight {0} exceeds 5, the most idempotence allows")]
    TooManyInFlightForIdempotence(usize),
    /// Idempotence was asked for with [`Acks::None`](super::Acks::None): the agent answers such
    /// requests before it checks sequences, so the producer could never learn of a refusal.
    #[error("idempotence needs acks=leader or acks=durable (acks=none never reports refusals)")]
    IdempotenceWithoutAcks,
    /// Retry backoff bounds in the wrong order.
    #[error("retry_backoff ({min:?}) must not exceed retry_backoff_max ({max:?})")]
    BackoffOrder {
        /// Initial backoff.
        min: Duration,
        /// Maximum backoff.
        max: Duration,
    },
    /// `build` was called outside a tokio runtime.
    #[error("the producer must be built inside a tokio runtime")]
    NoRuntime,
}
