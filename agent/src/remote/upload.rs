//! Building objects and writing them: the flusher's PUT side.
//!
//! [`read_new`] takes each partition's whole batches past its upload cursor from the local log
//! (the page cache, usually); [`Object::build`] lays them out back to back, one byte range per
//! partition, with the producer snapshots its commit will carry; [`Object::spawn_put`] writes
//! it in a task of its own, retrying with backoff until it is written or aborted, so several
//! objects can be on their way while the flusher commits the oldest.

use super::{Counters, Objects, bump};
use crate::log::PartitionLog;
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use streamhouse::batch::BatchHeader;
use streamhouse::serve::ProducerSnapshot;
use streamhouse_metastore::{CommittedRange, LeaseId, ObjectRef};

/// A partition: topic and number.
pub(super) type Key = (Arc<str>, u32);

/// Backoff between attempts of a failing PUT or commit.
pub(super) const BACKOFF_FIRST: Duration = Duration::from_millis(20);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// One partition's part of an object: its batches `first..next`, and the producer state
/// after them.
pub(super) struct Part {
    pub(super) key: Key,
    pub(super) first: i64,
    pub(super) next: i64,
    pub(super) batches: Vec<Bytes>,
    pub(super) producers: Vec<ProducerSnapshot>,
    /// The lease it is written under (agents of a group).
    pub(super) lease: Option<LeaseId>,
    /// Which opening of the partition it comes from (see the flusher's `Cursor`).
    pub(super) generation: u64,
}

/// An object: its reference, the ranges to commit, and each partition's new committed offset.
pub(super) struct Object {
    pub(super) object: ObjectRef,
    pub(super) ranges: Vec<CommittedRange>,
    /// Per range: the partition, the opening it came from, and its new committed offset.
    pub(super) ends: Vec<(Key, u64, i64)>,
    /// The batches, in object order.
    chunks: Vec<Bytes>,
}

impl Object {
    /// Lays `parts` out back to back under `key`.
    pub(super) fn build(key: String, parts: Vec<Part>) -> Object {
        let mut chunks = Vec::new();
        let mut ranges = Vec::with_capacity(parts.len());
        let mut ends = Vec::with_capacity(parts.len());
        let mut at = 0u64;
        for part in parts {
            let len: u64 = part.batches.iter().map(|b| b.len() as u64).sum();
            ranges.push(CommittedRange {
                topic: part.key.0.to_string(),
                partition: part.key.1,
                first_offset: part.first,
                next_offset: part.next,
                byte_start: at,
                byte_len: len,
                producers: part.producers,
                lease: part.lease,
            });
            ends.push((part.key, part.generation, part.next));
            at += len;
            chunks.extend(part.batches);
        }
        Object {
            object: ObjectRef { key, size: at },
            ranges,
            ends,
            chunks,
        }
    }

    /// Writes the object in a task of its own, retrying until it is written (the task is
    /// aborted to give up). Its batches are released once written.
    pub(super) fn spawn_put(
        &mut self,
        objects: Arc<Objects>,
        counters: Arc<Counters>,
        last_error: Arc<Mutex<String>>,
    ) -> tokio::task::JoinHandle<()> {
        let chunks = std::mem::take(&mut self.chunks);
        let (key, size) = (self.object.key.clone(), self.object.size);
        tokio::spawn(async move {
            let mut backoff = BACKOFF_FIRST;
            loop {
                let started = Instant::now();
                match objects.put(&key, chunks.clone()).await {
                    Ok(()) => {
                        metrics::histogram!("streamhouse_object_put_seconds")
                            .record(started.elapsed().as_secs_f64());
                        bump(&counters.objects_written, 1);
                        bump(&counters.bytes_written, size);
                        metrics::counter!("streamhouse_objects_written_total").increment(1);
                        metrics::counter!("streamhouse_object_bytes_written_total").increment(size);
                        return;
                    }
                    Err(e) => {
                        bump(&counters.put_errors, 1);
                        metrics::counter!("streamhouse_object_put_errors_total").increment(1);
                        *last_error
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            format!("object storage: {e}");
                        tracing::warn!(%key, error = %e, "object PUT failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        })
    }
}

/// Blocking: each partition's whole batches from its upload cursor, `budget` bytes in all
/// (at least one batch). A partition whose log cannot be read is skipped (and logged); it is
/// tried again next time.
pub(super) fn read_new(
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
