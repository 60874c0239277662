//! The record accumulator, sans-IO: per-partition batches, linger, memory budget, sequences.
//!
//! It has no tokio inside and never reads a clock: every call takes `now`. The producer's
//! `send` pushes records in; the sender task asks it which partitions are ready, drains their
//! sealed batches into requests, and reports back (complete, requeue, reset). So batching,
//! linger, memory and retry ordering are plain unit tests on a virtual clock.
//!
//! ```text
//! push ─▶ open batch ──(batch_size | linger | flush)──▶ sealed queue ─▶ drain ─▶ in flight
//!                                                           ▲                      │
//!                                                           └──── requeue (retry) ◀┘
//! ```
//!
//! Per partition, at most one request is in flight (the partition is *muted* meanwhile) and it
//! carries at most [`DEDUP_WINDOW`] batches: the agent processes a request's batches in order
//! and remembers the last five per producer, so a retry always finds its duplicates and a
//! partition never reorders, whatever order the transport delivers concurrent requests in.

mod batch;
#[cfg(test)]
mod tests;

pub(crate) use batch::{Payload, QueuedBatch};

use super::delivery::Completion;
use super::{Persistence, ProduceError};
use crate::batch::{
    BatchBuilder, HEADER_LEN, Header, ProducerStamp, sequence_add, set_producer_stamp,
};
use crate::partitioner::Partitioner;
use crate::serve::DEDUP_WINDOW;
use batch::OpenBatch;
use bytes::BytesMut;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhouse_proto::v1::ErrorCode;

/// The options the accumulator needs.
#[derive(Debug, Clone)]
pub(crate) struct AccumulatorConfig {
    pub(crate) batch_size: usize,
    pub(crate) linger: Duration,
    pub(crate) buffer_memory: usize,
    pub(crate) max_request_size: usize,
    pub(crate) delivery_timeout: Duration,
    /// The producer id when idempotence is on.
    pub(crate) producer_id: Option<i64>,
}

/// A record to append.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Append<'a> {
    pub(crate) timestamp: i64,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    pub(crate) headers: &'a [Header],
}

/// A record appended: its batch and position, and whether the sender should look again
/// (a batch sealed or a new linger deadline began).
#[derive(Debug)]
pub(crate) struct Pushed {
    pub(crate) completion: Arc<Completion>,
    pub(crate) index: u32,
    pub(crate) wake_sender: bool,
}

/// Why a record was not appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PushError {
    /// Not enough buffer memory now; wait for batches to complete.
    NoMemory,
    /// The record can never fit a batch.
    RecordTooLarge { size: usize, limit: usize },
}

/// A partition with batches to send.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: u32,
    /// Bytes of the batches a drain would take (at most the dedup window's worth).
    pub(crate) bytes: usize,
    /// Since when the oldest of them has been ready.
    pub(crate) since: Instant,
}

/// A failed batch to report, outside any lock.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) completion: Arc<Completion>,
    pub(crate) error: ProduceError,
    pub(crate) records: u32,
}

#[derive(Debug, Default)]
struct PartitionQueue {
    open: Option<OpenBatch>,
    sealed: VecDeque<QueuedBatch>,
    /// A request with this partition's batches is in flight.
    muted: bool,
    next_sequence: i32,
    epoch: i16,
    /// Replaces the producer's id for this partition once its epochs ran out.
    producer_id: Option<i64>,
}

impl PartitionQueue {
    /// Whether a lingered open batch is sealed now. Not while the partition has a request in
    /// flight or sealed batches waiting (a backoff, an agent being dialled, a leader being
    /// looked up): the open batch keeps filling up to `batch_size` and is sealed when the
    /// partition can send again, as Kafka's accumulator appends to the last batch until it is
    /// drained. Sealing on linger regardless would queue a stalled partition's records in
    /// batches of a few records each, and a failover would then drain thousands of tiny
    /// batches, five per request.
    fn seals_on_linger(&self) -> bool {
        !self.muted && self.sealed.is_empty()
    }
}

/// A topic's index in the accumulator: the per-record path finds its queues without hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TopicId(usize);

#[derive(Debug)]
struct TopicQueues {
    name: Arc<str>,
    partitions: Vec<PartitionQueue>,
}

#[derive(Debug)]
struct Incomplete {
    reserved: usize,
    completion: Arc<Completion>,
}

/// See the module documentation.
pub(crate) struct Accumulator {
    config: AccumulatorConfig,
    partitioner: Arc<dyn Partitioner>,
    topics: Vec<TopicQueues>,
    ids: FxHashMap<Arc<str>, TopicId>,
    /// Every batch not yet settled, for the memory budget and for `flush`.
    incomplete: FxHashMap<u64, Incomplete>,
    used: usize,
    next_id: u64,
    /// Buffers of settled batches, reused for new ones (Kafka's `BufferPool`): in steady state
    /// no batch buffer is allocated or freed, so none is allocated on the sending thread and
    /// freed on the sender's, which fragments the allocator's per-thread arenas (measured:
    /// ~25 MiB of peak RSS at saturation with glibc). Pooled and unsettled bytes together stay
    /// within `buffer_memory`.
    pool: Vec<BytesMut>,
    /// Capacity of the buffers in `pool`.
    pool_bytes: usize,
}

impl Accumulator {
    pub(crate) fn new(config: AccumulatorConfig, partitioner: Arc<dyn Partitioner>) -> Accumulator {
        Accumulator {
            config,
            partitioner,
            topics: Vec::new(),
            ids: FxHashMap::default(),
            incomplete: FxHashMap::default(),
            used: 0,
            next_id: 0,
            pool: Vec::new(),
            pool_bytes: 0,
        }
    }

    /// Bytes reserved by unsettled batches.
    #[cfg(test)]
    pub(crate) fn used_memory(&self) -> usize {
        self.used
    }

    /// Number of unsettled batches.
    pub(crate) fn unsettled(&self) -> usize {
        self.incomplete.len()
    }

    /// Whether any batch is unsettled.
    pub(crate) fn is_idle(&self) -> bool {
        self.incomplete.is_empty()
    }

    /// The id of `name`, registering the topic the first time.
    pub(crate) fn topic_id(&mut self, name: &str) -> TopicId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = TopicId(self.topics.len());
        let name: Arc<str> = Arc::from(name);
        self.topics.push(TopicQueues {
            name: name.clone(),
            partitions: Vec::new(),
        });
        self.ids.insert(name, id);
        id
    }

    fn queue(&mut self, topic: TopicId, partition: u32) -> &mut PartitionQueue {
        // Ids come only from `topic_id` and topics are never removed: the index is valid.
        let queues = &mut self.topics[topic.0].partitions;
        let index = partition as usize;
        if queues.len() <= index {
            queues.resize_with(index + 1, PartitionQueue::default);
        }
        &mut queues[index]
    }

    /// Appends a record to `partition`'s open batch, sealing and opening batches as needed.
    ///
    /// `now` is asked only when a new batch opens (its linger starts then), which keeps a clock
    /// read off the per-record path.
    pub(crate) fn push(
        &mut self,
        topic: TopicId,
        partition: u32,
        record: Append<'_>,
        now: impl FnOnce() -> Instant,
    ) -> Result<Pushed, PushError> {
        let batch_size = self.config.batch_size;
        // Fast path: the record fits the open batch.
        let queue = self.queue(topic, partition);
        if let Some(open) = &mut queue.open {
            let index = open.builder.record_count();
            let appended = open.builder.append_within(
                batch_size,
                record.timestamp,
                record.key,
                record.value,
                record.headers,
            );
            if let Ok(true) = appended {
                let completion = open.completion.clone();
                let full = open.builder.encoded_len() >= batch_size;
                if full {
                    self.seal(topic, partition, now());
                }
                return Ok(Pushed {
                    completion,
                    index,
                    wake_sender: full,
                });
            }
        }
        self.push_new_batch(topic, partition, record, now())
    }

    /// The record does not fit the open batch (or there is none): seal it, open a new one
    /// within the memory budget, append.
    fn push_new_batch(
        &mut self,
        topic: TopicId,
        partition: u32,
        record: Append<'_>,
        now: Instant,
    ) -> Result<Pushed, PushError> {
        let (batch_size, buffer_memory) = (self.config.batch_size, self.config.buffer_memory);
        let limit = self.config.max_request_size.min(buffer_memory);
        let size = BatchBuilder::new().record_len(
            record.timestamp,
            record.key,
            record.value,
            record.headers,
        );
        if HEADER_LEN + size > limit {
            return Err(PushError::RecordTooLarge {
                size: HEADER_LEN + size,
                limit,
            });
        }
        self.seal(topic, partition, now);
        let reserve = batch_size.max(HEADER_LEN + size);
        if self.used + reserve > buffer_memory {
            return Err(PushError::NoMemory);
        }
        let id = self.next_id;
        self.next_id += 1;
        let completion = Completion::new(self.topics[topic.0].name.clone(), partition);
        self.incomplete.insert(
            id,
            Incomplete {
                reserved: reserve,
                completion: completion.clone(),
            },
        );
        self.used += reserve;
        let mut builder = self.take_buffer(reserve);
        if builder
            .append(record.timestamp, record.key, record.value, record.headers)
            .is_err()
        {
            // Unreachable in practice: the size check above refuses anything this large.
            self.complete(id);
            return Err(PushError::RecordTooLarge { size, limit });
        }
        let full = builder.encoded_len() >= batch_size;
        self.queue(topic, partition).open = Some(OpenBatch {
            id,
            builder,
            created: now,
            completion: completion.clone(),
        });
        if full {
            self.seal(topic, partition, now);
        }
        // A new open batch starts a linger deadline the sender must learn about.
        Ok(Pushed {
            completion,
            index: 0,
            wake_sender: true,
        })
    }

    /// Moves the open batch of a partition to its sealed queue and tells the partitioner.
    fn seal(&mut self, topic: TopicId, partition: u32, now: Instant) {
        let name = self.topics[topic.0].name.clone();
        let queue = self.queue(topic, partition);
        if let Some(open) = queue.open.take() {
            queue.sealed.push_back(QueuedBatch {
                id: open.id,
                topic: name.clone(),
                partition,
                created: open.created,
                ready_since: now,
                completion: open.completion,
                record_count: open.builder.record_count(),
                payload: Payload::Built(open.builder),
                stamp: None,
                attempts: 0,
                maybe_applied: false,
                retry_at: None,
            });
            self.partitioner.on_batch_sealed(&name, partition);
        }
    }

    /// Seals every open batch (for `flush`); returns the completions of every unsettled batch.
    pub(crate) fn seal_all(&mut self, now: Instant) -> Vec<Arc<Completion>> {
        let open: Vec<(TopicId, u32)> = self
            .topics
            .iter()
            .enumerate()
            .flat_map(|(id, topic)| {
                topic
                    .partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, q)| q.open.is_some())
                    .map(move |(p, _)| (TopicId(id), p as u32))
            })
            .collect();
        for (topic, partition) in open {
            self.seal(topic, partition, now);
        }
        self.incomplete
            .values()
            .map(|i| i.completion.clone())
            .collect()
    }

    /// Seals batches whose linger expired and fails queued batches whose delivery timeout
    /// expired. Returns the failures to report.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Failure> {
        let (linger, timeout) = (self.config.linger, self.config.delivery_timeout);
        let mut to_seal = Vec::new();
        let mut failures = Vec::new();
        for (id, topic) in self.topics.iter_mut().enumerate() {
            for (p, queue) in topic.partitions.iter_mut().enumerate() {
                if let Some(open) = &queue.open
                    && open.created + linger <= now
                    && queue.seals_on_linger()
                {
                    to_seal.push((TopicId(id), p as u32));
                }
                // A sequenced batch expiring leaves a gap the agent reports as out of order
                // on the next send; the sender starts a new epoch then (not here: the expired
                // batch may have been appended, and then there is no gap).
                queue.sealed.retain(|b| {
                    let expired = b.created + timeout <= now;
                    if expired {
                        let persistence = b.persistence();
                        failures.push((
                            b.id,
                            Failure {
                                completion: b.completion.clone(),
                                error: ProduceError::DeliveryTimeout {
                                    timeout,
                                    persistence,
                                },
                                records: b.record_count,
                            },
                        ));
                    }
                    !expired
                });
            }
        }
        for (topic, partition) in to_seal {
            self.seal(topic, partition, now);
        }
        failures
            .into_iter()
            .map(|(id, failure)| {
                self.complete(id);
                failure
            })
            .collect()
    }

    /// Partitions with a batch that may be sent now (sealed, not muted, not backing off),
    /// with the bytes a drain would take and how long the oldest has waited.
    pub(crate) fn ready(&self, now: Instant) -> Vec<Ready> {
        let mut ready = Vec::new();
        for topic in &self.topics {
            for (p, queue) in topic.partitions.iter().enumerate() {
                if let Some(head) = queue.sealed.front()
                    && !queue.muted
                    && head.retry_at.is_none_or(|at| at <= now)
                {
                    ready.push(Ready {
                        topic: topic.name.clone(),
                        partition: p as u32,
                        bytes: queue
                            .sealed
                            .iter()
                            .take(DEDUP_WINDOW)
                            .map(|b| b.payload.len())
                            .sum(),
                        since: head.retry_at.unwrap_or(head.ready_since),
                    });
                }
            }
        }
        ready
    }

    /// The earliest instant after `now` at which `expire` or `ready` would answer differently.
    pub(crate) fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let (linger, timeout) = (self.config.linger, self.config.delivery_timeout);
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for topic in &self.topics {
            for queue in &topic.partitions {
                if let Some(open) = &queue.open
                    && queue.seals_on_linger()
                {
                    consider(open.created + linger);
                }
                if let Some(head) = queue.sealed.front() {
                    // A backoff already over is no future event (the batch is ready now,
                    // perhaps held back by the sender): reporting it would wake the sender in a
                    // loop.
                    if let Some(at) = head.retry_at.filter(|at| !queue.muted && *at > now) {
                        consider(at);
                    }
                    // Retries are queued in front and are the oldest, so the head's creation
                    // is the earliest delivery deadline of the queue.
                    consider(head.created + timeout);
                }
            }
        }
        next
    }

    /// Takes up to [`DEDUP_WINDOW`] sendable batches of a partition, at most `max_bytes`
    /// (at least one), assigns sequences to new ones, and mutes the partition.
    pub(crate) fn drain(
        &mut self,
        topic: &str,
        partition: u32,
        max_bytes: usize,
        now: Instant,
    ) -> Vec<QueuedBatch> {
        let base_id = self.config.producer_id;
        let topic = self.topic_id(topic);
        let queue = self.queue(topic, partition);
        let producer_id = base_id.map(|id| queue.producer_id.unwrap_or(id));
        let mut drained = Vec::new();
        let mut bytes = 0;
        if queue.muted {
            return drained;
        }
        while drained.len() < DEDUP_WINDOW {
            let Some(head) = queue.sealed.front() else {
                break;
            };
            if head.retry_at.is_some_and(|at| at > now)
                || (!drained.is_empty() && bytes + head.payload.len() > max_bytes)
            {
                break;
            }
            let mut batch = queue.sealed.pop_front().expect("front exists");
            bytes += batch.payload.len();
            if let (Some(producer_id), None) = (producer_id, batch.stamp) {
                batch.stamp = Some(ProducerStamp {
                    producer_id,
                    producer_epoch: queue.epoch,
                    base_sequence: queue.next_sequence,
                });
                queue.next_sequence = sequence_add(queue.next_sequence, batch.record_count);
            }
            batch.retry_at = None;
            drained.push(batch);
        }
        queue.muted = !drained.is_empty();
        drained
    }

    /// The partition's request finished (whatever the outcome): it may send again.
    pub(crate) fn unmute(&mut self, topic: &str, partition: u32) {
        let topic = self.topic_id(topic);
        self.queue(topic, partition).muted = false;
    }

    /// Puts batches of one partition back at the front of its queue, in the order given, to be
    /// sent again no earlier than `retry_at`.
    pub(crate) fn requeue(
        &mut self,
        batches: Vec<QueuedBatch>,
        retry_at: Option<Instant>,
        now: Instant,
    ) {
        for mut batch in batches.into_iter().rev() {
            batch.retry_at = retry_at;
            batch.ready_since = now;
            let topic = self.topic_id(&batch.topic);
            self.queue(topic, batch.partition).sealed.push_front(batch);
        }
    }

    /// Starts a new epoch for a partition: its sequence restarts at 0, and queued batches that
    /// already carry a sequence are restamped in order. Used when the agent reports a gap
    /// before the partition's first unsettled batch (a batch before it failed for good, or the
    /// agent lost its state), which it would otherwise refuse forever.
    ///
    /// After 32,767 resets the epoch cannot grow: the partition then goes on under a new
    /// producer id (derived from the old one, 63 bits like a drawn one) at epoch 0. Returns the
    /// batches that could not be restamped (never expected: an encoded batch always has a
    /// header), failed rather than sent with a stale stamp.
    pub(crate) fn reset_sequence(&mut self, topic: &str, partition: u32) -> Vec<Failure> {
        let Some(base_id) = self.config.producer_id else {
            return Vec::new();
        };
        let topic = self.topic_id(topic);
        let queue = self.queue(topic, partition);
        if queue.epoch == i16::MAX {
            let old = queue.producer_id.unwrap_or(base_id);
            queue.producer_id = Some(next_producer_id(old, partition));
            queue.epoch = 0;
        } else {
            queue.epoch += 1;
        }
        let producer_id = queue.producer_id.unwrap_or(base_id);
        queue.next_sequence = 0;
        let mut unstampable = Vec::new();
        for batch in queue.sealed.iter_mut().filter(|b| b.stamp.is_some()) {
            let stamp = ProducerStamp {
                producer_id,
                producer_epoch: queue.epoch,
                base_sequence: queue.next_sequence,
            };
            queue.next_sequence = sequence_add(queue.next_sequence, batch.record_count);
            batch.stamp = Some(stamp);
            if let Payload::Encoded(bytes) = &mut batch.payload {
                // In place when the request that carried it is gone (the usual case); else a
                // copy that replaces the shared bytes (the reservation covers one of them).
                let mut owned = std::mem::take(bytes)
                    .try_into_mut()
                    .unwrap_or_else(|b| BytesMut::from(&b[..]));
                match set_producer_stamp(&mut owned, stamp) {
                    Ok(()) => *bytes = owned.freeze(),
                    Err(e) => unstampable.push((batch.id, e)),
                }
            }
        }
        let mut failed = Vec::new();
        for (id, error) in unstampable {
            let queue = self.queue(topic, partition);
            if let Some(at) = queue.sealed.iter().position(|b| b.id == id) {
                let batch = queue.sealed.remove(at).expect("position is in range");
                self.complete(id);
                failed.push(Failure {
                    completion: batch.completion,
                    error: ProduceError::Encoding(Arc::new(error)),
                    records: batch.record_count,
                });
            }
        }
        failed
    }

    /// A builder for a new batch of `reserve` bytes (already counted in `used`): in a pooled
    /// buffer if one is large enough, else in a new one, for which pooled buffers are let go
    /// until `used` and the pool fit in `buffer_memory` again.
    fn take_buffer(&mut self, reserve: usize) -> BatchBuilder {
        if let Some(buffer) = self.pool.pop() {
            self.pool_bytes -= buffer.capacity();
            if reserve <= buffer.capacity() {
                return BatchBuilder::with_buffer(buffer);
            }
        }
        while self.used + self.pool_bytes > self.config.buffer_memory {
            match self.pool.pop() {
                Some(buffer) => self.pool_bytes -= buffer.capacity(),
                None => break,
            }
        }
        BatchBuilder::with_capacity(reserve)
    }

    /// Takes back the buffer of a settled batch (call [`complete`](Self::complete) first) for
    /// a later batch, if it is a full batch buffer and the pool has room.
    pub(crate) fn recycle(&mut self, buffer: BytesMut) {
        let capacity = buffer.capacity();
        if capacity >= self.config.batch_size
            && self.used + self.pool_bytes + capacity <= self.config.buffer_memory
        {
            self.pool_bytes += capacity;
            self.pool.push(buffer);
        }
    }

    /// A batch is settled: its memory is free.
    pub(crate) fn complete(&mut self, id: u64) {
        if let Some(done) = self.incomplete.remove(&id) {
            self.used -= done.reserved;
        }
    }

    /// Fails every batch of a partition that is not in flight, with `error` (the partition no
    /// longer exists); one that may have been appended by an earlier attempt says so.
    pub(crate) fn fail_partition(
        &mut self,
        topic: &str,
        partition: u32,
        error: &ProduceError,
    ) -> Vec<Failure> {
        let id = self.topic_id(topic);
        let queue = self.queue(id, partition);
        let mut failed = Vec::new();
        if let Some(open) = queue.open.take() {
            let records = open.builder.record_count();
            failed.push((open.id, open.completion, false, records));
        }
        for b in queue.sealed.drain(..) {
            failed.push((b.id, b.completion, b.maybe_applied, b.record_count));
        }
        failed
            .into_iter()
            .map(|(id, completion, maybe_applied, records)| {
                self.complete(id);
                let error = if maybe_applied {
                    // Sent before the topic shrank, and maybe appended then.
                    ProduceError::Rejected {
                        code: ErrorCode::UnknownPartition,
                        message: error.to_string(),
                        persistence: Persistence::PossiblyPersisted,
                    }
                } else {
                    error.clone()
                };
                Failure {
                    completion,
                    error,
                    records,
                }
            })
            .collect()
    }

    /// Fails every batch not in flight (for `close`). In-flight batches are the sender's.
    pub(crate) fn abort(&mut self) -> Vec<Failure> {
        let mut failed = Vec::new();
        for topic in &mut self.topics {
            for queue in &mut topic.partitions {
                if let Some(open) = queue.open.take() {
                    let records = open.builder.record_count();
                    failed.push((open.id, open.completion, Persistence::NotPersisted, records));
                }
                for b in queue.sealed.drain(..) {
                    let persistence = b.persistence();
                    failed.push((b.id, b.completion, persistence, b.record_count));
                }
            }
        }
        failed
            .into_iter()
            .map(|(id, completion, persistence, records)| {
                self.complete(id);
                Failure {
                    completion,
                    error: ProduceError::Closed { persistence },
                    records,
                }
            })
            .collect()
    }
}

/// A fresh producer id for a partition whose epochs ran out: splitmix64 of the old one, 63 bits.
fn next_producer_id(old: i64, partition: u32) -> i64 {
    let mut z = (old as u64) ^ (u64::from(partition) << 32) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}
