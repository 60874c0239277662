//! The batch error type, and how each error maps onto a protocol [`ErrorCode`].

use crate::codec::{CodecError, CodecId};
use streamhouse_proto::v1::ErrorCode;

/// Why a batch could not be encoded or decoded.
///
/// Every malformed input yields one of these; decoding never panics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Fewer bytes than the header, or than the batch length field, says there are.
    #[error("batch truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes the batch needs.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// More bytes were given than the batch length field covers.
    #[error("batch length field covers {declared} bytes but {actual} were given")]
    LengthMismatch {
        /// Total size according to the length field.
        declared: usize,
        /// Bytes given.
        actual: usize,
    },
    /// The batch length field is negative or smaller than the fixed header.
    #[error("invalid batch length field {0}")]
    InvalidLength(i32),
    /// The batch (encoded, or its records block decompressed) is larger than allowed.
    #[error("batch of {size} bytes exceeds the limit of {limit}")]
    BatchTooLarge {
        /// The size found.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The magic byte names a format version this code does not read.
    #[error("unsupported batch magic {0}")]
    BadMagic(u8),
    /// The CRC32C in the header does not match the bytes it covers.
    #[error("crc mismatch: header has {expected:#010x}, content hashes to {actual:#010x}")]
    CrcMismatch {
        /// CRC stored in the header.
        expected: u32,
        /// CRC computed over the batch.
        actual: u32,
    },
    /// Attribute bits that this format version reserves are set.
    #[error("reserved attribute bits set in {0:#06x}")]
    InvalidAttributes(u16),
    /// Record count and last offset delta disagree, or the count is negative.
    #[error("record count {count} does not match last offset delta {last_offset_delta}")]
    InvalidRecordCount {
        /// Record count field.
        count: i32,
        /// Last offset delta field.
        last_offset_delta: i32,
    },
    /// More records than the limit allows.
    #[error("{count} records exceed the limit of {limit}")]
    TooManyRecords {
        /// Records declared.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The records block holds fewer records than the header declares.
    #[error("batch declares {declared} records but holds {found}")]
    RecordCountMismatch {
        /// Records declared by the header.
        declared: usize,
        /// Records actually present.
        found: usize,
    },
    /// Bytes remain after the last declared record.
    #[error("{0} unexpected bytes after the last record")]
    TrailingBytes(usize),
    /// One record is malformed.
    #[error("record {index}: {fault}")]
    CorruptRecord {
        /// Position of the record in the batch.
        index: u32,
        /// What is wrong with it.
        fault: RecordFault,
    },
    /// One record is larger than allowed.
    #[error("record of {size} bytes exceeds the limit of {limit}")]
    RecordTooLarge {
        /// The record's encoded size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The codec failed, or the batch's codec is not registered.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// What is wrong with one record of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordFault {
    /// A varint is longer or larger than its type.
    #[error("varint overflow")]
    VarintOverflow,
    /// A field runs past the end of the record or the records block.
    #[error("truncated")]
    Truncated,
    /// A length field below -1 (or below 0 where null is not allowed).
    #[error("invalid length {0}")]
    InvalidLength(i32),
    /// The record's offset delta is not its position in the batch.
    #[error("offset delta {found}, expected {expected}")]
    OffsetDelta {
        /// The record's position.
        expected: u32,
        /// The delta found.
        found: i32,
    },
    /// The fields do not fill exactly the record's declared length.
    #[error("fields do not fill the declared record length")]
    LengthMismatch,
    /// A header key is not UTF-8.
    #[error("header key is not utf-8")]
    HeaderKeyNotUtf8,
}

impl BatchError {
    /// The protocol code an agent answers with when a batch fails this way.
    ///
    /// ```
    /// use streamhouse::batch::BatchError;
    /// use streamhouse_proto::v1::ErrorCode;
    ///
    /// let err = BatchError::BadMagic(9);
    /// assert_eq!(err.code(), ErrorCode::CorruptBatch);
    /// ```
    pub fn code(&self) -> ErrorCode {
        match self {
            BatchError::BatchTooLarge { .. } | BatchError::TooManyRecords { .. } => {
                ErrorCode::BatchTooLarge
            }
            BatchError::RecordTooLarge { .. } => ErrorCode::RecordTooLarge,
            BatchError::Codec(CodecError::Unsupported(_)) => ErrorCode::UnsupportedCodec,
            // A block that inflates past the limit is an oversized batch in disguise.
            BatchError::Codec(CodecError::LimitExceeded { .. }) => ErrorCode::BatchTooLarge,
            BatchError::Codec(_) => ErrorCode::CorruptBatch,
            _ => ErrorCode::CorruptBatch,
        }
    }

    pub(crate) fn record(index: u32, fault: RecordFault) -> BatchError {
        BatchError::CorruptRecord { index, fault }
    }

    pub(crate) fn unsupported(id: CodecId) -> BatchError {
        BatchError::Codec(CodecError::Unsupported(id))
    }
}
