//! The codec error type.

use super::CodecId;

/// Why a codec could not compress or decompress a block.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// No codec with this id is registered.
    #[error("unsupported codec {0}")]
    Unsupported(CodecId),
    /// The block would decompress to more than the allowed number of bytes.
    #[error("{codec} block decompresses past the limit of {limit} bytes")]
    LimitExceeded {
        /// The codec that found it.
        codec: CodecId,
        /// The limit that was hit.
        limit: usize,
    },
    /// The block is not valid for this codec.
    #[error("corrupt {codec} block: {reason}")]
    Corrupt {
        /// The codec that found it.
        codec: CodecId,
        /// What was wrong, for logs.
        reason: &'static str,
        /// The library's own error, when it gave one.
        #[source]
        source: Option<std::io::Error>,
    },
    /// Compression itself failed (input too long for the format, library error).
    #[error("{codec} compression failed")]
    Compress {
        /// The codec that failed.
        codec: CodecId,
        /// The library's error.
        #[source]
        source: std::io::Error,
    },
}

impl CodecError {
    /// A [`CodecError::Corrupt`] with no library error attached.
    pub fn corrupt(codec: CodecId, reason: &'static str) -> CodecError {
        CodecError::Corrupt {
            codec,
            reason,
            source: None,
        }
    }
}
