//! Seeded, JSON-like sample events, so benchmarks measure compression on honest data.
//!
//! Real event streams are neither random (incompressible) nor zeros (infinitely compressible):
//! they repeat field names and small vocabularies (event types, regions, pages) around unique
//! parts (ids, timestamps, session tokens). [`EventGenerator`] produces such events at an exact
//! byte size, the same sequence for the same seed.
//!
//! ```
//! use streamhouse::payload::EventGenerator;
//!
//! let mut events = EventGenerator::new(7);
//! let (key, value) = events.next_event(100);
//! assert_eq!(value.len(), 100);
//! assert!(value.starts_with(b"{\"seq\":0,"));
//! assert!(key.starts_with(b"user-"));
//! ```

use std::io::Write;

const EVENTS: &[&str] = &[
    "page_view",
    "click",
    "search",
    "add_to_cart",
    "checkout",
    "purchase",
    "login",
    "logout",
];
const REGIONS: &[&str] = &["eu-west-1", "us-east-1", "us-west-2", "ap-south-1"];
const WORDS: &[&str] = &[
    "alpha", "bravo", "blue", "cart", "delta", "desk", "echo", "green", "lamp", "mobile", "order",
    "promo", "red", "retail", "sale", "shoe", "summer", "table", "web", "winter",
];

/// Generates JSON-like events of an exact size, with a key per event (`user-NNNNN`).
#[derive(Debug, Clone)]
pub struct EventGenerator {
    state: u64,
    seq: u64,
    timestamp_ms: u64,
}

impl EventGenerator {
    /// A generator whose sequence of events is fixed by `seed`.
    pub fn new(seed: u64) -> EventGenerator {
        EventGenerator {
            state: seed,
            seq: 0,
            timestamp_ms: 1_764_115_200_000, // 2025-11-26T00:00:00Z
        }
    }

    fn next_u64(&mut self) -> u64 {
        // SplitMix64: fast, and plenty for sample data.
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next_u64() % from.len() as u64) as usize]
    }

    /// The next event's key and a value of exactly `value_len` bytes.
    ///
    /// Values of 60 bytes or more are valid JSON objects; shorter ones are cut.
    pub fn next_event(&mut self, value_len: usize) -> (Vec<u8>, Vec<u8>) {
        let mut key = Vec::with_capacity(10);
        let mut value = Vec::with_capacity(value_len.max(64));
        self.write_event(value_len, &mut key, &mut value);
        (key, value)
    }

    /// Appends the next event's key to `key` and its value, exactly `value_len` bytes, to
    /// `value`.
    pub fn write_event(&mut self, value_len: usize, key: &mut Vec<u8>, value: &mut Vec<u8>) {
        // Skewed user ids: a few users produce much of the traffic, as in real logs.
        let r = self.next_u64();
        let user = if r.is_multiple_of(4) {
            r % 50
        } else {
            r % 20_000
        };
        let _ = write!(key, "user-{user:05}");

        self.timestamp_ms += self.next_u64() % 20;
        let start = value.len();
        let event = self.pick(EVENTS);
        let region = self.pick(REGIONS);
        let session = self.next_u64() as u32;
        let amount = self.next_u64() % 100_000;
        let _ = write!(
            value,
            "{{\"seq\":{},\"ts\":{},\"user\":\"user-{user:05}\",\"event\":\"{event}\",\
             \"region\":\"{region}\",\"session\":\"{session:08x}\",\"amount\":{}.{:02}",
            self.seq,
            self.timestamp_ms,
            amount / 100,
            amount % 100,
        );
        self.seq += 1;

        // Fill to the exact size with a "tags" string of vocabulary words, then close.
        let target = start + value_len;
        const OPEN: &[u8] = b",\"tags\":\"";
        const CLOSE: &[u8] = b"\"}";
        if value.len() + OPEN.len() + CLOSE.len() <= target {
            value.extend_from_slice(OPEN);
            let body_end = target - CLOSE.len();
            while value.len() < body_end {
                let word = self.pick(WORDS).as_bytes();
                let room = body_end - value.len();
                if value.len() > start + OPEN.len() && room > 1 {
                    value.push(b' ');
                }
                let room = body_end - value.len();
                value.extend_from_slice(&word[..word.len().min(room)]);
            }
            value.extend_from_slice(CLOSE);
        } else if value.len() < target {
            value.resize(target - 1, b' ');
            value.push(b'}');
        }
        value.truncate(target);
        value.resize(target, b' ');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_sizes_and_valid_shape() {
        let mut g = EventGenerator::new(1);
        for len in [0, 1, 10, 59, 60, 100, 101, 1024, 4096] {
            let (_, v) = g.next_event(len);
            assert_eq!(v.len(), len);
            if len >= 120 {
                assert!(v.starts_with(b"{\"seq\":") && v.ends_with(b"\"}"), "{len}");
            }
        }
    }

    #[test]
    fn same_seed_same_events() {
        let a: Vec<_> = (0..5)
            .map(|_| EventGenerator::new(3).next_event(200))
            .collect();
        let mut g = EventGenerator::new(3);
        assert_eq!(g.next_event(200), a[0]);
        let mut other = EventGenerator::new(4);
        assert_ne!(other.next_event(200), a[0]);
    }
}
