//! Reading the records block: one strict parser, two front ends.
//!
//! [`RecordBlock::iter`] yields borrowed [`RecordView`]s (no reference counting, no allocation:
//! what the agent uses to validate every record it appends); [`Records`] yields owned
//! [`Record`]s whose keys and values are [`Bytes`] slices of the block (what consumers use).
//! Both run the same parser, so they accept and reject exactly the same input.

use super::header::BatchHeader;
use super::record::{Header, Record};
use super::varint::{VarintError, get_varint, get_varlong};
use super::{BatchError, DecodeLimits, RecordFault};
use bytes::Bytes;
use std::ops::Range;

/// The smallest possible encoded record: a 1-byte length and six 1-byte fields
/// (attributes, timestamp delta, offset delta, key length, value length, header count).
pub(crate) const MIN_RECORD_LEN: usize = 7;

/// The (decompressed) records block of a batch, ready to iterate.
#[derive(Debug, Clone)]
pub struct RecordBlock {
    data: Bytes,
    count: u32,
    base_offset: i64,
    first_timestamp: i64,
    max_record_bytes: usize,
}

impl RecordBlock {
    pub(crate) fn new(data: Bytes, header: &BatchHeader, limits: &DecodeLimits) -> RecordBlock {
        RecordBlock {
            data,
            count: header.record_count as u32,
            base_offset: header.base_offset,
            first_timestamp: header.first_timestamp,
            max_record_bytes: limits.max_record_bytes,
        }
    }

    /// The block's bytes (decompressed).
    pub fn as_bytes(&self) -> &Bytes {
        &self.data
    }

    /// Number of records the header declares.
    pub fn record_count(&self) -> u32 {
        self.count
    }

    /// Borrowed views of the records, in offset order.
    ///
    /// ```
    /// # use streamhouse::batch::{Batch, BatchBuilder, DecodeLimits, ProducerStamp};
    /// # use streamhouse::codec::{Codecs, NoCompression};
    /// # let mut b = BatchBuilder::new();
    /// # b.append(1, None, Some(b"abc"), &[])?;
    /// # let wire = b.finish(ProducerStamp::NONE, &NoCompression)?;
    /// let batch = Batch::parse(wire, &DecodeLimits::default())?;
    /// let block = batch.record_block(&Codecs::new())?;
    /// let mut total = 0;
    /// for view in block.iter() {
    ///     total += view?.value.map_or(0, <[u8]>::len);
    /// }
    /// assert_eq!(total, 3);
    /// # Ok::<(), streamhouse::batch::BatchError>(())
    /// ```
    pub fn iter(&self) -> RecordViews<'_> {
        RecordViews {
            block: self,
            cursor: Cursor::default(),
        }
    }

    /// Owned records, in offset order.
    pub fn into_records(self) -> Records {
        Records {
            block: self,
            cursor: Cursor::default(),
        }
    }

    fn view(&self, raw: &RawRecord) -> RecordView<'_> {
        let data = &self.data[..];
        RecordView {
            offset: raw.offset,
            timestamp: raw.timestamp,
            key: raw.key.clone().map(|r| &data[r]),
            value: raw.value.clone().map(|r| &data[r]),
            headers: HeadersView {
                raw: &data[raw.headers.clone()],
                count: raw.header_count,
            },
        }
    }

    fn owned(&self, raw: RawRecord) -> Record {
        let headers = if raw.header_count == 0 {
            Vec::new()
        } else {
            let view = HeadersView {
                raw: &self.data[raw.headers.clone()],
                count: raw.header_count,
            };
            view.iter()
                .map(|(key, value)| Header {
                    key: key.to_owned(),
                    value: value.map(|v| self.data.slice_ref(v)),
                })
                .collect()
        };
        Record {
            offset: raw.offset,
            timestamp: raw.timestamp,
            key: raw.key.map(|r| self.data.slice(r)),
            value: raw.value.map(|r| self.data.slice(r)),
            headers,
        }
    }
}

/// One record, borrowed from its block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Absolute offset: the batch's base offset plus the record's position.
    pub offset: i64,
    /// Timestamp in milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// The key; `None` for a keyless record.
    pub key: Option<&'a [u8]>,
    /// The value; `None` is a tombstone.
    pub value: Option<&'a [u8]>,
    /// The headers, already validated.
    pub headers: HeadersView<'a>,
}

/// The headers of a [`RecordView`], validated when the record was parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadersView<'a> {
    raw: &'a [u8],
    count: usize,
}

impl<'a> HeadersView<'a> {
    /// Number of headers.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// `(key, value)` pairs in the order written.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        let raw = self.raw;
        let mut pos = 0;
        // The parser validated every field; a `None` below cannot happen and would only end
        // the iteration early.
        (0..self.count).map_while(move |_| {
            let key = nullable(raw, &mut pos).ok()??;
            let key = std::str::from_utf8(&raw[key]).ok()?;
            let value = nullable(raw, &mut pos).ok()?.map(|r| &raw[r]);
            Some((key, value))
        })
    }
}

/// Borrowed-record iterator of a [`RecordBlock`].
///
/// Yields an error (and then stops) at the first malformed record, if the block ends before the
/// declared count, or if bytes remain after it.
#[derive(Debug)]
pub struct RecordViews<'a> {
    block: &'a RecordBlock,
    cursor: Cursor,
}

impl<'a> Iterator for RecordViews<'a> {
    type Item = Result<RecordView<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        let block = self.block;
        let raw = self.cursor.next(block)?;
        Some(raw.map(|raw| block.view(&raw)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.cursor.size_hint(self.block)
    }
}

/// Owned-record iterator of a [`RecordBlock`] (see [`RecordViews`] for the error behaviour).
#[derive(Debug)]
pub struct Records {
    block: RecordBlock,
    cursor: Cursor,
}

impl Iterator for Records {
    type Item = Result<Record, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        let raw = self.cursor.next(&self.block)?;
        Some(raw.map(|raw| self.block.owned(raw)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.cursor.size_hint(&self.block)
    }
}

/// A parsed record as byte ranges into the block.
struct RawRecord {
    offset: i64,
    timestamp: i64,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    headers: Range<usize>,
    header_count: usize,
}

/// Where an iteration stands; the parser itself.
#[derive(Debug, Default)]
struct Cursor {
    pos: usize,
    index: u32,
    done: bool,
}

impl Cursor {
    fn next(&mut self, block: &RecordBlock) -> Option<Result<RawRecord, BatchError>> {
        if self.done {
            return None;
        }
        let data = &block.data[..];
        if self.index == block.count {
            self.done = true;
            let rest = data.len() - self.pos;
            return (rest != 0).then_some(Err(BatchError::TrailingBytes(rest)));
        }
        if self.pos == data.len() {
            self.done = true;
            return Some(Err(BatchError::RecordCountMismatch {
                declared: block.count as usize,
                found: self.index as usize,
            }));
        }
        let result = self.parse(block);
        if result.is_err() {
            self.done = true;
        }
        self.index += 1;
        Some(result)
    }

    fn size_hint(&self, block: &RecordBlock) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        // One extra item is possible: the trailing-bytes or count-mismatch error.
        (0, Some((block.count - self.index) as usize + 1))
    }

    fn parse(&mut self, block: &RecordBlock) -> Result<RawRecord, BatchError> {
        let index = self.index;
        let fault = |f: RecordFault| BatchError::record(index, f);
        let data = &block.data[..];

        let mut pos = self.pos;
        let length = get_varint(data, &mut pos).map_err(|e| fault(e.into()))?;
        let length =
            usize::try_from(length).map_err(|_| fault(RecordFault::InvalidLength(length)))?;
        if length > block.max_record_bytes {
            return Err(BatchError::RecordTooLarge {
                size: length,
                limit: block.max_record_bytes,
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
        let ts_delta = get_varlong(body, &mut pos).map_err(|e| fault(e.into()))?;
        let offset_delta = get_varint(body, &mut pos).map_err(|e| fault(e.into()))?;
        if offset_delta != index as i32 {
            return Err(fault(RecordFault::OffsetDelta {
                expected: index,
                found: offset_delta,
            }));
        }
        let key = nullable(body, &mut pos).map_err(fault)?;
        let value = nullable(body, &mut pos).map_err(fault)?;
        let header_count = get_varint(body, &mut pos).map_err(|e| fault(e.into()))?;
        let header_count = usize::try_from(header_count)
            .map_err(|_| fault(RecordFault::InvalidLength(header_count)))?;
        let headers_start = pos;
        // Each header takes at least 2 bytes: a count the record cannot hold is refused before
        // any header is read.
        if header_count > (end - pos) / 2 {
            return Err(fault(RecordFault::Truncated));
        }
        for _ in 0..header_count {
            let Some(key) = nullable(body, &mut pos).map_err(fault)? else {
                return Err(fault(RecordFault::InvalidLength(-1)));
            };
            if std::str::from_utf8(&body[key]).is_err() {
                return Err(fault(RecordFault::HeaderKeyNotUtf8));
            }
            nullable(body, &mut pos).map_err(fault)?;
        }
        if pos != end {
            return Err(fault(RecordFault::LengthMismatch));
        }
        self.pos = end;
        Ok(RawRecord {
            offset: block.base_offset.wrapping_add(i64::from(index)),
            timestamp: block.first_timestamp.wrapping_add(ts_delta),
            key,
            value,
            headers: headers_start..end,
            header_count,
        })
    }
}

/// Reads a length-prefixed byte string (-1 = null) as a range of `buf`.
fn nullable(buf: &[u8], pos: &mut usize) -> Result<Option<Range<usize>>, RecordFault> {
    let len = get_varint(buf, pos)?;
    if len == -1 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| RecordFault::InvalidLength(len))?;
    let start = *pos;
    let end = start
        .checked_add(len)
        .filter(|&end| end <= buf.len())
        .ok_or(RecordFault::Truncated)?;
    *pos = end;
    Ok(Some(start..end))
}

impl From<VarintError> for RecordFault {
    fn from(e: VarintError) -> RecordFault {
        match e {
            VarintError::Truncated => RecordFault::Truncated,
            VarintError::Overflow => RecordFault::VarintOverflow,
        }
    }
}
