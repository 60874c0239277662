//! [`PartitionState`]: offsets and idempotent-producer sequences of one partition.

use super::Rejection;
use crate::batch::{BatchHeader, sequence_add};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use streamhouse_proto::v1::ErrorCode;

/// Batches remembered per producer and partition to answer retried duplicates with their
/// original offset (Kafka keeps 5, which is why a producer keeps at most 5 batches unacked).
pub const DEDUP_WINDOW: usize = 5;

/// Bounds on the idempotent-producer state one partition keeps.
///
/// State is never forgotten under pressure: a producer is only forgotten once it has been
/// idle for `idle_expiry`, and a new producer arriving when `max_producers` are tracked and none
/// is that idle is refused with [`ErrorCode::ProducerStateFull`] (retriable later). Forgetting an
/// active producer would let its retry be appended a second time.
///
/// `idle_expiry` must exceed the longest time a producer keeps retrying a batch (its delivery
/// timeout, 120 s by default), so no retry can reach a partition that forgot it.
///
/// ```
/// use std::time::Duration;
/// use streamhouse::serve::{PartitionState, ProducerLimits};
/// let limits = ProducerLimits { max_producers: 100, idle_expiry: Duration::from_secs(60) };
/// let state = PartitionState::with_limits(0, limits);
/// assert_eq!(state.producer_count(), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerLimits {
    /// Most producer ids tracked per partition. Default 10,000 (about 2 MB of state).
    pub max_producers: usize,
    /// How long a producer must have sent nothing before it may be forgotten to make room.
    /// Default 15 minutes.
    pub idle_expiry: Duration,
}

impl Default for ProducerLimits {
    fn default() -> ProducerLimits {
        ProducerLimits {
            max_producers: 10_000,
            idle_expiry: Duration::from_secs(15 * 60),
        }
    }
}

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

/// One batch a partition remembers of a producer (part of a [`ProducerSnapshot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RememberedBatch {
    /// The batch's first sequence number.
    pub first_sequence: i32,
    /// Its last sequence number.
    pub last_sequence: i32,
    /// The offset it was appended at.
    pub base_offset: i64,
}

/// A producer's epoch and last [`DEDUP_WINDOW`] batches in one partition, oldest first: what
/// [`PartitionState::snapshot`] gives and [`PartitionState::restore_snapshot`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerSnapshot {
    /// The producer id.
    pub producer_id: i64,
    /// Its epoch.
    pub epoch: i16,
    /// Its remembered batches, oldest first.
    pub batches: Vec<RememberedBatch>,
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
    /// When its last batch was appended (or the state was restored).
    last_active: Instant,
}

/// The next offset of a partition and, per idempotent producer, its epoch and last
/// [`DEDUP_WINDOW`] batches, within [`ProducerLimits`].
///
/// Rules (Kafka KIP-98, with per-partition epochs):
/// - no producer id (-1): always appended;
/// - unknown producer: sequence 0 is appended (or refused with [`ErrorCode::ProducerStateFull`]
///   when the partition tracks as many producers as its limits allow, none idle), anything else
///   is [`ErrorCode::UnknownProducerId`];
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
    limits: ProducerLimits,
}

impl PartitionState {
    /// A partition whose next record gets `next_offset`, with the default [`ProducerLimits`].
    pub fn new(next_offset: i64) -> PartitionState {
        PartitionState::with_limits(next_offset, ProducerLimits::default())
    }

    /// A partition whose next record gets `next_offset`, keeping producer state within `limits`.
    pub fn with_limits(next_offset: i64, limits: ProducerLimits) -> PartitionState {
        PartitionState {
            next_offset,
            producers: HashMap::new(),
            limits,
        }
    }

    /// Producer ids tracked.
    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }

    /// The offset the next appended record gets (the log end offset).
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Decides about a validated batch without changing anything.
    pub fn admit(&self, header: &BatchHeader) -> Result<Admission, Rejection> {
        self.admit_at(header, Instant::now())
    }

    /// [`admit`](Self::admit) at a given instant (idle expiry is judged against it).
    pub fn admit_at(&self, header: &BatchHeader, now: Instant) -> Result<Admission, Rejection> {
        let p = header.producer;
        if p.producer_id < 0 {
            return Ok(Admission::Append);
        }
        let last_sequence = last_sequence(header);
        let Some(window) = self.producers.get(&p.producer_id) else {
            return if p.base_sequence != 0 {
                Err(Rejection::new(
                    ErrorCode::UnknownProducerId,
                    format!(
                        "no state for producer {} (sequence {} is not a start)",
                        p.producer_id, p.base_sequence
                    ),
                ))
            } else if self.has_room(now) {
                Ok(Admission::Append)
            } else {
                Err(Rejection::new(
                    ErrorCode::ProducerStateFull,
                    format!(
                        "the partition tracks {} producers, none idle for {:?}; retry later",
                        self.producers.len(),
                        self.limits.idle_expiry
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
        self.append_at(header, Instant::now())
    }

    /// [`append`](Self::append) at a given instant (the producer's last activity).
    pub fn append_at(&mut self, header: &BatchHeader, now: Instant) -> i64 {
        let base_offset = self.next_offset;
        self.remember(header, base_offset, now);
        self.next_offset = base_offset + i64::from(header.record_count);
        base_offset
    }

    /// Replays a batch read back from the log on recovery (its base offset is in the header).
    /// Restored producers count as active now, and are kept even past `max_producers`: what
    /// the log holds is never forgotten by a restart.
    pub fn restore(&mut self, header: &BatchHeader) {
        self.remember(header, header.base_offset, Instant::now());
        self.next_offset = self.next_offset.max(header.last_offset() + 1);
    }

    /// What this partition remembers of one producer: what a new owner of the partition needs
    /// to answer that producer's retries as duplicates (see [`restore_snapshot`]).
    ///
    /// [`restore_snapshot`]: Self::restore_snapshot
    pub fn snapshot(&self, producer_id: i64) -> Option<ProducerSnapshot> {
        let window = self.producers.get(&producer_id)?;
        Some(ProducerSnapshot {
            producer_id,
            epoch: window.epoch,
            batches: window
                .recent
                .iter()
                .map(|b| RememberedBatch {
                    first_sequence: b.first_sequence,
                    last_sequence: b.last_sequence,
                    base_offset: b.base_offset,
                })
                .collect(),
        })
    }

    /// Merges a snapshot taken elsewhere (a metadata store, another agent) into this state.
    /// An unknown producer is taken as is; a known one keeps the newer epoch, and within one
    /// epoch the union of both windows by offset, newest [`DEDUP_WINDOW`] kept. The snapshot's
    /// producer counts as active now and is kept even past `max_producers` (as [`restore`]).
    ///
    /// ```
    /// use streamhouse::serve::{PartitionState, ProducerSnapshot, RememberedBatch};
    /// let snapshot = ProducerSnapshot {
    ///     producer_id: 7,
    ///     epoch: 0,
    ///     batches: vec![RememberedBatch { first_sequence: 0, last_sequence: 9, base_offset: 40 }],
    /// };
    /// let mut state = PartitionState::new(50);
    /// state.restore_snapshot(&snapshot);
    /// assert_eq!(state.snapshot(7), Some(snapshot));
    /// ```
    ///
    /// [`restore`]: Self::restore
    pub fn restore_snapshot(&mut self, snapshot: &ProducerSnapshot) {
        let now = Instant::now();
        let window = self
            .producers
            .entry(snapshot.producer_id)
            .or_insert_with(|| ProducerWindow {
                epoch: snapshot.epoch,
                recent: VecDeque::with_capacity(DEDUP_WINDOW),
                last_active: now,
            });
        if snapshot.epoch < window.epoch {
            return;
        }
        if snapshot.epoch > window.epoch {
            window.epoch = snapshot.epoch;
            window.recent.clear();
        }
        let mut all: Vec<Remembered> = window.recent.drain(..).collect();
        for b in &snapshot.batches {
            if !all.iter().any(|r| r.base_offset == b.base_offset) {
                all.push(Remembered {
                    first_sequence: b.first_sequence,
                    last_sequence: b.last_sequence,
                    base_offset: b.base_offset,
                });
            }
        }
        all.sort_by_key(|r| r.base_offset);
        let skip = all.len().saturating_sub(DEDUP_WINDOW);
        window.recent.extend(all.into_iter().skip(skip));
        window.last_active = now;
    }

    fn remember(&mut self, header: &BatchHeader, base_offset: i64, now: Instant) {
        let p = header.producer;
        if p.producer_id < 0 {
            return;
        }
        if !self.producers.contains_key(&p.producer_id)
            && self.producers.len() >= self.limits.max_producers
        {
            // Only an idle producer makes room (admit checked there is one); with none, the
            // bound is exceeded rather than an active producer's state lost.
            self.forget_idle(now);
        }
        let window = self
            .producers
            .entry(p.producer_id)
            .or_insert_with(|| ProducerWindow {
                epoch: p.producer_epoch,
                recent: VecDeque::with_capacity(DEDUP_WINDOW),
                last_active: now,
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
        window.last_active = window.last_active.max(now);
    }

    fn is_idle(&self, window: &ProducerWindow, now: Instant) -> bool {
        now.saturating_duration_since(window.last_active) >= self.limits.idle_expiry
    }

    /// Whether a new producer can be tracked: below the bound, or someone is idle.
    fn has_room(&self, now: Instant) -> bool {
        self.producers.len() < self.limits.max_producers
            || self.producers.values().any(|w| self.is_idle(w, now))
    }

    /// Forgets the longest-idle producer, if it has been idle for `idle_expiry`.
    fn forget_idle(&mut self, now: Instant) {
        let idlest = self
            .producers
            .iter()
            .min_by_key(|(_, w)| w.last_active)
            .filter(|(_, w)| self.is_idle(w, now))
            .map(|(id, _)| *id);
        if let Some(id) = idlest {
            self.producers.remove(&id);
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
    use std::time::Duration;

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

    /// Issue 11, defect 5: past 4,096 producers the least recent one was forgotten, and its
    /// retries were appended a second time. Now an active producer is never forgotten: a new
    /// one is refused until someone has been idle for the expiry.
    #[test]
    fn producer_state_is_never_forgotten_under_pressure() {
        let limits = ProducerLimits {
            max_producers: 100,
            idle_expiry: Duration::from_secs(60),
        };
        let t0 = Instant::now();
        let mut s = PartitionState::with_limits(0, limits);
        let a = [header(1, 0, 0, 2), header(1, 0, 2, 3)];
        for h in &a {
            s.append_at(h, t0);
        }
        for pid in 2..101 {
            let h = header(pid, 0, 0, 1);
            assert_eq!(s.admit_at(&h, t0), Ok(Admission::Append));
            s.append_at(&h, t0);
        }
        // Full, nobody idle: producer 101 waits, and producer 1's retries are still duplicates.
        let late = header(101, 0, 0, 1);
        let refused = s.admit_at(&late, t0 + Duration::from_secs(59)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::ProducerStateFull);
        assert!(refused.code.is_retriable());
        assert_eq!(
            s.admit_at(&a[0], t0),
            Ok(Admission::Duplicate { base_offset: 0 })
        );
        assert_eq!(
            s.admit_at(&a[1], t0),
            Ok(Admission::Duplicate { base_offset: 2 })
        );
        // Producer 1 stays active; the others go idle; the expiry makes room for 101.
        let t1 = t0 + Duration::from_secs(61);
        let kept = s.append_at(&header(1, 0, 5, 1), t1 - Duration::from_secs(30));
        assert_eq!(s.admit_at(&late, t1), Ok(Admission::Append));
        s.append_at(&late, t1);
        assert_eq!(s.producer_count(), 100);
        assert_eq!(
            s.admit_at(&header(1, 0, 5, 1), t1),
            Ok(Admission::Duplicate { base_offset: kept }),
            "the active producer was kept, an idle one forgotten"
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
