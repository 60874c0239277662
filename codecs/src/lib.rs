//! LZ4 and zstd codecs for StreamHouse record batches.
//!
//! Each implements [`streamhouse::codec::Codec`] for the records block of a batch. Both refuse
//! a block that would decompress past the caller's limit *before* allocating for it: LZ4 from its
//! length prefix (and LZ4's maximum ratio), zstd from the frame's declared content size, or by
//! streaming with a bounded window when the frame does not declare one.
//!
//! | codec | id | format |
//! |---|---:|---|
//! | [`Lz4`] | 3 | LZ4 block, prefixed with the uncompressed length (u32, little-endian) |
//! | [`Zstd`] | 4 | one zstd frame with its content size |
//!
//! # Feature flags
//!
//! - `lz4` (default): [`Lz4`], using the reference C library through the `lz4` crate.
//! - `zstd` (default): [`Zstd`], using the reference C library through the `zstd` crate.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use streamhouse::batch::{Batch, BatchBuilder, DecodeLimits, ProducerStamp};
//! use streamhouse_codecs::{all, Lz4};
//!
//! let mut builder = BatchBuilder::new();
//! for i in 0..100 {
//!     builder.append(1_700_000_000_000 + i, None, Some(br#"{"event":"click","page":"/"}"#), &[])?;
//! }
//! let wire = builder.finish(ProducerStamp::NONE, &Lz4)?;
//! let batch = Batch::parse(wire, &DecodeLimits::default())?;
//! assert_eq!(batch.header().codec, streamhouse::codec::CodecId::LZ4);
//! assert_eq!(batch.records(&all())?.count(), 100);
//! # Ok::<(), streamhouse::batch::BatchError>(())
//! ```

#[cfg(any(feature = "lz4", feature = "zstd"))]
mod buf;
#[cfg(feature = "lz4")]
mod lz4;
#[cfg(feature = "zstd")]
mod pool;
#[cfg(feature = "zstd")]
mod zstd;

#[cfg(feature = "lz4")]
pub use crate::lz4::Lz4;
#[cfg(feature = "zstd")]
pub use crate::zstd::Zstd;

use std::sync::Arc;
use streamhouse::codec::Codecs;

/// A registry holding every codec this crate was built with (and `NoCompression`), zstd at its
/// default level. Enough to read any batch a StreamHouse producer writes.
pub fn all() -> Codecs {
    let codecs = Codecs::new();
    #[cfg(feature = "lz4")]
    let codecs = codecs.with(Arc::new(Lz4));
    #[cfg(feature = "zstd")]
    let codecs = codecs.with(Arc::new(Zstd::default()));
    codecs
}
