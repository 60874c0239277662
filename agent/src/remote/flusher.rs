//! The flusher: one task that turns new batches of every partition into one object and one
//! metadata commit, then answers the durable acknowledgements the commit covers.
//!
//! A partition's *committed* offset is its high watermark in the store. Each flush reads every
//! partition's batches from there to the end of its local log (at most `flush_bytes` in all,
//! so a backlog becomes several objects), PUTs them as one object and commits the ranges.
//! A failed PUT or commit is retried with backoff (the same object and ranges: the commit is
//! idempotent by object key); meanwhile waiting answers older than `durable_timeout` are
//! answered `STORAGE_ERROR`. A commit conflict (another writer moved the high watermark)
//! fences the partition: it takes no more appends.

use super::{Counters, Msg, Objects, Pressure, Waiter, bump};
use crate::RemoteConfig;
use crate::log::PartitionLog;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhouse::batch::BatchHeader;
use streamhouse::serve::{PartitionState, ProducerSnapshot, Rejection};
use streamhouse_metastore::{CommittedRange, MetadataStore, ObjectRef, StoreError};
use streamhouse_proto::v1::ErrorCode;
use tokio::sync::{mpsc, oneshot};

/// A partition as the flusher sees it.
struct Cursor {
    log: Arc<PartitionLog>,
    /// The committed high watermark: everything below it is in objects.
    committed: i64,
    /// Producer state as of what has been read for upload (the source of the snapshots each
    /// commit carries).
    shadow: PartitionState,
    waiters: Vec<Waiter>,
    /// Set after a commit conflict: not uploaded again.
    fenced: bool,
}

type Key = (Arc<str>, u32);

/// One partition's part of the object being built.
struct Part {
    key: Key,
    first: i64,
    next: i64,
    batches: Vec<Bytes>,
    producers: Vec<ProducerSnapshot>,
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
    /// Why the last PUT or commit failed, for the answers that give up.
    last_error: String,
    /// Set once asked to stop: finish, then answer.
    stopping: Option<oneshot::Sender<()>>,
    /// When stopping: the time after which failing PUTs and commits are given up.
    give_up_at: Option<Instant>,
}

/// Backoff between attempts of a failing PUT or commit.
const BACKOFF_FIRST: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

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
            last_error: String::new(),
            stopping: None,
            give_up_at: None,
        }
    }

    pub(super) async fn run(mut self) {
        let mut tick = tokio::time::interval(self.config.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pressure = self.pressure.clone();
        loop {
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.take(msg),
                    None => break,
                },
                () = pressure.wake.notified() => self.flush().await,
                _ = tick.tick() => self.flush().await,
            }
            self.expire();
            if self.stopping.is_some() {
                self.finish().await;
                break;
            }
        }
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
            } => {
                let mut shadow = PartitionState::new(committed);
                for snapshot in &snapshots {
                    shadow.restore_snapshot(snapshot);
                }
                self.parts.insert(
                    (topic, partition),
                    Cursor {
                        log,
                        committed,
                        shadow,
                        waiters: Vec::new(),
                        fenced: false,
                    },
                );
            }
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

    /// Takes every message waiting (between retries, so answers keep flowing).
    fn absorb(&mut self) {
        while let Ok(msg) = self.rx.try_recv() {
            self.take(msg);
        }
    }

    /// Answers `STORAGE_ERROR` to durable answers that have waited `durable_timeout`.
    fn expire(&mut self) {
        let timeout = self.config.durable_timeout;
        let now = Instant::now();
        let mut expired = 0;
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
                         {timeout:?} (retry; it will be answered as a duplicate once committed): {}",
                        self.last_error
                    ),
                ));
            }
        }
        if expired > 0 {
            bump(&self.counters.durable_timeouts, expired);
            metrics::counter!("streamhouse_durable_timeouts_total").increment(expired);
        }
    }

    /// Uploads what is new, as many objects as the backlog needs.
    async fn flush(&mut self) {
        loop {
            let parts = self.collect().await;
            if parts.is_empty() {
                return;
            }
            let bytes: usize = parts.iter().flat_map(|p| &p.batches).map(Bytes::len).sum();
            if !self.upload(parts).await {
                return;
            }
            self.pressure.uploaded(bytes);
            if bytes < self.config.flush_bytes {
                return;
            }
        }
    }

    /// At shutdown: upload everything (bounded in time), answer every waiter, say done.
    async fn finish(&mut self) {
        let deadline = Instant::now() + self.config.durable_timeout * 2;
        self.give_up_at = Some(deadline);
        while Instant::now() < deadline && self.parts.values().any(|c| has_new(c)) {
            let before: Vec<i64> = self.parts.values().map(|c| c.committed).collect();
            self.flush().await;
            let after: Vec<i64> = self.parts.values().map(|c| c.committed).collect();
            if before == after {
                tokio::time::sleep(BACKOFF_MAX).await;
            }
        }
        for cursor in self.parts.values_mut() {
            for waiter in cursor.waiters.drain(..) {
                waiter.fail(Rejection::new(
                    ErrorCode::StorageError,
                    format!(
                        "written locally; the agent stopped before it was committed to object \
                         storage ({}); it is uploaded at the next start",
                        self.last_error
                    ),
                ));
            }
        }
        if let Some(done) = self.stopping.take() {
            let _ = done.send(());
        }
    }

    /// Reads every partition's new batches from its local log, `flush_bytes` in all at most
    /// (at least one batch).
    async fn collect(&mut self) -> Vec<Part> {
        let wanted: Vec<(Key, Arc<PartitionLog>, i64)> = self
            .parts
            .iter()
            .filter(|(_, c)| has_new(c))
            .map(|(k, c)| (k.clone(), c.log.clone(), c.committed))
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
            let mut next = first;
            let mut seen = BTreeSet::new();
            for batch in &batches {
                let Ok(header) = BatchHeader::read(batch) else {
                    continue;
                };
                // Read again after a failed object: remembered once.
                if header.base_offset >= cursor.shadow.next_offset() {
                    cursor.shadow.restore(&header);
                }
                if header.producer.producer_id >= 0 {
                    seen.insert(header.producer.producer_id);
                }
                next = header.last_offset() + 1;
            }
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
            });
        }
        parts
    }

    /// PUTs one object holding `parts` and commits it; answers the waiters it covers. `false`
    /// when it could not (stopping and out of time, or a conflict).
    async fn upload(&mut self, parts: Vec<Part>) -> bool {
        let key = format!("{}{:010}", self.prefix, self.next_object);
        self.next_object += 1;
        let mut chunks = Vec::new();
        let mut ranges = Vec::with_capacity(parts.len());
        let mut at = 0u64;
        for part in &parts {
            let len: u64 = part.batches.iter().map(|b| b.len() as u64).sum();
            ranges.push(CommittedRange {
                topic: part.key.0.to_string(),
                partition: part.key.1,
                first_offset: part.first,
                next_offset: part.next,
                byte_start: at,
                byte_len: len,
                producers: part.producers.clone(),
            });
            at += len;
            chunks.extend(part.batches.iter().cloned());
        }
        let object = ObjectRef {
            key: key.clone(),
            size: at,
        };
        // PUT, retried until it works.
        let mut backoff = BACKOFF_FIRST;
        loop {
            let started = Instant::now();
            let put = {
                let (objects, key, chunks) = (self.objects.clone(), key.clone(), chunks.clone());
                async move { objects.put(&key, chunks).await }
            };
            match self.watch(put).await {
                Ok(()) => {
                    metrics::histogram!("streamhouse_object_put_seconds")
                        .record(started.elapsed().as_secs_f64());
                    break;
                }
                Err(e) => {
                    bump(&self.counters.put_errors, 1);
                    metrics::counter!("streamhouse_object_put_errors_total").increment(1);
                    self.last_error = format!("object storage: {e}");
                    tracing::warn!(%key, error = %e, "object PUT failed; retrying");
                    if !self.pause(&mut backoff).await {
                        return false;
                    }
                }
            }
        }
        bump(&self.counters.objects_written, 1);
        bump(&self.counters.bytes_written, at);
        metrics::counter!("streamhouse_objects_written_total").increment(1);
        metrics::counter!("streamhouse_object_bytes_written_total").increment(at);
        // Commit, retried until it works or conflicts.
        let mut backoff = BACKOFF_FIRST;
        loop {
            let started = Instant::now();
            let commit = {
                let (store, object, ranges) = (self.store.clone(), object.clone(), ranges.clone());
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
                    self.fence(&topic, partition, expected, found);
                    return false;
                }
                Err(e) => {
                    bump(&self.counters.commit_errors, 1);
                    metrics::counter!("streamhouse_metadata_commit_errors_total").increment(1);
                    self.last_error = format!("metadata store: {e}");
                    tracing::warn!(%key, error = %e, "metadata commit failed; retrying");
                    if !self.pause(&mut backoff).await {
                        return false;
                    }
                }
            }
        }
        bump(&self.counters.commits, 1);
        metrics::counter!("streamhouse_metadata_commits_total").increment(1);
        for part in parts {
            if let Some(cursor) = self.parts.get_mut(&part.key) {
                cursor.committed = part.next;
                let committed = cursor.committed;
                let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut cursor.waiters)
                    .into_iter()
                    .partition(|w| w.end <= committed);
                cursor.waiters = waiting;
                done.into_iter().for_each(Waiter::answer);
            }
        }
        true
    }

    /// Runs a PUT or commit to its end, answering messages and expiring waiters meanwhile (a
    /// service that hangs must not hold the durable answers past their timeout).
    async fn watch<T>(&mut self, op: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(op);
        loop {
            tokio::select! {
                out = &mut op => return out,
                () = tokio::time::sleep(Duration::from_millis(50)) => {
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
            let step = tokio::time::Instant::now() + Duration::from_millis(50);
            if step >= until {
                tokio::time::sleep_until(until).await;
                return true;
            }
            tokio::time::sleep_until(step).await;
        }
    }

    /// Another writer committed to the partition: it takes no more appends here.
    fn fence(&mut self, topic: &str, partition: u32, expected: i64, found: i64) {
        let reason = format!(
            "another writer committed to {topic}-{partition} in the metadata store (its high \
             watermark is {found}, this agent expected {expected})"
        );
        tracing::error!(%reason, "partition fenced");
        metrics::counter!("streamhouse_partitions_fenced_total").increment(1);
        if let Some(cursor) = self.parts.get_mut(&(Arc::from(topic), partition)) {
            cursor.fenced = true;
            cursor.log.fence(reason.clone());
            for waiter in cursor.waiters.drain(..) {
                waiter.fail(Rejection::new(ErrorCode::NotLeader, reason.clone()));
            }
        }
    }
}

/// Whether a partition has batches past its committed offset.
fn has_new(cursor: &Cursor) -> bool {
    !cursor.fenced && cursor.log.local_range().1 > cursor.committed
}

/// Blocking: each partition's whole batches from its committed offset, `budget` bytes in all
/// (at least one batch). A partition whose log cannot be read is skipped (and logged); it is
/// tried again next time.
fn read_new(
    wanted: Vec<(Key, Arc<PartitionLog>, i64)>,
    budget: usize,
) -> Vec<(Key, i64, Vec<Bytes>)> {
    let mut left = budget;
    let mut out = Vec::new();
    for (key, log, from) in wanted {
        if left == 0 {
            break;
        }
        let mut offset = from;
        let mut batches = Vec::new();
        while left > 0 {
            match log.read(offset, left) {
                Ok(read) if read.batches.is_empty() => break,
                Ok(read) => {
                    for batch in read.batches {
                        let Ok(header) = BatchHeader::read(&batch) else {
                            break;
                        };
                        offset = header.last_offset() + 1;
                        left = left.saturating_sub(batch.len());
                        batches.push(batch);
                    }
                }
                Err(e) => {
                    tracing::error!(topic = %key.0, partition = key.1, error = %e.message,
                        "cannot read the local log for upload");
                    break;
                }
            }
            if offset >= log.local_range().1 {
                break;
            }
        }
        if !batches.is_empty() {
            out.push((key, from, batches));
        }
    }
    out
}
