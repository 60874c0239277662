//! The accumulator on a virtual clock: `now` is an argument, so nothing sleeps.

use super::*;
use crate::batch::{Batch, DecodeLimits};
use crate::codec::NoCompression;
use crate::partitioner::Partitioner;
use std::num::NonZeroU32;
use std::sync::Mutex;

const MS: Duration = Duration::from_millis(1);

/// Records every seal notification.
#[derive(Default)]
struct Seals(Mutex<Vec<(String, u32)>>);

impl Partitioner for Seals {
    fn partition(&self, _: &str, _: Option<&[u8]>, _: NonZeroU32) -> u32 {
        0
    }
    fn on_batch_sealed(&self, topic: &str, partition: u32) {
        self.0.lock().unwrap().push((topic.to_owned(), partition));
    }
}

fn config() -> AccumulatorConfig {
    AccumulatorConfig {
        batch_size: 1_000,
        linger: 5 * MS,
        buffer_memory: 10_000,
        max_request_size: 4_000,
        delivery_timeout: 100 * MS,
        producer_id: Some(77),
    }
}

fn accumulator(config: AccumulatorConfig) -> (Accumulator, Arc<Seals>) {
    let seals = Arc::new(Seals::default());
    (Accumulator::new(config, seals.clone()), seals)
}

fn value(len: usize) -> Vec<u8> {
    vec![b'v'; len]
}

fn push(
    acc: &mut Accumulator,
    partition: u32,
    len: usize,
    now: Instant,
) -> Result<Pushed, PushError> {
    let v = value(len);
    let topic = acc.topic_id("t");
    acc.push(
        topic,
        partition,
        Append {
            timestamp: 1,
            key: None,
            value: Some(&v),
            headers: &[],
        },
        || now,
    )
}

fn ready_partitions(acc: &Accumulator, now: Instant) -> Vec<u32> {
    let mut ready: Vec<u32> = acc.ready(now).into_iter().map(|r| r.partition).collect();
    ready.sort_unstable();
    ready
}

/// Encodes a drained batch as the sender would, and decodes its header.
fn header_of(batch: QueuedBatch) -> crate::batch::BatchHeader {
    let Payload::Built(builder) = batch.payload else {
        panic!("not a builder")
    };
    let wire = builder
        .finish(batch.stamp.unwrap_or(ProducerStamp::NONE), &NoCompression)
        .unwrap();
    *Batch::parse(wire, &DecodeLimits::default())
        .unwrap()
        .header()
}

#[test]
fn a_batch_seals_exactly_at_linger() {
    let (mut acc, seals) = accumulator(config());
    let t0 = Instant::now();
    let pushed = push(&mut acc, 0, 10, t0).unwrap();
    assert!(pushed.wake_sender, "a new batch starts a linger deadline");
    assert_eq!(acc.next_deadline(t0), Some(t0 + 5 * MS));

    push(&mut acc, 0, 10, t0 + 2 * MS).unwrap();
    assert!(acc.expire(t0 + 5 * MS - Duration::from_nanos(1)).is_empty());
    assert!(ready_partitions(&acc, t0 + 4 * MS).is_empty());

    acc.expire(t0 + 5 * MS);
    assert_eq!(ready_partitions(&acc, t0 + 5 * MS), [0]);
    assert_eq!(seals.0.lock().unwrap().as_slice(), [("t".to_owned(), 0)]);
    let drained = acc.drain("t", 0, usize::MAX, t0 + 5 * MS);
    assert_eq!(drained.len(), 1);
    assert_eq!(drained[0].record_count, 2);
}

#[test]
fn a_batch_seals_when_batch_size_is_reached() {
    let (mut acc, seals) = accumulator(config());
    let t0 = Instant::now();
    // A record of a 100-byte value takes 109 bytes (two-byte varints for its lengths): eight
    // fit after the 57-byte header (929 bytes), a ninth would pass 1,000.
    let mut woke = Vec::new();
    for _ in 0..10 {
        woke.push(push(&mut acc, 0, 100, t0).unwrap().wake_sender);
    }
    // The tenth record did not fit: the first batch sealed without any time passing.
    assert_eq!(ready_partitions(&acc, t0), [0]);
    assert_eq!(
        woke.iter().filter(|w| **w).count(),
        2,
        "one wake per new batch"
    );
    assert_eq!(seals.0.lock().unwrap().len(), 1);
    let drained = acc.drain("t", 0, usize::MAX, t0);
    assert_eq!(drained[0].record_count, 8);
    assert!(drained[0].payload.len() <= 1_000);

    // A record that fills the batch on its own seals it at once.
    push(&mut acc, 1, 990, t0).unwrap();
    assert_eq!(ready_partitions(&acc, t0), [1]);
}

#[test]
fn flush_seals_every_partition() {
    let (mut acc, _) = accumulator(config());
    let t0 = Instant::now();
    for p in 0..4 {
        push(&mut acc, p, 10, t0).unwrap();
    }
    assert!(ready_partitions(&acc, t0).is_empty());
    let pending = acc.seal_all(t0);
    assert_eq!(pending.len(), 4);
    assert_eq!(ready_partitions(&acc, t0), [0, 1, 2, 3]);
}

#[test]
fn the_memory_budget_refuses_new_batches_until_one_completes() {
    let (mut acc, _) = accumulator(config());
    let t0 = Instant::now();
    // Each batch reserves batch_size (1,000) of the 10,000-byte budget.
    for p in 0..10 {
        push(&mut acc, p, 10, t0).unwrap();
    }
    assert_eq!(acc.used_memory(), 10_000);
    assert_eq!(push(&mut acc, 10, 10, t0).unwrap_err(), PushError::NoMemory);
    // Appending to an open batch needs no new memory.
    push(&mut acc, 3, 10, t0).unwrap();

    acc.seal_all(t0);
    let drained = acc.drain("t", 0, usize::MAX, t0);
    acc.complete(drained[0].id);
    assert_eq!(acc.used_memory(), 9_000);
    push(&mut acc, 10, 10, t0).unwrap();
}

#[test]
fn oversized_records_are_refused_outright() {
    let (mut acc, _) = accumulator(config());
    let err = push(&mut acc, 0, 4_000, Instant::now()).unwrap_err();
    assert!(matches!(
        err,
        PushError::RecordTooLarge { limit: 4_000, .. }
    ));
    assert_eq!(acc.used_memory(), 0);
    // Larger than a batch but within a request: gets a batch of its own.
    push(&mut acc, 0, 2_000, Instant::now()).unwrap();
    // 57-byte header + 2,000 bytes + 9 bytes of record framing.
    assert_eq!(acc.used_memory(), 57 + 2_000 + 9);
}

#[test]
fn drain_takes_at_most_five_batches_within_the_byte_limit_and_mutes() {
    let (mut acc, _) = accumulator(AccumulatorConfig {
        buffer_memory: 100_000,
        ..config()
    });
    let t0 = Instant::now();
    for _ in 0..70 {
        push(&mut acc, 0, 100, t0).unwrap(); // 8 per batch: 8 sealed batches, 1 open
    }
    acc.seal_all(t0);
    let first = acc.drain("t", 0, 2_500, t0);
    assert_eq!(first.len(), 2, "two ~1 KB batches fit 2,500 bytes");
    assert!(
        acc.drain("t", 0, usize::MAX, t0).is_empty(),
        "muted while in flight"
    );
    assert!(ready_partitions(&acc, t0).is_empty());
    acc.unmute("t", 0);
    let second = acc.drain("t", 0, usize::MAX, t0);
    assert_eq!(second.len(), DEDUP_WINDOW);

    // Sequences are contiguous across drains, in record counts.
    let seqs: Vec<i32> = first
        .iter()
        .chain(&second)
        .map(|b| b.stamp.unwrap().base_sequence)
        .collect();
    assert_eq!(seqs, [0, 8, 16, 24, 32, 40, 48]);
}

#[test]
fn requeued_batches_go_first_in_order_after_their_backoff() {
    let (mut acc, _) = accumulator(config());
    let t0 = Instant::now();
    for _ in 0..3 {
        push(&mut acc, 0, 10, t0).unwrap();
        acc.seal_all(t0);
    }
    let mut first = acc.drain("t", 0, usize::MAX, t0);
    let third = first.pop().unwrap();
    let ids: Vec<u64> = first.iter().map(|b| b.id).collect();
    acc.unmute("t", 0);
    // A newer batch arrives meanwhile.
    push(&mut acc, 0, 10, t0).unwrap();
    acc.seal_all(t0);
    acc.requeue(first, Some(t0 + 50 * MS), t0);
    acc.requeue(vec![third], Some(t0 + 50 * MS), t0);

    assert!(
        ready_partitions(&acc, t0 + 49 * MS).is_empty(),
        "backing off"
    );
    assert_eq!(acc.next_deadline(t0), Some(t0 + 50 * MS));
    // Once the backoff is over it is no longer a deadline to wake for.
    assert_eq!(acc.next_deadline(t0 + 60 * MS), Some(t0 + 100 * MS));
    let again = acc.drain("t", 0, usize::MAX, t0 + 50 * MS);
    let seqs: Vec<i32> = again
        .iter()
        .map(|b| b.stamp.unwrap().base_sequence)
        .collect();
    // The retried three keep their sequences, ahead of the new batch.
    assert_eq!(seqs, [2, 0, 1, 3]);
    assert_eq!(again[1].id, ids[0]);
}

#[test]
fn reset_sequence_restamps_queued_batches_in_a_new_epoch() {
    let (mut acc, _) = accumulator(config());
    let t0 = Instant::now();
    for _ in 0..3 {
        push(&mut acc, 0, 10, t0).unwrap();
        push(&mut acc, 0, 10, t0).unwrap();
        acc.seal_all(t0);
    }
    let drained = acc.drain("t", 0, usize::MAX, t0);
    acc.unmute("t", 0);
    acc.requeue(drained.into_iter().skip(1).collect(), None, t0);
    acc.reset_sequence("t", 0);
    let again = acc.drain("t", 0, usize::MAX, t0);
    let headers: Vec<_> = again.into_iter().map(header_of).collect();
    let stamps: Vec<(i16, i32)> = headers
        .iter()
        .map(|h| (h.producer.producer_epoch, h.producer.base_sequence))
        .collect();
    assert_eq!(stamps, [(1, 0), (1, 2)]);
    assert!(headers.iter().all(|h| h.producer.producer_id == 77));
}

/// Issue 11, defect 8: the epoch saturated at `i16::MAX`, so every later reset restamped the
/// same epoch from sequence 0, which the agent refuses forever (a livelocked partition). Past
/// the last epoch the partition now goes on under a new producer id.
#[test]
fn epoch_exhaustion_moves_the_partition_to_a_new_producer_id() {
    let (mut acc, _) = accumulator(config());
    let t0 = Instant::now();
    push(&mut acc, 0, 10, t0).unwrap();
    acc.seal_all(t0);
    for _ in 0..i16::MAX {
        assert!(acc.reset_sequence("t", 0).is_empty());
    }
    let at_max = acc.drain("t", 0, usize::MAX, t0);
    let stamp = at_max[0].stamp.unwrap();
    assert_eq!((stamp.producer_id, stamp.producer_epoch), (77, i16::MAX));
    acc.unmute("t", 0);
    acc.requeue(at_max, None, t0);
    acc.reset_sequence("t", 0);
    let moved = acc.drain("t", 0, usize::MAX, t0);
    let stamp = moved[0].stamp.unwrap();
    assert!(
        stamp.producer_id >= 0 && stamp.producer_id != 77,
        "{stamp:?}"
    );
    assert_eq!((stamp.producer_epoch, stamp.base_sequence), (0, 0));
    // Later batches of the partition follow under the new id; other partitions keep theirs.
    acc.unmute("t", 0);
    push(&mut acc, 0, 10, t0).unwrap();
    push(&mut acc, 1, 10, t0).unwrap();
    acc.seal_all(t0);
    let next = acc.drain("t", 0, usize::MAX, t0)[0].stamp.unwrap();
    assert_eq!(
        (next.producer_id, next.base_sequence),
        (stamp.producer_id, 1)
    );
    assert_eq!(
        acc.drain("t", 1, usize::MAX, t0)[0]
            .stamp
            .unwrap()
            .producer_id,
        77
    );
}

/// Issue 11, defect 8: restamping an encoded batch ignored a failed stamp and always copied
/// the bytes. Now it stamps in place when nothing else holds them (and the CRC stays valid).
#[test]
fn restamping_an_encoded_batch_stamps_in_place() {
    let (mut acc, _) = accumulator(config());
    let t0 = Instant::now();
    push(&mut acc, 0, 10, t0).unwrap();
    acc.seal_all(t0);
    let mut sent = acc.drain("t", 0, usize::MAX, t0);
    let Payload::Built(builder) = std::mem::replace(&mut sent[0].payload, Payload::Taken) else {
        panic!("not a builder")
    };
    let wire = builder
        .finish(sent[0].stamp.unwrap(), &NoCompression)
        .unwrap();
    let before = wire.as_ptr();
    sent[0].payload = Payload::Encoded(wire);
    acc.unmute("t", 0);
    acc.requeue(sent, None, t0);
    assert!(acc.reset_sequence("t", 0).is_empty());
    let again = acc.drain("t", 0, usize::MAX, t0);
    let Payload::Encoded(bytes) = &again[0].payload else {
        panic!("not encoded")
    };
    assert_eq!(bytes.as_ptr(), before, "stamped in place, not copied");
    let header = *Batch::parse(bytes.clone(), &DecodeLimits::default())
        .unwrap()
        .header();
    assert_eq!(header.producer.producer_epoch, 1);
}

#[test]
fn delivery_timeout_fails_queued_batches_with_their_persistence() {
    let (mut acc, _) = accumulator(config());
    let t0 = Instant::now();
    push(&mut acc, 0, 10, t0).unwrap();
    push(&mut acc, 1, 10, t0).unwrap();
    acc.seal_all(t0);
    let mut sent = acc.drain("t", 1, usize::MAX, t0);
    sent[0].maybe_applied = true;
    acc.unmute("t", 1);
    acc.requeue(sent, None, t0);
    assert_eq!(acc.next_deadline(t0), Some(t0 + 100 * MS));
    assert!(acc.expire(t0 + 99 * MS).is_empty());

    let mut failed = acc.expire(t0 + 100 * MS);
    assert_eq!(failed.len(), 2);
    failed.sort_by_key(|f| f.completion.partition_for_test());
    let persistence: Vec<_> = failed.iter().map(|f| f.error.persistence()).collect();
    assert_eq!(
        persistence,
        [Persistence::NotPersisted, Persistence::PossiblyPersisted]
    );
    assert!(matches!(
        failed[0].error,
        ProduceError::DeliveryTimeout { .. }
    ));
    assert_eq!(acc.used_memory(), 0);
    assert!(acc.is_idle());
}

#[test]
fn without_idempotence_batches_carry_no_stamp() {
    let (mut acc, _) = accumulator(AccumulatorConfig {
        producer_id: None,
        ..config()
    });
    let t0 = Instant::now();
    push(&mut acc, 0, 10, t0).unwrap();
    acc.seal_all(t0);
    let drained = acc.drain("t", 0, usize::MAX, t0);
    assert_eq!(
        header_of(drained.into_iter().next().unwrap()).producer,
        ProducerStamp::NONE
    );
}

#[test]
fn abort_fails_everything_not_in_flight() {
    let (mut acc, _) = accumulator(config());
    let t0 = Instant::now();
    push(&mut acc, 0, 10, t0).unwrap();
    push(&mut acc, 1, 10, t0).unwrap();
    acc.seal_all(t0);
    let in_flight = acc.drain("t", 0, usize::MAX, t0);
    push(&mut acc, 2, 10, t0).unwrap(); // open
    let failed = acc.abort();
    assert_eq!(failed.len(), 2);
    assert!(
        failed
            .iter()
            .all(|f| matches!(f.error, ProduceError::Closed { .. }))
    );
    assert_eq!(
        acc.unsettled(),
        1,
        "the in-flight batch is the sender's to settle"
    );
    acc.complete(in_flight[0].id);
    assert!(acc.is_idle());
}

#[test]
fn ready_reports_bytes_and_how_long_batches_waited() {
    let (mut acc, _) = accumulator(config());
    let t0 = Instant::now();
    push(&mut acc, 0, 10, t0).unwrap();
    acc.seal_all(t0 + MS);
    push(&mut acc, 0, 10, t0 + 2 * MS).unwrap();
    acc.seal_all(t0 + 3 * MS);
    let ready = acc.ready(t0 + 3 * MS);
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].since, t0 + MS, "the oldest batch's seal time");
    assert_eq!(
        ready[0].bytes,
        2 * (57 + 17),
        "two batches of one 17-byte record"
    );
}

#[test]
fn delivered_batch_buffers_are_reused() {
    let (mut acc, _) = accumulator(config());
    let t0 = Instant::now();
    push(&mut acc, 0, 10, t0).unwrap();
    acc.seal_all(t0);
    let batch = acc.drain("t", 0, usize::MAX, t0).pop().unwrap();
    let Payload::Built(builder) = batch.payload else {
        panic!("not a builder")
    };
    let wire = builder.finish(ProducerStamp::NONE, &NoCompression).unwrap();
    let address = wire.as_ptr();
    acc.complete(batch.id);
    acc.recycle(wire.try_into_mut().unwrap());
    assert_eq!(acc.pool.len(), 1);
    // The next batch is built in the delivered one's buffer.
    push(&mut acc, 1, 10, t0).unwrap();
    assert!(acc.pool.is_empty());
    acc.seal_all(t0);
    let next = acc.drain("t", 1, usize::MAX, t0).pop().unwrap();
    let Payload::Built(builder) = next.payload else {
        panic!("not a builder")
    };
    let wire = builder.finish(ProducerStamp::NONE, &NoCompression).unwrap();
    assert_eq!(wire.as_ptr(), address);
}

#[test]
fn pooled_buffers_count_against_buffer_memory() {
    let config = AccumulatorConfig {
        buffer_memory: 4 * 1024,
        batch_size: 1024,
        ..config()
    };
    let (mut acc, _) = accumulator(config);
    let t0 = Instant::now();
    // Four batches take the whole budget.
    let mut batches = Vec::new();
    for p in 0..4 {
        push(&mut acc, p, 10, t0).unwrap();
        acc.seal_all(t0);
        batches.extend(acc.drain("t", p, usize::MAX, t0));
    }
    assert!(matches!(
        push(&mut acc, 0, 10, t0),
        Err(PushError::NoMemory)
    ));
    // Settled and pooled, they free the budget for new batches (which reuse them) ...
    for batch in batches {
        let Payload::Built(builder) = batch.payload else {
            panic!("not a builder")
        };
        let wire = builder.finish(ProducerStamp::NONE, &NoCompression).unwrap();
        acc.complete(batch.id);
        acc.recycle(wire.try_into_mut().unwrap());
    }
    assert_eq!(acc.pool.len(), 4);
    for p in 0..4 {
        push(&mut acc, p, 10, t0).unwrap();
    }
    assert!(acc.pool.is_empty());
    assert!(matches!(
        push(&mut acc, 5, 10, t0),
        Err(PushError::NoMemory)
    ));
    // ... and a buffer beyond the budget is not kept.
    acc.recycle(bytes::BytesMut::with_capacity(1024));
    assert!(acc.pool.is_empty());
    // Nor is one smaller than a batch.
    acc.recycle(bytes::BytesMut::with_capacity(100));
    assert!(acc.pool.is_empty());
}

/// Found by the group chaos test: a partition whose leader was away queued its records in
/// batches of one or two (each sealed at linger), and on failover drained them five per
/// request for many seconds. While a partition cannot send, its open batch keeps filling.
#[test]
fn a_stalled_partition_keeps_filling_its_open_batch_past_linger() {
    let (mut acc, _) = accumulator(AccumulatorConfig {
        delivery_timeout: 10_000 * MS,
        ..config()
    });
    let t0 = Instant::now();
    push(&mut acc, 0, 10, t0).unwrap();
    acc.expire(t0 + 5 * MS);
    // In flight: the next records share one batch, however long the request takes.
    let first = acc.drain("t", 0, usize::MAX, t0 + 5 * MS);
    assert_eq!(first.len(), 1);
    for k in 1..=20 {
        push(&mut acc, 0, 10, t0 + k * 5 * MS).unwrap();
        assert!(acc.expire(t0 + k * 5 * MS).is_empty());
        assert!(
            acc.next_deadline(t0 + k * 5 * MS)
                .is_none_or(|d| d > t0 + k * 5 * MS),
            "a lingered batch of a muted partition is no deadline (the sender would spin)"
        );
    }
    assert!(ready_partitions(&acc, t0 + 100 * MS).is_empty());
    // The request failed and went back behind a backoff: still one open batch growing.
    acc.requeue(first, Some(t0 + 200 * MS), t0 + 100 * MS);
    acc.unmute("t", 0);
    push(&mut acc, 0, 10, t0 + 150 * MS).unwrap();
    acc.expire(t0 + 150 * MS);
    assert_eq!(acc.next_deadline(t0 + 150 * MS), Some(t0 + 200 * MS));
    // The backoff over: the retried batch goes first, then the open batch is sealed whole.
    let retried = acc.drain("t", 0, usize::MAX, t0 + 200 * MS);
    assert_eq!(retried.len(), 1);
    acc.unmute("t", 0);
    acc.expire(t0 + 210 * MS);
    let rest = acc.drain("t", 0, usize::MAX, t0 + 210 * MS);
    assert_eq!(rest.len(), 1, "21 records in one batch");
    assert_eq!(rest[0].record_count, 21);
}
