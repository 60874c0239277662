//! [`BatchBuilder`]: appends records into one growing buffer, then seals it into wire bytes.
//!
//! The accumulator keeps one builder per partition. Records are encoded straight into the
//! buffer after a reserved header, so sealing an uncompressed batch writes 57 header bytes and a
//! CRC and hands the same allocation on as [`Bytes`] — no copy. A compressed batch compresses the
//! records block into a second buffer once, at seal time.

use super::header::{self, HEADER_LEN, LOG_OVERHEAD, NO_TIMESTAMP, ProducerStamp, TimestampType};
use super::record::Header;
use super::varint::{put_varint, put_varlong, varint_len, varlong_len};
use super::{BatchError, MAGIC_V1};
use crate::codec::{Codec, CodecId};
use bytes::{BufMut, Bytes, BytesMut};

/// Builds one record batch.
///
/// ```
/// use streamhouse::batch::{Batch, BatchBuilder, DecodeLimits, Header, ProducerStamp};
/// use streamhouse::codec::{Codecs, NoCompression};
///
/// let mut builder = BatchBuilder::with_capacity(16 * 1024);
/// builder.append(1_700_000_000_000, Some(b"user-1"), Some(b"{\"clicks\":3}"), &[])?;
/// builder.append(1_700_000_000_004, None, Some(b"{}"), &[Header::new("source", "web")])?;
/// let wire = builder.finish(ProducerStamp::NONE, &NoCompression)?;
///
/// let batch = Batch::parse(wire, &DecodeLimits::default())?;
/// let records: Vec<_> = batch.records(&Codecs::new())?.collect::<Result<_, _>>()?;
/// assert_eq!(records[1].offset, 1);
/// assert_eq!(records[1].headers[0].key, "source");
/// # Ok::<(), streamhouse::batch::BatchError>(())
/// ```
#[derive(Debug)]
pub struct BatchBuilder {
    /// `HEADER_LEN` reserved bytes, then the encoded records.
    buf: BytesMut,
    count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
}

impl Default for BatchBuilder {
    fn default() -> BatchBuilder {
        BatchBuilder::new()
    }
}

impl BatchBuilder {
    /// An empty builder with a small initial buffer.
    pub fn new() -> BatchBuilder {
        BatchBuilder::with_capacity(0)
    }

    /// An empty builder whose buffer holds `capacity` bytes (header included) before growing.
    /// Give it the batch size to never reallocate.
    pub fn with_capacity(capacity: usize) -> BatchBuilder {
        let mut buf = BytesMut::with_capacity(capacity.max(HEADER_LEN));
        buf.resize(HEADER_LEN, 0);
        BatchBuilder {
            buf,
            count: 0,
            first_timestamp: NO_TIMESTAMP,
            max_timestamp: NO_TIMESTAMP,
        }
    }

    /// An empty builder reusing `buffer` (its contents are discarded), e.g. the buffer of a
    /// batch already delivered: no allocation while it has room.
    pub fn with_buffer(mut buffer: BytesMut) -> BatchBuilder {
        buffer.clear();
        buffer.resize(HEADER_LEN, 0);
        BatchBuilder {
            buf: buffer,
            count: 0,
            first_timestamp: NO_TIMESTAMP,
            max_timestamp: NO_TIMESTAMP,
        }
    }

    /// Number of records appended so far.
    pub fn record_count(&self) -> u32 {
        self.count
    }

    /// Whether no record has been appended.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size so far, header included, uncompressed.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Timestamp of the first record, if any.
    pub fn first_timestamp(&self) -> Option<i64> {
        (self.count > 0).then_some(self.first_timestamp)
    }

    /// The exact number of bytes [`append`](Self::append) would add for this record, so the
    /// caller can decide whether it still fits the batch before appending it.
    pub fn record_len(
        &self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header],
    ) -> usize {
        let body = self.body_len(timestamp, key, value, headers);
        varint_len(saturate(body)) + body
    }

    fn body_len(
        &self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header],
    ) -> usize {
        let base = if self.count == 0 {
            timestamp
        } else {
            self.first_timestamp
        };
        1 // attributes
            + varlong_len(timestamp.wrapping_sub(base))
            + varint_len(saturate(self.count as usize))
            + bytes_len(key)
            + bytes_len(value)
            + varint_len(saturate(headers.len()))
            + headers
                .iter()
                .map(|h| bytes_len(Some(h.key.as_bytes())) + bytes_len(h.value.as_deref()))
                .sum::<usize>()
    }

    /// Appends one record. `timestamp` is milliseconds since the Unix epoch.
    ///
    /// Fails only when a field cannot be represented: a key, value or record longer than
    /// `i32::MAX` bytes, or more than `i32::MAX` records.
    pub fn append(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header],
    ) -> Result<(), BatchError> {
        self.append_within(usize::MAX, timestamp, key, value, headers)
            .map(|_| ())
    }

    /// Appends one record if the batch stays within `max_len` encoded bytes, sizing the record
    /// once. Returns whether it was appended; errors as [`append`](Self::append).
    ///
    /// ```
    /// # use streamhouse::batch::BatchBuilder;
    /// let mut b = BatchBuilder::new();
    /// assert!(b.append_within(100, 0, None, Some(&[0; 20]), &[])?);
    /// assert!(!b.append_within(100, 0, None, Some(&[0; 20]), &[])?); // 57 + 2 × 27 > 100
    /// assert_eq!(b.record_count(), 1);
    /// # Ok::<(), streamhouse::batch::BatchError>(())
    /// ```
    pub fn append_within(
        &mut self,
        max_len: usize,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header],
    ) -> Result<bool, BatchError> {
        let body = self.body_len(timestamp, key, value, headers);
        if body > i32::MAX as usize || self.buf.len() + body + 5 > i32::MAX as usize {
            return Err(BatchError::RecordTooLarge {
                size: body,
                limit: i32::MAX as usize,
            });
        }
        let total = varint_len(body as i32) + body;
        if self.buf.len() + total > max_len {
            return Ok(false);
        }
        if self.count >= i32::MAX as u32 {
            return Err(BatchError::TooManyRecords {
                count: self.count as usize + 1,
                limit: i32::MAX as usize,
            });
        }
        if self.count == 0 {
            self.first_timestamp = timestamp;
            self.max_timestamp = timestamp;
        } else {
            self.max_timestamp = self.max_timestamp.max(timestamp);
        }

        let buf = &mut self.buf;
        buf.reserve(total);
        put_varint(buf, body as i32);
        buf.put_u8(0); // record attributes: unused
        put_varlong(buf, timestamp.wrapping_sub(self.first_timestamp));
        put_varint(buf, self.count as i32);
        put_bytes(buf, key);
        put_bytes(buf, value);
        put_varint(buf, headers.len() as i32);
        for h in headers {
            put_bytes(buf, Some(h.key.as_bytes()));
            put_bytes(buf, h.value.as_deref());
        }
        self.count += 1;
        Ok(true)
    }

    /// Seals the batch: stamps the producer fields, compresses the records block with `codec`
    /// and computes the CRC. Returns the wire bytes, with base offset 0 for the agent to stamp.
    ///
    /// If compression does not make the records block smaller, the batch is written uncompressed
    /// (codec id 0): readers then skip a useless decompression.
    pub fn finish(self, stamp: ProducerStamp, codec: &dyn Codec) -> Result<Bytes, BatchError> {
        let BatchBuilder {
            mut buf,
            count,
            first_timestamp,
            max_timestamp,
        } = self;
        let fields = Fields {
            count,
            first_timestamp,
            max_timestamp,
            stamp,
        };
        if codec.id() != CodecId::NONE {
            let records = &buf[HEADER_LEN..];
            let mut out = BytesMut::with_capacity(HEADER_LEN + records.len() / 2);
            out.resize(HEADER_LEN, 0);
            codec.compress(records, &mut out)?;
            if out.len() < buf.len() {
                // Back into the builder's own buffer (a copy far cheaper than the compression):
                // the scratch space is freed by the thread that allocated it, and the batch
                // keeps the buffer it was built in, which the producer reuses once it is
                // delivered.
                buf.clear();
                buf.extend_from_slice(&out);
                drop(out);
                fields.write(&mut buf, codec.id())?;
                return Ok(buf.freeze());
            }
        }
        fields.write(&mut buf, CodecId::NONE)?;
        Ok(buf.freeze())
    }
}

/// Header values known at seal time.
struct Fields {
    count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    stamp: ProducerStamp,
}

impl Fields {
    /// Fills the reserved header of `buf` (header + records block) and its CRC.
    fn write(&self, buf: &mut BytesMut, codec: CodecId) -> Result<(), BatchError> {
        let batch_length = buf.len() - LOG_OVERHEAD;
        let batch_length = i32::try_from(batch_length).map_err(|_| BatchError::BatchTooLarge {
            size: buf.len(),
            limit: i32::MAX as usize,
        })?;
        let mut h = &mut buf[..HEADER_LEN];
        h.put_i64(0); // base offset: the agent stamps it
        h.put_i32(batch_length);
        h.put_u8(MAGIC_V1);
        h.put_u32(0); // crc, below
        h.put_u16(header::attributes(codec, TimestampType::CreateTime));
        h.put_i32(self.count as i32 - 1);
        h.put_i64(self.first_timestamp);
        h.put_i64(self.max_timestamp);
        h.put_i64(self.stamp.producer_id);
        h.put_i16(self.stamp.producer_epoch);
        h.put_i32(self.stamp.base_sequence);
        h.put_i32(self.count as i32);
        let crc = crc32c::crc32c(&buf[header::ATTRIBUTES..]);
        buf[header::CRC..header::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(())
    }
}

/// Length field plus bytes of a nullable byte string.
#[inline]
fn bytes_len(field: Option<&[u8]>) -> usize {
    match field {
        None => 1,
        Some(b) => varint_len(saturate(b.len())) + b.len(),
    }
}

#[inline]
fn put_bytes(buf: &mut BytesMut, field: Option<&[u8]>) {
    match field {
        None => put_varint(buf, -1),
        Some(b) => {
            put_varint(buf, b.len() as i32);
            buf.put_slice(b);
        }
    }
}

/// `len` as an i32 for sizing; oversized lengths are refused by `append` before encoding.
#[inline]
fn saturate(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}
