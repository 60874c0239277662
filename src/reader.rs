//! [`PartitionReader`]: read a partition back through any transport, batch by batch.
//!
//! Used by `streamhouse consume`, by tests that check what landed in a log, and by anyone who
//! wants their records back. Every fetched batch is validated (lengths, CRC32C, records) before
//! a record is handed out; records below the requested offset (the first batch may start
//! earlier) are skipped.
//!
//! ```no_run
//! # async fn example(connection: streamhouse::transport::Connection) -> Result<(), streamhouse::reader::ReadError> {
//! use streamhouse::reader::PartitionReader;
//!
//! let mut reader = PartitionReader::new(connection, "orders", 0, 0);
//! while let Some(records) = reader.next_batch().await? {
//!     for record in records {
//!         println!("{} {:?}", record.offset, record.value);
//!     }
//! }
//! # Ok(()) }
//! ```

use crate::batch::{Batch, BatchError, DecodeLimits, Record};
use crate::codec::Codecs;
use crate::transport::{Connection, Request, RequestMessage, Response, TransportError};
use streamhouse_proto::v1::{ErrorCode, FetchRequest};
use tower::ServiceExt;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The request did not get an answer.
    #[error("fetch failed")]
    Transport(#[from] TransportError),
    /// The agent refused the fetch.
    #[error("agent refused the fetch: {code:?}: {message}")]
    Refused {
        /// The agent's code.
        code: ErrorCode,
        /// The agent's message.
        message: String,
    },
    /// A fetched batch is invalid.
    #[error("fetched batch is invalid")]
    Batch(#[from] BatchError),
    /// The agent answered with something other than a fetch response.
    #[error("unexpected answer to a fetch")]
    Unexpected,
}

/// Reads one partition forward from an offset.
#[derive(Debug)]
pub struct PartitionReader {
    connection: Connection,
    topic: String,
    partition: u32,
    next_offset: i64,
    high_watermark: Option<i64>,
    max_bytes: u32,
    codecs: Codecs,
    limits: DecodeLimits,
}

impl PartitionReader {
    /// A reader of `topic`/`partition` starting at `offset`, understanding uncompressed
    /// batches; see [`with_codecs`](Self::with_codecs).
    pub fn new(
        connection: Connection,
        topic: &str,
        partition: u32,
        offset: i64,
    ) -> PartitionReader {
        PartitionReader {
            connection,
            topic: topic.to_owned(),
            partition,
            next_offset: offset,
            high_watermark: None,
            max_bytes: 1 << 20,
            codecs: Codecs::new(),
            limits: DecodeLimits::default(),
        }
    }

    /// Decompresses with `codecs` (e.g. `streamhouse_codecs::all()`).
    #[must_use]
    pub fn with_codecs(mut self, codecs: Codecs) -> PartitionReader {
        self.codecs = codecs;
        self
    }

    /// Asks for about this many bytes per fetch (default 1 MiB).
    #[must_use]
    pub fn max_bytes(mut self, max_bytes: u32) -> PartitionReader {
        self.max_bytes = max_bytes;
        self
    }

    /// The offset of the next record to read.
    pub fn position(&self) -> i64 {
        self.next_offset
    }

    /// The partition's end offset seen by the last fetch.
    pub fn high_watermark(&self) -> Option<i64> {
        self.high_watermark
    }

    /// The next records, or `None` once the reader has reached the end of the log.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Record>>, ReadError> {
        let request = Request::new(RequestMessage::Fetch(FetchRequest {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.next_offset,
            max_bytes: self.max_bytes,
            max_wait_ms: 0,
        }));
        let response = match self.connection.clone().oneshot(request).await? {
            Response::Fetch(r) => r,
            _ => return Err(ReadError::Unexpected),
        };
        let code = ErrorCode::from_wire(response.error_code);
        if code != ErrorCode::None {
            return Err(ReadError::Refused {
                code,
                message: response.error_message,
            });
        }
        self.high_watermark = Some(response.high_watermark);
        if response.batches.is_empty() {
            return Ok(None);
        }
        let mut records = Vec::new();
        for bytes in response.batches {
            let batch = Batch::parse(bytes, &self.limits)?;
            for record in batch.records(&self.codecs)? {
                let record = record?;
                if record.offset >= self.next_offset {
                    records.push(record);
                }
            }
            self.next_offset = self.next_offset.max(batch.header().last_offset() + 1);
        }
        Ok(Some(records))
    }

    /// Every record from the current position to the end of the log.
    pub async fn read_to_end(&mut self) -> Result<Vec<Record>, ReadError> {
        let mut all = Vec::new();
        while let Some(records) = self.next_batch().await? {
            all.extend(records);
        }
        Ok(all)
    }
}
