//! Record timestamps without a system call per record.
//!
//! Reading the system clock (`SystemTime::now`, via the vDSO) costs ~37 ns here; a record's
//! create time needs only milliseconds. Each thread keeps an anchor — a system-clock reading
//! and the CPU's time-stamp counter at that moment (through `quanta`, ~10 ns per read) — and
//! derives the time from the counter, re-reading the system clock once a second so NTP
//! adjustments carry over. Where the counter is unusable, `quanta` falls back to the OS clock.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// How long an anchor is trusted.
const REANCHOR_NS: u64 = 1_000_000_000;

fn clock() -> &'static quanta::Clock {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

thread_local! {
    /// (counter at the anchor, milliseconds since the epoch at the anchor); `i64::MIN`: none.
    static ANCHOR: Cell<(u64, i64)> = const { Cell::new((0, i64::MIN)) };
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    let clock = clock();
    let raw = clock.raw();
    ANCHOR.with(|anchor| {
        let (at, ms) = anchor.get();
        if ms != i64::MIN {
            let elapsed = clock.delta_as_nanos(at, raw);
            // A counter that went backwards (another CPU's) reads as a huge delta: re-anchor.
            if elapsed < REANCHOR_NS {
                return ms + (elapsed / 1_000_000) as i64;
            }
        }
        let ms = system_ms();
        if let Some(fresh) = anchor_now(clock) {
            anchor.set(fresh);
        }
        ms
    })
}

/// A new anchor: a counter reading and the system time at that moment, to the millisecond.
/// The system clock is read on both sides of the counter; a pair more than 1 ms apart (the
/// thread was preempted in between) is not used, so a derived time never runs ahead of the
/// system clock and lags it by at most 2 ms. `None` after three preempted tries: the next call
/// tries again.
fn anchor_now(clock: &quanta::Clock) -> Option<(u64, i64)> {
    (0..3).find_map(|_| {
        let before = system_ms();
        let raw = clock.raw();
        let after = system_ms();
        (after - before <= 1).then_some((raw, before))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds under any load: a preempted anchor is never used, so the derived time stays
    /// within 2 ms of the system clock read around it (it used to run ahead by however long the
    /// thread was preempted while anchoring).
    #[test]
    fn tracks_the_system_clock() {
        for _ in 0..5 {
            let before = system_ms();
            let ours = now_ms();
            let after = system_ms();
            assert!(
                before - 2 <= ours && ours <= after + 2,
                "{before} <= {ours} <= {after}"
            );
            std::thread::sleep(std::time::Duration::from_millis(3));
        }
    }

    #[test]
    fn never_goes_far_backwards() {
        let mut last = now_ms();
        for _ in 0..100_000 {
            let now = now_ms();
            assert!(now >= last - 1, "{now} < {last}");
            last = now;
        }
    }
}
