//! Kafka's murmur2 key hash and the partitioner that uses it alone.

use super::Partitioner;
use std::num::NonZeroU32;

/// Kafka's `Utils.murmur2`, byte for byte: MurmurHash2 (32-bit) with seed `0x9747b28c`.
///
/// ```
/// assert_eq!(streamhouse::partitioner::murmur2(b"foobar"), -790332482);
/// ```
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java's `seed ^ length` on an int: the length wraps to 32 bits.
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        // Java's fall-through switch on `length % 4`.
        if tail.len() >= 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's Java producer picks for `key`: `toPositive(murmur2(key)) % partitions`.
pub fn kafka_partition(key: &[u8], partitions: NonZeroU32) -> u32 {
    (murmur2(key) as u32 & 0x7fff_ffff) % partitions.get()
}

/// Hash partitioning only. Keyed records go where Kafka puts them; keyless records hash the
/// empty key, so they all land on one fixed partition (librdkafka's `murmur2` partitioner).
/// Use [`Sticky`](super::Sticky) or [`RoundRobin`](super::RoundRobin) to spread keyless records.
#[derive(Debug, Default, Clone, Copy)]
pub struct Murmur2;

impl Partitioner for Murmur2 {
    fn partition(&self, _topic: &str, key: Option<&[u8]>, partitions: NonZeroU32) -> u32 {
        kafka_partition(key.unwrap_or_default(), partitions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kafka_published_vectors() {
        // From Kafka's UtilsTest.testMurmur2.
        let vectors: &[(&[u8], i32)] = &[
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for &(key, expected) in vectors {
            assert_eq!(murmur2(key), expected, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partition_is_positive_hash_modulo_count() {
        let n = NonZeroU32::new(10).unwrap();
        // murmur2("foobar") = -790332482; & 0x7fffffff = 1357151166; % 10 = 6.
        assert_eq!(kafka_partition(b"foobar", n), 6);
        assert_eq!(Murmur2.partition("t", Some(b"foobar"), n), 6);
        let keyless = Murmur2.partition("t", None, n);
        assert_eq!(keyless, kafka_partition(b"", n));
        assert_eq!(Murmur2.partition("other", None, n), keyless);
    }
}
