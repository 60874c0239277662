//! [`Batch`]: validates the wire bytes of one batch and opens its records block.

#[cfg(doc)]
use super::{Record, RecordView};

use super::BatchError;
use super::header::{BatchHeader, HEADER_LEN};
use super::records::{MIN_RECORD_LEN, RecordBlock, Records};
use crate::codec::{CodecId, Codecs};
use bytes::{Bytes, BytesMut};

/// Bounds a decoder enforces before it allocates or iterates, so hostile input costs at most
/// these amounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest encoded batch, header included. Default 16 MiB.
    pub max_batch_bytes: usize,
    /// Largest records block after decompression. Default 32 MiB.
    pub max_uncompressed_bytes: usize,
    /// Most records in one batch. Default 1,048,576.
    pub max_records: usize,
    /// Largest single encoded record. Default 16 MiB.
    pub max_record_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> DecodeLimits {
        DecodeLimits {
            max_batch_bytes: 16 << 20,
            max_uncompressed_bytes: 32 << 20,
            max_records: 1 << 20,
            max_record_bytes: 16 << 20,
        }
    }
}

/// A validated record batch: the header is consistent and the CRC matches.
///
/// Parsing checks everything that does not need the records block decoded; iterating
/// [`records`](Batch::records) checks each record.
#[derive(Debug, Clone)]
pub struct Batch {
    bytes: Bytes,
    header: BatchHeader,
    limits: DecodeLimits,
}

impl Batch {
    /// Validates `bytes` as exactly one batch: length fields, magic, attributes, record count,
    /// CRC32C, and the limits.
    pub fn parse(bytes: Bytes, limits: &DecodeLimits) -> Result<Batch, BatchError> {
        let header = BatchHeader::read(&bytes)?;
        let total = header.total_len();
        if total > limits.max_batch_bytes {
            return Err(BatchError::BatchTooLarge {
                size: total,
                limit: limits.max_batch_bytes,
            });
        }
        if total > bytes.len() {
            return Err(BatchError::Truncated {
                needed: total,
                available: bytes.len(),
            });
        }
        if total < bytes.len() {
            return Err(BatchError::LengthMismatch {
                declared: total,
                actual: bytes.len(),
            });
        }
        let count = header.record_count as usize;
        if count > limits.max_records {
            return Err(BatchError::TooManyRecords {
                count,
                limit: limits.max_records,
            });
        }
        let actual = crc32c::crc32c(&bytes[super::header::ATTRIBUTES..]);
        if actual != header.crc {
            return Err(BatchError::CrcMismatch {
                expected: header.crc,
                actual,
            });
        }
        // A block too small to hold the declared records is caught before any decompression.
        let block_len = total - HEADER_LEN;
        if header.codec == CodecId::NONE && count > block_len / MIN_RECORD_LEN {
            return Err(BatchError::RecordCountMismatch {
                declared: count,
                found: block_len / MIN_RECORD_LEN,
            });
        }
        Ok(Batch {
            bytes,
            header,
            limits: *limits,
        })
    }

    /// The decoded header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch's wire bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Gives back the wire bytes.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Decompresses the records block if needed (at most `max_uncompressed_bytes`), ready to
    /// be read as borrowed [`RecordView`]s or owned [`Record`]s.
    ///
    /// Fails with [`BatchError::Codec`] if the batch's codec is not in `codecs` or the block is
    /// corrupt.
    pub fn record_block(&self, codecs: &Codecs) -> Result<RecordBlock, BatchError> {
        let block = self.bytes.slice(HEADER_LEN..);
        let data = if self.header.codec == CodecId::NONE {
            if block.len() > self.limits.max_uncompressed_bytes {
                return Err(BatchError::BatchTooLarge {
                    size: block.len(),
                    limit: self.limits.max_uncompressed_bytes,
                });
            }
            block
        } else {
            let codec = codecs
                .get(self.header.codec)
                .map_err(|_| BatchError::unsupported(self.header.codec))?;
            let mut out = BytesMut::new();
            codec.decompress(&block, &mut out, self.limits.max_uncompressed_bytes)?;
            let count = self.header.record_count as usize;
            if count > out.len() / MIN_RECORD_LEN {
                return Err(BatchError::RecordCountMismatch {
                    declared: count,
                    found: out.len() / MIN_RECORD_LEN,
                });
            }
            out.freeze()
        };
        Ok(RecordBlock::new(data, &self.header, &self.limits))
    }

    /// The records, owned: [`record_block`](Batch::record_block) then
    /// [`RecordBlock::into_records`]. Uncompressed, keys and values are slices of the batch
    /// bytes.
    pub fn records(&self, codecs: &Codecs) -> Result<Records, BatchError> {
        Ok(self.record_block(codecs)?.into_records())
    }
}
