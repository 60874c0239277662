//! [`ProducerIds`]: producer ids handed out by the agent and bound to the principal that asked
//! (`InitProducerId`), so that nobody else can write — or bump an epoch — with them.
//!
//! Without it a producer picks its own id, and anyone who can fetch reads it from the batch
//! headers: a stranger could send with a victim's id and a higher epoch and fence the victim.
//! Behind the guard with producer ids on, an idempotent batch is appended only when its id was
//! handed to the request's principal; any other id is refused `UNAUTHORIZED`.
//! [`FileProducerIds`] keeps the bindings for a lone agent (a file in its data directory,
//! fsynced before an id is handed out); an agent group keeps them in its metadata store.

use crate::Principal;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use streamhouse::transport::BoxFuture;

/// Hands out producer ids bound to principals, and tells whose an id is.
pub trait ProducerIds: Send + Sync + 'static {
    /// A new id, bound to `principal` for good.
    fn allocate<'a>(&'a self, principal: &'a Principal) -> BoxFuture<'a, Result<i64, String>>;

    /// The principal `id` was handed to, if it was handed out here.
    fn owner(&self, id: i64) -> BoxFuture<'_, Result<Option<Principal>, String>>;
}

/// Producer ids in a file of `ID PRINCIPAL` lines; see the module documentation.
#[derive(Debug)]
pub struct FileProducerIds {
    path: PathBuf,
    inner: Mutex<Bindings>,
}

#[derive(Debug, Default)]
struct Bindings {
    owners: HashMap<i64, Principal>,
    next: i64,
}

impl FileProducerIds {
    /// Reads the bindings at `path` (none if the file is missing).
    pub fn open(path: impl AsRef<Path>) -> std::io::Result<FileProducerIds> {
        let path = path.as_ref().to_path_buf();
        let mut bindings = Bindings {
            owners: HashMap::new(),
            // Far from the 63-bit random ids producers pick for themselves.
            next: 1,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines() {
                    // A torn last line (a crash mid-write) was never handed out: skip it.
                    let Some((id, principal)) = line.split_once(' ') else {
                        continue;
                    };
                    let Ok(id) = id.parse::<i64>() else { continue };
                    bindings.owners.insert(id, Principal::new(principal));
                    bindings.next = bindings.next.max(id + 1);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(FileProducerIds {
            path,
            inner: Mutex::new(bindings),
        })
    }

    fn allocate_now(&self, principal: &Principal) -> Result<i64, String> {
        let mut bindings = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let id = bindings.next;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| format!("cannot record producer id: {e}"))?;
        file.write_all(format!("{id} {principal}\n").as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("cannot record producer id: {e}"))?;
        bindings.next = id + 1;
        bindings.owners.insert(id, principal.clone());
        Ok(id)
    }
}

impl ProducerIds for FileProducerIds {
    fn allocate<'a>(&'a self, principal: &'a Principal) -> BoxFuture<'a, Result<i64, String>> {
        let allocated = self.allocate_now(principal);
        Box::pin(async move { allocated })
    }

    fn owner(&self, id: i64) -> BoxFuture<'_, Result<Option<Principal>, String>> {
        let owner = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .owners
            .get(&id)
            .cloned();
        Box::pin(async move { Ok(owner) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ids_stay_bound_across_a_reopen_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("producer-ids");
        let ids = FileProducerIds::open(&path).unwrap();
        let (a, b) = (Principal::new("a"), Principal::new("b"));
        let first = ids.allocate(&a).await.unwrap();
        let second = ids.allocate(&b).await.unwrap();
        assert_ne!(first, second);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"99")
            .unwrap();
        let reopened = FileProducerIds::open(&path).unwrap();
        assert_eq!(reopened.owner(first).await.unwrap(), Some(a));
        assert_eq!(reopened.owner(second).await.unwrap(), Some(b));
        assert_eq!(reopened.owner(99).await.unwrap(), None);
        let third = reopened.allocate(&Principal::new("c")).await.unwrap();
        assert!(third > second);
    }
}
