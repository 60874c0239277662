//! The recovery point: how much of the log is known to be fsynced.
//!
//! After every fsync of the active segment (and of the directory, when a segment file was
//! created) the log writes one small record, `<partition>/checkpoint`: the log's first offset,
//! the active segment's base offset, and how many of its bytes were fsynced. The record is
//! written *after* the data it describes is durable and is not itself fsynced: after a power cut
//! it is either gone, torn (its CRC fails: ignored), or a true statement about data that is on
//! disk. Recovery uses it to tell a torn tail (bytes past the recovery point, which a crash may
//! legitimately lose) from damage to acknowledged data (bytes before it, or a segment file that
//! vanished), which fences the partition instead of being cut (Kafka keeps the same kind of
//! "recovery point" per log).

use super::storage::{Storage, StorageFile};
use std::io::{self, IoSlice};
use std::path::Path;

/// The file name, in the partition directory (not a segment name).
pub(crate) const FILE: &str = "checkpoint";
const MAGIC: &[u8; 4] = b"SHC1";
const LEN: usize = 32;

/// What was known durable at the last fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// The base offset of the first segment.
    pub(crate) log_start: i64,
    /// The base offset of the segment the fsync covered.
    pub(crate) segment: i64,
    /// Bytes of that segment fsynced (whole batches).
    pub(crate) synced: u64,
}

impl Checkpoint {
    fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[0..4].copy_from_slice(MAGIC);
        out[4..12].copy_from_slice(&self.log_start.to_be_bytes());
        out[12..20].copy_from_slice(&self.segment.to_be_bytes());
        out[20..28].copy_from_slice(&self.synced.to_be_bytes());
        let crc = crc32c::crc32c(&out[..28]);
        out[28..32].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        let bytes: &[u8; LEN] = bytes.get(..LEN)?.try_into().ok()?;
        let field = |at: usize| <[u8; 8]>::try_from(&bytes[at..at + 8]).ok();
        let crc = u32::from_be_bytes(bytes[28..32].try_into().ok()?);
        if &bytes[0..4] != MAGIC || crc32c::crc32c(&bytes[..28]) != crc {
            return None;
        }
        Some(Checkpoint {
            log_start: i64::from_be_bytes(field(4)?),
            segment: i64::from_be_bytes(field(12)?),
            synced: u64::from_be_bytes(field(20)?),
        })
    }
}

/// The checkpoint in `dir`, if there is a readable one.
pub(crate) fn read(storage: &dyn Storage, dir: &Path) -> Option<Checkpoint> {
    let path = dir.join(FILE);
    if !storage.exists(&path) {
        return None;
    }
    Checkpoint::decode(&storage.read_all(&path).ok()?)
}

/// The checkpoint file of `dir`, created if missing (its entry becomes durable with the next
/// directory fsync; until then a power cut only loses the checkpoint, never data).
pub(crate) fn open(
    storage: &dyn Storage,
    dir: &Path,
) -> io::Result<std::sync::Arc<dyn StorageFile>> {
    let path = dir.join(FILE);
    if storage.exists(&path) {
        storage.open(&path)
    } else {
        storage.create_new(&path)
    }
}

/// Overwrites the checkpoint (not fsynced, see the module documentation).
pub(crate) fn write(file: &dyn StorageFile, checkpoint: Checkpoint) -> io::Result<()> {
    let bytes = checkpoint.encode();
    file.write_all_at(&mut [IoSlice::new(&bytes)], 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_a_torn_record() {
        let c = Checkpoint {
            log_start: 0,
            segment: 1234,
            synced: 56_789,
        };
        let bytes = c.encode();
        assert_eq!(Checkpoint::decode(&bytes), Some(c));
        for cut in 0..LEN {
            assert_eq!(Checkpoint::decode(&bytes[..cut]), None);
        }
        let mut flipped = bytes;
        flipped[15] ^= 4;
        assert_eq!(Checkpoint::decode(&flipped), None);
    }
}
