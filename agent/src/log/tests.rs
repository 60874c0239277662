//! Partition log: appends, reads, segment rolls, and recovery from torn and corrupt tails.

use super::*;
use streamhouse::batch::{BatchBuilder, ProducerStamp};
use streamhouse::batch::{DecodeLimits, set_base_offset};
use streamhouse::codec::{Codecs, NoCompression};

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval: 256,
        storage: Arc::new(storage::Disk),
        producers: ProducerLimits::default(),
    }
}

/// A batch of `records` records whose values name their batch and position.
/// A batch of one record of `len` bytes.
pub(super) fn batch_sized(len: usize) -> Batch {
    let mut b = BatchBuilder::new();
    b.append(1_700_000_000_000, None, Some(&vec![b'x'; len]), &[])
        .unwrap();
    Batch::parse(
        b.finish(ProducerStamp::NONE, &NoCompression).unwrap(),
        &DecodeLimits::default(),
    )
    .unwrap()
}

pub(super) fn batch(n: usize, records: usize, stamp: ProducerStamp) -> Batch {
    let mut b = BatchBuilder::new();
    for r in 0..records {
        let value = format!("batch-{n}-record-{r}-{}", "x".repeat(30));
        b.append(
            1_700_000_000_000 + n as i64,
            None,
            Some(value.as_bytes()),
            &[],
        )
        .unwrap();
    }
    Batch::parse(
        b.finish(stamp, &NoCompression).unwrap(),
        &DecodeLimits::default(),
    )
    .unwrap()
}

fn append_all(log: &PartitionLog, batches: &[Batch]) -> Vec<i64> {
    let refs: Vec<&Batch> = batches.iter().collect();
    log.append(&refs)
        .into_iter()
        .map(|r| match r.unwrap() {
            Appended::New { base_offset, .. } | Appended::Duplicate { base_offset } => base_offset,
        })
        .collect()
}

/// Every record readable from offset 0, as (offset, value).
fn read_all(log: &PartitionLog) -> Vec<(i64, String)> {
    let (records, error) = read_until_error(log);
    assert!(error.is_none(), "{error:?}");
    records
}

/// Every record readable from offset 0, up to the end or the first refused read.
pub(super) fn read_until_error(log: &PartitionLog) -> (Vec<(i64, String)>, Option<Rejection>) {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let read = match log.read(offset, 4096) {
            Ok(read) => read,
            Err(e) => return (out, Some(e)),
        };
        if read.batches.is_empty() {
            return (out, None);
        }
        for bytes in read.batches {
            let batch =
                Batch::parse(bytes, &DecodeLimits::default()).expect("served batches are valid");
            for r in batch.records(&Codecs::new()).unwrap() {
                let r = r.unwrap();
                if r.offset >= offset {
                    out.push((
                        r.offset,
                        String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
                    ));
                }
            }
            offset = batch.header().last_offset() + 1;
        }
    }
}

#[test]
fn appends_get_consecutive_offsets_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (log, report) = PartitionLog::open(dir.path(), config(1 << 20)).unwrap();
    assert_eq!(report, RecoveryReport::default());
    let batches: Vec<Batch> = (0..5).map(|n| batch(n, 3, ProducerStamp::NONE)).collect();
    assert_eq!(append_all(&log, &batches), [0, 3, 6, 9, 12]);
    log.sync().unwrap();
    let records = read_all(&log);
    assert_eq!(records.len(), 15);
    assert!(records.iter().enumerate().all(|(i, (o, _))| *o == i as i64));
    assert_eq!(records[7].1.split('-').nth(1), Some("2"));
    // A fetch from the middle of a batch returns that whole batch.
    let mid = log.read(7, 1).unwrap();
    assert_eq!(mid.batches.len(), 1);
    assert_eq!(mid.high_watermark, 15);
    assert!(log.read(16, 100).is_err());
    assert!(log.read(15, 100).unwrap().batches.is_empty());
}

#[test]
fn segments_roll_and_everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = PartitionLog::open(dir.path(), config(2_000)).unwrap();
        for n in 0..20 {
            append_all(&log, &[batch(n, 4, ProducerStamp::NONE)]);
        }
        log.sync().unwrap();
    }
    let segments = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(segments >= 3, "rolled into {segments} segments");
    let (log, report) = PartitionLog::open(dir.path(), config(2_000)).unwrap();
    assert_eq!(report.batches, 20);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(log.next_offset(), 80);
    let records = read_all(&log);
    assert_eq!(records.len(), 80);
    assert!(records.iter().enumerate().all(|(i, (o, _))| *o == i as i64));
}

#[test]
fn a_new_segment_is_followed_by_a_directory_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(&dir.path().join("t-0"), config(2_000)).unwrap();
    let dir_syncs = || log.dir_syncs.load(std::sync::atomic::Ordering::Relaxed);
    append_all(&log, &[batch(0, 4, ProducerStamp::NONE)]);
    log.sync().unwrap();
    assert_eq!(dir_syncs(), 1, "the first segment's entry made durable");
    append_all(&log, &[batch(1, 1, ProducerStamp::NONE)]);
    log.sync().unwrap();
    assert_eq!(dir_syncs(), 1, "no new file, no directory fsync");
    let segments = |log: &PartitionLog| log.lock().segments.len();
    let before = segments(&log);
    let mut n = 2;
    while segments(&log) == before {
        append_all(&log, &[batch(n, 4, ProducerStamp::NONE)]);
        n += 1;
    }
    log.sync().unwrap();
    assert_eq!(dir_syncs(), 2, "a roll is followed by a directory fsync");
}

#[test]
fn idempotence_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let stamp = |seq| ProducerStamp {
        producer_id: 42,
        producer_epoch: 0,
        base_sequence: seq,
    };
    {
        let (log, _) = PartitionLog::open(dir.path(), config(1 << 20)).unwrap();
        append_all(&log, &[batch(0, 2, stamp(0)), batch(1, 2, stamp(2))]);
        log.sync().unwrap();
    }
    let (log, _) = PartitionLog::open(dir.path(), config(1 << 20)).unwrap();
    // The retry of batch 1 is recognised and answered with its original offset.
    let retry = batch(1, 2, stamp(2));
    assert_eq!(
        log.append(&[&retry])[0],
        Ok(Appended::Duplicate { base_offset: 2 })
    );
    let gap = batch(2, 1, stamp(9));
    assert_eq!(
        log.append(&[&gap])[0].as_ref().unwrap_err().code,
        ErrorCode::OutOfOrderSequence
    );
    assert_eq!(log.next_offset(), 4);
}

/// Writes 8 batches, the first 5 fsynced (the recovery point), the last 3 not; returns the
/// directory, the segment file and the byte ranges of the last 3 (what a crash may tear).
fn written_log() -> (tempfile::TempDir, PathBuf, Vec<std::ops::Range<u64>>) {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), config(1 << 20)).unwrap();
    let mut ranges = Vec::new();
    let mut pos = 0u64;
    for n in 0..8 {
        if n == 5 {
            log.sync().unwrap();
        }
        let b = batch(n, 2, ProducerStamp::NONE);
        let len = b.as_bytes().len() as u64;
        append_all(&log, &[b]);
        ranges.push(pos..pos + len);
        pos += len;
    }
    drop(log);
    let file = dir.path().join(segment::file_name(0));
    (dir, file, ranges[5..].to_vec())
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
    }
    to
}

/// Offsets and values of the records in the first `batches` batches of `written_log`.
fn expected(batches: usize) -> Vec<(i64, String)> {
    (0..batches)
        .flat_map(|n| (0..2).map(move |r| (n * 2 + r, n, r)))
        .map(|(o, n, r)| (o as i64, format!("batch-{n}-record-{r}-{}", "x".repeat(30))))
        .collect()
}

#[test]
fn recovery_cuts_at_every_truncation_point_of_the_last_three_batches() {
    let (dir, file, last3) = written_log();
    for cut in last3[0].start..=last3[2].end {
        let copy = copy_dir(dir.path());
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(copy.path().join(file.file_name().unwrap()))
            .unwrap();
        f.set_len(cut).unwrap();
        drop(f);
        let (log, report) = PartitionLog::open(copy.path(), config(1 << 20)).unwrap();
        // Whole batches before the cut survive; a partial one is cut off.
        let whole = 5 + last3.iter().filter(|r| r.end <= cut).count();
        assert_eq!(log.next_offset(), whole as i64 * 2, "cut at {cut}");
        assert_eq!(report.batches, whole as u64);
        assert_eq!(read_all(&log), expected(whole), "cut at {cut}");
        // And the log takes appends again right after the last valid batch.
        assert_eq!(
            append_all(&log, &[batch(99, 1, ProducerStamp::NONE)]),
            [whole as i64 * 2]
        );
    }
}

/// The bytes of every file under `dir` (recursively), for "nothing was deleted" checks.
fn bytes_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                bytes_under(&e.path())
            } else if e.file_name() == recovery::BROKEN || e.file_name() == checkpoint::FILE {
                0
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

#[test]
fn recovery_never_serves_a_flipped_bit_and_deletes_nothing() {
    let (dir, file, last3) = written_log();
    let original = std::fs::read(&file).unwrap();
    for bit in (last3[0].start * 8)..(last3[2].end * 8) {
        let copy = copy_dir(dir.path());
        let mut bytes = original.clone();
        bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
        std::fs::write(copy.path().join(file.file_name().unwrap()), &bytes).unwrap();
        let (log, report) = PartitionLog::open(copy.path(), config(1 << 20)).unwrap();
        // All before the batch holding the flip is served; the flipped batch never is.
        let hit = last3.iter().position(|r| r.contains(&(bit / 8))).unwrap();
        let (records, error) = read_until_error(&log);
        assert_eq!(records, expected(5 + hit), "bit {bit}");
        // Every byte is still on disk, in the log or in the quarantine.
        assert_eq!(bytes_under(copy.path()), original.len() as u64, "bit {bit}");
        if report.broken.is_some() {
            // Valid batches follow the damage: not a torn tail, the partition is fenced.
            assert_eq!(error.unwrap().code, ErrorCode::CorruptBatch, "bit {bit}");
            let refused = log.append(&[&batch(99, 1, ProducerStamp::NONE)]);
            assert_eq!(
                refused[0].as_ref().unwrap_err().code,
                ErrorCode::Unavailable
            );
        } else {
            // Nothing valid follows (the last batch, or a flipped length): a torn tail, cut.
            assert!(error.is_none(), "bit {bit}");
            assert!(report.truncated_bytes > 0, "bit {bit}");
        }
    }
}

/// A log of `batches` 4-record batches in ~2,000-byte segments; returns its directory and
/// the segment files in offset order.
fn rolled_log(batches: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = PartitionLog::open(dir.path(), config(2_000)).unwrap();
        for n in 0..batches {
            append_all(&log, &[batch(n, 4, ProducerStamp::NONE)]);
        }
        log.sync().unwrap();
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    (dir, files)
}

/// Issue 11, defect 2: a corrupt middle segment used to end the log there and every later
/// segment — fsynced, acknowledged data — was deleted. Now the rest is quarantined, the
/// partition fenced, and an operator's move of the quarantine lets it go on.
#[test]
fn a_break_in_a_middle_segment_is_quarantined_and_fences_the_partition() {
    let (dir, files) = rolled_log(20);
    assert!(files.len() >= 3, "{files:?}");
    let total = bytes_under(dir.path());
    // Damage the header of the second segment's first batch (its stamped base offset).
    let mut bytes = std::fs::read(&files[1]).unwrap();
    bytes[3] ^= 0x10;
    std::fs::write(&files[1], &bytes).unwrap();
    let break_offset = segment_base(&files[1]);

    let (log, report) = PartitionLog::open(dir.path(), config(2_000)).unwrap();
    let note = report.broken.clone().expect("fenced");
    assert!(note.contains(&format!("offset {break_offset}")), "{note}");
    assert_eq!(report.quarantined_bytes, total - segment_len(&files[0]));
    assert_eq!(bytes_under(dir.path()), total, "nothing deleted");
    let (records, error) = read_until_error(&log);
    assert_eq!(records.len() as i64, break_offset);
    assert_eq!(error.unwrap().code, ErrorCode::CorruptBatch);
    let refused = log.append(&[&batch(99, 1, ProducerStamp::NONE)]);
    assert_eq!(
        refused[0].as_ref().unwrap_err().code,
        ErrorCode::Unavailable
    );
    drop(log);

    // Still fenced after a restart: the note in the quarantine says so.
    let (log, report) = PartitionLog::open(dir.path(), config(2_000)).unwrap();
    assert!(report.broken.is_some());
    assert_eq!(report.quarantined_bytes, 0, "nothing more to move");
    drop(log);

    // The operator accepts the loss: the quarantine moves away, the partition goes on.
    let quarantine = dir.path().join(recovery::QUARANTINE);
    let kept = tempfile::tempdir().unwrap();
    std::fs::rename(&quarantine, kept.path().join("q")).unwrap();
    let (log, report) = PartitionLog::open(dir.path(), config(2_000)).unwrap();
    assert_eq!(report.broken, None);
    assert_eq!(
        append_all(&log, &[batch(99, 1, ProducerStamp::NONE)]),
        [break_offset]
    );
}

/// Issue 11, defect 2: a segment that does not start where the log before it ends (a lost
/// segment file) used to take every later segment with it.
#[test]
fn a_missing_segment_quarantines_the_later_ones_instead_of_deleting_them() {
    let (dir, files) = rolled_log(20);
    let total = bytes_under(dir.path());
    let lost = segment_len(&files[1]);
    let lens: Vec<u64> = files.iter().map(|f| segment_len(f)).collect();
    std::fs::remove_file(&files[1]).unwrap();
    let (log, report) = PartitionLog::open(dir.path(), config(2_000)).unwrap();
    assert!(report.broken.is_some());
    assert_eq!(bytes_under(dir.path()), total - lost);
    assert_eq!(log.next_offset(), segment_base(&files[1]));
    for (file, len) in files.iter().zip(&lens).skip(2) {
        let moved = dir
            .path()
            .join(recovery::QUARANTINE)
            .join(file.file_name().unwrap());
        assert_eq!(std::fs::read(moved).unwrap().len() as u64, *len);
    }
}

/// Issue 11, defect 2: only the last segment was CRC-checked at start, so a flipped bit in an
/// older segment was served to readers. Reads check every batch.
#[test]
fn reads_check_the_crc_of_every_segment() {
    let (dir, files) = rolled_log(20);
    let (log, _) = PartitionLog::open(dir.path(), config(2_000)).unwrap();
    // Damage the first segment's second batch while the agent runs (bit rot).
    let first = batch(0, 4, ProducerStamp::NONE).as_bytes().len();
    let mut bytes = std::fs::read(&files[0]).unwrap();
    bytes[first + HEADER_LEN + 5] ^= 1;
    std::fs::write(&files[0], &bytes).unwrap();
    let read = log.read(0, 1 << 20).unwrap();
    assert_eq!(read.batches.len(), 1, "stops before the damaged batch");
    let error = log.read(4, 1 << 20).unwrap_err();
    assert_eq!(error.code, ErrorCode::CorruptBatch);
    assert!(
        log.read(8, 1 << 20).is_ok(),
        "later batches are still served"
    );
}

fn segment_base(path: &Path) -> i64 {
    segment::parse_file_name(path.file_name().unwrap().to_str().unwrap()).unwrap()
}

fn segment_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Found by an outside review: a damaged length field in the last segment, with intact
/// batches after it, was cut as a torn tail (its own length hid the batches behind it). Below
/// the recovery point (fsynced, maybe acknowledged) it fences; past it, it is what a crash may
/// leave of unsynced writes and is cut, a copy kept.
#[test]
fn a_damaged_length_fences_below_the_recovery_point_and_is_cut_past_it() {
    for synced in [true, false] {
        let (dir, file, last3) = written_log();
        if synced {
            let (log, _) = PartitionLog::open(dir.path(), config(1 << 20)).unwrap();
            log.sync().unwrap();
        }
        let mut bytes = std::fs::read(&file).unwrap();
        let at = last3[0].start as usize + 8;
        bytes[at..at + 4].copy_from_slice(&100_000i32.to_be_bytes());
        std::fs::write(&file, &bytes).unwrap();
        let (log, report) = PartitionLog::open(dir.path(), config(1 << 20)).unwrap();
        assert_eq!(
            report.broken.is_some(),
            synced,
            "synced {synced}: {report:?}"
        );
        assert_eq!(report.truncated_bytes > 0, !synced);
        assert_eq!(read_until_error(&log).0, expected(5));
        assert_eq!(
            bytes_under(dir.path()),
            bytes.len() as u64,
            "nothing deleted"
        );
    }
}

/// Found by an outside review: recovery searched the bytes after a torn batch for anything
/// shaped like a valid batch, including the torn batch's own records — which a client writes.
/// A value holding a batch turned a plain crash into a fence. Only the boundary after a whole
/// batch is looked at now.
#[test]
fn a_record_shaped_like_a_batch_cannot_turn_a_crash_into_a_fence() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), config(1 << 20)).unwrap();
    append_all(&log, &[batch(0, 2, ProducerStamp::NONE)]);
    log.sync().unwrap();
    // A value that is, byte for byte, a valid batch at a later offset.
    let mut forged = batch(1, 3, ProducerStamp::NONE).as_bytes().to_vec();
    set_base_offset(&mut forged, 50).unwrap();
    let mut padded = vec![b'.'; 100];
    padded.extend_from_slice(&forged);
    padded.resize(4_000, b'.');
    let mut b = BatchBuilder::new();
    b.append(1, None, Some(&padded), &[]).unwrap();
    let evil = Batch::parse(
        b.finish(ProducerStamp::NONE, &NoCompression).unwrap(),
        &DecodeLimits::default(),
    )
    .unwrap();
    append_all(&log, &[evil]);
    drop(log); // never fsynced: a crash may tear it
    let file = dir.path().join(segment::file_name(0));
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len - 1_000).unwrap();
    drop(f);
    let (log, report) = PartitionLog::open(dir.path(), config(1 << 20)).unwrap();
    assert_eq!(report.broken, None, "a crash fenced the partition");
    assert!(report.truncated_bytes > 0);
    assert_eq!(read_all(&log).len(), 2);
}

/// Found by an outside review: damage to the last batch of the log was cut as a torn tail
/// although the batch had been fsynced (and acknowledged), and its offsets were handed out
/// again. The recovery point says what was fsynced; damage below it fences.
#[test]
fn damage_below_the_recovery_point_fences_even_in_the_last_batch() {
    let (dir, file, last3) = written_log();
    {
        // Make all 8 batches durable: the recovery point moves to the end.
        let (log, _) = PartitionLog::open(dir.path(), config(1 << 20)).unwrap();
        assert!(log.append(&[&batch(8, 1, ProducerStamp::NONE)])[0].is_ok());
        log.sync().unwrap();
    }
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let (log, report) = PartitionLog::open(dir.path(), config(1 << 20)).unwrap();
    assert!(report.broken.is_some(), "{report:?}");
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(read_until_error(&log).0, expected(8));
    let _ = last3;
}

/// Found by an outside review: a missing first or last segment file went unnoticed (the log
/// simply started later, or ended earlier and handed its offsets out again).
#[test]
fn a_missing_first_or_last_segment_fences() {
    for which in ["first", "last"] {
        let (dir, files) = rolled_log(20);
        let gone = if which == "first" {
            &files[0]
        } else {
            &files[files.len() - 1]
        };
        std::fs::remove_file(gone).unwrap();
        let (log, report) = PartitionLog::open(dir.path(), config(2_000)).unwrap();
        let note = report
            .broken
            .unwrap_or_else(|| panic!("{which}: not fenced"));
        assert!(note.contains("missing"), "{which}: {note}");
        let refused = log.append(&[&batch(99, 1, ProducerStamp::NONE)]);
        assert_eq!(
            refused[0].as_ref().unwrap_err().code,
            ErrorCode::Unavailable
        );
        drop(log);
        // Accepting the loss: the quarantine goes, the log is taken as it is.
        std::fs::remove_dir_all(dir.path().join(recovery::QUARANTINE)).unwrap();
        let (log, report) = PartitionLog::open(dir.path(), config(2_000)).unwrap();
        assert_eq!(report.broken, None, "{which}");
        assert!(log.append(&[&batch(99, 1, ProducerStamp::NONE)])[0].is_ok());
    }
}

/// Found by an outside review: a second break wrote `BROKEN.1` beside `BROKEN`, but only
/// `BROKEN` was read, so removing it lifted the fence with the second break never seen.
#[test]
fn every_broken_note_keeps_the_fence() {
    let (dir, files) = rolled_log(20);
    std::fs::remove_file(&files[1]).unwrap();
    let (log, first) = PartitionLog::open(dir.path(), config(2_000)).unwrap();
    assert!(first.broken.is_some());
    drop(log);
    let quarantine = dir.path().join(recovery::QUARANTINE);
    std::fs::write(quarantine.join("BROKEN.1"), "a second break\n").unwrap();
    std::fs::remove_file(quarantine.join(recovery::BROKEN)).unwrap();
    let (log, report) = PartitionLog::open(dir.path(), config(2_000)).unwrap();
    let note = report.broken.expect("still fenced");
    assert!(note.contains("a second break"), "{note}");
    let refused = log.append(&[&batch(99, 1, ProducerStamp::NONE)]);
    assert_eq!(
        refused[0].as_ref().unwrap_err().code,
        ErrorCode::Unavailable
    );
}
