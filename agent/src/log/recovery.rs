//! Opening a partition's segments after a stop or a crash (Kafka's `LogSegment.recover`).
//!
//! Every batch header is read to rebuild the sparse index, the next offset and the producers'
//! sequence windows; the last segment — the only one written since its predecessor was fsynced
//! and closed — is also checked batch by batch (length, magic, base offset continuity, CRC32C).
//! The limits of new traffic (`--max-batch-bytes`, …) are never applied to stored batches.
//!
//! Recovery deletes nothing. What does not follow is moved into `<partition>/quarantine/`:
//!
//! - **A torn tail**: the last segment ends in a batch that fails a check and no valid batch
//!   follows it — what a crash leaves of writes that were never fsynced. The tail is cut (a copy
//!   stays in the quarantine) and the log goes on from there.
//! - **A break**: anything else — a batch that fails a check with valid batches after it, a
//!   segment that is not the last, a segment that does not start where the log before it ends.
//!   That is not what a crash leaves (segments are fsynced before a roll, durable answers wait
//!   for an fsync), so it may be acknowledged data: everything from the break on is moved into
//!   the quarantine with a `BROKEN` note, and the partition is *fenced*: it serves the records
//!   before the break, refuses appends and answers reads at the break with an error, until an
//!   operator moves the quarantine directory away (accepting the loss, or after putting repaired
//!   segments back) and restarts the agent.

use super::LogConfig;
use super::checkpoint;
use super::segment::{Segment, file_name, parse_file_name};
use super::storage::{Storage, StorageFile};
use bytes::Bytes;
use std::io;
use std::path::{Path, PathBuf};
use streamhouse::batch::{Batch, BatchHeader, DecodeLimits, HEADER_LEN};
use streamhouse::serve::PartitionState;

/// The directory, inside a partition's directory, holding what recovery moved aside.
pub(crate) const QUARANTINE: &str = "quarantine";
/// The file naming the topic incarnation (metadata store id) a partition directory belongs to.
pub(crate) const TOPIC_ID: &str = "topic-id";
/// The note in the quarantine saying the log is broken (its presence fences the partition).
pub(crate) const BROKEN: &str = "BROKEN";

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Batches found valid.
    pub batches: u64,
    /// Bytes of a torn tail cut from the last segment (a copy is in the quarantine).
    pub truncated_bytes: u64,
    /// Bytes moved into the quarantine after a break (not counting a torn tail).
    pub quarantined_bytes: u64,
    /// Set when the partition is fenced: why, and where the quarantined data is.
    pub broken: Option<String>,
}

/// Recovery of one partition, as reported by [`Agent::recovery`](crate::Agent::recovery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRecovery {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// What recovery found.
    pub report: RecoveryReport,
}

pub(super) struct Recovered {
    pub(super) segments: Vec<Segment>,
    pub(super) state: PartitionState,
    pub(super) report: RecoveryReport,
}

/// Where the log stops following: segment `index` (of the sorted files) at byte `pos`.
struct Break {
    index: usize,
    pos: u64,
    reason: String,
}

/// Limits for batches already stored: only the format's own bounds (the file's length bounds
/// every read), never the configured limits of new traffic.
pub(crate) const STORED: DecodeLimits = DecodeLimits {
    max_batch_bytes: usize::MAX,
    max_uncompressed_bytes: usize::MAX,
    max_records: usize::MAX,
    max_record_bytes: usize::MAX,
};

/// `floor`: where an empty log starts (0, or the committed high watermark of a partition whose
/// earlier records are in object storage).
pub(super) fn recover(dir: &Path, config: &LogConfig, floor: i64) -> io::Result<Recovered> {
    let storage_arc = &config.storage;
    let storage = config.storage.as_ref();
    let mut files: Vec<(i64, String)> = Vec::new();
    for name in storage.list(dir)? {
        match parse_file_name(&name) {
            Some(base) => files.push((base, name)),
            None if name == QUARANTINE || name == checkpoint::FILE || name == TOPIC_ID => {}
            None => tracing::warn!(dir = %dir.display(), file = %name, "not a segment: ignored"),
        }
    }
    files.sort();
    let quarantine = dir.join(QUARANTINE);
    let point = checkpoint::read(storage, dir);
    let mut report = RecoveryReport {
        broken: read_note(storage, &quarantine),
        ..RecoveryReport::default()
    };
    if files.is_empty() {
        let mut segments = vec![Segment::create(storage_arc, dir, floor)?];
        if let Some(point) = point.filter(|p| p.synced > 0) {
            let why = format!(
                "every segment file is missing, though segment {} held {} fsynced bytes",
                file_name(point.segment),
                point.synced
            );
            fence(storage, dir, &mut segments, &why, 0, &mut report)?;
        }
        return Ok(Recovered {
            segments,
            state: config.new_state(floor),
            report,
        });
    }

    let mut state = config.new_state(files[0].0);
    let mut expected = files[0].0;
    let mut segments: Vec<Segment> = Vec::new();
    let last = files.len() - 1;
    let mut found: Option<Break> = None;
    for (i, (base, name)) in files.iter().enumerate() {
        if *base != expected {
            found = Some(Break {
                index: i,
                pos: 0,
                reason: format!(
                    "segment {name} starts at offset {base}, the log before it ends at {expected}"
                ),
            });
            break;
        }
        let mut segment = Segment::open(storage_arc, &dir.join(name), *base)?;
        let len = segment.file()?.len()?;
        let stop = scan(
            &mut segment,
            len,
            i == last,
            &mut state,
            &mut expected,
            &mut report.batches,
            config,
        )?;
        if i < last {
            // Scanned: let its descriptor go now, or a log of more segments than the open-file
            // limit could not be recovered at all (reads and fencing reopen it when needed).
            segment.close();
        }
        segments.push(segment);
        if let Some((pos, why)) = stop {
            let reason = format!("{name} at byte {pos} (offset {expected}): {why}");
            found = Some(Break {
                index: i,
                pos,
                reason,
            });
            break;
        }
    }

    if let Some(found) = found {
        let (base, name) = &files[found.index];
        // Bytes of this segment known fsynced: damage below that is not a torn write.
        let synced = match point {
            Some(p) if p.segment == *base => p.synced,
            Some(p) if p.segment > *base => u64::MAX,
            _ => 0,
        };
        let torn = found.index == last
            && found.index < segments.len()
            && found.pos >= synced
            && !valid_batch_follows(segments[found.index].file()?.as_ref(), found.pos, expected)?;
        let in_quarantine = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("moving damaged data into {}: {e}", quarantine.display()),
            )
        };
        storage.create_dir_all(&quarantine).map_err(in_quarantine)?;
        if torn {
            let segment = &mut segments[found.index];
            let cut = segment.file()?.len()? - found.pos;
            move_tail(storage, segment, found.pos, &quarantine, name, "tail")
                .map_err(in_quarantine)?;
            report.truncated_bytes = cut;
            tracing::warn!(
                dir = %dir.display(), bytes = cut, reason = %found.reason,
                "cut a torn tail (unsynced writes of a crash); a copy is in the quarantine"
            );
            metrics::counter!("streamhouse_recovery_truncated_bytes_total").increment(cut);
            storage.sync_dir(&quarantine).map_err(in_quarantine)?;
        } else {
            let mut moved = 0;
            if let Some(segment) = segments.get_mut(found.index) {
                moved += segment.file()?.len()? - found.pos;
                move_tail(storage, segment, found.pos, &quarantine, name, "from")
                    .map_err(in_quarantine)?;
            }
            let first_whole = found.index + usize::from(found.index < segments.len());
            for (_, name) in &files[first_whole..] {
                let from = dir.join(name);
                moved += storage.open(&from)?.len()?;
                storage
                    .rename(&from, &unique(storage, &quarantine, name))
                    .map_err(in_quarantine)?;
            }
            metrics::counter!("streamhouse_recovery_quarantined_bytes_total").increment(moved);
            report.quarantined_bytes = moved;
            fence(
                storage,
                dir,
                &mut segments,
                &found.reason,
                expected,
                &mut report,
            )?;
        }
    } else if let Some(point) = point {
        // The log follows; does it still hold everything the last fsync covered?
        let first = files[0].0;
        let active = segments
            .last()
            .map_or((first, 0), |s| (s.base_offset, s.size));
        // Why the log falls short of it, and where the loss starts.
        let shortfall = if first > point.log_start {
            Some((
                format!(
                    "the log starts at offset {first}, but offsets from {} were written \
                     (segment files before {} are missing)",
                    point.log_start,
                    file_name(first)
                ),
                point.log_start,
            ))
        } else if point.segment > active.0 {
            Some((
                format!(
                    "segment {} held {} fsynced bytes and is missing",
                    file_name(point.segment),
                    point.synced
                ),
                expected,
            ))
        } else if point.segment == active.0 && active.1 < point.synced {
            Some((
                format!(
                    "segment {} holds {} bytes, {} were fsynced",
                    file_name(point.segment),
                    active.1,
                    point.synced
                ),
                expected,
            ))
        } else {
            None
        };
        if let Some((why, at)) = shortfall {
            fence(storage, dir, &mut segments, &why, at, &mut report)?;
        }
    } else if segments.iter().any(|s| s.size > 0) {
        tracing::warn!(
            dir = %dir.display(),
            "no readable recovery point (checkpoint missing or torn): damage to the end of the \
             log cannot be told from a torn write and would be cut"
        );
    }
    if report.broken.is_some() {
        metrics::counter!("streamhouse_partitions_fenced_total").increment(1);
    }
    // Only the active segment keeps its file open.
    if let Some((_, older)) = segments.split_last_mut() {
        older.iter_mut().for_each(Segment::close);
    }
    Ok(Recovered {
        segments,
        state,
        report,
    })
}

/// Fences the partition: a `BROKEN` note in the quarantine says why, and a new recovery point
/// describes the log as kept, so that once an operator moves the quarantine away the log is
/// taken as it is.
fn fence(
    storage: &dyn Storage,
    dir: &Path,
    segments: &mut [Segment],
    why: &str,
    at: i64,
    report: &mut RecoveryReport,
) -> io::Result<()> {
    let quarantine = dir.join(QUARANTINE);
    let context =
        |e: io::Error| io::Error::new(e.kind(), format!("fencing {}: {e}", dir.display()));
    storage.create_dir_all(&quarantine).map_err(context)?;
    let note = format!(
        "log broken at offset {at}: {why}. Whatever recovery moved aside is in {}; the \
         partition refuses appends until that directory (or this note) is moved away and the \
         agent restarted.\n",
        quarantine.display()
    );
    storage
        .write_new(&unique(storage, &quarantine, BROKEN), note.as_bytes())
        .map_err(context)?;
    if let (Some(first), Some(kept)) = (segments.first(), segments.last()) {
        kept.sync().map_err(context)?;
        let point = checkpoint::Checkpoint {
            log_start: first.base_offset,
            segment: kept.base_offset,
            synced: kept.size,
        };
        let file = checkpoint::open(storage, dir).map_err(context)?;
        checkpoint::write(file.as_ref(), point)
            .and_then(|()| file.sync_data())
            .map_err(context)?;
    }
    storage.sync_dir(&quarantine).map_err(context)?;
    storage.sync_dir(dir).map_err(context)?;
    tracing::error!(dir = %dir.display(), %note, "partition fenced");
    report.broken = Some(note);
    Ok(())
}

/// The `BROKEN` note of an earlier recovery, if the quarantine holds one.
fn read_note(storage: &dyn Storage, quarantine: &Path) -> Option<String> {
    let mut names: Vec<String> = storage
        .list(quarantine)
        .ok()?
        .into_iter()
        .filter(|n| n == BROKEN || n.starts_with(&format!("{BROKEN}.")))
        .collect();
    names.sort();
    let notes: Vec<String> = names
        .iter()
        .map(|name| {
            let path = quarantine.join(name);
            match storage.read_all(&path) {
                Ok(note) => String::from_utf8_lossy(&note).trim_end().to_owned(),
                Err(e) => format!("{} cannot be read ({e})", path.display()),
            }
        })
        .collect();
    (!notes.is_empty()).then(|| notes.join("\n"))
}

/// A name for `name` in `dir` that is not taken yet.
fn unique(storage: &dyn Storage, dir: &Path, name: &str) -> PathBuf {
    let mut path = dir.join(name);
    let mut n = 1;
    while storage.exists(&path) {
        path = dir.join(format!("{name}.{n}"));
        n += 1;
    }
    path
}

/// Copies the bytes of `segment` from `pos` into the quarantine (durably), then cuts them off.
fn move_tail(
    storage: &dyn Storage,
    segment: &mut Segment,
    pos: u64,
    quarantine: &Path,
    name: &str,
    what: &str,
) -> io::Result<()> {
    let len = segment.file()?.len()?;
    if pos >= len {
        return Ok(());
    }
    let mut tail = vec![0u8; usize::try_from(len - pos).map_err(io::Error::other)?];
    segment.file()?.read_exact_at(&mut tail, pos)?;
    let copy = unique(storage, quarantine, &format!("{name}.{what}-at-{pos}"));
    storage.write_new(&copy, &tail)?;
    storage.sync_dir(quarantine)?;
    segment.truncate(pos)
}

/// Walks the batches of one segment, noting each; returns where and why it stopped following,
/// if it did before the end of the file.
fn scan(
    segment: &mut Segment,
    len: u64,
    verify_crc: bool,
    state: &mut PartitionState,
    expected: &mut i64,
    batches: &mut u64,
    config: &LogConfig,
) -> io::Result<Option<(u64, String)>> {
    let mut pos = 0u64;
    while pos < len {
        let header = match checked_batch(segment.file()?.as_ref(), pos, len, *expected, verify_crc)?
        {
            Ok(header) => header,
            Err(why) => return Ok(Some((pos, why))),
        };
        let total = header.total_len() as u64;
        state.restore(&header);
        let next = header.last_offset() + 1;
        segment.note_batch(header.base_offset, next, total, config.index_interval);
        *expected = next;
        *batches += 1;
        pos += total;
    }
    Ok(None)
}

/// The header of the batch at `pos` if it is whole, starts at `expected` and (when asked)
/// passes its CRC; else why not.
fn checked_batch(
    file: &dyn StorageFile,
    pos: u64,
    len: u64,
    expected: i64,
    verify_crc: bool,
) -> io::Result<Result<BatchHeader, String>> {
    if len - pos < HEADER_LEN as u64 {
        return Ok(Err(format!("{} bytes, less than a header", len - pos)));
    }
    let mut head = [0u8; HEADER_LEN];
    file.read_exact_at(&mut head, pos)?;
    let header = match BatchHeader::read(&head) {
        Ok(header) => header,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let total = header.total_len() as u64;
    if pos + total > len {
        return Ok(Err(format!(
            "batch of {total} bytes, {} left in the file",
            len - pos
        )));
    }
    if header.base_offset != expected {
        return Ok(Err(format!(
            "batch at offset {}, expected {expected}",
            header.base_offset
        )));
    }
    if header.record_count == 0 {
        return Ok(Err("empty batch".to_owned()));
    }
    if verify_crc {
        let mut bytes = vec![0u8; total as usize];
        file.read_exact_at(&mut bytes, pos)?;
        if let Err(e) = Batch::parse(Bytes::from(bytes), &STORED) {
            return Ok(Err(e.to_string()));
        }
    }
    Ok(Ok(header))
}

/// Whether the failed batch at `pos` is whole and a valid batch continuing the log starts right
/// after it: then the failure is damage inside the log (a flipped bit), not the end of what was
/// written. Only that one boundary is looked at — never inside the failed batch, whose records
/// a client wrote and could shape like a batch to turn a crash into a fence. A batch cut short
/// (the file ends first) or an unreadable header is what a crash leaves; past the recovery point
/// that is a torn tail whatever the bytes look like.
fn valid_batch_follows(file: &dyn StorageFile, pos: u64, expected: i64) -> io::Result<bool> {
    let len = file.len()?;
    if len - pos < HEADER_LEN as u64 {
        return Ok(false);
    }
    let mut head = [0u8; HEADER_LEN];
    file.read_exact_at(&mut head, pos)?;
    let Ok(failed) = BatchHeader::read(&head) else {
        return Ok(false);
    };
    if failed.base_offset != expected || failed.record_count <= 0 {
        return Ok(false);
    }
    let next = pos + failed.total_len() as u64;
    if next >= len {
        return Ok(false);
    }
    Ok(checked_batch(file, next, len, failed.last_offset() + 1, true)?.is_ok())
}
