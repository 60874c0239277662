//! Zstandard compression with a configurable level.

use crate::buf::write_into;
use crate::pool::Pool;
use bytes::BytesMut;
use std::io::Read;
use streamhouse::codec::{Codec, CodecError, CodecId};
use zstd::bulk::{Compressor, Decompressor};
use zstd::zstd_safe;

/// Zstandard (the reference C implementation), one frame per records block, with the content
/// size recorded in the frame so readers allocate exactly once.
///
/// ```
/// let fast = streamhouse_codecs::Zstd::new(1);
/// assert_eq!(fast.level(), 1);
/// ```
pub struct Zstd {
    level: i32,
    compressors: Pool<Compressor<'static>>,
    decompressors: Pool<Decompressor<'static>>,
}

/// Contexts kept per codec: one per core is what the sender and a decoder can use at once.
const MAX_IDLE_CONTEXTS: usize = 8;

impl Zstd {
    /// Kafka's and zstd's default level.
    pub const DEFAULT_LEVEL: i32 = 3;

    /// A zstd codec compressing at `level` (1 fastest … 22 smallest; negative levels trade
    /// ratio for even more speed). Out-of-range levels are clamped by zstd.
    pub fn new(level: i32) -> Zstd {
        Zstd {
            level,
            compressors: Pool::new(MAX_IDLE_CONTEXTS),
            decompressors: Pool::new(MAX_IDLE_CONTEXTS),
        }
    }

    /// The compression level.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// Decodes a frame that does not record its content size: streamed in chunks, with the
    /// window capped by `limit`, so neither the output nor zstd's window outgrows the limit.
    fn decompress_unsized(
        block: &[u8],
        out: &mut BytesMut,
        limit: usize,
    ) -> Result<(), CodecError> {
        let corrupt = |source| CodecError::Corrupt {
            codec: CodecId::ZSTD,
            reason: "invalid zstd frame, or its window exceeds the limit",
            source: Some(source),
        };
        let mut decoder = zstd::stream::read::Decoder::with_buffer(block).map_err(corrupt)?;
        // Window log 10 (1 KiB) is zstd's minimum; 27 its default maximum.
        let window_log = (usize::BITS - limit.max(1).leading_zeros()).clamp(10, 27);
        decoder.window_log_max(window_log).map_err(corrupt)?;
        let start = out.len();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = match decoder.read(&mut chunk) {
                Ok(n) => n,
                Err(source) => {
                    out.truncate(start);
                    return Err(corrupt(source));
                }
            };
            if n == 0 {
                return Ok(());
            }
            if out.len() - start + n > limit {
                out.truncate(start);
                return Err(CodecError::LimitExceeded {
                    codec: CodecId::ZSTD,
                    limit,
                });
            }
            out.extend_from_slice(&chunk[..n]);
        }
    }
}

impl std::fmt::Debug for Zstd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zstd").field("level", &self.level).finish()
    }
}

impl Default for Zstd {
    fn default() -> Zstd {
        Zstd::new(Zstd::DEFAULT_LEVEL)
    }
}

impl Codec for Zstd {
    fn id(&self) -> CodecId {
        CodecId::ZSTD
    }

    fn compress(&self, records: &[u8], out: &mut BytesMut) -> Result<(), CodecError> {
        let error = |source| CodecError::Compress {
            codec: CodecId::ZSTD,
            source,
        };
        write_into(out, zstd_safe::compress_bound(records.len()), |buf| {
            self.compressors
                .with(
                    || Compressor::new(self.level),
                    |c| c.compress_to_buffer(records, buf),
                )
                .and_then(|r| r)
        })
        .map_err(error)?;
        Ok(())
    }

    fn decompress(&self, block: &[u8], out: &mut BytesMut, limit: usize) -> Result<(), CodecError> {
        let size = match zstd_safe::get_frame_content_size(block) {
            Ok(Some(size)) => size,
            Ok(None) => return Zstd::decompress_unsized(block, out, limit),
            Err(_) => {
                return Err(CodecError::corrupt(CodecId::ZSTD, "not a zstd frame"));
            }
        };
        if size > limit as u64 {
            return Err(CodecError::LimitExceeded {
                codec: CodecId::ZSTD,
                limit,
            });
        }
        let size = size as usize;
        // The destination is exactly the declared size: a frame that produces more (a lying
        // header, or extra frames) fails inside zstd instead of growing the buffer.
        write_into(out, size, |buf| {
            let result = self
                .decompressors
                .with(Decompressor::new, |d| d.decompress_to_buffer(block, buf))
                .and_then(|r| r);
            match result {
                Ok(n) if n == size => Ok(n),
                Ok(_) => Err(CodecError::corrupt(
                    CodecId::ZSTD,
                    "frame shorter than its declared content size",
                )),
                Err(source) => Err(CodecError::Corrupt {
                    codec: CodecId::ZSTD,
                    reason: "invalid zstd frame",
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

    #[test]
    fn round_trip_at_several_levels() {
        let data = br#"{"event":"page_view","region":"eu-west-1","user":"user-00042"}"#.repeat(200);
        for level in [-1, 1, 3, 9] {
            let codec = Zstd::new(level);
            let mut block = BytesMut::new();
            codec.compress(&data, &mut block).unwrap();
            assert!(block.len() < data.len() / 10, "level {level}");
            let mut out = BytesMut::new();
            codec.decompress(&block, &mut out, data.len()).unwrap();
            assert_eq!(&out[..], &data[..]);
        }
    }

    #[test]
    fn refuses_declared_sizes_past_the_limit_without_allocating() {
        let data = vec![b'x'; 1 << 20];
        let mut block = BytesMut::new();
        Zstd::default().compress(&data, &mut block).unwrap();
        assert!(block.len() < 200, "1 MiB of one byte is a tiny frame");
        let mut out = BytesMut::new();
        let err = Zstd::default()
            .decompress(&block, &mut out, (1 << 20) - 1)
            .unwrap_err();
        assert!(matches!(err, CodecError::LimitExceeded { .. }));
        assert_eq!(out.capacity(), 0);
    }

    /// A frame as a streaming encoder writes it when not told the size: no content size.
    fn unsized_frame(data: &[u8], window_log: Option<u32>) -> Vec<u8> {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        if let Some(log) = window_log {
            encoder.window_log(log).unwrap();
        }
        std::io::Write::write_all(&mut encoder, data).unwrap();
        let frame = encoder.finish().unwrap();
        assert!(matches!(
            zstd_safe::get_frame_content_size(&frame),
            Ok(None)
        ));
        frame
    }

    #[test]
    fn frames_without_content_size_stream_within_the_limit() {
        let data = b"streamhouse ".repeat(10_000); // 120,000 bytes: fits a 2^17 window
        let frame = unsized_frame(&data, Some(17));

        let mut out = BytesMut::new();
        Zstd::default()
            .decompress(&frame, &mut out, data.len())
            .unwrap();
        assert_eq!(&out[..], &data[..]);

        out.clear();
        let err = Zstd::default()
            .decompress(&frame, &mut out, data.len() - 1)
            .unwrap_err();
        assert!(matches!(err, CodecError::LimitExceeded { .. }));
        assert!(out.is_empty());
    }

    #[test]
    fn unsized_frames_whose_window_exceeds_the_limit_are_refused() {
        // Level 3 picks a 2 MiB window when the size is unknown; decoding it would allocate
        // that window, more than a 120 KB limit allows.
        let data = b"streamhouse ".repeat(10_000);
        let frame = unsized_frame(&data, None);
        let mut out = BytesMut::new();
        assert!(
            Zstd::default()
                .decompress(&frame, &mut out, data.len())
                .is_err()
        );
        assert!(out.is_empty());
        Zstd::default()
            .decompress(&frame, &mut out, 4 << 20)
            .unwrap();
        assert_eq!(&out[..], &data[..]);
    }

    #[test]
    fn truncated_and_garbage_frames_are_errors() {
        let data = b"the quick brown fox jumps over the lazy dog".repeat(20);
        let mut block = BytesMut::new();
        Zstd::default().compress(&data, &mut block).unwrap();
        let mut out = BytesMut::new();
        for cut in 0..block.len() {
            out.clear();
            assert!(
                Zstd::default()
                    .decompress(&block[..cut], &mut out, 1 << 20)
                    .is_err()
            );
            assert!(out.is_empty());
        }
        assert!(
            Zstd::default()
                .decompress(b"GET / HTTP/1.1\r\n", &mut out, 1 << 20)
                .is_err()
        );
    }
}
