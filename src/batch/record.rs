//! Records as the batch decoder hands them out, and record headers.

use bytes::Bytes;

/// A key/value header attached to a record (Kafka's `Header`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Header {
    /// Header name; UTF-8, may repeat within a record.
    pub key: String,
    /// Header value; `None` is distinct from empty.
    pub value: Option<Bytes>,
}

impl Header {
    /// A header with a value.
    ///
    /// ```
    /// use streamhouse::batch::Header;
    /// let h = Header::new("trace-id", "4bf92f35");
    /// assert_eq!(h.value.as_deref(), Some(&b"4bf92f35"[..]));
    /// ```
    pub fn new(key: impl Into<String>, value: impl Into<Bytes>) -> Header {
        Header {
            key: key.into(),
            value: Some(value.into()),
        }
    }
}

/// One record read back from a batch.
///
/// For an uncompressed batch, `key` and `value` are slices of the batch buffer (no copy); for a
/// compressed one, slices of the one buffer the records block was decompressed into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Absolute offset: the batch's base offset plus the record's position.
    pub offset: i64,
    /// Timestamp in milliseconds since the Unix epoch (the batch's timestamp type says whose).
    pub timestamp: i64,
    /// The key; `None` for a keyless record.
    pub key: Option<Bytes>,
    /// The value; `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Headers in the order they were written.
    pub headers: Vec<Header>,
}
