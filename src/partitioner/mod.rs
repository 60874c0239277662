//! Choosing a partition for each record: the [`Partitioner`] trait and the shipped strategies.
//!
//! Every shipped partitioner sends a keyed record to the partition Kafka's Java producer would
//! choose — `(murmur2(key) & 0x7fffffff) % partitions` — so a topic shared with Kafka clients
//! keeps per-key order. They differ only for keyless records:
//!
//! | partitioner | keyless records |
//! |---|---|
//! | [`Sticky`] (default) | stay on one partition until its batch seals, then move to another at random (Kafka KIP-480) |
//! | [`RoundRobin`] | rotate through the partitions, one record each |
//! | [`Murmur2`] | hash the empty key: all go to one fixed partition (librdkafka's `murmur2`) |
//!
//! The accumulator tells the partitioner when a batch seals through
//! [`Partitioner::on_batch_sealed`]; that is the hook sticky strategies move on.
//!
//! # Example: a custom partitioner
//!
//! ```
//! use std::num::NonZeroU32;
//! use streamhouse::partitioner::{Partitioner, kafka_partition};
//!
//! /// Keyless records go to partition 0; keyed ones hash as Kafka does.
//! struct ZeroForKeyless;
//!
//! impl Partitioner for ZeroForKeyless {
//!     fn partition(&self, _topic: &str, key: Option<&[u8]>, partitions: NonZeroU32) -> u32 {
//!         key.map_or(0, |key| kafka_partition(key, partitions))
//!     }
//! }
//!
//! let p = ZeroForKeyless;
//! let six = NonZeroU32::new(6).unwrap();
//! assert_eq!(p.partition("orders", None, six), 0);
//! assert_eq!(p.partition("orders", Some(b"foobar"), six), 0); // (-790332482 & 0x7fffffff) % 6
//! ```

mod murmur2;
mod round_robin;
mod sticky;
mod topic_map;

pub use murmur2::{Murmur2, kafka_partition, murmur2};
pub use round_robin::RoundRobin;
pub use sticky::Sticky;

use std::num::NonZeroU32;

/// Picks the partition of each record.
///
/// Object safe: the producer holds it as `Arc<dyn Partitioner>`. It is called once per record
/// on the send path, so it should be cheap and must not block.
pub trait Partitioner: Send + Sync + 'static {
    /// The partition, in `0..partitions`, for a record with this key on this topic.
    fn partition(&self, topic: &str, key: Option<&[u8]>, partitions: NonZeroU32) -> u32;

    /// Called by the accumulator when the open batch for `partition` of `topic` seals.
    /// Sticky strategies move keyless records to another partition here.
    fn on_batch_sealed(&self, _topic: &str, _partition: u32) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _object_safe(_: &dyn Partitioner) {}
}
