//! One segment file of a partition log, and its sparse offset index.
//!
//! A segment is named by the offset of its first record (`00000000000000001234.log`) and holds
//! whole batches back to back, each exactly as the producer sent it with the base offset
//! stamped in. The index keeps one `(offset, file position)` entry per `index_interval` bytes,
//! in memory: a fetch seeks to the entry at or below the wanted offset and scans batch headers
//! from there. It is rebuilt from the batch headers when the segment is opened.

use super::storage::{Storage, StorageFile};
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file name of the segment starting at `base_offset`.
pub(crate) fn file_name(base_offset: i64) -> String {
    format!("{base_offset:020}.log")
}

/// The base offset in a segment file name, if it is one.
pub(crate) fn parse_file_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A segment's file, open or to be opened.
pub(crate) enum Opener {
    Open(Arc<dyn StorageFile>),
    Closed(Arc<dyn Storage>, PathBuf),
}

impl Opener {
    pub(crate) fn open(self) -> io::Result<Arc<dyn StorageFile>> {
        match self {
            Opener::Open(file) => Ok(file),
            Opener::Closed(storage, path) => storage.open(&path),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base_offset: i64,
    /// The open file, shared with readers (positional reads need no lock). Only the active
    /// segment keeps one: a closed segment is opened for each read, so a log of many segments
    /// holds one descriptor, not one per segment.
    handle: Option<Arc<dyn StorageFile>>,
    path: PathBuf,
    storage: Arc<dyn Storage>,
    /// Bytes of whole, valid batches.
    pub(crate) size: u64,
    /// Offset after the last record in the segment.
    pub(crate) next_offset: i64,
    index: Vec<(i64, u64)>,
    since_index: u64,
}

impl Segment {
    /// Creates an empty segment file (its directory entry needs a directory fsync).
    pub(crate) fn create(
        storage: &Arc<dyn Storage>,
        dir: &Path,
        base_offset: i64,
    ) -> io::Result<Segment> {
        let path = dir.join(file_name(base_offset));
        let file = storage.create_new(&path)?;
        Ok(Segment::new(storage, path, file, base_offset))
    }

    /// Opens an existing segment file; the caller recovers it (see `recovery`).
    pub(crate) fn open(
        storage: &Arc<dyn Storage>,
        path: &Path,
        base_offset: i64,
    ) -> io::Result<Segment> {
        let file = storage.open(path)?;
        Ok(Segment::new(storage, path.to_owned(), file, base_offset))
    }

    fn new(
        storage: &Arc<dyn Storage>,
        path: PathBuf,
        file: Arc<dyn StorageFile>,
        base_offset: i64,
    ) -> Segment {
        Segment {
            base_offset,
            handle: Some(file),
            path,
            storage: storage.clone(),
            size: 0,
            next_offset: base_offset,
            index: Vec::new(),
            since_index: u64::MAX, // the first batch always gets an entry
        }
    }

    /// The segment's file: the open one, or (closed segment) opened again for the caller,
    /// closed when the caller drops it.
    pub(crate) fn file(&self) -> io::Result<Arc<dyn StorageFile>> {
        match &self.handle {
            Some(file) => Ok(file.clone()),
            None => self.storage.open(&self.path),
        }
    }

    /// What opens this segment's file later, without holding the log's lock.
    pub(crate) fn opener(&self) -> Opener {
        match &self.handle {
            Some(file) => Opener::Open(file.clone()),
            None => Opener::Closed(self.storage.clone(), self.path.clone()),
        }
    }

    /// Lets go of the open file (a segment no longer written): reads open it when they need it.
    pub(crate) fn close(&mut self) {
        self.handle = None;
    }

    /// Records that a batch of `len` bytes holding `base_offset..next_offset` now ends the
    /// segment (its bytes written at the old `size`).
    pub(crate) fn note_batch(
        &mut self,
        base_offset: i64,
        next_offset: i64,
        len: u64,
        interval: u64,
    ) {
        if self.since_index >= interval {
            self.index.push((base_offset, self.size));
            self.since_index = 0;
        }
        self.size += len;
        self.since_index += len;
        self.next_offset = next_offset;
    }

    /// The file position of the indexed batch at or before `offset`.
    pub(crate) fn lookup(&self, offset: i64) -> u64 {
        match self.index.partition_point(|&(o, _)| o <= offset) {
            0 => 0,
            i => self.index[i - 1].1,
        }
    }

    /// Writes `slices` at the end of the segment's valid data, no copying (the caller then
    /// notes the batches).
    pub(crate) fn write_end(&self, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
        self.file()?.write_all_at(slices, self.size)
    }

    /// Cuts the file back to `size` bytes and makes the cut durable.
    pub(crate) fn truncate(&mut self, size: u64) -> io::Result<()> {
        let file = self.file()?;
        file.set_len(size)?;
        file.sync_data()
    }

    /// Forces written data to disk.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file()?.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_offset() {
        assert_eq!(file_name(1234), "00000000000000001234.log");
        assert_eq!(parse_file_name("00000000000000001234.log"), Some(1234));
        assert_eq!(parse_file_name("1234.log"), None);
        assert_eq!(parse_file_name("00000000000000001234.index"), None);
        assert!(file_name(99) < file_name(100));
    }

    #[test]
    fn sparse_index_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(super::super::storage::Disk);
        let mut s = Segment::create(&storage, dir.path(), 100).unwrap();
        // Batches of 10 records, 1000 bytes each; an entry every 2500 bytes.
        for i in 0..10 {
            let base = 100 + i * 10;
            s.note_batch(base, base + 10, 1000, 2500);
        }
        assert_eq!(s.lookup(99), 0);
        assert_eq!(s.lookup(100), 0);
        assert_eq!(s.lookup(129), 0);
        assert_eq!(s.lookup(130), 3000);
        assert_eq!(s.lookup(175), 6000);
        assert_eq!(s.lookup(10_000), 9000);
        assert_eq!((s.size, s.next_offset), (10_000, 200));
    }
}
