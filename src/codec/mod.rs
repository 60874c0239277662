//! Batch compression: the [`Codec`] trait, stable [`CodecId`]s, and the [`Codecs`] registry.
//!
//! A codec compresses the *records block* of a batch as a whole (never the header), so the
//! agent can read sizes, sequence numbers and the CRC without decompressing. The codec's id sits
//! in the low three bits of the batch attributes; a reader looks it up in a [`Codecs`] registry
//! and answers [`CodecError::Unsupported`] for an id it does not hold.
//!
//! [`NoCompression`] lives here; LZ4 and zstd live in the `streamhouse-codecs` crate so that the
//! core does not link C compression libraries.
//!
//! # Codec ids
//!
//! The numbers follow Kafka's `CompressionType` so a Kafka engineer reads them at a glance.
//! They are part of the wire format and never change.
//!
//! | id | codec | where |
//! |---:|---|---|
//! | 0 | none | [`NoCompression`] |
//! | 1 | gzip | reserved, not implemented |
//! | 2 | snappy | reserved, not implemented |
//! | 3 | LZ4 block, 4-byte little-endian uncompressed length prefix | `streamhouse_codecs::Lz4` |
//! | 4 | zstd frame | `streamhouse_codecs::Zstd` |
//! | 5–7 | free for user codecs | |
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use streamhouse::codec::{Codec, CodecId, Codecs, NoCompression};
//!
//! let codecs = Codecs::new(); // holds NoCompression
//! let codec = codecs.get(CodecId::NONE).unwrap();
//! let mut out = BytesMut::new();
//! codec.compress(b"records", &mut out).unwrap();
//! assert_eq!(&out[..], b"records");
//! ```

mod error;
mod registry;

pub use error::CodecError;
pub use registry::Codecs;

use bytes::BytesMut;
use std::fmt;

/// The stable number identifying a codec in a batch header (0–7).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CodecId(u8);

impl CodecId {
    /// No compression.
    pub const NONE: CodecId = CodecId(0);
    /// gzip (reserved; no implementation ships).
    pub const GZIP: CodecId = CodecId(1);
    /// Snappy (reserved; no implementation ships).
    pub const SNAPPY: CodecId = CodecId(2);
    /// LZ4 block format with a 4-byte little-endian uncompressed-length prefix.
    pub const LZ4: CodecId = CodecId(3);
    /// Zstandard frame.
    pub const ZSTD: CodecId = CodecId(4);
    /// Largest id the three attribute bits can hold.
    pub const MAX: CodecId = CodecId(7);

    /// The id for `value`, or `None` if it does not fit the three attribute bits.
    pub const fn new(value: u8) -> Option<CodecId> {
        if value <= Self::MAX.0 {
            Some(CodecId(value))
        } else {
            None
        }
    }

    /// The number written into the batch attributes.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The conventional name of a well-known id (`"lz4"`), or `None` for user ids.
    pub const fn name(self) -> Option<&'static str> {
        match self.0 {
            0 => Some("none"),
            1 => Some("gzip"),
            2 => Some("snappy"),
            3 => Some("lz4"),
            4 => Some("zstd"),
            _ => None,
        }
    }
}

impl fmt::Debug for CodecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for CodecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}({})", self.0),
            None => write!(f, "codec({})", self.0),
        }
    }
}

/// Compresses and decompresses the records block of a batch.
///
/// Implementations must be deterministic in what they accept: `decompress` must return an error,
/// never panic, on any input, and must never grow `out` by more than `limit` bytes — a small
/// block that claims or inflates to more is a [`CodecError::LimitExceeded`], found before the
/// memory is allocated where the format allows it.
///
/// The trait is object safe; the producer and agent hold codecs as `Arc<dyn Codec>`.
pub trait Codec: Send + Sync + 'static {
    /// The id written into the batch header.
    fn id(&self) -> CodecId;

    /// Appends the compressed form of `records` to `out`.
    fn compress(&self, records: &[u8], out: &mut BytesMut) -> Result<(), CodecError>;

    /// Appends the decompressed form of `block` to `out`, adding at most `limit` bytes.
    fn decompress(&self, block: &[u8], out: &mut BytesMut, limit: usize) -> Result<(), CodecError>;
}

/// The identity codec: records travel as they are. Id 0.
///
/// (Not called `None`, which would shadow `Option::None` wherever it is imported.)
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCompression;

impl Codec for NoCompression {
    fn id(&self) -> CodecId {
        CodecId::NONE
    }

    fn compress(&self, records: &[u8], out: &mut BytesMut) -> Result<(), CodecError> {
        out.extend_from_slice(records);
        Ok(())
    }

    fn decompress(&self, block: &[u8], out: &mut BytesMut, limit: usize) -> Result<(), CodecError> {
        if block.len() > limit {
            return Err(CodecError::LimitExceeded {
                codec: CodecId::NONE,
                limit,
            });
        }
        out.extend_from_slice(block);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _object_safe(_: &dyn Codec) {}

    #[test]
    fn ids_fit_three_bits() {
        assert_eq!(CodecId::new(7), Some(CodecId::MAX));
        assert_eq!(CodecId::new(8), None);
        assert_eq!(CodecId::LZ4.to_string(), "lz4(3)");
        assert_eq!(CodecId::new(6).unwrap().to_string(), "codec(6)");
    }

    #[test]
    fn no_compression_respects_the_limit() {
        let mut out = BytesMut::new();
        let err = NoCompression
            .decompress(b"0123456789", &mut out, 9)
            .unwrap_err();
        assert!(matches!(err, CodecError::LimitExceeded { limit: 9, .. }));
        assert!(out.is_empty());
        NoCompression
            .decompress(b"0123456789", &mut out, 10)
            .unwrap();
        assert_eq!(&out[..], b"0123456789");
    }
}
