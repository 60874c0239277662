//! The I/O threads: appends, write coalescing and group commit.
//!
//! Each partition belongs to one I/O thread (its shard), so appends to a partition are
//! serialised without a lock held across requests. A thread takes every command waiting in its
//! queue as one *round*: per partition it admits the batches in arrival order and writes them
//! with one positional write; it answers `acks=leader` batches as soon as they are written and
//! hands the `acks=durable` ones to its shard's sync thread. The sync thread takes everything
//! handed to it so far, fsyncs each partition concerned once — however many batches, requests
//! and rounds are waiting — and answers those: group commit without timers. Appends go on while
//! an fsync runs, so neither `acks=leader` traffic nor the next durable round waits behind the
//! disk.

use crate::log::{Appended, PartitionLog};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;
use streamhouse::batch::Batch;
use streamhouse::serve::Rejection;
use streamhouse_proto::v1::ErrorCode;
use tokio::sync::{mpsc, oneshot};

/// The answer to one append.
pub(crate) type AppendReply = Result<Appended, Rejection>;

/// One batch to append.
pub(crate) struct AppendJob {
    pub(crate) log: Arc<PartitionLog>,
    pub(crate) topic: Arc<str>,
    pub(crate) partition: u32,
    pub(crate) batch: Batch,
    pub(crate) durable: bool,
    pub(crate) reply: oneshot::Sender<AppendReply>,
}

pub(crate) struct Io {
    shards: RwLock<Vec<mpsc::UnboundedSender<AppendJob>>>,
    /// Batch bytes queued to the I/O threads and not yet taken into a round.
    queued: Arc<AtomicUsize>,
    /// Most batch bytes queued before submissions are refused `THROTTLED`.
    max_queued: usize,
    /// fsyncs done so far, for `Agent::fsyncs` (group commit shows as far fewer fsyncs than
    /// durable batches).
    fsyncs: Arc<AtomicU64>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// Most jobs taken into one round, so a flood cannot delay the first answers forever.
const MAX_ROUND: usize = 4096;

impl Io {
    /// Starts `threads` shards. With `remote`, durable answers wait for the commit of their
    /// object (the flusher's) instead of an fsync.
    pub(crate) fn start(
        threads: usize,
        max_queued: usize,
        remote: Option<Arc<crate::remote::Sink>>,
    ) -> std::io::Result<Io> {
        let mut shards = Vec::new();
        let mut handles = Vec::new();
        let fsyncs = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        for i in 0..threads.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            shards.push(tx);
            let (sync_tx, sync_rx) = std::sync::mpsc::channel();
            let fsyncs = fsyncs.clone();
            let taken = queued.clone();
            let sink = remote.clone();
            let syncer = std::thread::Builder::new()
                .name(format!("streamhouse-sync-{i}"))
                .spawn(move || sync_loop(&sync_rx, &fsyncs))?;
            handles.push(
                std::thread::Builder::new()
                    .name(format!("streamhouse-io-{i}"))
                    .spawn(move || {
                        run(rx, &sync_tx, &taken, sink.as_deref());
                        // Every durable answer is given before the shard counts as stopped.
                        drop(sync_tx);
                        let _ = syncer.join();
                    })?,
            );
        }
        Ok(Io {
            queued,
            max_queued,
            fsyncs,
            shards: RwLock::new(shards),
            threads: std::sync::Mutex::new(handles),
        })
    }

    pub(crate) fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Queues a job on `shard`'s thread; refused once the agent is stopping, and with
    /// `THROTTLED` while the threads are `max_queued` bytes behind (backpressure: the producer
    /// holds off for the answer's `throttle_ms` and sends the batch again).
    pub(crate) fn submit(&self, shard: usize, job: AppendJob) -> Result<(), Rejection> {
        let shards = self.shards.read().unwrap_or_else(PoisonError::into_inner);
        let stopping = || Rejection::new(ErrorCode::Unavailable, "agent is shutting down");
        let sender = shards
            .get(shard % shards.len().max(1))
            .ok_or_else(stopping)?;
        let size = job.batch.as_bytes().len();
        let before = self.queued.fetch_add(size, Ordering::Relaxed);
        // One batch always goes in, however large: the queue never refuses everything.
        if before > 0 && before + size > self.max_queued {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            metrics::counter!("streamhouse_limit_hits_total", "limit" => "queued_bytes")
                .increment(1);
            return Err(Rejection::new(
                ErrorCode::Throttled,
                format!(
                    "the write queue holds {before} bytes (limit {})",
                    self.max_queued
                ),
            ));
        }
        sender.send(job).map_err(|_| {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            stopping()
        })
    }

    /// Stops taking jobs, lets the threads finish every job already queued, and waits for them.
    pub(crate) fn shutdown(&self) {
        self.shards
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let handles =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for handle in handles {
            // A panicking I/O thread already failed its jobs (their senders dropped).
            let _ = handle.join();
        }
    }
}

fn run(
    mut rx: mpsc::UnboundedReceiver<AppendJob>,
    sync: &SyncSender,
    queued: &AtomicUsize,
    remote: Option<&crate::remote::Sink>,
) {
    let mut round = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        round.push(first);
        while round.len() < MAX_ROUND {
            match rx.try_recv() {
                Ok(job) => round.push(job),
                Err(_) => break,
            }
        }
        let taken: usize = round.iter().map(|j| j.batch.as_bytes().len()).sum();
        queued.fetch_sub(taken, Ordering::Relaxed);
        process(std::mem::take(&mut round), sync, remote);
    }
}

/// Answers held back until their partition is fsynced.
type Waiting = Vec<(oneshot::Sender<AppendReply>, AppendReply)>;

/// Where an I/O thread hands written `acks=durable` batches to its sync thread.
type SyncSender = std::sync::mpsc::Sender<(Arc<PartitionLog>, Waiting)>;

/// Jobs of one partition in one round, in arrival order.
struct Group {
    log: Arc<PartitionLog>,
    topic: Arc<str>,
    partition: u32,
    jobs: Vec<AppendJob>,
}

fn process(round: Vec<AppendJob>, sync: &SyncSender, remote: Option<&crate::remote::Sink>) {
    let mut groups: Vec<Group> = Vec::new();
    for job in round {
        match groups.iter_mut().find(|g| Arc::ptr_eq(&g.log, &job.log)) {
            Some(group) => group.jobs.push(job),
            None => groups.push(Group {
                log: job.log.clone(),
                topic: job.topic.clone(),
                partition: job.partition,
                jobs: vec![job],
            }),
        }
    }
    for group in groups {
        let batches: Vec<&Batch> = group.jobs.iter().map(|j| &j.batch).collect();
        let results = group.log.append(&batches);
        if let Some(remote) = remote {
            let appended: usize = results
                .iter()
                .map(|r| match r {
                    Ok(Appended::New { bytes, .. }) => *bytes,
                    _ => 0,
                })
                .sum();
            remote.appended(appended);
            // Durable answers wait for the commit of every offset up to their batch's end (a
            // duplicate's: everything appended so far, which holds its original).
            let log_end = group.log.next_offset();
            let mut waiters = Vec::new();
            for (job, result) in group.jobs.into_iter().zip(results) {
                record_metrics(&group.topic, &result);
                let end = match &result {
                    Ok(Appended::New {
                        base_offset,
                        records,
                        ..
                    }) => base_offset + i64::from(*records),
                    Ok(Appended::Duplicate { .. }) => log_end,
                    Err(_) => -1,
                };
                if job.durable && end >= 0 {
                    waiters.push(crate::remote::Waiter::new(end, job.reply, result));
                } else {
                    let _ = job.reply.send(result);
                }
            }
            remote.wait(&group.topic, group.partition, waiters);
            continue;
        }
        let mut waiting = Vec::new();
        for (job, result) in group.jobs.into_iter().zip(results) {
            record_metrics(&group.topic, &result);
            if job.durable && result.is_ok() {
                waiting.push((job.reply, result));
            } else {
                let _ = job.reply.send(result);
            }
        }
        if !waiting.is_empty() {
            // The sync thread lives as long as this thread; should it be gone (it panicked),
            // the answers are dropped and their requests fail: nothing is acknowledged unsynced.
            let _ = sync.send((group.log, waiting));
        }
    }
}

/// The sync thread of a shard: fsyncs what its I/O thread wrote, once per partition for all
/// that waits, and gives the durable answers.
fn sync_loop(rx: &std::sync::mpsc::Receiver<(Arc<PartitionLog>, Waiting)>, fsyncs: &AtomicU64) {
    let mut pending: Vec<(Arc<PartitionLog>, Waiting)> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut add = |(log, mut waiting): (Arc<PartitionLog>, Waiting)| match pending
            .iter_mut()
            .find(|(l, _)| Arc::ptr_eq(l, &log))
        {
            Some((_, all)) => all.append(&mut waiting),
            None => pending.push((log, waiting)),
        };
        add(first);
        while let Ok(more) = rx.try_recv() {
            add(more);
        }
        for (log, waiting) in pending.drain(..) {
            let start = Instant::now();
            let synced = log.sync();
            metrics::histogram!("streamhouse_fsync_seconds").record(start.elapsed().as_secs_f64());
            metrics::counter!("streamhouse_fsyncs_total").increment(1);
            fsyncs.fetch_add(1, Ordering::Relaxed);
            for (reply, result) in waiting {
                let answer = match &synced {
                    Ok(()) => result,
                    Err(rejection) => Err(rejection.clone()),
                };
                let _ = reply.send(answer);
            }
        }
    }
}

fn record_metrics(topic: &Arc<str>, result: &AppendReply) {
    match result {
        Ok(Appended::New { records, bytes, .. }) => {
            metrics::counter!("streamhouse_records_appended_total", "topic" => topic.clone())
                .increment(u64::from(*records));
            metrics::counter!("streamhouse_bytes_appended_total", "topic" => topic.clone())
                .increment(*bytes as u64);
        }
        Ok(Appended::Duplicate { .. }) => {
            metrics::counter!("streamhouse_dedup_hits_total", "topic" => topic.clone())
                .increment(1);
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::tests_support::{batch_of, log_on_sim};

    /// Issue 12, seen: "the queue to the I/O threads is unbounded: no backpressure, and
    /// `THROTTLED` / `throttle_ms` are never used". Past `max_queued` bytes a submission is
    /// refused `THROTTLED`; one batch always goes in.
    #[test]
    fn the_write_queue_is_bounded_and_answers_throttled() {
        let log = log_on_sim();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let one = batch_of(100);
        let size = one.as_bytes().len();
        let io = Io {
            shards: RwLock::new(vec![tx]),
            queued: Arc::new(AtomicUsize::new(0)),
            max_queued: 2 * size,
            fsyncs: Arc::new(AtomicU64::new(0)),
            threads: std::sync::Mutex::new(Vec::new()),
        };
        let job = |batch| AppendJob {
            log: log.clone(),
            topic: Arc::from("t"),
            partition: 0,
            batch,
            durable: false,
            reply: oneshot::channel().0,
        };
        assert!(io.submit(0, job(one.clone())).is_ok());
        assert!(io.submit(0, job(one.clone())).is_ok());
        let refused = io.submit(0, job(one.clone())).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Throttled);
        // The thread takes a round: room again.
        let mut round = Vec::new();
        while let Ok(job) = rx.try_recv() {
            round.push(job);
        }
        io.queued.fetch_sub(round.len() * size, Ordering::Relaxed);
        assert!(io.submit(0, job(one)).is_ok());
        // A single batch larger than the limit still goes in when the queue is empty.
        let (tx, _rx) = mpsc::unbounded_channel();
        let lone = Io {
            shards: RwLock::new(vec![tx]),
            queued: Arc::new(AtomicUsize::new(0)),
            max_queued: 1,
            fsyncs: Arc::new(AtomicU64::new(0)),
            threads: std::sync::Mutex::new(Vec::new()),
        };
        assert!(lone.submit(0, job(batch_of(100))).is_ok());
    }
}
