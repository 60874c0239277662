//! Partition log: appends, reads, segment rolls, and recovery from torn and corrupt tails.

use super::*;
use streamhouse::batch::{BatchBuilder, ProducerStamp};
use streamhouse::codec::{Codecs, NoCompression};

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval: 256,
        limits: DecodeLimits::default(),
    }
}

/// A batch of `records` records whose values name their batch and position.
fn batch(n: usize, records: usize, stamp: ProducerStamp) -> Batch {
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
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let read = log.read(offset, 4096).unwrap();
        if read.batches.is_empty() {
            return out;
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

/// Writes 8 batches, returns the directory, the segment file and the byte ranges of the last 3.
fn written_log() -> (tempfile::TempDir, PathBuf, Vec<std::ops::Range<u64>>) {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = PartitionLog::open(dir.path(), config(1 << 20)).unwrap();
    let mut ranges = Vec::new();
    let mut pos = 0u64;
    for n in 0..8 {
        let b = batch(n, 2, ProducerStamp::NONE);
        let len = b.as_bytes().len() as u64;
        append_all(&log, &[b]);
        ranges.push(pos..pos + len);
        pos += len;
    }
    log.sync().unwrap();
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

#[test]
fn recovery_never_serves_a_flipped_bit() {
    let (dir, file, last3) = written_log();
    let original = std::fs::read(&file).unwrap();
    for bit in (last3[0].start * 8)..(last3[2].end * 8) {
        let copy = copy_dir(dir.path());
        let mut bytes = original.clone();
        bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
        std::fs::write(copy.path().join(file.file_name().unwrap()), &bytes).unwrap();
        let (log, _) = PartitionLog::open(copy.path(), config(1 << 20)).unwrap();
        // The batch holding the flip and everything after it are gone; all before it intact.
        let hit = last3.iter().position(|r| r.contains(&(bit / 8))).unwrap();
        assert_eq!(read_all(&log), expected(5 + hit), "bit {bit}");
    }
}
