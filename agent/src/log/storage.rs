//! The file operations a partition log performs, behind a seam.
//!
//! The log (segments, recovery, quarantine) talks to [`Storage`] and [`StorageFile`] only, never
//! to `std::fs`, so the same code runs on the real disk ([`Disk`]) and, in tests, on a simulated
//! filesystem that remembers what was fsynced and can "lose power" (see `sim`). The operations
//! are the few the log needs, with the durability contract of POSIX:
//!
//! - file data is durable after [`StorageFile::sync_data`];
//! - a created, renamed or removed directory entry is durable after [`Storage::sync_dir`] of its
//!   directory.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// One open file of the log. Positional reads need no lock; writes come from one writer.
pub(crate) trait StorageFile: Send + Sync + Debug {
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;
    /// Fills `buf` from `pos`; an error if the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()>;
    /// Writes all of `slices`, back to back, starting at `pos`.
    fn write_all_at(&self, slices: &mut [IoSlice<'_>], pos: u64) -> io::Result<()>;
    /// Cuts (or extends with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data durable.
    fn sync_data(&self) -> io::Result<()>;
}

/// Directories and files of the data directory.
pub(crate) trait Storage: Send + Sync + Debug + 'static {
    /// Creates `dir` and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` names an existing file or directory.
    fn exists(&self, path: &Path) -> bool;
    /// The names of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a new, empty file; an error if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>>;
    /// Moves a file within the data directory.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// Creates `dir` and its missing parents, each made durable in its parent (a file is only
    /// as durable as every directory entry on its path).
    fn create_dir_durable(&self, dir: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        let mut at = Some(dir);
        while let Some(path) = at
            && !path.as_os_str().is_empty()
            && !self.exists(path)
        {
            missing.push(path);
            at = path.parent();
        }
        for path in missing.into_iter().rev() {
            self.create_dir_all(path)?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                self.sync_dir(parent)?;
            }
        }
        Ok(())
    }

    /// Bytes free for an unprivileged writer on the filesystem holding `dir`, and that
    /// filesystem's size.
    fn space(&self, dir: &Path) -> io::Result<Space>;

    /// Takes an exclusive lock on `dir` for as long as the returned guard lives; an error of
    /// kind `WouldBlock` if another process holds it. (A partition directory reached through a
    /// symlink or a bind mount from two data directories is still written by one agent only.)
    fn lock_dir(&self, _dir: &Path) -> io::Result<Option<File>> {
        Ok(None)
    }

    /// Writes a whole new file and makes its data durable (its entry needs [`sync_dir`]).
    ///
    /// [`sync_dir`]: Storage::sync_dir
    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let file = self.create_new(path)?;
        file.write_all_at(&mut [IoSlice::new(bytes)], 0)?;
        file.sync_data()
    }

    /// Reads a whole file.
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let file = self.open(path)?;
        let mut bytes = vec![0; usize::try_from(file.len()?).map_err(io::Error::other)?];
        file.read_exact_at(&mut bytes, 0)?;
        Ok(bytes)
    }
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Disk;

impl StorageFile for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, pos)
    }

    fn write_all_at(&self, mut slices: &mut [IoSlice<'_>], pos: u64) -> io::Result<()> {
        // writev takes at most IOV_MAX (1024 on Linux) slices per call. One writer: the cursor
        // is only moved here.
        const IOV_MAX: usize = 1024;
        let mut file = self;
        file.seek(SeekFrom::Start(pos))?;
        while !slices.is_empty() {
            let take = slices.len().min(IOV_MAX);
            let written = file.write_vectored(&slices[..take])?;
            if written == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
            }
            IoSlice::advance_slices(&mut slices, written);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
}

impl Storage for Disk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Arc::new(file))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(file))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<Option<File>> {
        let handle = File::open(dir)?;
        match handle.try_lock() {
            Ok(()) => Ok(Some(handle)),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is in use by another agent", dir.display()),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn space(&self, dir: &Path) -> io::Result<Space> {
        let stat = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
        Ok(Space {
            free: stat.f_bavail.saturating_mul(stat.f_frsize),
            total: stat.f_blocks.saturating_mul(stat.f_frsize),
        })
    }
}

/// Free and total bytes of a filesystem ([`Storage::space`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Space {
    /// Free for an unprivileged writer.
    pub(crate) free: u64,
    /// The filesystem's size.
    pub(crate) total: u64,
}
