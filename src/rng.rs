//! A tiny lock-free random source (SplitMix64 over an atomic counter).
//!
//! Partition choice, retry jitter, fault injection and producer ids need speed and spread, not
//! cryptographic quality, and a seed so tests are repeatable; pulling in `rand` for a few `u64`s
//! per batch would not earn its place.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub(crate) struct Rng(AtomicU64);

impl Rng {
    pub(crate) fn seeded(seed: u64) -> Rng {
        Rng(AtomicU64::new(seed))
    }

    /// Seeded from the process's random hash keys.
    pub(crate) fn from_entropy() -> Rng {
        Rng::seeded(RandomState::new().hash_one(0x5eed_u64))
    }

    pub(crate) fn next_u64(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (n ≥ 1); the modulo bias is below 2^-32 for any u32 `n`.
    pub(crate) fn below(&self, n: u32) -> u32 {
        (self.next_u64() % u64::from(n)) as u32
    }
}
