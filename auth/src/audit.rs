//! [`AuditBudget`]: how many audit lines the guard writes per second. Every event is counted
//! in metrics; past [`LINES_PER_SECOND`] the lines themselves are dropped and one line says how
//! many were, so a client sending bad credentials in a loop cannot fill the disk through the
//! log (found by an outside review: ~1 MB/s of log from one client).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Audit lines written per second at most.
pub const LINES_PER_SECOND: u32 = 50;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct AuditBudget {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window: Instant,
    written: u32,
    dropped: u64,
}

impl AuditBudget {
    pub(crate) fn new() -> AuditBudget {
        AuditBudget {
            state: Mutex::new(State {
                window: Instant::now(),
                written: 0,
                dropped: 0,
            }),
        }
    }

    /// Whether this event's line may be written now.
    pub(crate) fn take(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(state.window) >= Duration::from_secs(1) {
            if state.dropped > 0 {
                tracing::warn!(
                    target: "streamhouse::audit",
                    dropped = state.dropped,
                    "audit lines dropped in the last second (the counters have them all)"
                );
            }
            *state = State {
                window: now,
                written: 0,
                dropped: 0,
            };
        }
        if state.written < LINES_PER_SECOND {
            state.written += 1;
            true
        } else {
            state.dropped += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_budget_lines_are_dropped_until_the_next_second() {
        let budget = AuditBudget::new();
        let written = (0..500).filter(|_| budget.take()).count();
        assert_eq!(written, LINES_PER_SECOND as usize);
    }
}
