//! The values a [`MetadataStore`](crate::MetadataStore) holds.

use streamhouse::serve::ProducerSnapshot;

/// A topic as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// Its name.
    pub name: String,
    /// This incarnation of the name: a topic deleted and created again gets a new id.
    pub id: i64,
    /// Its partition count.
    pub partitions: u32,
    /// When it was created, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Records are removed once older than this many milliseconds (`None`: kept).
    pub retention_ms: Option<i64>,
    /// Per partition, the oldest records are removed while it holds more than this many bytes
    /// (`None`: no bound).
    pub retention_bytes: Option<i64>,
}

/// A partition's committed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionMeta {
    /// The first offset still held (records before it were removed by retention).
    pub log_start: i64,
    /// The offset after the last committed record: every record below it is in an object.
    pub high_watermark: i64,
}

/// An object written to object storage, immutable once written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// Its key in the bucket.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// One partition's part of an object: records `first_offset..next_offset`, stored as whole
/// batches at `byte_start..byte_start + byte_len` of the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedRange {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// Offset of the range's first record: the partition's committed high watermark.
    pub first_offset: i64,
    /// Offset after its last record: the new high watermark.
    pub next_offset: i64,
    /// Where its batches start in the object.
    pub byte_start: u64,
    /// How many bytes they take.
    pub byte_len: u64,
    /// The state of each idempotent producer with a batch in the range, after the range.
    pub producers: Vec<ProducerSnapshot>,
}

/// Where a partition's records `first_offset..next_offset` are: a byte range of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Offset of the first record.
    pub first_offset: i64,
    /// Offset after the last record.
    pub next_offset: i64,
    /// The object's key.
    pub object: String,
    /// Where the batches start in the object.
    pub byte_start: u64,
    /// How many bytes they take.
    pub byte_len: u64,
    /// When the range was committed, milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// What a partition holds in object storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Distinct objects holding some of its records.
    pub objects: u64,
    /// Bytes of its records in them.
    pub bytes: u64,
    /// Index entries.
    pub entries: u64,
}
