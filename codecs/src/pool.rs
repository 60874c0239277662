//! A small free list of reusable compression contexts.
//!
//! Creating a zstd context allocates a few hundred KiB and costs more than compressing a small
//! batch, so contexts are reused. A codec is shared (`&self`) across the sender and any threads
//! decoding, hence a lock — held only to pop or push, never while compressing.

use std::sync::{Mutex, PoisonError};

pub(crate) struct Pool<T> {
    free: Mutex<Vec<T>>,
    max_idle: usize,
}

impl<T> Pool<T> {
    pub(crate) fn new(max_idle: usize) -> Pool<T> {
        Pool {
            free: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    /// Runs `f` with a pooled context, or a fresh one from `create`; returns it to the pool.
    pub(crate) fn with<R, E>(
        &self,
        create: impl FnOnce() -> Result<T, E>,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, E> {
        let pooled = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut context = match pooled {
            Some(context) => context,
            None => create()?,
        };
        let result = f(&mut context);
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < self.max_idle {
            free.push(context);
        }
        Ok(result)
    }
}
