//! [`PartitionState`]: offsets and idempotent-producer sequences of one partition.

use super::Rejection;
use crate::batch::{BatchHeader, sequence_add};
use std::collections::{HashMap, VecDeque};
use streamhouse_proto::v1::ErrorCode;

/// Batches remembered per producer and partition to answer retried duplicates with their
/// original offset (Kafka keeps 5, which is why a producer keeps at most 5 batches unacked).
pub const DEDUP_WINDOW: usize = 5;

/// Producers remembered per partition before the least recently active is forgotten.
const MAX_PRODUCERS: usize = 4096;

/// What to do with a batch that passed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// New data in sequence: append it (then call [`PartitionState::append`]).
    Append,
    /// A retry of a batch already in the log: answer success with its original base offset,
    /// append nothing.
    Duplicate {
        /// Where the batch was appended the first time.
        base_offset: i64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Remembered {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: i64,
}

#[derive(Debug, Clone)]
struct ProducerWindow {
    epoch: i16,
    recent: VecDeque<Remembered>,
    last_offset: i64,
}

/// The next offset of a partition and, per idempotent producer, its epoch and last
/// [`DEDUP_WINDOW`] batches.
///
/// Rules (Kafka KIP-98, with per-partition epochs):
/// - no producer id (-1): always appended;
/// - unknown producer: sequence 0 is appended, anything else is
///   [`ErrorCode::UnknownProducerId`] (the producer restarts its sequence);
/// - an epoch older than the one seen: [`ErrorCode::InvalidProducerEpoch`];
/// - a newer epoch: must start at sequence 0, and fences the older one;
/// - same epoch: an exact repeat of a remembered batch is a [`Admission::Duplicate`] with its
///   offset; a batch wholly older than the window is a duplicate with an unknown offset (-1),
///   since every sequence before the window is in the log; the next sequence is appended;
///   anything else is [`ErrorCode::OutOfOrderSequence`].
///
/// ```
/// use streamhouse::serve::{Admission, PartitionState};
/// # use streamhouse::batch::*; use streamhouse::codec::NoCompression;
/// # let batch = |seq| { let mut b = BatchBuilder::new(); b.append(1, None, Some(b"x"), &[]).unwrap();
/// #   *Batch::parse(b.finish(ProducerStamp { producer_id: 7, producer_epoch: 0, base_sequence: seq },
/// #   &NoCompression).unwrap(), &DecodeLimits::default()).unwrap().header() };
/// let mut state = PartitionState::new(0);
/// let first = batch(0);
/// assert_eq!(state.admit(&first), Ok(Admission::Append));
/// assert_eq!(state.append(&first), 0);
/// assert_eq!(state.admit(&first), Ok(Admission::Duplicate { base_offset: 0 })); // a retry
/// assert!(state.admit(&batch(5)).is_err()); // a gap
/// ```
#[derive(Debug, Clone, Default)]
pub struct PartitionState {
    next_offset: i64,
    producers: HashMap<i64, ProducerWindow>,
}

impl PartitionState {
    /// A partition whose next record gets `next_offset`.
    pub fn new(next_offset: i64) -> PartitionState {
        PartitionState {
            next_offset,
            producers: HashMap::new(),
        }
    }

    /// The offset the next appended record gets (the log end offset).
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Decides about a validated batch without changing anything.
    pub fn admit(&self, header: &BatchHeader) -> Result<Admission, Rejection> {
        let p = header.producer;
        if p.producer_id < 0 {
            return Ok(Admission::Append);
        }
        let last_sequence = last_sequence(header);
        let Some(window) = self.producers.get(&p.producer_id) else {
            return if p.base_sequence == 0 {
                Ok(Admission::Append)
            } else {
                Err(Rejection::new(
                    ErrorCode::UnknownProducerId,
                    format!(
                        "no state for producer {} (sequence {} is not a start)",
                        p.producer_id, p.base_sequence
                    ),
                ))
            };
        };
        if p.producer_epoch < window.epoch {
            return Err(Rejection::new(
                ErrorCode::InvalidProducerEpoch,
                format!("epoch {} is older than {}", p.producer_epoch, window.epoch),
            ));
        }
        if p.producer_epoch > window.epoch {
            return if p.base_sequence == 0 {
                Ok(Admission::Append)
            } else {
                Err(out_of_order(p.base_sequence, 0))
            };
        }
        if let Some(seen) = window
            .recent
            .iter()
            .find(|b| b.first_sequence == p.base_sequence && b.last_sequence == last_sequence)
        {
            return Ok(Admission::Duplicate {
                base_offset: seen.base_offset,
            });
        }
        if let Some(oldest) = window.recent.front()
            && precedes(last_sequence, oldest.first_sequence)
        {
            // Sequences are contiguous within an epoch and the log holds every one up to the
            // window: a batch wholly before the window was appended long ago. Answering
            // "out of order" would make the producer report persisted data as failed.
            return Ok(Admission::Duplicate { base_offset: -1 });
        }
        let expected = window
            .recent
            .back()
            .map_or(0, |b| sequence_add(b.last_sequence, 1));
        if p.base_sequence == expected {
            Ok(Admission::Append)
        } else {
            Err(out_of_order(p.base_sequence, expected))
        }
    }

    /// Assigns the batch its base offset and remembers its sequence. Call only after
    /// [`admit`](Self::admit) answered [`Admission::Append`] and the batch was stored.
    pub fn append(&mut self, header: &BatchHeader) -> i64 {
        let base_offset = self.next_offset;
        self.remember(header, base_offset);
        self.next_offset = base_offset + i64::from(header.record_count);
        base_offset
    }

    /// Replays a batch read back from the log on recovery (its base offset is in the header).
    pub fn restore(&mut self, header: &BatchHeader) {
        self.remember(header, header.base_offset);
        self.next_offset = self.next_offset.max(header.last_offset() + 1);
    }

    fn remember(&mut self, header: &BatchHeader, base_offset: i64) {
        let p = header.producer;
        if p.producer_id < 0 {
            return;
        }
        if !self.producers.contains_key(&p.producer_id) && self.producers.len() >= MAX_PRODUCERS {
            self.forget_least_recent();
        }
        let window = self
            .producers
            .entry(p.producer_id)
            .or_insert_with(|| ProducerWindow {
                epoch: p.producer_epoch,
                recent: VecDeque::with_capacity(DEDUP_WINDOW),
                last_offset: base_offset,
            });
        if p.producer_epoch != window.epoch {
            window.epoch = p.producer_epoch;
            window.recent.clear();
        }
        if window.recent.len() == DEDUP_WINDOW {
            window.recent.pop_front();
        }
        window.recent.push_back(Remembered {
            first_sequence: p.base_sequence,
            last_sequence: last_sequence(header),
            base_offset,
        });
        window.last_offset = header.last_offset().max(base_offset);
    }

    fn forget_least_recent(&mut self) {
        if let Some(oldest) = self
            .producers
            .iter()
            .min_by_key(|(_, w)| w.last_offset)
            .map(|(id, _)| *id)
        {
            self.producers.remove(&oldest);
        }
    }
}

fn last_sequence(header: &BatchHeader) -> i32 {
    let extra = u32::try_from(header.record_count.max(1) - 1).unwrap_or(0);
    sequence_add(header.producer.base_sequence, extra)
}

/// Whether sequence `a` comes before `b`, within half the (wrapping) sequence space.
fn precedes(a: i32, b: i32) -> bool {
    const MODULUS: i64 = i32::MAX as i64 + 1;
    let distance = (i64::from(b) - i64::from(a)).rem_euclid(MODULUS);
    distance > 0 && distance <= MODULUS / 2
}

fn out_of_order(got: i32, expected: i32) -> Rejection {
    Rejection::new(
        ErrorCode::OutOfOrderSequence,
        format!("sequence {got}, expected {expected}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Batch, BatchBuilder, DecodeLimits, ProducerStamp};
    use crate::codec::NoCompression;

    fn header(pid: i64, epoch: i16, seq: i32, records: usize) -> BatchHeader {
        let mut b = BatchBuilder::new();
        for _ in 0..records {
            b.append(1, None, Some(b"x"), &[]).unwrap();
        }
        let stamp = ProducerStamp {
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
        };
        let wire = b.finish(stamp, &NoCompression).unwrap();
        *Batch::parse(wire, &DecodeLimits::default())
            .unwrap()
            .header()
    }

    fn code(r: Result<Admission, Rejection>) -> ErrorCode {
        r.unwrap_err().code
    }

    #[test]
    fn offsets_advance_by_record_count() {
        let mut s = PartitionState::new(100);
        assert_eq!(s.append(&header(-1, -1, -1, 3)), 100);
        assert_eq!(s.append(&header(-1, -1, -1, 2)), 103);
        assert_eq!(s.next_offset(), 105);
        // No producer id: a repeat is appended again (no idempotence).
        assert_eq!(s.admit(&header(-1, -1, -1, 2)), Ok(Admission::Append));
    }

    #[test]
    fn duplicates_within_the_window_answer_their_original_offset() {
        let mut s = PartitionState::new(0);
        let batches: Vec<_> = (0..7).map(|i| header(9, 0, i * 10, 10)).collect();
        for b in &batches {
            assert_eq!(s.admit(b), Ok(Admission::Append));
            s.append(b);
        }
        // The last five are remembered with their offsets; older ones fell out of the window
        // but are known to be in the log.
        for (i, b) in batches.iter().enumerate().skip(2) {
            assert_eq!(
                s.admit(b),
                Ok(Admission::Duplicate {
                    base_offset: i as i64 * 10
                })
            );
        }
        assert_eq!(
            s.admit(&batches[1]),
            Ok(Admission::Duplicate { base_offset: -1 })
        );
        // Straddling the window's start is not a batch this producer sent.
        assert_eq!(
            code(s.admit(&header(9, 0, 15, 10))),
            ErrorCode::OutOfOrderSequence
        );
        assert_eq!(s.admit(&header(9, 0, 70, 1)), Ok(Admission::Append));
        assert_eq!(
            code(s.admit(&header(9, 0, 71, 1))),
            ErrorCode::OutOfOrderSequence
        );
    }

    #[test]
    fn epochs_fence_and_restart() {
        let mut s = PartitionState::new(0);
        s.append(&header(5, 1, 0, 4));
        assert_eq!(
            code(s.admit(&header(5, 0, 4, 1))),
            ErrorCode::InvalidProducerEpoch
        );
        assert_eq!(
            code(s.admit(&header(5, 2, 4, 1))),
            ErrorCode::OutOfOrderSequence
        );
        assert_eq!(s.admit(&header(5, 2, 0, 1)), Ok(Admission::Append));
        s.append(&header(5, 2, 0, 1));
        assert_eq!(
            code(s.admit(&header(5, 1, 4, 1))),
            ErrorCode::InvalidProducerEpoch
        );
        assert_eq!(s.admit(&header(5, 2, 1, 1)), Ok(Admission::Append));
    }

    #[test]
    fn unknown_producers_must_start_at_zero() {
        let s = PartitionState::new(0);
        assert_eq!(
            code(s.admit(&header(3, 0, 8, 1))),
            ErrorCode::UnknownProducerId
        );
        assert_eq!(s.admit(&header(3, 0, 0, 1)), Ok(Admission::Append));
    }

    #[test]
    fn sequences_wrap_like_kafka() {
        let mut s = PartitionState::new(0);
        s.append(&header(1, 0, 0, 1));
        // The producer went around: a batch ending at i32::MAX is followed by sequence 0.
        s.append(&header(1, 0, i32::MAX - 1, 2));
        assert_eq!(s.admit(&header(1, 0, 0, 2)), Ok(Admission::Append));
        assert_eq!(
            code(s.admit(&header(1, 0, 1, 2))),
            ErrorCode::OutOfOrderSequence
        );
    }

    #[test]
    fn restore_rebuilds_offsets_and_windows() {
        let mut live = PartitionState::new(0);
        let mut stored = Vec::new();
        for i in 0..3 {
            let mut h = header(2, 0, i * 2, 2);
            h.base_offset = live.append(&h);
            stored.push(h);
        }
        let mut recovered = PartitionState::new(0);
        for h in &stored {
            recovered.restore(h);
        }
        assert_eq!(recovered.next_offset(), live.next_offset());
        assert_eq!(
            recovered.admit(&header(2, 0, 2, 2)),
            Ok(Admission::Duplicate { base_offset: 2 })
        );
        assert_eq!(recovered.admit(&header(2, 0, 6, 1)), Ok(Admission::Append));
    }
}
