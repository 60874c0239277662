//! [`Quotas`]: produce bytes per second per principal.
//!
//! Each limited principal has a bucket that refills at its rate. A produce request is let
//! through while the bucket is not in debt, and takes its bytes (batch bytes as sent, after
//! compression) even past zero; its answer then carries `throttle_ms`, the time the debt takes
//! to refill, and a producer that honours it (ours holds that agent's requests) stays at the
//! rate without a refusal. A request that arrives while the bucket is still in debt — its
//! client ignored `throttle_ms`, or had requests in flight — is refused `THROTTLED` whole,
//! nothing appended, with the same `throttle_ms`; it is retriable. Principals without a limit
//! are not counted.
//!
//! ```
//! use streamhouse_auth::{Principal, Quotas};
//!
//! let quotas = Quotas::new().limit("payments", 1_000_000); // 1 MB/s
//! assert!(quotas.is_limited(&Principal::new("payments")));
//! assert!(!quotas.is_limited(&Principal::new("search")));
//! ```

use crate::Principal;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Buckets kept before idle ones are forgotten.
const MAX_BUCKETS: usize = 10_000;

/// A bucket untouched this long is full again (it refills within [`BURST`] plus any debt,
/// and no debt lasts this long at a sane rate) and is forgotten when buckets run over.
const IDLE: Duration = Duration::from_secs(300);

/// How much a bucket holds when full: this long at its rate (so an idle principal's first
/// burst is bounded).
const BURST: Duration = Duration::from_millis(100);

/// Produce rates per principal; see the module documentation.
#[derive(Debug, Default)]
pub struct Quotas {
    limits: HashMap<String, u64>,
    default: Option<u64>,
    buckets: Mutex<HashMap<Principal, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes that may still pass; negative while in debt.
    level: f64,
    updated: Instant,
}

/// What a quota says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Let it through; tell the client to hold off this long afterwards (zero: not at all).
    Pass {
        /// The answer's `throttle_ms`.
        throttle: Duration,
    },
    /// Refuse it `THROTTLED`: the client is still in debt for this long.
    Refuse {
        /// The answer's `throttle_ms`.
        throttle: Duration,
    },
}

impl Quotas {
    /// No limits.
    pub fn new() -> Quotas {
        Quotas::default()
    }

    /// Limits `principal` to `bytes_per_second` of produced batches.
    #[must_use]
    pub fn limit(mut self, principal: &str, bytes_per_second: u64) -> Quotas {
        self.limits.insert(principal.to_owned(), bytes_per_second);
        self
    }

    /// Limits every principal without a limit of its own.
    #[must_use]
    pub fn default_limit(mut self, bytes_per_second: u64) -> Quotas {
        self.default = Some(bytes_per_second);
        self
    }

    /// Whether `principal`'s produce requests are counted.
    pub fn is_limited(&self, principal: &Principal) -> bool {
        self.rate(principal).is_some()
    }

    fn rate(&self, principal: &Principal) -> Option<u64> {
        self.limits
            .get(principal.name())
            .copied()
            .or(self.default)
            .filter(|&r| r > 0)
    }

    /// Counts a produce request of `bytes` from `principal` at `now`.
    pub fn admit(&self, principal: &Principal, bytes: u64, now: Instant) -> Admission {
        let Some(rate) = self.rate(principal) else {
            return Admission::Pass {
                throttle: Duration::ZERO,
            };
        };
        let rate = rate as f64;
        let full = rate * BURST.as_secs_f64();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(principal) {
            // Found by an outside review: one bucket per distinct principal, forever. A bucket
            // idle long enough to be full again holds nothing worth keeping.
            buckets.retain(|_, b| now.saturating_duration_since(b.updated) < IDLE);
        }
        let bucket = buckets.entry(principal.clone()).or_insert(Bucket {
            level: full,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.level = (bucket.level + elapsed * rate).min(full);
        bucket.updated = now;
        let debt = |level: f64| Duration::from_secs_f64((-level).max(0.0) / rate);
        if bucket.level < 0.0 {
            return Admission::Refuse {
                throttle: debt(bucket.level).max(Duration::from_millis(1)),
            };
        }
        bucket.level -= bytes as f64;
        Admission::Pass {
            throttle: debt(bucket.level),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_honours_throttle_ms_keeps_the_rate_without_refusals() {
        let quotas = Quotas::new().limit("p", 1_000_000);
        let p = Principal::new("p");
        let start = Instant::now();
        let mut now = start;
        let mut sent = 0u64;
        // 64 KiB requests for 20 s of simulated time, each sent when the last one's
        // throttle_ms has passed.
        while now < start + Duration::from_secs(20) {
            match quotas.admit(&p, 65_536, now) {
                Admission::Pass { throttle } => {
                    sent += 65_536;
                    now += throttle.max(Duration::from_millis(1));
                }
                Admission::Refuse { .. } => panic!("refused a client that waited"),
            }
        }
        let rate = sent as f64 / now.duration_since(start).as_secs_f64();
        assert!((rate - 1e6).abs() < 1e5, "{rate} B/s");
    }

    #[test]
    fn idle_buckets_are_forgotten_when_principals_keep_coming() {
        let quotas = Quotas::new().default_limit(1_000_000);
        let start = Instant::now();
        for i in 0..MAX_BUCKETS {
            quotas.admit(&Principal::new(format!("p{i}")), 1, start);
        }
        let later = start + IDLE + Duration::from_secs(1);
        quotas.admit(&Principal::new("newcomer"), 1, later);
        assert_eq!(quotas.buckets.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_client_that_ignores_throttle_ms_is_refused_until_its_debt_is_paid() {
        let quotas = Quotas::new().limit("p", 1_000).default_limit(0);
        let p = Principal::new("p");
        let now = Instant::now();
        let Admission::Pass { throttle } = quotas.admit(&p, 2_100, now) else {
            panic!()
        };
        assert_eq!(throttle, Duration::from_secs(2)); // 100 B of burst, 2,000 B of debt
        assert!(matches!(
            quotas.admit(&p, 1, now + Duration::from_secs(1)),
            Admission::Refuse { throttle } if throttle == Duration::from_secs(1)
        ));
        assert!(matches!(
            quotas.admit(&p, 1, now + Duration::from_secs(2)),
            Admission::Pass { .. }
        ));
        // Unlimited principals (a default of 0 is no limit) are not counted.
        assert!(!quotas.is_limited(&Principal::new("q")));
    }
}
