//! The fixed 57-byte batch header: field offsets, reading, and the agent's offset stamping.
//!
//! All integers are big-endian. The CRC32C covers every byte from `attributes` to the end of
//! the batch; `base_offset`, `batch_length` and `magic` sit before it so the agent can stamp the
//! base offset without recomputing the CRC (as Kafka's record batch v2 does). The full table is
//! in `proto/README.md`.

use super::BatchError;
use crate::codec::CodecId;

/// Offset of `base_offset` (i64).
pub(crate) const BASE_OFFSET: usize = 0;
/// Offset of `batch_length` (i32): bytes after this field.
pub(crate) const BATCH_LENGTH: usize = 8;
/// Offset of `magic` (i8).
pub(crate) const MAGIC: usize = 12;
/// Offset of `crc` (u32).
pub(crate) const CRC: usize = 13;
/// Offset of `attributes` (i16); the CRC covers from here to the end.
pub(crate) const ATTRIBUTES: usize = 17;
/// Offset of `last_offset_delta` (i32).
pub(crate) const LAST_OFFSET_DELTA: usize = 19;
/// Offset of `first_timestamp` (i64).
pub(crate) const FIRST_TIMESTAMP: usize = 23;
/// Offset of `max_timestamp` (i64).
pub(crate) const MAX_TIMESTAMP: usize = 31;
/// Offset of `producer_id` (i64).
pub(crate) const PRODUCER_ID: usize = 39;
/// Offset of `producer_epoch` (i16).
pub(crate) const PRODUCER_EPOCH: usize = 47;
/// Offset of `base_sequence` (i32).
pub(crate) const BASE_SEQUENCE: usize = 49;
/// Offset of `record_count` (i32).
pub(crate) const RECORD_COUNT: usize = 53;

/// Size of the fixed header; the records block starts here.
pub const HEADER_LEN: usize = 57;
/// Bytes before `batch_length`'s coverage starts (`base_offset` + `batch_length`).
pub(crate) const LOG_OVERHEAD: usize = 12;
/// The format version this code writes and reads.
pub const MAGIC_V1: u8 = 1;

/// Attribute bits 0–2: codec id.
const CODEC_MASK: u16 = 0b111;
/// Attribute bit 3: timestamp type.
const LOG_APPEND_TIME_BIT: u16 = 1 << 3;
/// Every bit this version defines; the rest must be zero.
const KNOWN_BITS: u16 = CODEC_MASK | LOG_APPEND_TIME_BIT;

/// Sentinel for "no producer id / epoch / sequence": a batch from a non-idempotent producer.
pub const NO_PRODUCER_ID: i64 = -1;
/// Sentinel timestamp of an empty batch.
pub const NO_TIMESTAMP: i64 = -1;

/// Whose clock the record timestamps are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    /// The producer's clock when the record was created.
    #[default]
    CreateTime,
    /// The agent's clock when the batch was appended.
    LogAppendTime,
}

/// The idempotence fields of a batch header: who wrote it and where it sits in that producer's
/// per-partition sequence. The agent uses them to drop retried duplicates and reject gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProducerStamp {
    /// Producer id, or [`NO_PRODUCER_ID`].
    pub producer_id: i64,
    /// Producer epoch; a newer epoch fences older ones.
    pub producer_epoch: i16,
    /// Sequence number of the batch's first record in this partition, or -1.
    pub base_sequence: i32,
}

impl ProducerStamp {
    /// The stamp of a non-idempotent producer: every field is -1.
    pub const NONE: ProducerStamp = ProducerStamp {
        producer_id: NO_PRODUCER_ID,
        producer_epoch: -1,
        base_sequence: -1,
    };
}

/// The sequence number `count` records after `sequence`, wrapping from `i32::MAX` to 0 as
/// Kafka's sequences do.
///
/// ```
/// use streamhouse::batch::sequence_add;
/// assert_eq!(sequence_add(10, 5), 15);
/// assert_eq!(sequence_add(i32::MAX, 1), 0);
/// ```
pub fn sequence_add(sequence: i32, count: u32) -> i32 {
    const MODULUS: i64 = i32::MAX as i64 + 1;
    (i64::from(sequence) + i64::from(count)).rem_euclid(MODULUS) as i32
}

impl Default for ProducerStamp {
    fn default() -> ProducerStamp {
        ProducerStamp::NONE
    }
}

/// The decoded fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record, stamped by the agent (0 before that).
    pub base_offset: i64,
    /// Bytes after the `batch_length` field.
    pub batch_length: i32,
    /// Format version.
    pub magic: u8,
    /// CRC32C over attributes..end.
    pub crc: u32,
    /// Codec of the records block.
    pub codec: CodecId,
    /// Whose clock the timestamps are.
    pub timestamp_type: TimestampType,
    /// Offset delta of the last record (`record_count - 1`).
    pub last_offset_delta: i32,
    /// Timestamp of the first record; record timestamps are deltas from it.
    pub first_timestamp: i64,
    /// Largest record timestamp.
    pub max_timestamp: i64,
    /// Who wrote the batch, and its sequence.
    pub producer: ProducerStamp,
    /// Number of records.
    pub record_count: i32,
}

impl BatchHeader {
    /// Total bytes of the batch this header describes, header included.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Reads the header at the start of `buf` and checks what the header alone can show: enough
    /// bytes for it, a length field covering at least the header, a known magic, no reserved
    /// attribute bits, and a record count consistent with the last offset delta.
    ///
    /// It checks neither the CRC nor that `buf` holds the whole batch: that is
    /// [`Batch::parse`](super::Batch::parse)'s job. Use this to frame batches in a log.
    pub fn read(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated {
                needed: HEADER_LEN,
                available: buf.len(),
            });
        }
        let batch_length = i32_at(buf, BATCH_LENGTH);
        if batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(BatchError::InvalidLength(batch_length));
        }
        let magic = buf[MAGIC];
        if magic != MAGIC_V1 {
            return Err(BatchError::BadMagic(magic));
        }
        let attributes = u16::from_be_bytes([buf[ATTRIBUTES], buf[ATTRIBUTES + 1]]);
        if attributes & !KNOWN_BITS != 0 {
            return Err(BatchError::InvalidAttributes(attributes));
        }
        let codec = CodecId::new((attributes & CODEC_MASK) as u8)
            .ok_or(BatchError::InvalidAttributes(attributes))?;
        let timestamp_type = if attributes & LOG_APPEND_TIME_BIT != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        };
        let record_count = i32_at(buf, RECORD_COUNT);
        let last_offset_delta = i32_at(buf, LAST_OFFSET_DELTA);
        if record_count < 0 || i64::from(last_offset_delta) != i64::from(record_count) - 1 {
            return Err(BatchError::InvalidRecordCount {
                count: record_count,
                last_offset_delta,
            });
        }
        Ok(BatchHeader {
            base_offset: i64_at(buf, BASE_OFFSET),
            batch_length,
            magic,
            crc: u32::from_be_bytes(array_at(buf, CRC)),
            codec,
            timestamp_type,
            last_offset_delta,
            first_timestamp: i64_at(buf, FIRST_TIMESTAMP),
            max_timestamp: i64_at(buf, MAX_TIMESTAMP),
            producer: ProducerStamp {
                producer_id: i64_at(buf, PRODUCER_ID),
                producer_epoch: i16::from_be_bytes(array_at(buf, PRODUCER_EPOCH)),
                base_sequence: i32_at(buf, BASE_SEQUENCE),
            },
            record_count,
        })
    }
}

/// Encodes the attributes field.
pub(crate) fn attributes(codec: CodecId, timestamp_type: TimestampType) -> u16 {
    let ts = match timestamp_type {
        TimestampType::CreateTime => 0,
        TimestampType::LogAppendTime => LOG_APPEND_TIME_BIT,
    };
    u16::from(codec.get()) | ts
}

/// Writes `base_offset` into an encoded batch, in place.
///
/// The CRC does not cover this field, so the batch stays valid: this is how the agent assigns
/// offsets without touching the records.
///
/// ```
/// # use streamhouse::batch::{set_base_offset, Batch, BatchBuilder, DecodeLimits, ProducerStamp};
/// # use streamhouse::codec::NoCompression;
/// let mut builder = BatchBuilder::new();
/// builder.append(1_700_000_000_000, None, Some(b"hello"), &[]).unwrap();
/// let batch = builder.finish(ProducerStamp::NONE, &NoCompression).unwrap();
///
/// let mut stored = batch.to_vec();
/// set_base_offset(&mut stored, 42).unwrap();
/// let parsed = Batch::parse(stored.into(), &DecodeLimits::default()).unwrap(); // CRC still ok
/// assert_eq!(parsed.header().base_offset, 42);
/// ```
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) -> Result<(), BatchError> {
    if batch.len() < HEADER_LEN {
        return Err(BatchError::Truncated {
            needed: HEADER_LEN,
            available: batch.len(),
        });
    }
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    Ok(())
}

/// Rewrites the producer fields of an encoded batch in place and recomputes its CRC.
///
/// The producer uses this when it must restart a partition's sequence (a new epoch) for
/// batches that were already encoded.
pub fn set_producer_stamp(batch: &mut [u8], stamp: ProducerStamp) -> Result<(), BatchError> {
    if batch.len() < HEADER_LEN {
        return Err(BatchError::Truncated {
            needed: HEADER_LEN,
            available: batch.len(),
        });
    }
    batch[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&stamp.producer_id.to_be_bytes());
    batch[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&stamp.producer_epoch.to_be_bytes());
    batch[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&stamp.base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES..]);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

fn array_at<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[at..at + N]);
    out
}

fn i32_at(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(array_at(buf, at))
}

fn i64_at(buf: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(array_at(buf, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_offsets_are_contiguous() {
        let fields = [
            (BASE_OFFSET, 8),
            (BATCH_LENGTH, 4),
            (MAGIC, 1),
            (CRC, 4),
            (ATTRIBUTES, 2),
            (LAST_OFFSET_DELTA, 4),
            (FIRST_TIMESTAMP, 8),
            (MAX_TIMESTAMP, 8),
            (PRODUCER_ID, 8),
            (PRODUCER_EPOCH, 2),
            (BASE_SEQUENCE, 4),
            (RECORD_COUNT, 4),
        ];
        let mut next = 0;
        for (offset, size) in fields {
            assert_eq!(offset, next);
            next += size;
        }
        assert_eq!(next, HEADER_LEN);
    }
}
