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
        anchor.set((raw, ms));
        ms
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_the_system_clock() {
        for _ in 0..5 {
            let before = system_ms();
            let ours = now_ms();
            let after = system_ms();
            assert!(
                before - 1 <= ours && ours <= after + 1,
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
