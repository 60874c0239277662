//! The partition log: segment files on local disk, appended by one writer, read by many.
//!
//! ```text
//! <data>/<topic>-<partition>/00000000000000000000.log   batches, back to back
//!                            00000000000000052311.log   (rolled at segment_bytes)
//! ```
//!
//! A batch is stored exactly as received, its base offset stamped into the first 8 bytes (the
//! CRC does not cover them, so it stays valid). Appends come from the partition's I/O thread
//! (see `io`), which admits batches through the shared [`PartitionState`] rules, coalesces the
//! bytes of a round into one positional write, and fsyncs for durable acks. Fetches read with
//! positional reads, outside the lock, never past the end of the last whole batch, and check
//! each batch's CRC32C before serving it.
//!
//! All file I/O goes through [`Storage`](storage::Storage), so the crash tests can run this code
//! on a filesystem that loses what was not fsynced.

mod checkpoint;
mod recovery;
mod segment;
pub(crate) mod storage;

#[cfg(test)]
mod sim;

pub use recovery::{PartitionRecovery, RecoveryReport};
pub(crate) use recovery::{STORED, TOPIC_ID};

use bytes::Bytes;
use segment::Segment;
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use storage::StorageFile;
use streamhouse::batch::{Batch, BatchHeader, HEADER_LEN};
use streamhouse::serve::{Admission, PartitionState, ProducerLimits, Rejection};
use streamhouse_proto::v1::ErrorCode;

/// Settings of every partition log.
#[derive(Debug, Clone)]
pub(crate) struct LogConfig {
    /// Roll to a new segment once the active one would pass this size.
    pub(crate) segment_bytes: u64,
    /// One sparse index entry per this many bytes.
    pub(crate) index_interval: u64,
    /// Where the files are.
    pub(crate) storage: Arc<dyn storage::Storage>,
    /// Idempotent-producer state kept per partition.
    pub(crate) producers: ProducerLimits,
}

impl LogConfig {
    /// The idempotence state of a partition whose next offset is `next_offset`.
    pub(crate) fn new_state(&self, next_offset: i64) -> PartitionState {
        PartitionState::with_limits(next_offset, self.producers)
    }
}

/// Where an appended batch went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Appended {
    /// Written at this base offset.
    New {
        base_offset: i64,
        records: u32,
        bytes: usize,
    },
    /// Already in the log (a retry): its original base offset.
    Duplicate { base_offset: i64 },
}

/// Batches read back by a fetch.
#[derive(Debug, Default)]
pub(crate) struct ReadResult {
    pub(crate) batches: Vec<Bytes>,
    pub(crate) log_start_offset: i64,
    pub(crate) high_watermark: i64,
}

pub(crate) struct PartitionLog {
    config: LogConfig,
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Directory fsyncs done (tests check that a roll is followed by one).
    dir_syncs: std::sync::atomic::AtomicU64,
    /// Woken after every append, for fetches waiting for data (`max_wait_ms`).
    appended: tokio::sync::Notify,
    /// The recovery point, rewritten after every fsync (see `checkpoint`).
    checkpoint: Arc<dyn StorageFile>,
    /// The exclusive lock on the partition directory (real disks only), released at shutdown.
    dir_lock: Mutex<Option<std::fs::File>>,
    /// Where the log starts when it has no segment (its earlier records are in objects).
    floor: i64,
    /// Another writer owns the partition's durable state (a commit conflict): not served.
    superseded: std::sync::atomic::AtomicBool,
    /// Appends are refused from this instant on ([`lease_clock`] nanoseconds; `u64::MAX`:
    /// never). An agent of a group sets it to where its partition lease may run out.
    lease_until: std::sync::atomic::AtomicU64,
}

/// Nanoseconds of the monotonic clock since the first call: what lease deadlines are
/// measured in (an `Instant` fits no atomic).
pub(crate) fn lease_clock(at: std::time::Instant) -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(std::time::Instant::now);
    u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX - 1)
}

/// Why and until when a partition is offline.
struct Offline {
    reason: String,
    /// The disk was full: refusals say `STORAGE_FULL`.
    full: bool,
    /// No recovery attempt before this.
    retry_at: std::time::Instant,
    backoff: std::time::Duration,
}

/// First and longest wait before an offline partition tries to recover.
const REVIVE_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const REVIVE_MAX: std::time::Duration = std::time::Duration::from_secs(30);
/// Free space a partition stopped by a full disk waits for before it writes again: this, or a
/// quarter of the filesystem if that is less (a 16 MiB disk must not wait for 16 MiB free).
const MIN_FREE_BYTES: u64 = 16 << 20;

impl Offline {
    fn new(reason: String, error: &io::Error, backoff: std::time::Duration) -> Offline {
        Offline {
            reason,
            full: error.kind() == io::ErrorKind::StorageFull,
            retry_at: std::time::Instant::now() + backoff,
            backoff,
        }
    }

    fn rejection(&self) -> Rejection {
        let code = if self.full {
            ErrorCode::StorageFull
        } else {
            ErrorCode::Unavailable
        };
        Rejection::new(code, format!("partition offline: {}", self.reason))
    }
}

struct Inner {
    segments: Vec<Segment>,
    state: PartitionState,
    /// Set after an I/O error: the log refuses appends until recovery, retried with backoff
    /// by later appends, has repaired it.
    offline: Option<Offline>,
    /// Set when recovery found the log broken (see `recovery`): appends are refused and reads
    /// stop at the break, until an operator acts.
    broken: Option<String>,
    /// Bytes written since the last fsync of the active segment.
    unsynced: bool,
    /// A segment file was created since the directory was last fsynced: its directory entry
    /// (and so everything in it) could vanish in a power loss until the directory is synced.
    dir_unsynced: bool,
}

impl PartitionLog {
    /// Opens (and recovers) the log in `dir`, creating it if needed.
    pub(crate) fn open(
        dir: &Path,
        config: LogConfig,
    ) -> io::Result<(PartitionLog, RecoveryReport)> {
        PartitionLog::open_at(dir, config, 0)
    }

    /// [`open`](Self::open), starting an empty log at `floor` instead of 0 (the records before
    /// it are in object storage).
    pub(crate) fn open_at(
        dir: &Path,
        config: LogConfig,
        floor: i64,
    ) -> io::Result<(PartitionLog, RecoveryReport)> {
        config.storage.create_dir_durable(dir)?;
        let lock = config.storage.lock_dir(dir)?;
        let recovered = recovery::recover(dir, &config, floor)?;
        let checkpoint = checkpoint::open(config.storage.as_ref(), dir)?;
        let log = PartitionLog {
            config,
            dir: dir.to_owned(),
            inner: Mutex::new(Inner {
                segments: recovered.segments,
                state: recovered.state,
                offline: None,
                broken: recovered.report.broken.clone(),
                // What recovery read may be in the page cache only (the process died, the
                // machine did not): the first durable answer, even a duplicate's, fsyncs it.
                unsynced: true,
                // Recovery may have removed segment files.
                dir_unsynced: true,
            }),
            dir_syncs: std::sync::atomic::AtomicU64::new(0),
            appended: tokio::sync::Notify::new(),
            checkpoint,
            dir_lock: Mutex::new(lock),
            floor,
            superseded: std::sync::atomic::AtomicBool::new(false),
            lease_until: std::sync::atomic::AtomicU64::new(u64::MAX),
        };
        Ok((log, recovered.report))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Appends and reads leave the state consistent at every step; a panic elsewhere
        // cannot poison it half-way.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets go of the partition directory's lock (the agent is shutting down and will not
    /// write again; another may open the directory).
    pub(crate) fn release_lock(&self) {
        drop(
            self.dir_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    /// The offset the next appended record gets.
    pub(crate) fn next_offset(&self) -> i64 {
        self.lock().state.next_offset()
    }

    /// The first offset in the local files and the offset after the last whole batch in them.
    pub(crate) fn local_range(&self) -> (i64, i64) {
        let inner = self.lock();
        let start = inner.segments.first().map_or(self.floor, |s| s.base_offset);
        let end = inner.segments.last().map_or(start, |s| s.next_offset);
        (start, end)
    }

    /// Why the log refuses appends, if recovery found it broken or it was fenced.
    pub(crate) fn broken(&self) -> Option<String> {
        self.lock().broken.clone()
    }

    /// Stops appends for good (until restart): another writer owns the partition's durable
    /// state. Reads go on.
    pub(crate) fn fence(&self, reason: String) {
        self.lock().broken = Some(reason);
    }

    /// Another writer committed to this partition in the metadata store: appends stop for
    /// good (until restart) and what this log holds past the committed offsets is not served.
    pub(crate) fn supersede(&self, reason: String) {
        self.superseded
            .store(true, std::sync::atomic::Ordering::Release);
        self.fence(reason);
    }

    /// Appends are taken until `until` (a partition lease's safe end), or always (`None`).
    pub(crate) fn serve_until(&self, until: Option<std::time::Instant>) {
        let nanos = until.map_or(u64::MAX, lease_clock);
        self.lease_until
            .store(nanos, std::sync::atomic::Ordering::Release);
    }

    /// Whether appends are refused because the partition lease may have run out.
    pub(crate) fn lease_lapsed(&self) -> bool {
        let until = self.lease_until.load(std::sync::atomic::Ordering::Acquire);
        until != u64::MAX && lease_clock(std::time::Instant::now()) >= until
    }

    /// Whether [`supersede`](Self::supersede) was called.
    pub(crate) fn superseded(&self) -> bool {
        self.superseded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Merges producer state saved elsewhere (the metadata store) into this log's.
    pub(crate) fn restore_producers(&self, snapshots: &[streamhouse::serve::ProducerSnapshot]) {
        let mut inner = self.lock();
        for snapshot in snapshots {
            inner.state.restore_snapshot(snapshot);
        }
    }

    /// Admits and writes `batches` in order (one positional write per segment touched);
    /// returns one result per batch. Data is in the page cache when this returns; call
    /// [`sync`](Self::sync) for durability.
    pub(crate) fn append<'b>(&self, batches: &[&'b Batch]) -> Vec<Result<Appended, Rejection>> {
        let mut inner = self.lock();
        if inner.offline.is_some() {
            self.revive(&mut inner);
        }
        let refusal = if self.superseded() || self.lease_lapsed() {
            // Checked under the lock: no append starts after the lease's safe end.
            Some(Rejection::new(
                ErrorCode::NotLeader,
                "this agent no longer leads the partition (its lease ran out or moved)",
            ))
        } else {
            match (&inner.offline, &inner.broken) {
                (Some(offline), _) => Some(offline.rejection()),
                (None, Some(note)) => Some(offline(note)),
                (None, None) => None,
            }
        };
        if let Some(rejection) = refusal {
            return batches.iter().map(|_| Err(rejection.clone())).collect();
        }
        let mut results = Vec::with_capacity(batches.len());
        let mut pending: Pending<'b> = Pending::default();
        // One clock read per round: producers' idle time is judged against it.
        let now = std::time::Instant::now();
        for batch in batches {
            let header = batch.header();
            match inner.state.admit_at(header, now) {
                Err(rejection) => results.push(Err(rejection)),
                Ok(Admission::Duplicate { base_offset }) => {
                    results.push(Ok(Appended::Duplicate { base_offset }));
                }
                Ok(Admission::Append) => {
                    let bytes: &'b [u8] = batch.as_bytes();
                    let active_size = inner.segments.last().map_or(0, |s| s.size);
                    let used = active_size + pending.bytes();
                    let full = used > 0 && used + bytes.len() as u64 > self.config.segment_bytes;
                    if full
                        && let Err(e) = self
                            .flush(&mut inner, &mut pending)
                            .and_then(|()| self.roll(&mut inner))
                    {
                        return self.fail(inner, results, batches.len(), &e);
                    }
                    let base_offset = inner.state.append_at(header, now);
                    let next = base_offset + i64::from(header.record_count);
                    pending.batches.push((base_offset.to_be_bytes(), bytes));
                    pending.notes.push((base_offset, next, bytes.len() as u64));
                    results.push(Ok(Appended::New {
                        base_offset,
                        records: header.record_count as u32,
                        bytes: bytes.len(),
                    }));
                }
            }
        }
        if let Err(e) = self.flush(&mut inner, &mut pending) {
            return self.fail(inner, results, batches.len(), &e);
        }
        drop(inner);
        self.appended.notify_waiters();
        results
    }

    /// Completes after the next append (create it before reading, so none is missed).
    pub(crate) fn appended(&self) -> tokio::sync::futures::Notified<'_> {
        self.appended.notified()
    }

    /// Writes the pending batches at the end of the active segment: each as its stamped base
    /// offset followed by the rest of its bytes as received, in one vectored write.
    fn flush(&self, inner: &mut Inner, pending: &mut Pending<'_>) -> io::Result<()> {
        if pending.batches.is_empty() {
            return Ok(());
        }
        let interval = self.config.index_interval;
        let active = inner
            .segments
            .last_mut()
            .ok_or_else(|| io::Error::other("partition has no segment"))?;
        let mut slices: Vec<IoSlice<'_>> = pending
            .batches
            .iter()
            .flat_map(|(offset, bytes)| [IoSlice::new(offset), IoSlice::new(&bytes[8..])])
            .collect();
        active.write_end(&mut slices)?;
        for (base, next, len) in pending.notes.drain(..) {
            active.note_batch(base, next, len, interval);
        }
        pending.batches.clear();
        inner.unsynced = true;
        Ok(())
    }

    /// Closes the active segment (fsynced, so recovery can trust it) and starts a new one.
    fn roll(&self, inner: &mut Inner) -> io::Result<()> {
        if let Some(active) = inner.segments.last() {
            active.sync()?;
        }
        inner.unsynced = false;
        let segment = Segment::create(&self.config.storage, &self.dir, inner.state.next_offset())?;
        if let Some(previous) = inner.segments.last_mut() {
            previous.close();
        }
        inner.segments.push(segment);
        inner.dir_unsynced = true;
        Ok(())
    }

    /// An offline partition whose backoff has passed runs recovery again (as at start: the
    /// files are the truth; a torn write of the failed round is cut) and, if that works, takes
    /// appends again — without a restart once the disk has room or the error has passed. If it
    /// fails, the next attempt waits twice as long (at most 30 s).
    fn revive(&self, inner: &mut Inner) {
        let Some(down) = &inner.offline else {
            return;
        };
        if std::time::Instant::now() < down.retry_at {
            return;
        }
        let backoff = (down.backoff * 2).min(REVIVE_MAX);
        if down.full {
            // Going online on a still-full disk would only fail the next write again, leaving
            // its batches in doubt: wait for room first.
            let space = self.config.storage.space(&self.dir);
            let (room, total) = space.map_or((0, 0), |s| (s.free, s.total));
            if room < MIN_FREE_BYTES.min(total / 4).max(1) {
                let reason = format!("{} has {room} bytes free", self.dir.display());
                let full = io::Error::new(io::ErrorKind::StorageFull, "no space left");
                inner.offline = Some(Offline::new(reason, &full, backoff));
                return;
            }
        }
        match recovery::recover(&self.dir, &self.config, self.floor) {
            Ok(recovered) => {
                tracing::info!(dir = %self.dir.display(), "partition back online");
                metrics::counter!("streamhouse_partitions_revived_total").increment(1);
                inner.segments = recovered.segments;
                inner.state = recovered.state;
                inner.broken = recovered.report.broken;
                inner.offline = None;
                inner.unsynced = true;
                inner.dir_unsynced = true;
            }
            Err(e) => {
                let reason = format!("recovery of {} failed: {e}", self.dir.display());
                tracing::warn!(%reason, retry_in = ?backoff, "partition still offline");
                inner.offline = Some(Offline::new(reason, &e, backoff));
            }
        }
    }

    /// An I/O error: the partition goes offline, and the batches of this call not yet known
    /// to be on disk are refused.
    fn fail(
        &self,
        mut inner: MutexGuard<'_, Inner>,
        mut results: Vec<Result<Appended, Rejection>>,
        total: usize,
        error: &io::Error,
    ) -> Vec<Result<Appended, Rejection>> {
        let reason = format!("write to {} failed: {error}", self.dir.display());
        tracing::error!(%reason, "partition log offline");
        let down = Offline::new(reason, error, REVIVE_FIRST);
        let rejection = down.rejection();
        // Batches of this call already handed to a write may be in the file in part or whole.
        let unsure = Rejection::new(ErrorCode::StorageError, rejection.message.clone());
        inner.offline = Some(down);
        for result in &mut results {
            if let Ok(Appended::New { .. }) = result {
                *result = Err(unsure.clone());
            }
        }
        results.resize(total, Err(rejection));
        results
    }

    /// Forces everything appended so far to disk: the active segment's data, and the
    /// directory when a segment file was created since its last sync (a file's data is only
    /// as durable as its directory entry).
    ///
    /// Its callers hold batches already written, so every failure is [`ErrorCode::StorageError`]
    /// (written, not known to be durable), also when a later write took the partition offline
    /// before this fsync.
    pub(crate) fn sync(&self) -> Result<(), Rejection> {
        let (file, dir) = {
            let mut inner = self.lock();
            if let Some(down) = &inner.offline {
                return Err(Rejection::new(
                    ErrorCode::StorageError,
                    format!("partition offline before the fsync: {}", down.reason),
                ));
            }
            let file = match inner.segments.last() {
                Some(active) if inner.unsynced => active.file().ok(),
                _ => None,
            };
            // What this fsync makes durable: at least the active segment's bytes up to here.
            let point = match (inner.segments.first(), inner.segments.last()) {
                (Some(first), Some(active)) => Some(checkpoint::Checkpoint {
                    log_start: first.base_offset,
                    segment: active.base_offset,
                    synced: active.size,
                }),
                _ => None,
            };
            inner.unsynced = false;
            (file.zip(point), std::mem::take(&mut inner.dir_unsynced))
        };
        // Written but not known to be durable: the batches may or may not survive.
        let fail = |what: &str, e: io::Error| {
            let reason = format!("fsync of {what} {} failed: {e}", self.dir.display());
            tracing::error!(%reason, "partition log offline");
            self.lock().offline = Some(Offline::new(reason.clone(), &e, REVIVE_FIRST));
            Rejection::new(
                ErrorCode::StorageError,
                format!("partition offline: {reason}"),
            )
        };
        // Outside the lock: appends of the next round and fetches go on meanwhile.
        if let Some((file, _)) = &file {
            file.sync_data().map_err(|e| fail("the segment in", e))?;
        }
        if dir {
            self.config
                .storage
                .sync_dir(&self.dir)
                .map_err(|e| fail("directory", e))?;
            self.dir_syncs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // Only now, with the data and its directory entry durable, may the recovery point say
        // so. Failing to write it costs nothing but precision at the next recovery.
        if let Some((_, point)) = file
            && let Err(e) = checkpoint::write(self.checkpoint.as_ref(), point)
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "checkpoint not written");
        }
        Ok(())
    }

    /// Whole batches from the one holding `offset`, up to `max_bytes` (at least one batch).
    /// Each batch's CRC32C is checked: a corrupt stored batch is never served, the reader gets
    /// [`ErrorCode::CorruptBatch`] when it is the first one wanted.
    pub(crate) fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult, Rejection> {
        let (files, log_start_offset, high_watermark) = {
            let inner = self.lock();
            let start = inner.segments.first().map_or(0, |s| s.base_offset);
            // What is in the files: after a failed write the offsets handed out run ahead.
            let end = inner.segments.last().map_or(start, |s| s.next_offset);
            if offset < start || offset > end {
                return Err(Rejection::new(
                    ErrorCode::OffsetOutOfRange,
                    format!("offset {offset} outside {start}..={end}"),
                ));
            }
            if let Some(note) = &inner.broken
                && offset == end
            {
                return Err(Rejection::new(ErrorCode::CorruptBatch, note.clone()));
            }
            let first = inner
                .segments
                .partition_point(|s| s.base_offset <= offset)
                .saturating_sub(1);
            // Handles of open segments, or (closed ones) an opener: opened one at a time below,
            // outside the lock, and only as far as the read goes.
            let files: Vec<(segment::Opener, u64, u64)> = inner.segments[first..]
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let from = if i == 0 { s.lookup(offset) } else { 0 };
                    (s.opener(), from, s.size)
                })
                .collect();
            (files, start, end)
        };
        let mut result = ReadResult {
            batches: Vec::new(),
            log_start_offset,
            high_watermark,
        };
        let mut total = 0usize;
        let io_error =
            |e: io::Error| Rejection::new(ErrorCode::Internal, format!("read failed: {e}"));
        'segments: for (opener, mut pos, size) in files {
            let file = opener.open().map_err(io_error)?;
            let mut head = [0u8; HEADER_LEN];
            while pos + HEADER_LEN as u64 <= size {
                file.read_exact_at(&mut head, pos).map_err(io_error)?;
                let corrupt = |why: String| {
                    Rejection::new(
                        ErrorCode::CorruptBatch,
                        format!(
                            "stored batch at byte {pos} of {}: {why}",
                            self.dir.display()
                        ),
                    )
                };
                let header = match BatchHeader::read(&head) {
                    Ok(header) if pos + header.total_len() as u64 <= size => header,
                    Ok(header) => {
                        let why = format!("length {} past the segment end", header.total_len());
                        return stop(result, corrupt(why));
                    }
                    Err(e) => return stop(result, corrupt(e.to_string())),
                };
                let len = header.total_len() as u64;
                if header.last_offset() < offset {
                    pos += len;
                    continue;
                }
                if !result.batches.is_empty() && total + len as usize > max_bytes {
                    break 'segments;
                }
                let mut bytes = vec![0u8; len as usize];
                file.read_exact_at(&mut bytes, pos).map_err(io_error)?;
                let bytes = Bytes::from(bytes);
                if let Err(e) = Batch::parse(bytes.clone(), &recovery::STORED) {
                    return stop(result, corrupt(e.to_string()));
                }
                total += bytes.len();
                result.batches.push(bytes);
                pos += len;
                if total >= max_bytes {
                    break 'segments;
                }
            }
        }
        Ok(result)
    }
}

/// A read found a corrupt batch: the batches before it are served, the reader learns of the
/// corruption when it asks for that batch first.
pub(crate) fn stop(result: ReadResult, rejection: Rejection) -> Result<ReadResult, Rejection> {
    if result.batches.is_empty() {
        tracing::error!(reason = %rejection.message, "corrupt stored batch");
        metrics::counter!("streamhouse_corrupt_reads_total").increment(1);
        Err(rejection)
    } else {
        Ok(result)
    }
}

/// Batches admitted in this call, not yet written: stamped offset and the batch bytes.
#[derive(Default)]
struct Pending<'a> {
    batches: Vec<([u8; 8], &'a [u8])>,
    notes: Vec<(i64, i64, u64)>,
}

impl Pending<'_> {
    fn bytes(&self) -> u64 {
        self.batches.iter().map(|(_, b)| b.len() as u64).sum()
    }
}

fn offline(reason: &str) -> Rejection {
    Rejection::new(
        ErrorCode::Unavailable,
        format!("partition offline: {reason}"),
    )
}

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
pub(crate) mod tests_support {
    //! Logs and batches for unit tests elsewhere in the crate.
    use super::*;

    /// A partition log on a fresh simulated filesystem.
    pub(crate) fn log_on_sim() -> Arc<PartitionLog> {
        let fs = super::sim::SimFs::new();
        let config = LogConfig {
            segment_bytes: 1 << 20,
            index_interval: 4096,
            storage: Arc::new(fs),
            producers: ProducerLimits::default(),
        };
        Arc::new(
            PartitionLog::open(Path::new("/data/t-0"), config)
                .unwrap()
                .0,
        )
    }

    /// A batch of one record of `len` bytes.
    pub(crate) fn batch_of(len: usize) -> Batch {
        super::tests::batch_sized(len)
    }
}
#[cfg(test)]
mod tests;
