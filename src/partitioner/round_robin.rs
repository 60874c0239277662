//! Keyless records rotate through the partitions.

use super::topic_map::TopicMap;
use super::{Partitioner, kafka_partition};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};

/// Keyed records hash as Kafka does; keyless records go to partitions 0, 1, 2, … in turn, with
/// one counter per topic. Spreads load evenly at the cost of smaller batches than [`Sticky`].
///
/// [`Sticky`]: super::Sticky
///
/// ```
/// use std::num::NonZeroU32;
/// use streamhouse::partitioner::{Partitioner, RoundRobin};
///
/// let p = RoundRobin::new();
/// let three = NonZeroU32::new(3).unwrap();
/// let picks: Vec<u32> = (0..4).map(|_| p.partition("t", None, three)).collect();
/// assert_eq!(picks, [0, 1, 2, 0]);
/// ```
#[derive(Debug, Default)]
pub struct RoundRobin {
    counters: TopicMap<AtomicU32>,
}

impl RoundRobin {
    /// A round-robin partitioner starting every topic at partition 0.
    pub fn new() -> RoundRobin {
        RoundRobin::default()
    }
}

impl Partitioner for RoundRobin {
    fn partition(&self, topic: &str, key: Option<&[u8]>, partitions: NonZeroU32) -> u32 {
        if let Some(key) = key {
            return kafka_partition(key, partitions);
        }
        let n = self.counters.with(
            topic,
            || AtomicU32::new(0),
            |c| c.fetch_add(1, Ordering::Relaxed),
        );
        n % partitions.get()
    }
}
