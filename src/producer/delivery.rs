//! Delivery futures: one completion per batch, shared by all its records.
//!
//! A record's [`DeliveryFuture`] is the batch's [`Completion`] plus the record's index: no
//! channel and no allocation per record. When the batch is answered, the sender resolves the
//! completion once and wakes every record future waiting on it; each computes its own offset
//! as base offset + index.

use super::{ProduceError, RecordMetadata};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

/// How a batch ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Acked {
        base_offset: i64,
        log_append_time: Option<i64>,
    },
    Failed(ProduceError),
}

/// The shared fate of one batch.
#[derive(Debug)]
pub(crate) struct Completion {
    topic: Arc<str>,
    partition: u32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    outcome: Option<Outcome>,
    wakers: Vec<Waker>,
}

impl Completion {
    pub(crate) fn new(topic: Arc<str>, partition: u32) -> Arc<Completion> {
        Arc::new(Completion {
            topic,
            partition,
            state: Mutex::new(State::default()),
        })
    }

    /// Settles the batch; the first outcome wins, later ones are ignored.
    pub(crate) fn resolve(&self, outcome: Outcome) {
        let wakers = {
            let mut state = self.lock();
            if state.outcome.is_some() {
                return;
            }
            state.outcome = Some(outcome);
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }

    #[cfg(test)]
    pub(crate) fn partition_for_test(&self) -> u32 {
        self.partition
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Poisoning needs a panic while holding the lock; nothing here panics, and the state is
        // a plain value either way.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ready with `f(outcome)` once resolved; otherwise registers the waker in `slot`.
    fn poll_with<R>(
        &self,
        cx: &mut Context<'_>,
        slot: &mut Option<usize>,
        f: impl FnOnce(&Outcome) -> R,
    ) -> Poll<R> {
        let mut state = self.lock();
        if let Some(outcome) = &state.outcome {
            return Poll::Ready(f(outcome));
        }
        match slot.and_then(|i| state.wakers.get_mut(i)) {
            Some(waker) => {
                if !waker.will_wake(cx.waker()) {
                    waker.clone_from(cx.waker());
                }
            }
            None => {
                state.wakers.push(cx.waker().clone());
                *slot = Some(state.wakers.len() - 1);
            }
        }
        Poll::Pending
    }

    /// A future that completes when the batch is settled (used by `flush`).
    pub(crate) fn settled(self: Arc<Self>) -> Settled {
        Settled {
            completion: self,
            slot: None,
        }
    }
}

/// Resolves when the record's batch is acknowledged (with the record's offset) or fails.
///
/// Returned by [`Producer::send`](super::Producer::send). Dropping it does not cancel the
/// delivery.
#[derive(Debug)]
#[must_use = "a DeliveryFuture reports whether the record was delivered"]
pub struct DeliveryFuture {
    completion: Arc<Completion>,
    index: u32,
    timestamp: i64,
    slot: Option<usize>,
}

impl DeliveryFuture {
    pub(crate) fn new(completion: Arc<Completion>, index: u32, timestamp: i64) -> DeliveryFuture {
        DeliveryFuture {
            completion,
            index,
            timestamp,
            slot: None,
        }
    }

    /// The topic the record was sent to.
    pub fn topic(&self) -> &str {
        &self.completion.topic
    }

    /// The partition the record was appended to its batch for, known at `send` (before any
    /// acknowledgement): where to look for it when the outcome is unknown.
    pub fn partition(&self) -> u32 {
        self.completion.partition
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ProduceError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let (index, timestamp) = (this.index, this.timestamp);
        let completion = &this.completion;
        completion.poll_with(cx, &mut this.slot, |outcome| match outcome {
            Outcome::Acked {
                base_offset,
                log_append_time,
            } => Ok(RecordMetadata {
                topic: completion.topic.clone(),
                partition: completion.partition,
                offset: if *base_offset >= 0 {
                    base_offset + i64::from(index)
                } else {
                    -1
                },
                timestamp: log_append_time.unwrap_or(timestamp),
            }),
            Outcome::Failed(error) => Err(error.clone()),
        })
    }
}

/// Completes when a batch is settled, whatever the outcome.
#[derive(Debug)]
pub(crate) struct Settled {
    completion: Arc<Completion>,
    slot: Option<usize>,
}

impl Future for Settled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.completion.poll_with(cx, &mut this.slot, |_| ())
    }
}
