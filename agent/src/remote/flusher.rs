//! The flusher: one task that turns new batches of every partition into objects and metadata
//! commits, then answers the durable acknowledgements each commit covers.
//!
//! Each partition has two cursors: *sent* (read for an object on its way) and *committed* (its
//! high watermark in the store). Every `flush_interval`, and whenever `flush_bytes` are waiting,
//! the flusher reads every partition's batches past *sent* from the local log (at most
//! `flush_bytes` in all, so a backlog becomes several objects) and starts writing them as one
//! object, in a task of its own: up to [`MAX_UPLOADS`] objects are on their way at once, and
//! they are committed strictly in order (each range must start at its partition's high
//! watermark). A failing PUT is retried by its task; a failing commit by the flusher, with
//! backoff; meanwhile waiting answers older than `durable_timeout` are answered
//! `STORAGE_ERROR`. A commit conflict (another writer moved the high watermark) fences the
//! partition, and every object still on its way is dropped and rebuilt from *committed*.

use super::upload::{BACKOFF_FIRST, BACKOFF_MAX, Key, Object, Part, read_new};
use super::{Counters, Msg, Objects, Pressure, Waiter, bump};
use crate::RemoteConfig;
use crate::log::PartitionLog;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use streamhouse::batch::BatchHeader;
use streamhouse::serve::{PartitionState, ProducerSnapshot, Rejection};
use streamhouse_metastore::{LeaseId, MetadataStore, StoreError};
use streamhouse_proto::v1::ErrorCode;
use tokio::sync::{mpsc, oneshot};

/// Objects written at once (each commit still waits for the ones before it).
pub(super) const MAX_UPLOADS: usize = 4;
/// Appends stopped this long while durable answers wait: their producers are out of requests
/// in flight, so an object starts without waiting for the interval.
const QUIET: Duration = Duration::from_millis(10);
/// How often waiting answers are checked against `durable_timeout` while nothing else happens.
const HEARTBEAT: Duration = Duration::from_millis(50);

/// A partition as the flusher sees it.
struct Cursor {
    log: Arc<PartitionLog>,
    /// The committed high watermark: everything below it is in objects.
    committed: i64,
    /// Everything below it is in an object written or on its way (≥ `committed`).
    sent: i64,
    /// Producer state as of `sent` (the source of the snapshots each commit carries).
    shadow: PartitionState,
    /// The producer snapshots as committed: `shadow` is rebuilt from them on a rewind (it
    /// must never run ahead of the objects that will carry it).
    committed_producers: BTreeMap<i64, ProducerSnapshot>,
    waiters: Vec<Waiter>,
    /// Set after a commit conflict: not uploaded again.
    fenced: bool,
    /// The partition lease its objects are committed under (agents of a group).
    lease: Option<LeaseId>,
    /// Which opening of the partition this is: a commit answers only the opening whose
    /// batches it holds (a partition taken over again is a new opening of the same key).
    generation: u64,
    /// A graceful handover waits for everything in the log to be committed.
    handover: Option<oneshot::Sender<i64>>,
}

/// An object on its way: built, being written by its task.
struct Upload {
    object: Object,
    bytes: usize,
    task: tokio::task::JoinHandle<()>,
    started: Instant,
}

pub(super) struct Flusher {
    store: Arc<dyn MetadataStore>,
    objects: Arc<Objects>,
    config: RemoteConfig,
    pressure: Arc<Pressure>,
    counters: Arc<Counters>,
    prefix: String,
    next_object: u64,
    rx: mpsc::UnboundedReceiver<Msg>,
    parts: BTreeMap<Key, Cursor>,
    /// Oldest first: committed in this order.
    uploads: VecDeque<Upload>,
    /// Why the last PUT or commit failed, for the answers that give up.
    last_error: Arc<Mutex<String>>,
    /// Set once asked to stop: finish, then answer.
    stopping: Option<oneshot::Sender<()>>,
    /// When stopping: the time after which failing PUTs and commits are given up.
    give_up_at: Option<Instant>,
    /// How long recent objects took from start to commit (moving average).
    cycle: Duration,
    /// Openings of partitions so far (each `Track` is a new one).
    generations: u64,
}

impl Flusher {
    pub(super) fn new(
        store: Arc<dyn MetadataStore>,
        objects: Arc<Objects>,
        config: RemoteConfig,
        pressure: Arc<Pressure>,
        counters: Arc<Counters>,
        prefix: String,
        rx: mpsc::UnboundedReceiver<Msg>,
    ) -> Flusher {
        Flusher {
            store,
            objects,
            config,
            pressure,
            counters,
            prefix,
            next_object: 0,
            rx,
            parts: BTreeMap::new(),
            uploads: VecDeque::new(),
            last_error: Arc::default(),
            stopping: None,
            give_up_at: None,
            cycle: Duration::ZERO,
            generations: 0,
        }
    }

    pub(super) async fn run(mut self) {
        // Checked ten times per interval, and at least every 10 ms (how soon a stall of the
        // producers is seen, below).
        let mut tick = tokio::time::interval(
            (self.config.flush_interval / 10).clamp(Duration::from_millis(1), QUIET),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pressure = self.pressure.clone();
        loop {
            let mut due = false;
            let mut quiet = false;
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.take(msg),
                    None => break,
                },
                () = pressure.wake.notified() => {}
                // An object takes `cycle` to write and commit: it starts that much (at most
                // half the interval) before the oldest batch has waited the interval, so the
                // batch is committed about then.
                _ = tick.tick() => {
                    let ahead = self.cycle.min(self.config.flush_interval / 2);
                    due = self.pressure.waited() + ahead >= self.config.flush_interval;
                    // Durable answers wait on batches no object holds yet, and nothing has
                    // been appended for a tick: their producers have used up their requests
                    // in flight and send nothing more until answered. Waiting for the
                    // interval would only stall them.
                    // (The cheap test first: `starved` looks at every waiter.)
                    quiet = self.pressure.quiet().is_some_and(|q| q >= QUIET) && self.starved();
                }
                written = front(&mut self.uploads) => self.written(written).await,
                () = tokio::time::sleep(HEARTBEAT) => {}
            }
            // A handover waits for its last batches: no reason to wait for the interval.
            due |= self.handing_over();
            self.start_uploads(due, quiet).await;
            self.handovers();
            self.expire();
            if self.stopping.is_some() {
                self.finish().await;
                break;
            }
        }
        self.abandon();
    }

    /// Handles one message (answers waiters already covered at once).
    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Track {
                topic,
                partition,
                log,
                committed,
                snapshots,
                lease,
            } => {
                if log.local_range().1 > committed {
                    // A tail left by the last run: uploaded within the interval.
                    self.pressure.waiting();
                }
                let committed_producers: BTreeMap<i64, ProducerSnapshot> =
                    snapshots.into_iter().map(|s| (s.producer_id, s)).collect();
                self.generations += 1;
                let key = (topic, partition);
                if let Some(old) = self.parts.remove(&key) {
                    // Opened again (taken over): objects on their way hold the old opening's
                    // batches. Built again from the committed offsets.
                    Self::drop_cursor(old, "the partition was opened again");
                    self.rewind();
                }
                self.parts.insert(
                    key,
                    Cursor {
                        log,
                        committed,
                        sent: committed,
                        shadow: shadow_at(committed, &committed_producers),
                        committed_producers,
                        waiters: Vec::new(),
                        fenced: false,
                        lease,
                        generation: self.generations,
                        handover: None,
                    },
                );
            }
            Msg::Release {
                key,
                log,
                flush,
                done,
            } => match self.parts.get_mut(&key) {
                Some(cursor) if Arc::ptr_eq(&cursor.log, &log) => {
                    if flush && !cursor.fenced {
                        cursor.handover = Some(done);
                        self.handovers();
                    } else if let Some(cursor) = self.parts.remove(&key) {
                        let _ = done.send(cursor.committed);
                        Self::drop_cursor(cursor, "this agent gave up the partition's lease");
                    }
                }
                _ => {
                    let _ = done.send(-1);
                }
            },
            Msg::Wait {
                topic,
                partition,
                waiters,
            } => match self.parts.get_mut(&(topic, partition)) {
                Some(cursor) if !cursor.fenced => {
                    for waiter in waiters {
                        if waiter.end <= cursor.committed {
                            waiter.answer();
                        } else {
                            cursor.waiters.push(waiter);
                        }
                    }
                }
                _ => {
                    for waiter in waiters {
                        waiter.fail(Rejection::new(
                            ErrorCode::NotLeader,
                            "this agent no longer writes the partition to object storage",
                        ));
                    }
                }
            },
            Msg::Untrack { topic } => {
                let gone: Vec<Key> = self
                    .parts
                    .keys()
                    .filter(|(t, _)| *t == topic)
                    .cloned()
                    .collect();
                for key in gone {
                    if let Some(cursor) = self.parts.remove(&key) {
                        for waiter in cursor.waiters {
                            waiter.fail(Rejection::new(
                                ErrorCode::UnknownTopic,
                                format!("topic {topic:?} was deleted"),
                            ));
                        }
                    }
                }
            }
            Msg::Shutdown(done) => self.stopping = Some(done),
        }
    }

    /// Refuses a partition's waiting answers `NOT_LEADER` (its lease is gone; what they wait
    /// for may never be committed) and ends a handover waiting on it.
    fn drop_cursor(mut cursor: Cursor, why: &str) {
        for waiter in cursor.waiters.drain(..) {
            waiter.fail(Rejection::new(
                ErrorCode::NotLeader,
                format!("{why}; retry with the partition's new leader"),
            ));
        }
        if let Some(done) = cursor.handover.take() {
            let _ = done.send(cursor.committed);
        }
    }

    /// Ends the handovers whose logs are wholly committed (or that cannot be: fenced).
    fn handovers(&mut self) {
        let done: Vec<Key> = self
            .parts
            .iter()
            .filter(|(_, c)| {
                c.handover.is_some() && (c.fenced || c.committed >= c.log.local_range().1)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            if let Some(cursor) = self.parts.remove(&key) {
                Self::drop_cursor(cursor, "this agent handed the partition over");
            }
        }
    }

    /// Whether a handover waits for its partition's last batches to be committed.
    fn handing_over(&self) -> bool {
        self.parts.values().any(|c| c.handover.is_some())
    }

    /// Takes every message waiting (between retries, so answers keep flowing).
    fn absorb(&mut self) {
        while let Ok(msg) = self.rx.try_recv() {
            self.take(msg);
        }
    }

    fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether some durable answer waits on batches that no object on its way holds.
    fn starved(&self) -> bool {
        self.parts
            .values()
            .any(|c| !c.fenced && c.waiters.iter().any(|w| w.end > c.sent))
    }

    /// Answers `STORAGE_ERROR` to durable answers that have waited `durable_timeout`.
    fn expire(&mut self) {
        let timeout = self.config.durable_timeout;
        let now = Instant::now();
        let mut expired = 0;
        let reason = self.last_error();
        for cursor in self.parts.values_mut() {
            if !cursor
                .waiters
                .iter()
                .any(|w| now.duration_since(w.since) >= timeout)
            {
                continue;
            }
            let (old, young): (Vec<_>, Vec<_>) = std::mem::take(&mut cursor.waiters)
                .into_iter()
                .partition(|w| now.duration_since(w.since) >= timeout);
            cursor.waiters = young;
            for waiter in old {
                expired += 1;
                waiter.fail(Rejection::new(
                    ErrorCode::StorageError,
                    format!(
                        "written to the local log but not committed to object storage within \
                         {timeout:?} (retry; it will be answered as a duplicate once committed): \
                         {reason}"
                    ),
                ));
            }
        }
        if expired > 0 {
            bump(&self.counters.durable_timeouts, expired);
            metrics::counter!("streamhouse_durable_timeouts_total").increment(expired);
        }
    }

    /// Starts objects while fewer than [`MAX_UPLOADS`] are on their way: whenever half of
    /// `flush_bytes` is waiting (the writes stay busy under load), and when `due` (the oldest
    /// waiting batch will have waited the flush interval by the time an object started now is
    /// committed) with nothing being written, and when `quiet` (durable answers wait on
    /// batches no object holds and nothing was appended for [`QUIET`]: their producers wait
    /// for those answers before they send more). Under a steady load no object is smaller than
    /// half of `flush_bytes` (so at most `2 GiB / flush_bytes` PUTs per GiB); a smaller one is
    /// written when the interval runs out first, or when the producers stall on it.
    async fn start_uploads(&mut self, mut due: bool, mut quiet: bool) {
        while self.uploads.len() < MAX_UPLOADS {
            let idle = self.uploads.is_empty();
            let full = self.pressure.unflushed() >= self.config.flush_bytes / 2;
            if !(due && idle || full || quiet) {
                return;
            }
            due = false;
            quiet = false;
            let parts = self.collect().await;
            if parts.is_empty() {
                return;
            }
            let bytes: usize = parts.iter().flat_map(|p| &p.batches).map(Bytes::len).sum();
            self.pressure.uploaded(bytes);
            let more = self.parts.values().any(has_new);
            self.pressure.collected(more);
            let key = format!("{}{:010}", self.prefix, self.next_object);
            self.next_object += 1;
            let mut object = Object::build(key, parts);
            let task = object.spawn_put(
                self.objects.clone(),
                self.counters.clone(),
                self.last_error.clone(),
            );
            self.uploads.push_back(Upload {
                object,
                bytes,
                task,
                started: Instant::now(),
            });
        }
    }

    /// The oldest object is written (or its task failed): commit it.
    async fn written(&mut self, written: Result<(), tokio::task::JoinError>) {
        let Some(upload) = self.uploads.pop_front() else {
            return;
        };
        if written.is_err() {
            // Aborted or panicked: build it again from the committed offsets.
            self.pressure.add_back(upload.bytes);
            self.rewind();
            return;
        }
        self.commit(upload).await;
    }

    /// Commits a written object, retried until it works or conflicts; answers the waiters
    /// its ranges cover.
    async fn commit(&mut self, upload: Upload) {
        let object = &upload.object;
        let mut backoff = BACKOFF_FIRST;
        loop {
            let started = Instant::now();
            let commit = {
                let (store, object, ranges) = (
                    self.store.clone(),
                    object.object.clone(),
                    object.ranges.clone(),
                );
                async move { store.commit(&object, &ranges).await }
            };
            match self.watch(commit).await {
                Ok(()) => {
                    metrics::histogram!("streamhouse_metadata_commit_seconds")
                        .record(started.elapsed().as_secs_f64());
                    break;
                }
                Err(StoreError::Conflict {
                    topic,
                    partition,
                    expected,
                    found,
                }) => {
                    bump(&self.counters.commit_errors, 1);
                    let reason = format!(
                        "another writer committed to {topic}-{partition} in the metadata store \
                         (its high watermark is {found}, this agent expected {expected})"
                    );
                    self.fence(&upload, &topic, partition, reason);
                    self.pressure.add_back(upload.bytes);
                    self.rewind();
                    return;
                }
                Err(e @ StoreError::Fenced { .. }) => {
                    bump(&self.counters.commit_errors, 1);
                    metrics::counter!("streamhouse_fenced_commits_total").increment(1);
                    if let StoreError::Fenced {
                        topic, partition, ..
                    } = &e
                    {
                        let reason = format!("this agent lost the partition's lease: {e}");
                        self.fence(&upload, topic, *partition, reason);
                    }
                    self.pressure.add_back(upload.bytes);
                    self.rewind();
                    return;
                }
                Err(e) => {
                    bump(&self.counters.commit_errors, 1);
                    metrics::counter!("streamhouse_metadata_commit_errors_total").increment(1);
                    *self
                        .last_error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        format!("metadata store: {e}");
                    tracing::warn!(key = %object.object.key, error = %e,
                        "metadata commit failed; retrying");
                    if !self.pause(&mut backoff).await {
                        self.pressure.add_back(upload.bytes);
                        self.rewind();
                        return;
                    }
                }
            }
        }
        bump(&self.counters.commits, 1);
        metrics::counter!("streamhouse_metadata_commits_total").increment(1);
        // A slow object (an outage) must not make every later one start early: at most the
        // interval counts.
        let took = upload.started.elapsed().min(self.config.flush_interval);
        self.cycle = (self.cycle * 7 + took) / 8;
        for (range, (key, generation, next)) in upload.object.ranges.iter().zip(&upload.object.ends)
        {
            let labels = [
                ("topic", range.topic.clone()),
                ("partition", range.partition.to_string()),
            ];
            metrics::gauge!("streamhouse_partition_objects", &labels).increment(1.0);
            metrics::gauge!("streamhouse_partition_object_bytes", &labels)
                .increment(range.byte_len as f64);
            if let Some(cursor) = self
                .parts
                .get_mut(key)
                .filter(|c| c.generation == *generation)
            {
                cursor.committed = *next;
                for snapshot in &range.producers {
                    cursor
                        .committed_producers
                        .insert(snapshot.producer_id, snapshot.clone());
                }
                let committed = cursor.committed;
                let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut cursor.waiters)
                    .into_iter()
                    .partition(|w| w.end <= committed);
                cursor.waiters = waiting;
                done.into_iter().for_each(Waiter::answer);
            }
        }
    }

    /// Drops every object on its way and starts again from the committed offsets (after a
    /// conflict or a failure given up: the objects after it could not be committed).
    fn rewind(&mut self) {
        for upload in self.uploads.drain(..) {
            upload.task.abort();
            self.pressure.add_back(upload.bytes);
        }
        for cursor in self.parts.values_mut() {
            if cursor.sent != cursor.committed {
                cursor.sent = cursor.committed;
                cursor.shadow = shadow_at(cursor.committed, &cursor.committed_producers);
            }
        }
    }

    /// Aborts every write on its way (the flusher stops).
    fn abandon(&mut self) {
        for upload in self.uploads.drain(..) {
            upload.task.abort();
        }
    }

    /// At shutdown: upload and commit everything (bounded in time), answer every waiter, say
    /// done.
    async fn finish(&mut self) {
        let deadline = Instant::now() + self.config.durable_timeout * 2;
        self.give_up_at = Some(deadline);
        loop {
            self.start_uploads(true, false).await;
            let Some(front) = self.uploads.front_mut() else {
                break;
            };
            match tokio::time::timeout_at(deadline.into(), &mut front.task).await {
                Ok(written) => self.written(written).await,
                Err(_) => break,
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        self.abandon();
        let reason = self.last_error();
        for cursor in self.parts.values_mut() {
            for waiter in cursor.waiters.drain(..) {
                waiter.fail(Rejection::new(
                    ErrorCode::StorageError,
                    format!(
                        "written locally; the agent stopped before it was committed to object \
                         storage ({reason}); it is uploaded at the next start"
                    ),
                ));
            }
        }
        if let Some(done) = self.stopping.take() {
            let _ = done.send(());
        }
    }

    /// Reads every partition's new batches (past its *sent* cursor) from its local log,
    /// `flush_bytes` in all at most (at least one batch), and moves the cursors past them.
    async fn collect(&mut self) -> Vec<Part> {
        let wanted: Vec<(Key, Arc<PartitionLog>, i64)> = self
            .parts
            .iter()
            .filter(|(_, c)| has_new(c))
            .map(|(k, c)| (k.clone(), c.log.clone(), c.sent))
            .collect();
        if wanted.is_empty() {
            return Vec::new();
        }
        let budget = self.config.flush_bytes;
        let read = tokio::task::spawn_blocking(move || read_new(wanted, budget))
            .await
            .unwrap_or_default();
        let mut parts = Vec::with_capacity(read.len());
        for (key, first, batches) in read {
            let Some(cursor) = self.parts.get_mut(&key) else {
                continue;
            };
            if cursor.sent != first {
                continue; // rewound meanwhile
            }
            let mut next = first;
            let mut seen = BTreeSet::new();
            for batch in &batches {
                let Ok(header) = BatchHeader::read(batch) else {
                    continue;
                };
                cursor.shadow.restore(&header);
                if header.producer.producer_id >= 0 {
                    seen.insert(header.producer.producer_id);
                }
                next = header.last_offset() + 1;
            }
            cursor.sent = next;
            let producers = seen
                .into_iter()
                .filter_map(|id| cursor.shadow.snapshot(id))
                .collect();
            parts.push(Part {
                key,
                first,
                next,
                batches,
                producers,
                lease: cursor.lease,
                generation: cursor.generation,
            });
        }
        parts
    }

    /// Runs a commit to its end, answering messages and expiring waiters meanwhile (a store
    /// that hangs must not hold the durable answers past their timeout).
    async fn watch<T>(&mut self, op: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(op);
        loop {
            tokio::select! {
                out = &mut op => return out,
                () = tokio::time::sleep(HEARTBEAT) => {
                    self.absorb();
                    self.expire();
                }
            }
        }
    }

    /// Waits before the next attempt, answering messages and expiring waiters meanwhile.
    /// `false` when stopping and past the time allowed.
    async fn pause(&mut self, backoff: &mut Duration) -> bool {
        let until = tokio::time::Instant::now() + *backoff;
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        loop {
            self.absorb();
            self.expire();
            if self.give_up_at.is_some_and(|at| Instant::now() >= at) {
                return false;
            }
            let step = tokio::time::Instant::now() + HEARTBEAT;
            if step >= until {
                tokio::time::sleep_until(until).await;
                return true;
            }
            tokio::time::sleep_until(step).await;
        }
    }

    /// Another writer committed to the partition, or took its lease: the opening of it whose
    /// batches `upload` holds takes no more appends here.
    fn fence(&mut self, upload: &Upload, topic: &str, partition: u32, reason: String) {
        let key: Key = (Arc::from(topic), partition);
        let Some(generation) = upload
            .object
            .ends
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, g, _)| *g)
        else {
            return;
        };
        tracing::error!(%reason, "partition fenced");
        metrics::counter!("streamhouse_partitions_fenced_total").increment(1);
        self.pressure.fenced.notify_one();
        if let Some(cursor) = self
            .parts
            .get_mut(&key)
            .filter(|c| c.generation == generation)
        {
            cursor.fenced = true;
            cursor.log.supersede(reason.clone());
            for waiter in cursor.waiters.drain(..) {
                waiter.fail(Rejection::new(ErrorCode::NotLeader, reason.clone()));
            }
        }
    }
}

/// The oldest object's write finishing (never, when none is on its way).
async fn front(uploads: &mut VecDeque<Upload>) -> Result<(), tokio::task::JoinError> {
    match uploads.front_mut() {
        Some(upload) => (&mut upload.task).await,
        None => std::future::pending().await,
    }
}

/// Producer state as committed: the snapshots, at the committed offset.
fn shadow_at(committed: i64, producers: &BTreeMap<i64, ProducerSnapshot>) -> PartitionState {
    let mut state = PartitionState::new(committed);
    for snapshot in producers.values() {
        state.restore_snapshot(snapshot);
    }
    state
}

/// Whether a partition has batches past its *sent* cursor.
fn has_new(cursor: &Cursor) -> bool {
    !cursor.fenced && cursor.log.local_range().1 > cursor.sent
}
