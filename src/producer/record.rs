//! What a caller sends ([`ProducerRecord`]) and what a delivery reports ([`RecordMetadata`]).

use crate::batch::Header;
use std::sync::Arc;

/// A record to send, borrowed: the producer copies it into a batch during `send`, so nothing
/// here is allocated or kept.
///
/// ```
/// use streamhouse::producer::ProducerRecord;
///
/// let record = ProducerRecord::new("orders", b"{\"id\":1}")
///     .key(b"customer-7")
///     .timestamp(1_764_115_200_000);
/// assert_eq!(record.topic, "orders");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerRecord<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Explicit partition; `None` lets the partitioner choose.
    pub partition: Option<u32>,
    /// Key; keyed records always land on Kafka's murmur2 partition of the key.
    pub key: Option<&'a [u8]>,
    /// Value; `None` is a tombstone.
    pub value: Option<&'a [u8]>,
    /// Headers.
    pub headers: &'a [Header],
    /// Milliseconds since the Unix epoch; `None` takes the time of `send`.
    pub timestamp: Option<i64>,
}

impl<'a> ProducerRecord<'a> {
    /// A keyless record with a value.
    pub fn new(topic: &'a str, value: &'a [u8]) -> ProducerRecord<'a> {
        ProducerRecord {
            topic,
            partition: None,
            key: None,
            value: Some(value),
            headers: &[],
            timestamp: None,
        }
    }

    /// Sets the key.
    #[must_use]
    pub fn key(mut self, key: &'a [u8]) -> ProducerRecord<'a> {
        self.key = Some(key);
        self
    }

    /// Sends to this partition instead of asking the partitioner.
    #[must_use]
    pub fn partition(mut self, partition: u32) -> ProducerRecord<'a> {
        self.partition = Some(partition);
        self
    }

    /// Sets the headers.
    #[must_use]
    pub fn headers(mut self, headers: &'a [Header]) -> ProducerRecord<'a> {
        self.headers = headers;
        self
    }

    /// Sets the timestamp (milliseconds since the Unix epoch).
    #[must_use]
    pub fn timestamp(mut self, timestamp: i64) -> ProducerRecord<'a> {
        self.timestamp = Some(timestamp);
        self
    }
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordMetadata {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: u32,
    /// The record's offset in the partition; -1 with `Acks::None`, which reports none.
    pub offset: i64,
    /// The record's timestamp (its create time, or the agent's append time if the topic uses
    /// log-append time).
    pub timestamp: i64,
}

impl RecordMetadata {
    /// Whether the agent reported an offset (always, except with `Acks::None`).
    pub fn has_offset(&self) -> bool {
        self.offset >= 0
    }
}
