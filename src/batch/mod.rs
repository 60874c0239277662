//! The record batch: StreamHouse's unit of transfer and of storage.
//!
//! A batch is a fixed 57-byte header followed by a records block, modelled on Kafka's record
//! batch v2. The producer's accumulator fills one [`BatchBuilder`] per partition; the sender seals
//! it ([`BatchBuilder::finish`]: producer stamp, compression, CRC32C) into [`Bytes`](bytes::Bytes) that travel
//! inside a `ProduceRequest` untouched; the agent checks it ([`Batch::parse`]), stamps the base
//! offset ([`set_base_offset`], outside the CRC) and appends the bytes as they are. Readers get
//! [`Record`]s back from [`Batch::records`].
//!
//! ```text
//! producer                         wire / log                         reader
//! BatchBuilder::append ─┐
//! BatchBuilder::append ─┼─ finish ─▶ [header | records block] ─▶ Batch::parse ─▶ records()
//! BatchBuilder::append ─┘           agent: set_base_offset
//! ```
//!
//! The byte layout (header table and record encoding) is documented in `proto/README.md`.
//!
//! Decoding treats its input as hostile: every length is checked against what is present and
//! against [`DecodeLimits`] before anything is allocated, varints are bounded, and the result is
//! an error — never a panic.

mod builder;
mod error;
mod header;
mod reader;
mod record;
mod records;
mod varint;

pub use builder::BatchBuilder;
pub use error::{BatchError, RecordFault};
pub use header::{
    BatchHeader, HEADER_LEN, MAGIC_V1, NO_PRODUCER_ID, NO_TIMESTAMP, ProducerStamp, TimestampType,
    sequence_add, set_base_offset, set_producer_stamp,
};
pub use reader::{Batch, DecodeLimits};
pub use record::{Header, Record};
pub use records::{HeadersView, RecordBlock, RecordView, RecordViews, Records};
