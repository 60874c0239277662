//! Per-topic state for partitioners, read on every record without a write lock.
//!
//! A `RwLock<HashMap>` whose values are created once per topic and then updated through their
//! own atomics: the hot path takes only the (uncontended, shared) read lock. The write lock is
//! taken once per new topic.

use rustc_hash::FxHashMap;
use std::sync::{PoisonError, RwLock};

#[derive(Debug, Default)]
pub(super) struct TopicMap<V> {
    // Fx hash: topic names are the application's own, and this lookup runs per record.
    topics: RwLock<FxHashMap<Box<str>, V>>,
}

impl<V> TopicMap<V> {
    /// Runs `f` on the state of `topic`, creating it with `init` the first time.
    pub(super) fn with<R>(
        &self,
        topic: &str,
        init: impl FnOnce() -> V,
        f: impl FnOnce(&V) -> R,
    ) -> R {
        // Poisoning cannot leave the map half-updated (inserts are single calls), so carry on.
        {
            let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(state) = topics.get(topic) {
                return f(state);
            }
        }
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        let state = topics.entry(topic.into()).or_insert_with(init);
        f(state)
    }

    /// Runs `f` on the state of `topic` if it exists.
    pub(super) fn get<R>(&self, topic: &str, f: impl FnOnce(&V) -> R) -> Option<R> {
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        topics.get(topic).map(f)
    }
}
