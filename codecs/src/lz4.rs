//! LZ4 block compression with a 4-byte uncompressed-length prefix.

use crate::buf::write_into;
use bytes::BytesMut;
use streamhouse::codec::{Codec, CodecError, CodecId};

/// LZ4 in block format (the reference C implementation, default acceleration).
///
/// The block is `[uncompressed length: u32 LE][LZ4 block]`. The prefix lets the reader size
/// its buffer exactly, and refuse a block whose claim exceeds the limit, or exceeds what LZ4 can
/// produce from that many compressed bytes, before allocating anything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Lz4;

/// LZ4's densest encoding yields at most 255 bytes per input byte (plus a small constant); a
/// block claiming more is corrupt, whatever the limit.
const MAX_RATIO: usize = 255;

impl Codec for Lz4 {
    fn id(&self) -> CodecId {
        CodecId::LZ4
    }

    fn compress(&self, records: &[u8], out: &mut BytesMut) -> Result<(), CodecError> {
        let error = |source| CodecError::Compress {
            codec: CodecId::LZ4,
            source,
        };
        let bound = lz4::block::compress_bound(records.len()).map_err(error)?;
        write_into(out, 4 + bound, |buf| {
            lz4::block::compress_to_buffer(records, None, true, buf)
        })
        .map_err(error)?;
        Ok(())
    }

    fn decompress(&self, block: &[u8], out: &mut BytesMut, limit: usize) -> Result<(), CodecError> {
        let Some((prefix, body)) = block.split_first_chunk::<4>() else {
            return Err(CodecError::corrupt(CodecId::LZ4, "missing length prefix"));
        };
        let size = u32::from_le_bytes(*prefix) as usize;
        if size > limit {
            return Err(CodecError::LimitExceeded {
                codec: CodecId::LZ4,
                limit,
            });
        }
        if size > body.len().saturating_mul(MAX_RATIO) + 16 || size > i32::MAX as usize {
            return Err(CodecError::corrupt(
                CodecId::LZ4,
                "length prefix exceeds what the block can hold",
            ));
        }
        write_into(out, size, |buf| {
            match lz4::block::decompress_to_buffer(body, Some(size as i32), buf) {
                Ok(n) if n == size => Ok(n),
                Ok(_) => Err(CodecError::corrupt(
                    CodecId::LZ4,
                    "block shorter than its length prefix",
                )),
                Err(source) => Err(CodecError::Corrupt {
                    codec: CodecId::LZ4,
                    reason: "invalid lz4 block",
                    source: Some(source),
                }),
            }
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(data: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        Lz4.compress(data, &mut out).unwrap();
        out
    }

    #[test]
    fn round_trip_appends_after_existing_bytes() {
        let data = b"abcabcabcabcabcabcabcabc hello hello hello".repeat(50);
        let block = compress(&data);
        assert!(block.len() < data.len() / 4);
        let mut out = BytesMut::from(&b"prefix"[..]);
        Lz4.decompress(&block, &mut out, data.len()).unwrap();
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(&out[6..], &data[..]);
    }

    #[test]
    fn refuses_claims_past_the_limit_or_the_ratio() {
        let data = vec![0u8; 100_000];
        let block = compress(&data);
        let mut out = BytesMut::new();
        let err = Lz4.decompress(&block, &mut out, 99_999).unwrap_err();
        assert!(matches!(
            err,
            CodecError::LimitExceeded { limit: 99_999, .. }
        ));
        assert_eq!(out.capacity(), 0, "nothing allocated for a refused block");

        // A 10-byte block claiming 1 GiB: impossible for LZ4, refused before allocating.
        let mut lie = (1u32 << 30).to_le_bytes().to_vec();
        lie.extend_from_slice(&[0x1f; 6]);
        let err = Lz4.decompress(&lie, &mut out, usize::MAX).unwrap_err();
        assert!(matches!(err, CodecError::Corrupt { .. }));
        assert_eq!(out.capacity(), 0);
    }

    #[test]
    fn corrupt_and_short_blocks_are_errors() {
        let data = b"the quick brown fox jumps over the lazy dog".repeat(10);
        let block = compress(&data);
        let mut out = BytesMut::new();
        for cut in 0..block.len() {
            out.clear();
            assert!(
                Lz4.decompress(&block[..cut], &mut out, 1 << 20).is_err(),
                "cut {cut}"
            );
            assert!(out.is_empty());
        }
        // A length prefix larger than the real content.
        let mut longer = block.to_vec();
        longer[..4].copy_from_slice(&(data.len() as u32 + 1).to_le_bytes());
        assert!(Lz4.decompress(&longer, &mut out, 1 << 20).is_err());
    }
}
