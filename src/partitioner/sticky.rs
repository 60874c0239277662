//! Keyless records stick to one partition until its batch seals (Kafka KIP-480).

use super::topic_map::TopicMap;
use super::{Partitioner, kafka_partition};
use crate::rng::Rng;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

/// The default partitioner. Keyed records hash as Kafka does. Keyless records all go to the
/// topic's current *sticky* partition, so they fill one batch instead of many small ones; when
/// that partition's batch seals, the accumulator calls
/// [`on_batch_sealed`](Partitioner::on_batch_sealed) and the sticky partition moves to another,
/// chosen at random. Over time keyless load spreads evenly, in whole batches.
///
/// ```
/// use std::num::NonZeroU32;
/// use streamhouse::partitioner::{Partitioner, Sticky};
///
/// let p = Sticky::with_seed(7);
/// let four = NonZeroU32::new(4).unwrap();
/// let first = p.partition("t", None, four);
/// assert_eq!(p.partition("t", None, four), first); // sticks
/// p.on_batch_sealed("t", first);
/// assert_ne!(p.partition("t", None, four), first); // moved on
/// ```
#[derive(Debug)]
pub struct Sticky {
    /// Per topic: the sticky partition (low 32 bits) and the partition count it was chosen
    /// from (high 32 bits), in one atomic so a seal can pick the next partition without the
    /// count being passed to it.
    current: TopicMap<AtomicU64>,
    rng: Rng,
}

impl Default for Sticky {
    fn default() -> Sticky {
        Sticky::new()
    }
}

impl Sticky {
    /// A sticky partitioner with a random seed.
    pub fn new() -> Sticky {
        Sticky {
            current: TopicMap::default(),
            rng: Rng::from_entropy(),
        }
    }

    /// A sticky partitioner whose partition choices repeat for the same seed and call order.
    pub fn with_seed(seed: u64) -> Sticky {
        Sticky {
            current: TopicMap::default(),
            rng: Rng::seeded(seed),
        }
    }

    /// A random partition in `0..partitions`, different from `avoid` when there is a choice.
    fn pick(&self, partitions: u32, avoid: Option<u32>) -> u32 {
        match avoid {
            Some(avoid) if partitions > 1 && avoid < partitions => {
                let p = self.rng.below(partitions - 1);
                if p >= avoid { p + 1 } else { p }
            }
            _ => self.rng.below(partitions.max(1)),
        }
    }
}

fn pack(partition: u32, partitions: u32) -> u64 {
    u64::from(partitions) << 32 | u64::from(partition)
}

fn unpack(v: u64) -> (u32, u32) {
    (v as u32, (v >> 32) as u32)
}

impl Partitioner for Sticky {
    fn partition(&self, topic: &str, key: Option<&[u8]>, partitions: NonZeroU32) -> u32 {
        if let Some(key) = key {
            return kafka_partition(key, partitions);
        }
        let n = partitions.get();
        self.current.with(
            topic,
            || AtomicU64::new(pack(self.pick(n, None), n)),
            |state| {
                let mut seen = state.load(Ordering::Relaxed);
                loop {
                    let (partition, count) = unpack(seen);
                    if count == n {
                        return partition;
                    }
                    // The partition count changed since the choice: choose again within it.
                    let next = pack(self.pick(n, None), n);
                    match state.compare_exchange(seen, next, Ordering::Relaxed, Ordering::Relaxed) {
                        Ok(_) => return unpack(next).0,
                        Err(now) => seen = now,
                    }
                }
            },
        )
    }

    fn on_batch_sealed(&self, topic: &str, partition: u32) {
        self.current.get(topic, |state| {
            let seen = state.load(Ordering::Relaxed);
            let (current, count) = unpack(seen);
            // Only the sticky partition's own batch moves it: a keyed batch sealing elsewhere,
            // or a second seal racing the first, leaves the choice alone.
            if current == partition {
                let next = pack(self.pick(count, Some(current)), count);
                let _ = state.compare_exchange(seen, next, Ordering::Relaxed, Ordering::Relaxed);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: u32) -> NonZeroU32 {
        NonZeroU32::new(v).unwrap()
    }

    #[test]
    fn keyed_records_always_hash() {
        let p = Sticky::with_seed(1);
        for _ in 0..10 {
            assert_eq!(p.partition("t", Some(b"foobar"), n(10)), 6);
            p.on_batch_sealed("t", 6);
        }
    }

    #[test]
    fn moves_only_when_its_own_batch_seals() {
        let p = Sticky::with_seed(3);
        let first = p.partition("t", None, n(8));
        p.on_batch_sealed("t", (first + 1) % 8); // another partition's batch
        assert_eq!(p.partition("t", None, n(8)), first);
        p.on_batch_sealed("other-topic", first);
        assert_eq!(p.partition("t", None, n(8)), first);
        p.on_batch_sealed("t", first);
        assert_ne!(p.partition("t", None, n(8)), first);
    }

    #[test]
    fn spreads_evenly_over_many_seals() {
        let p = Sticky::with_seed(42);
        let mut hits = [0u32; 6];
        for _ in 0..60_000 {
            let part = p.partition("t", None, n(6));
            hits[part as usize] += 1;
            p.on_batch_sealed("t", part);
        }
        for h in hits {
            assert!((9_000..11_000).contains(&h), "uneven spread: {hits:?}");
        }
    }

    #[test]
    fn single_partition_and_shrinking_topics_stay_in_range() {
        let p = Sticky::with_seed(9);
        assert_eq!(p.partition("t", None, n(1)), 0);
        p.on_batch_sealed("t", 0);
        assert_eq!(p.partition("t", None, n(1)), 0);
        for _ in 0..100 {
            let part = p.partition("u", None, n(16));
            assert!(part < 16);
            assert!(p.partition("u", None, n(2)) < 2);
            p.on_batch_sealed("u", part);
        }
    }

    #[test]
    fn same_seed_same_choices() {
        let picks = |seed| {
            let p = Sticky::with_seed(seed);
            (0..50)
                .map(|_| {
                    let part = p.partition("t", None, n(10));
                    p.on_batch_sealed("t", part);
                    part
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(5), picks(5));
        assert_ne!(picks(5), picks(6));
    }
}
