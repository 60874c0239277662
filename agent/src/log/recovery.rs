//! Opening a partition's segments after a stop or a crash (Kafka's `LogSegment.recover`).
//!
//! Every batch header is read to rebuild the sparse index, the next offset and the producers'
//! sequence windows. The last segment — the only one written since its predecessor was fsynced
//! and closed — is also checked batch by batch (length, magic, base offset continuity, CRC32C)
//! and cut at the first batch that fails: a torn write or a flipped bit ends the log there, and
//! nothing after it is ever served. A segment that breaks the offset sequence ends the log too;
//! the segments after it are removed.

use super::LogConfig;
use super::segment::{Segment, parse_file_name};
use bytes::Bytes;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use streamhouse::batch::{Batch, BatchHeader, HEADER_LEN};
use streamhouse::serve::PartitionState;

/// What recovery found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Batches found valid.
    pub batches: u64,
    /// Bytes cut from the end of the log.
    pub truncated_bytes: u64,
    /// Segment files removed because they followed a break in the log.
    pub segments_removed: u64,
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

pub(super) fn recover(dir: &Path, config: &LogConfig) -> io::Result<Recovered> {
    let mut files: Vec<(i64, std::path::PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let base = parse_file_name(entry.file_name().to_str()?)?;
            Some((base, entry.path()))
        })
        .collect();
    files.sort();
    let mut report = RecoveryReport::default();
    if files.is_empty() {
        let segment = Segment::create(dir, 0)?;
        segment.seek_end()?;
        return Ok(Recovered {
            segments: vec![segment],
            state: PartitionState::new(0),
            report,
        });
    }

    let mut state = PartitionState::new(files[0].0);
    let mut expected = files[0].0;
    let mut segments: Vec<Segment> = Vec::new();
    let last = files.len() - 1;
    let mut broken = false;
    for (i, (base, path)) in files.into_iter().enumerate() {
        if broken || base != expected {
            // After a break, or a segment that does not start where the log ended.
            std::fs::remove_file(&path)?;
            report.segments_removed += 1;
            broken = true;
            continue;
        }
        let mut segment = Segment::open(path, base)?;
        let len = segment.file.metadata()?.len();
        let end = scan(
            &mut segment,
            len,
            i == last,
            &mut state,
            &mut expected,
            config,
            &mut report,
        )?;
        if end < len {
            segment.truncate(end)?;
            report.truncated_bytes += len - end;
            broken = true;
        }
        segment.seek_end()?;
        segments.push(segment);
    }
    Ok(Recovered {
        segments,
        state,
        report,
    })
}

/// Walks the batches of one segment; returns the end of the last valid one.
fn scan(
    segment: &mut Segment,
    len: u64,
    verify_crc: bool,
    state: &mut PartitionState,
    expected: &mut i64,
    config: &LogConfig,
    report: &mut RecoveryReport,
) -> io::Result<u64> {
    let mut pos = 0u64;
    let mut head = [0u8; HEADER_LEN];
    while pos < len {
        if len - pos < HEADER_LEN as u64 {
            break;
        }
        segment.file.read_exact_at(&mut head, pos)?;
        let Ok(header) = BatchHeader::read(&head) else {
            break;
        };
        let total = header.total_len() as u64;
        if pos + total > len
            || header.base_offset != *expected
            || header.record_count == 0
            || total > config.limits.max_batch_bytes as u64
        {
            break;
        }
        if verify_crc {
            let mut bytes = vec![0u8; total as usize];
            segment.file.read_exact_at(&mut bytes, pos)?;
            if Batch::parse(Bytes::from(bytes), &config.limits).is_err() {
                break;
            }
        }
        state.restore(&header);
        let next = header.last_offset() + 1;
        segment.note_batch(header.base_offset, next, total, config.index_interval);
        *expected = next;
        report.batches += 1;
        pos += total;
    }
    Ok(pos)
}
