//! A simulated filesystem for crash tests: it keeps, per file and per directory, what was
//! written and what was fsynced, and can lose power.
//!
//! After a power cut only fsynced file data and fsynced directory entries remain; optionally a
//! prefix of the writes made since the last fsync of a file survives too, the last of them torn
//! at a random byte (what a disk that writes in order but was interrupted leaves). Every sync
//! and every write can be captured as such a crash image, so one run of a workload yields a
//! crash at every fsync boundary and at points between.

use super::storage::{Storage, StorageFile};
use std::collections::BTreeMap;
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

#[derive(Debug, Clone)]
enum Op {
    Write { pos: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    /// What reads see.
    data: Vec<u8>,
    /// What survives a power cut.
    synced: Vec<u8>,
    /// Changes since the last sync, in order.
    pending: Vec<Op>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(usize),
    Dir,
}

#[derive(Debug, Clone, Default)]
struct Dir {
    entries: BTreeMap<String, Entry>,
    synced: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Default)]
struct State {
    dirs: BTreeMap<PathBuf, Dir>,
    inodes: Vec<Inode>,
    syncs: u64,
    /// Crash images taken so far (when capturing): the sync count at the cut, and the image.
    images: Vec<(u64, State)>,
    capture: Option<Capture>,
    /// Every fsync fails (a dying disk).
    failing: bool,
    /// Every write fails (a full disk).
    full: bool,
}

#[derive(Debug, Clone, Copy)]
struct Capture {
    seed: u64,
    /// Also capture at every write and truncation (with torn unsynced prefixes).
    between: bool,
}

/// An in-memory filesystem that remembers what was fsynced. Clones share the same files.
#[derive(Debug, Clone, Default)]
pub(crate) struct SimFs {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<State>>,
    ino: usize,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}", path.display()))
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let parent = path.parent().ok_or_else(|| not_found(path))?.to_owned();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| not_found(path))?
        .to_owned();
    Ok((parent, name))
}

/// splitmix64: the crash images' torn prefixes are chosen by seed.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl State {
    fn root() -> State {
        let mut state = State::default();
        state.dirs.insert(PathBuf::from("/"), Dir::default());
        state
    }

    fn lookup(&self, path: &Path) -> Option<Entry> {
        if self.dirs.contains_key(path) {
            return Some(Entry::Dir);
        }
        let (parent, name) = split(path).ok()?;
        self.dirs.get(&parent)?.entries.get(&name).copied()
    }

    fn file(&self, path: &Path) -> io::Result<usize> {
        match self.lookup(path) {
            Some(Entry::File(ino)) => Ok(ino),
            _ => Err(not_found(path)),
        }
    }

    /// What a power cut now leaves. With `torn`, each file keeps a seeded prefix of its unsynced
    /// changes, the last write cut at a random byte.
    fn power_cut(&self, torn: Option<u64>) -> State {
        let mut out = State::root();
        // Directories survive if reachable through synced entries from the root.
        let mut stack = vec![PathBuf::from("/")];
        while let Some(dir) = stack.pop() {
            let Some(d) = self.dirs.get(&dir) else {
                continue;
            };
            let mut kept = Dir::default();
            for (name, entry) in &d.synced {
                let entry = match entry {
                    Entry::Dir => {
                        stack.push(dir.join(name));
                        Entry::Dir
                    }
                    Entry::File(ino) => {
                        let inode = &self.inodes[*ino];
                        let mut data = inode.synced.clone();
                        if let Some(seed) = torn {
                            let r = mix(seed ^ (*ino as u64).wrapping_mul(0x1000_0001));
                            apply_prefix(&mut data, &inode.pending, r);
                        }
                        out.inodes.push(Inode {
                            synced: data.clone(),
                            data,
                            pending: Vec::new(),
                        });
                        Entry::File(out.inodes.len() - 1)
                    }
                };
                kept.entries.insert(name.clone(), entry);
                kept.synced.insert(name.clone(), entry);
            }
            out.dirs.insert(dir, kept);
        }
        out
    }

    fn capture(&mut self, at_sync: bool) {
        let Some(Capture { seed, between }) = self.capture else {
            return;
        };
        if !at_sync && !between {
            return;
        }
        let seed = mix(seed ^ self.images.len() as u64);
        let torn = (!at_sync || seed.is_multiple_of(2)).then_some(seed);
        let image = self.power_cut(torn);
        let syncs = self.syncs;
        self.images.push((syncs, image));
    }
}

/// Applies a prefix of `ops` chosen by `r`, the last write torn at a random byte.
fn apply_prefix(data: &mut Vec<u8>, ops: &[Op], r: u64) {
    if ops.is_empty() {
        return;
    }
    let keep = (r % (ops.len() as u64 + 1)) as usize;
    for (i, op) in ops.iter().take(keep).enumerate() {
        match op {
            Op::SetLen(len) => data.resize(*len as usize, 0),
            Op::Write { pos, bytes } => {
                let take = if i + 1 == keep {
                    (mix(r) % (bytes.len() as u64 + 1)) as usize
                } else {
                    bytes.len()
                };
                write_at(data, *pos, &bytes[..take]);
            }
        }
    }
}

fn write_at(data: &mut Vec<u8>, pos: u64, bytes: &[u8]) {
    let end = pos as usize + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[pos as usize..end].copy_from_slice(bytes);
}

impl SimFs {
    /// An empty filesystem holding only `/`.
    pub(crate) fn new() -> SimFs {
        SimFs {
            state: Arc::new(Mutex::new(State::root())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on, keep a crash image at every sync (and, with `between`, at every write).
    pub(crate) fn capture(&self, seed: u64, between: bool) {
        self.lock().capture = Some(Capture { seed, between });
    }

    /// From now on every fsync (file or directory) fails with an I/O error, or works again.
    pub(crate) fn fail_syncs(&self, failing: bool) {
        self.lock().failing = failing;
    }

    /// From now on every write fails with "no space left", or works again.
    pub(crate) fn fail_writes(&self, full: bool) {
        self.lock().full = full;
    }

    /// fsyncs (file and directory) so far.
    pub(crate) fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// The crash images captured: for each, how many syncs had completed, and the filesystem
    /// as a power cut at that point leaves it.
    pub(crate) fn images(&self) -> Vec<(u64, SimFs)> {
        self.lock()
            .images
            .iter()
            .map(|(syncs, image)| {
                (
                    *syncs,
                    SimFs {
                        state: Arc::new(Mutex::new(image.clone())),
                    },
                )
            })
            .collect()
    }

    /// The filesystem a power cut now leaves: fsynced data and entries only.
    pub(crate) fn power_cut(&self) -> SimFs {
        SimFs {
            state: Arc::new(Mutex::new(self.lock().power_cut(None))),
        }
    }
}

impl Storage for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let mut missing = Vec::new();
        let mut at = dir.to_owned();
        while !state.dirs.contains_key(&at) {
            missing.push(at.clone());
            at = at.parent().ok_or_else(|| not_found(dir))?.to_owned();
        }
        for path in missing.into_iter().rev() {
            let (parent, name) = split(&path)?;
            if let Some(Entry::File(_)) = state.lookup(&path) {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "a file"));
            }
            state
                .dirs
                .get_mut(&parent)
                .ok_or_else(|| not_found(&parent))?
                .entries
                .insert(name, Entry::Dir);
            state.dirs.insert(path, Dir::default());
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        self.lock().lookup(path).is_some()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        let d = state.dirs.get(dir).ok_or_else(|| not_found(dir))?;
        Ok(d.entries.keys().cloned().collect())
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let mut state = self.lock();
        let (parent, name) = split(path)?;
        if state.lookup(path).is_some() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists"));
        }
        let ino = state.inodes.len();
        state
            .dirs
            .get_mut(&parent)
            .ok_or_else(|| not_found(&parent))?
            .entries
            .insert(name, Entry::File(ino));
        state.inodes.push(Inode::default());
        state.capture(false);
        Ok(Arc::new(SimFile {
            state: self.state.clone(),
            ino,
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let ino = self.lock().file(path)?;
        Ok(Arc::new(SimFile {
            state: self.state.clone(),
            ino,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let ino = state.file(from)?;
        let (from_dir, from_name) = split(from)?;
        let (to_dir, to_name) = split(to)?;
        if !state.dirs.contains_key(&to_dir) {
            return Err(not_found(&to_dir));
        }
        if let Some(d) = state.dirs.get_mut(&from_dir) {
            d.entries.remove(&from_name);
        }
        if let Some(d) = state.dirs.get_mut(&to_dir) {
            d.entries.insert(to_name, Entry::File(ino));
        }
        state.capture(false);
        Ok(())
    }

    fn space(&self, _dir: &Path) -> io::Result<super::storage::Space> {
        let free = if self.lock().full { 0 } else { u64::MAX / 2 };
        Ok(super::storage::Space {
            free,
            total: u64::MAX / 2,
        })
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        if state.failing {
            return Err(io::Error::other("injected fsync failure"));
        }
        let d = state.dirs.get_mut(dir).ok_or_else(|| not_found(dir))?;
        d.synced = d.entries.clone();
        state.syncs += 1;
        state.capture(true);
        Ok(())
    }
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StorageFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().inodes[self.ino].data.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let state = self.lock();
        let data = &state.inodes[self.ino].data;
        let end = pos as usize + buf.len();
        if end > data.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "past the end"));
        }
        buf.copy_from_slice(&data[pos as usize..end]);
        Ok(())
    }

    fn write_all_at(&self, slices: &mut [IoSlice<'_>], pos: u64) -> io::Result<()> {
        let bytes: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
        let mut state = self.lock();
        if state.full {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected: disk full",
            ));
        }
        let inode = &mut state.inodes[self.ino];
        write_at(&mut inode.data, pos, &bytes);
        inode.pending.push(Op::Write { pos, bytes });
        state.capture(false);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.lock();
        let inode = &mut state.inodes[self.ino];
        inode.data.resize(len as usize, 0);
        inode.pending.push(Op::SetLen(len));
        state.capture(false);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.lock();
        if state.failing {
            return Err(io::Error::other("injected fsync failure"));
        }
        let inode = &mut state.inodes[self.ino];
        inode.synced = inode.data.clone();
        inode.pending.clear();
        state.syncs += 1;
        state.capture(true);
        Ok(())
    }
}
