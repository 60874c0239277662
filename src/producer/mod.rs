//! The producer: batches records per partition and delivers them with real offsets.
//!
//! ```text
//!  send(ProducerRecord) ──▶ Partitioner ──▶ Accumulator (sans-IO, one lock) ──▶ DeliveryFuture
//!    │ waits only for buffer memory            │ open batch per partition        (batch + index)
//!    │ (max_block, then BufferExhausted)       │ seals on batch_size / linger / flush
//!    ▼                                         ▼
//!  Discovery (cached TopicMetadata)      Sender task: drains sealed batches per leader agent,
//!                                        ≤ max_in_flight requests per agent, one per partition;
//!                                        encodes (codec, CRC) in the request task
//!                                              │ ProduceRequest
//!                                              ▼
//!                                        Retry → Timeout → user layers → Connection (Transport)
//!                                              │ ProduceResponse: offset or ErrorCode per batch
//!                                              ▼
//!                                        resolve the batch's completion: every record's
//!                                        DeliveryFuture yields base offset + index
//! ```
//!
//! # Guarantees
//!
//! - A record's future resolves only after the agent's answer, with its offset; or with a
//!   [`ProduceError`] whose [`persistence`](ProduceError::persistence) says whether it may be in
//!   the log anyway.
//! - Per partition, records land in send order: one request per partition is in flight at a
//!   time, carrying at most five batches in order, and retries re-send the same batches first.
//! - With idempotence (the default) a retried batch is never appended twice: every batch carries
//!   the producer id, an epoch and its sequence, and the agent answers a repeat with the original
//!   offset. The producer id is a random 63-bit number chosen by the client: no round trip, no
//!   coordination between agents, and a collision needs two producers of the same partition to
//!   draw the same id: for n producers of one partition the odds are about n²/2⁶⁴, one in
//!   2×10⁷ for a million, one in 2×10¹¹ for the 10,000 an agent tracks per partition by
//!   default. When a batch fails for good the partition starts a new epoch and its sequence
//!   restarts at 0, so one loss never blocks the batches after it (after 32,767 epochs, under a
//!   new producer id). With [`Acks::None`] idempotence is off and delivery is at most once.
//! - Memory is bounded by `buffer_memory`; `send` waits for it at most `max_block`.
//! - Every record's outcome is known within `delivery_timeout`.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use streamhouse::mock::MockAgent;
//! use streamhouse::producer::{Acks, Producer, ProducerRecord};
//!
//! let agent = MockAgent::new().with_topic("orders", 3);
//! let producer = Producer::builder(agent.transport(), agent.discovery())
//!     .acks(Acks::Leader)
//!     .build()?;
//! let delivery = producer.send(ProducerRecord::new("orders", b"hello").key(b"k1")).await?;
//! let metadata = delivery.await?;
//! assert_eq!(metadata.offset, 0);
//! producer.close(std::time::Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```

pub(crate) mod accumulator;
mod builder;
mod clock;
mod config;
mod delivery;
mod error;
mod init;
mod record;
mod sender;
mod stats;

pub use builder::ProducerBuilder;
pub use config::{Acks, ProducerConfig};
pub use delivery::DeliveryFuture;
pub use error::{ConfigError, Persistence, ProduceError};
pub use init::{InitProducerIdError, init_producer_id};
pub use record::{ProducerRecord, RecordMetadata};
pub use stats::ProducerStats;

use crate::discovery::{Discovery, TopicMetadata};
use crate::partitioner::Partitioner;
use crate::transport::Transport;
use accumulator::{Accumulator, Append, PushError, TopicId};
use rustc_hash::FxHashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Sends records to partitioned topics. Cheap to clone; all clones share one buffer and one
/// sender task. When the last clone is dropped, buffered records are still delivered (as by
/// [`flush`](Producer::flush)) before the sender task ends; call [`close`](Producer::close) to
/// wait for that.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
    _handle: Arc<HandleGuard>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Where the producer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Open,
    /// No more sends; deliver what is buffered, then the sender ends.
    Closing,
    /// Fail everything still pending, then the sender ends.
    Abort,
}

/// State shared by `send` and the sender task, behind one lock. A std mutex: it is held for
/// an append or a drain (no `.await` inside), which is shorter than a tokio mutex's own
/// bookkeeping would be.
pub(crate) struct State {
    pub(crate) acc: Accumulator,
    /// Looked up once per record: a fast (Fx) hash of the topic name.
    pub(crate) metadata: FxHashMap<Arc<str>, TopicEntry>,
    pub(crate) phase: Phase,
}

/// What `send` needs about a topic: its leaders and its queues in the accumulator.
pub(crate) struct TopicEntry {
    pub(crate) metadata: Arc<TopicMetadata>,
    pub(crate) id: TopicId,
}

impl State {
    /// Caches fresh metadata for a topic.
    pub(crate) fn set_metadata(&mut self, metadata: Arc<TopicMetadata>) {
        let id = self.acc.topic_id(metadata.topic());
        self.metadata
            .insert(metadata.topic().clone(), TopicEntry { metadata, id });
    }
}

pub(crate) struct Inner {
    state: Mutex<State>,
    /// Something for the sender to look at: a batch sealed or opened, a flush, a close.
    pub(crate) wake_sender: Notify,
    /// Batches settled, so buffer memory was freed.
    pub(crate) memory_freed: Notify,
    pub(crate) config: ProducerConfig,
    pub(crate) partitioner: Arc<dyn Partitioner>,
    pub(crate) discovery: Arc<dyn Discovery>,
    pub(crate) counters: stats::Counters,
    sender: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // The state is only changed by non-panicking code; a poisoned lock still holds a
        // consistent value.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Dropped with the last `Producer` clone: lets the sender drain and finish.
struct HandleGuard {
    inner: Arc<Inner>,
}

impl Drop for HandleGuard {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        if state.phase == Phase::Open {
            state.phase = Phase::Closing;
        }
        drop(state);
        self.inner.wake_sender.notify_one();
    }
}

/// The future of [`Producer::send`]: resolves once the record is in a batch, with the
/// record's [`DeliveryFuture`].
#[must_use = "futures do nothing unless polled"]
pub struct SendFuture<'a> {
    producer: &'a Producer,
    record: ProducerRecord<'a>,
    /// The slow path, boxed only when the record could not be appended at once.
    slow: Option<SlowSend<'a>>,
}

/// The boxed slow path of a send.
type SlowSend<'a> = Pin<Box<dyn Future<Output = Result<DeliveryFuture, ProduceError>> + Send + 'a>>;

impl std::fmt::Debug for SendFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendFuture")
            .field("record", &self.record)
            .field("waiting", &self.slow.is_some())
            .finish()
    }
}

impl Future for SendFuture<'_> {
    type Output = Result<DeliveryFuture, ProduceError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(slow) = &mut this.slow {
            return slow.as_mut().poll(cx);
        }
        let record = this.record;
        let timestamp = record.timestamp.unwrap_or_else(clock::now_ms);
        let append = Append {
            timestamp,
            key: record.key,
            value: record.value,
            headers: record.headers,
        };
        match this.producer.try_push(&record, append) {
            Attempt::Pushed(Ok(pushed)) => {
                Poll::Ready(Ok(this.producer.delivery(pushed, timestamp)))
            }
            Attempt::Pushed(Err(PushError::RecordTooLarge { size, limit })) => {
                Poll::Ready(Err(ProduceError::RecordTooLarge { size, limit }))
            }
            Attempt::Invalid(error) => Poll::Ready(Err(error)),
            Attempt::NeedMetadata | Attempt::Pushed(Err(PushError::NoMemory)) => {
                let mut slow = Box::pin(this.producer.send_slow(record, timestamp));
                let poll = slow.as_mut().poll(cx);
                this.slow = Some(slow);
                poll
            }
        }
    }
}

enum Attempt {
    Pushed(Result<accumulator::Pushed, PushError>),
    NeedMetadata,
    Invalid(ProduceError),
}

impl Producer {
    /// Starts building a producer over `transport`, finding leaders with `discovery`.
    pub fn builder(transport: impl Transport, discovery: impl Discovery) -> ProducerBuilder {
        ProducerBuilder::new(Arc::new(transport), Arc::new(discovery))
    }

    /// Counters of what this producer (and its clones) sent and how it went.
    pub fn stats(&self) -> ProducerStats {
        self.inner.counters.snapshot()
    }

    /// The configuration in force.
    pub fn config(&self) -> &ProducerConfig {
        &self.inner.config
    }

    /// Appends a record to its partition's batch and returns a future for its delivery.
    ///
    /// Waits only for buffer memory (at most `max_block`, then
    /// [`ProduceError::BufferExhausted`]) and, the first time a topic is used, for its
    /// metadata. The record is copied; nothing is kept borrowed.
    ///
    /// The returned future does nothing until polled; in the common case its first poll
    /// appends the record and completes.
    pub fn send<'a>(&'a self, record: ProducerRecord<'a>) -> SendFuture<'a> {
        SendFuture {
            producer: self,
            record,
            slow: None,
        }
    }

    /// The path of a record that could not be appended at once: ask discovery for the topic,
    /// or wait for buffer memory.
    async fn send_slow(
        &self,
        record: ProducerRecord<'_>,
        timestamp: i64,
    ) -> Result<DeliveryFuture, ProduceError> {
        let append = Append {
            timestamp,
            key: record.key,
            value: record.value,
            headers: record.headers,
        };
        let mut block_deadline = None;
        loop {
            let attempt = self.try_push(&record, append);
            let pushed = match attempt {
                Attempt::Pushed(pushed) => pushed,
                Attempt::Invalid(error) => return Err(error),
                Attempt::NeedMetadata => {
                    // `max_block` bounds everything `send` waits for: metadata too.
                    let max_block = self.inner.config.max_block;
                    let deadline =
                        *block_deadline.get_or_insert_with(|| Instant::now() + max_block);
                    let lookup = self.inner.discovery.topic(record.topic);
                    let metadata =
                        tokio::time::timeout_at(deadline, lookup)
                            .await
                            .map_err(|_| ProduceError::MetadataTimeout {
                                topic: record.topic.to_owned(),
                                max_block,
                            })??;
                    self.inner.lock().set_metadata(metadata);
                    continue;
                }
            };
            match pushed {
                Ok(pushed) => return Ok(self.delivery(pushed, timestamp)),
                Err(PushError::RecordTooLarge { size, limit }) => {
                    return Err(ProduceError::RecordTooLarge { size, limit });
                }
                Err(PushError::NoMemory) => {
                    let max_block = self.inner.config.max_block;
                    let deadline =
                        *block_deadline.get_or_insert_with(|| Instant::now() + max_block);
                    // Registered before the retry below, so a release in between is not missed.
                    let freed = self.inner.memory_freed.notified();
                    tokio::pin!(freed);
                    freed.as_mut().enable();
                    if let Attempt::Pushed(Ok(pushed)) = self.try_push(&record, append) {
                        return Ok(self.delivery(pushed, timestamp));
                    }
                    // Let the sender drain: sealed batches are what frees memory.
                    self.inner.wake_sender.notify_one();
                    if tokio::time::timeout_at(deadline, freed).await.is_err() {
                        return Err(ProduceError::BufferExhausted(max_block));
                    }
                }
            }
        }
    }

    /// The future of an appended record; wakes the sender if the append sealed or opened a
    /// batch.
    fn delivery(&self, pushed: accumulator::Pushed, timestamp: i64) -> DeliveryFuture {
        if pushed.wake_sender {
            self.inner.wake_sender.notify_one();
        }
        DeliveryFuture::new(pushed.completion, pushed.index, timestamp)
    }

    /// One attempt at appending under the lock: metadata, partition, push.
    fn try_push(&self, record: &ProducerRecord<'_>, append: Append<'_>) -> Attempt {
        let mut guard = self.inner.lock();
        let State {
            acc,
            metadata,
            phase,
        } = &mut *guard;
        if *phase != Phase::Open {
            return Attempt::Invalid(ProduceError::Closed {
                persistence: Persistence::NotPersisted,
            });
        }
        let Some(topic) = metadata.get(record.topic) else {
            return Attempt::NeedMetadata;
        };
        let partitions = topic.metadata.partition_count();
        let partition = match record.partition {
            Some(p) if p < partitions.get() => p,
            Some(p) => {
                return Attempt::Invalid(ProduceError::UnknownPartition {
                    partition: p,
                    partitions: partitions.get(),
                });
            }
            None => {
                let p = self
                    .inner
                    .partitioner
                    .partition(record.topic, record.key, partitions);
                if p >= partitions.get() {
                    return Attempt::Invalid(ProduceError::InvalidPartitioner {
                        partition: p,
                        partitions: partitions.get(),
                    });
                }
                p
            }
        };
        Attempt::Pushed(acc.push(topic.id, partition, append, || Instant::now().into_std()))
    }

    /// Sends a record and waits for its delivery.
    pub async fn send_and_wait(
        &self,
        record: ProducerRecord<'_>,
    ) -> Result<RecordMetadata, ProduceError> {
        self.send(record).await?.await
    }

    /// Sends every buffered record now (ignoring `linger`) and waits until each record sent
    /// before this call is acknowledged or failed. Outcomes are reported by the records'
    /// futures.
    pub async fn flush(&self) {
        let pending = self.inner.lock().acc.seal_all(Instant::now().into_std());
        self.inner.wake_sender.notify_one();
        for completion in pending {
            completion.settled().await;
        }
    }

    /// Flushes, waiting at most `timeout`, then stops the producer. Records not settled by
    /// then fail with [`ProduceError::Closed`] (and `close` returns
    /// [`ProduceError::CloseTimedOut`]); later `send`s fail with `Closed`. Returns once the
    /// sender task has ended.
    pub async fn close(&self, timeout: Duration) -> Result<(), ProduceError> {
        let deadline = Instant::now() + timeout;
        {
            let mut state = self.inner.lock();
            if state.phase == Phase::Open {
                state.phase = Phase::Closing;
            }
        }
        let flushed = tokio::time::timeout_at(deadline, self.flush())
            .await
            .is_ok();
        let unfinished = if flushed {
            0
        } else {
            let mut state = self.inner.lock();
            state.phase = Phase::Abort;
            state.acc.unsettled()
        };
        self.inner.wake_sender.notify_one();
        let sender = self
            .inner
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut sender) = sender {
            // The sender ends once nothing is unsettled; should it still wait on something
            // (a hanging dial or metadata lookup) at the deadline, it is told to abort, which
            // it does at once. The sender never panics by design; if it did, there is nothing
            // left to stop.
            if tokio::time::timeout_at(deadline, &mut sender)
                .await
                .is_err()
            {
                self.inner.lock().phase = Phase::Abort;
                self.inner.wake_sender.notify_one();
                let _ = sender.await;
            }
        }
        if unfinished > 0 {
            Err(ProduceError::CloseTimedOut {
                unfinished_batches: unfinished,
            })
        } else {
            Ok(())
        }
    }
}
