//! Retention: every `retention_check`, each topic with a retention (age or bytes per
//! partition) loses its oldest committed ranges past it. The store moves the partition's log
//! start and drops the index rows in one transaction, then the objects no row points to any
//! more are deleted. Fetches below the log start answer `OFFSET_OUT_OF_RANGE`.
//!
//! Whole ranges go (one object's part of a partition), as Kafka deletes whole segments; the
//! local log keeps its segments (a cache of what is committed) until a later change trims it.

use super::{Remote, bump};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use streamhouse_metastore::{IndexEntry, StoreError, TopicConfig};

/// Where a partition's records should start under `topic`'s retention at `now_ms`: after the
/// last of the oldest ranges that are too old, or that keep the partition over its byte
/// bound. `None` when nothing goes.
pub(super) fn new_log_start(
    topic: &TopicConfig,
    entries: &[IndexEntry],
    now_ms: i64,
) -> Option<i64> {
    let mut held: u64 = entries.iter().map(|e| e.byte_len).sum();
    let mut start = None;
    for entry in entries {
        let too_old = topic
            .retention_ms
            .is_some_and(|ms| now_ms.saturating_sub(entry.created_ms) > ms);
        let too_big = topic
            .retention_bytes
            .is_some_and(|bytes| held > u64::try_from(bytes).unwrap_or(0));
        if !(too_old || too_big) {
            break;
        }
        held -= entry.byte_len;
        start = Some(entry.next_offset);
    }
    start
}

/// Applies retention until the agent is gone.
pub(super) async fn run(remote: Weak<Remote>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(remote) = remote.upgrade() else {
            return;
        };
        if let Err(e) = remote.apply_retention().await {
            tracing::warn!(error = %e, "retention not applied; trying again later");
        }
    }
}

impl Remote {
    /// One pass of retention over every topic that has one.
    pub(crate) async fn apply_retention(self: &Arc<Self>) -> Result<(), StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for topic in self.store.topics().await? {
            if topic.retention_ms.is_none() && topic.retention_bytes.is_none() {
                continue;
            }
            for partition in 0..topic.partitions {
                let Some(meta) = self.store.partition(&topic.name, partition).await? else {
                    continue;
                };
                let entries = self
                    .store
                    .index(&topic.name, partition, meta.log_start, usize::MAX)
                    .await?;
                let Some(start) = new_log_start(&topic, &entries, now) else {
                    continue;
                };
                let removed: u64 = entries
                    .iter()
                    .take_while(|e| e.next_offset <= start)
                    .map(|e| e.byte_len)
                    .sum();
                let orphans = self.store.truncate(&topic.name, partition, start).await?;
                self.set_log_start(&topic.name, partition, start);
                let labels = [
                    ("topic", topic.name.clone()),
                    ("partition", partition.to_string()),
                ];
                metrics::gauge!("streamhouse_partition_object_bytes", &labels)
                    .decrement(removed as f64);
                metrics::counter!("streamhouse_retention_removed_bytes_total").increment(removed);
                for key in orphans {
                    match self.objects.delete(&key).await {
                        Ok(()) => bump(&self.counters.objects_deleted, 1),
                        // Unreferenced already: a later garbage collection finds it.
                        Err(e) => tracing::warn!(%key, error = %e, "object not deleted"),
                    }
                }
                tracing::info!(topic = %topic.name, partition, log_start = start, removed,
                    "retention applied");
            }
        }
        Ok(())
    }

    /// The log start retention set for a partition (0 when none was set since start).
    pub(crate) fn log_start(&self, topic: &str, partition: u32) -> i64 {
        self.starts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(topic.to_owned(), partition))
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn set_log_start(&self, topic: &str, partition: u32, start: i64) {
        let mut starts = self
            .starts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = starts.entry((topic.to_owned(), partition)).or_insert(0);
        *entry = (*entry).max(start);
    }
}

/// Log starts known per partition.
pub(super) type Starts = std::sync::Mutex<HashMap<(String, u32), i64>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(first: i64, next: i64, bytes: u64, created_ms: i64) -> IndexEntry {
        IndexEntry {
            first_offset: first,
            next_offset: next,
            object: String::new(),
            byte_start: 0,
            byte_len: bytes,
            created_ms,
        }
    }

    fn topic(ms: Option<i64>, bytes: Option<i64>) -> TopicConfig {
        TopicConfig {
            name: "t".into(),
            id: 1,
            partitions: 1,
            created_ms: 0,
            retention_ms: ms,
            retention_bytes: bytes,
        }
    }

    #[test]
    fn retention_drops_whole_ranges_from_the_oldest() {
        let entries = [
            entry(0, 10, 100, 1_000),
            entry(10, 20, 100, 2_000),
            entry(20, 25, 50, 3_000),
        ];
        // Age: ranges older than 1.5 s at t = 3 s.
        assert_eq!(
            new_log_start(&topic(Some(1_500), None), &entries, 3_000),
            Some(10)
        );
        assert_eq!(
            new_log_start(&topic(Some(500), None), &entries, 3_000),
            Some(20)
        );
        // Bytes: keep at most 160 → drop the first (250 → 150).
        assert_eq!(
            new_log_start(&topic(None, Some(160)), &entries, 0),
            Some(10)
        );
        assert_eq!(new_log_start(&topic(None, Some(250)), &entries, 0), None);
        // Everything too old: the log start moves to the end (nothing left).
        assert_eq!(
            new_log_start(&topic(Some(1), None), &entries, 9_000),
            Some(25)
        );
        // No retention, nothing goes.
        assert_eq!(new_log_start(&topic(None, None), &entries, 9_000), None);
        // An old range behind a young one is kept (order, not age, decides).
        let mixed = [entry(0, 10, 1, 5_000), entry(10, 20, 1, 1_000)];
        assert_eq!(
            new_log_start(&topic(Some(1_000), None), &mixed, 5_500),
            None
        );
    }
}
