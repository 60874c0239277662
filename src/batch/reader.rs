//! [`Batch`]: validates wire bytes, then hands out [`Record`]s without copying them.

use super::header::{BatchHeader, HEADER_LEN};
use super::record::{Header, Record};
use super::varint::{VarintError, get_varint, get_varlong};
use super::{BatchError, RecordFault};
use crate::codec::{CodecId, Codecs};
use bytes::{Bytes, BytesMut};

/// The smallest possible encoded record: a 1-byte length and six 1-byte fields
/// (attributes, timestamp delta, offset delta, key length, value length, header count).
const MIN_RECORD_LEN: usize = 7;

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

    /// Decompresses the records block if needed (at most `max_uncompressed_bytes`) and returns
    /// an iterator over the records.
    ///
    /// Uncompressed, keys and values are slices of the batch bytes. Fails with
    /// [`BatchError::Codec`] if the batch's codec is not in `codecs` or the block is corrupt.
    pub fn records(&self, codecs: &Codecs) -> Result<Records, BatchError> {
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
        Ok(Records {
            data,
            pos: 0,
            index: 0,
            count: self.header.record_count as u32,
            base_offset: self.header.base_offset,
            first_timestamp: self.header.first_timestamp,
            max_record_bytes: self.limits.max_record_bytes,
            done: false,
        })
    }
}

/// Iterator over the records of a [`Batch`], in offset order.
///
/// Yields an error (and then stops) at the first malformed record, if the block ends before the
/// declared count, or if bytes remain after it.
#[derive(Debug)]
pub struct Records {
    data: Bytes,
    pos: usize,
    index: u32,
    count: u32,
    base_offset: i64,
    first_timestamp: i64,
    max_record_bytes: usize,
    done: bool,
}

impl Iterator for Records {
    type Item = Result<Record, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.index == self.count {
            self.done = true;
            let rest = self.data.len() - self.pos;
            return (rest != 0).then_some(Err(BatchError::TrailingBytes(rest)));
        }
        if self.pos == self.data.len() {
            self.done = true;
            return Some(Err(BatchError::RecordCountMismatch {
                declared: self.count as usize,
                found: self.index as usize,
            }));
        }
        let result = self.decode_one();
        if result.is_err() {
            self.done = true;
        }
        self.index += 1;
        Some(result)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        let left = (self.count - self.index) as usize;
        // One extra item is possible: the trailing-bytes or count-mismatch error.
        (0, Some(left + 1))
    }
}

impl Records {
    fn decode_one(&mut self) -> Result<Record, BatchError> {
        let index = self.index;
        let fault = |f: RecordFault| BatchError::record(index, f);
        let data = &self.data[..];

        let mut pos = self.pos;
        let length = get_varint(data, &mut pos).map_err(|e| fault(varint_fault(e)))?;
        let length = usize::try_from(length).map_err(|_| fault(RecordFault::InvalidLength(length)))?;
        if length > self.max_record_bytes {
            return Err(BatchError::RecordTooLarge {
                size: length,
                limit: self.max_record_bytes,
            });
        }
        let end = pos
            .checked_add(length)
            .filter(|&end| end <= data.len())
            .ok_or(fault(RecordFault::Truncated))?;
        // Fields are read from the record's own window so none can reach into the next record.
        let body = &data[..end];

        let _attributes = *body.get(pos).ok_or(fault(RecordFault::Truncated))?;
        pos += 1;
        let ts_delta = get_varlong(body, &mut pos).map_err(|e| fault(varint_fault(e)))?;
        let offset_delta = get_varint(body, &mut pos).map_err(|e| fault(varint_fault(e)))?;
        if offset_delta != index as i32 {
            return Err(fault(RecordFault::OffsetDelta {
                expected: index,
                found: offset_delta,
            }));
        }
        let key = self.nullable_bytes(body, &mut pos).map_err(fault)?;
        let value = self.nullable_bytes(body, &mut pos).map_err(fault)?;
        let header_count = get_varint(body, &mut pos).map_err(|e| fault(varint_fault(e)))?;
        let header_count =
            usize::try_from(header_count).map_err(|_| fault(RecordFault::InvalidLength(header_count)))?;
        // Each header takes at least 2 bytes: refuse a count the record cannot hold before
        // reserving room for it.
        if header_count > (end - pos) / 2 {
            return Err(fault(RecordFault::Truncated));
        }
        let mut headers = Vec::with_capacity(header_count);
        for _ in 0..header_count {
            let key = match self.nullable_bytes(body, &mut pos).map_err(fault)? {
                Some(k) => String::from_utf8(k.to_vec())
                    .map_err(|_| fault(RecordFault::HeaderKeyNotUtf8))?,
                None => return Err(fault(RecordFault::InvalidLength(-1))),
            };
            let value = self.nullable_bytes(body, &mut pos).map_err(fault)?;
            headers.push(Header { key, value });
        }
        if pos != end {
            return Err(fault(RecordFault::LengthMismatch));
        }
        self.pos = end;
        Ok(Record {
            offset: self.base_offset.wrapping_add(i64::from(index)),
            timestamp: self.first_timestamp.wrapping_add(ts_delta),
            key,
            value,
            headers,
        })
    }

    /// Reads a length-prefixed byte string (-1 = null) as a zero-copy slice of the block.
    fn nullable_bytes(&self, body: &[u8], pos: &mut usize) -> Result<Option<Bytes>, RecordFault> {
        let len = get_varint(body, pos).map_err(varint_fault)?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| RecordFault::InvalidLength(len))?;
        let end = pos
            .checked_add(len)
            .filter(|&end| end <= body.len())
            .ok_or(RecordFault::Truncated)?;
        let bytes = self.data.slice(*pos..end);
        *pos = end;
        Ok(Some(bytes))
    }
}

fn varint_fault(e: VarintError) -> RecordFault {
    match e {
        VarintError::Truncated => RecordFault::Truncated,
        VarintError::Overflow => RecordFault::VarintOverflow,
    }
}
