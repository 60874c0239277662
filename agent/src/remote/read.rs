//! Fetches below the local log: the store's index rows name object byte ranges, fetched with
//! ranged GETs and kept in a bounded cache (consumers reading one partition from the start hit
//! each range once).

use super::{Remote, bump};
use crate::log::{ReadResult, STORED, stop};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use streamhouse::batch::{Batch, BatchHeader};
use streamhouse::serve::Rejection;
use streamhouse_metastore::IndexEntry;
use streamhouse_proto::v1::ErrorCode;

/// Index rows asked of the store per fetch.
const ENTRIES_PER_READ: usize = 16;

/// Object ranges by (key, start), oldest evicted first past `max` bytes.
pub(super) struct Cache {
    inner: Mutex<CacheInner>,
    max: usize,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<(String, u64), Bytes>,
    order: VecDeque<(String, u64)>,
    bytes: usize,
}

impl Cache {
    pub(super) fn new(max: usize) -> Cache {
        Cache {
            inner: Mutex::new(CacheInner::default()),
            max,
        }
    }

    fn get(&self, key: &(String, u64)) -> Option<Bytes> {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.map.get(key).cloned()
    }

    fn put(&self, key: (String, u64), bytes: Bytes) {
        if bytes.len() > self.max {
            return;
        }
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.bytes += bytes.len();
        if let Some(old) = inner.map.insert(key.clone(), bytes) {
            inner.bytes -= old.len();
        } else {
            inner.order.push_back(key);
        }
        while inner.bytes > self.max {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(gone) = inner.map.remove(&oldest) {
                inner.bytes -= gone.len();
            }
        }
    }
}

impl Remote {
    /// Whole batches from the one holding `offset`, up to `max_bytes` (at least one), read
    /// from objects. `high_watermark` is the local log's end, reported as for local reads.
    pub(crate) async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: usize,
        high_watermark: i64,
    ) -> Result<ReadResult, Rejection> {
        let store = |e: streamhouse_metastore::StoreError| {
            Rejection::new(ErrorCode::Unavailable, format!("metadata store: {e}"))
        };
        bump(&self.counters.object_reads, 1);
        // Seeded from the store when the partition opened, moved by retention.
        let log_start = self.log_start(topic, partition);
        if offset < log_start {
            return Err(Rejection::new(
                ErrorCode::OffsetOutOfRange,
                format!("offset {offset} is before the log start {log_start}"),
            ));
        }
        let entries = self
            .store
            .index(topic, partition, offset, ENTRIES_PER_READ)
            .await
            .map_err(store)?;
        let mut result = ReadResult {
            batches: Vec::new(),
            log_start_offset: log_start,
            high_watermark,
        };
        let mut total = 0usize;
        // The offset the next batch must start at: the index must cover the partition without
        // gaps, and each range hold exactly its offsets (a damaged or edited index is refused,
        // never served as other records).
        let mut expected: Option<i64> = None;
        for entry in entries {
            let gap = match expected {
                None => entry.first_offset > offset,
                Some(next) => entry.first_offset != next,
            };
            if gap {
                return stop(
                    result,
                    Rejection::new(
                        ErrorCode::CorruptBatch,
                        format!(
                            "the index of {topic}-{partition} has no range for offset {}",
                            expected.unwrap_or(offset)
                        ),
                    ),
                );
            }
            let bytes = self.range(&entry).await?;
            let mut pos = 0usize;
            let mut at = entry.first_offset;
            while pos < bytes.len() {
                let corrupt = |why: String| {
                    Rejection::new(
                        ErrorCode::CorruptBatch,
                        format!(
                            "object {} at byte {}: {why}",
                            entry.object,
                            entry.byte_start + pos as u64
                        ),
                    )
                };
                let header = match BatchHeader::read(&bytes[pos..]) {
                    Ok(h) if pos + h.total_len() <= bytes.len() => h,
                    Ok(h) => {
                        return stop(
                            result,
                            corrupt(format!("length {} past the range", h.total_len())),
                        );
                    }
                    Err(e) => return stop(result, corrupt(e.to_string())),
                };
                if header.base_offset != at || header.last_offset() >= entry.next_offset {
                    return stop(
                        result,
                        corrupt(format!(
                            "holds offsets {}..={} where the index says {at}..{}",
                            header.base_offset,
                            header.last_offset(),
                            entry.next_offset
                        )),
                    );
                }
                let len = header.total_len();
                if header.last_offset() >= offset {
                    if !result.batches.is_empty() && total + len > max_bytes {
                        return Ok(result);
                    }
                    let batch = bytes.slice(pos..pos + len);
                    if let Err(e) = Batch::parse(batch.clone(), &STORED) {
                        return stop(result, corrupt(e.to_string()));
                    }
                    total += len;
                    result.batches.push(batch);
                    if total >= max_bytes {
                        return Ok(result);
                    }
                }
                at = header.last_offset() + 1;
                pos += len;
            }
            if at != entry.next_offset {
                return stop(
                    result,
                    Rejection::new(
                        ErrorCode::CorruptBatch,
                        format!(
                            "object {} holds {topic}-{partition} up to offset {at}, the index says {}",
                            entry.object, entry.next_offset
                        ),
                    ),
                );
            }
            expected = Some(entry.next_offset);
        }
        Ok(result)
    }

    /// An index entry's bytes, from the cache or one ranged GET.
    async fn range(&self, entry: &IndexEntry) -> Result<Bytes, Rejection> {
        let key = (entry.object.clone(), entry.byte_start);
        if let Some(bytes) = self.cache.get(&key) {
            return Ok(bytes);
        }
        bump(&self.counters.object_gets, 1);
        let bytes = self
            .objects
            .get_range(
                &entry.object,
                entry.byte_start..entry.byte_start + entry.byte_len,
            )
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => Rejection::new(
                    ErrorCode::CorruptBatch,
                    format!("object {} is missing from object storage", entry.object),
                ),
                e => Rejection::new(
                    ErrorCode::Unavailable,
                    format!(
                        "object {}: {}",
                        entry.object,
                        super::objects::one_line(&e.to_string())
                    ),
                ),
            });
        let bytes = match bytes {
            Ok(bytes) => bytes,
            // The range may lie past the object's end (a damaged object): permanent, not an
            // outage to retry.
            Err(r) if r.code == ErrorCode::Unavailable => {
                match self.objects.size(&entry.object).await {
                    Some(size) if size < entry.byte_start + entry.byte_len => {
                        return Err(Rejection::new(
                            ErrorCode::CorruptBatch,
                            format!(
                                "object {} has {size} bytes; the index puts a range at {}..{}",
                                entry.object,
                                entry.byte_start,
                                entry.byte_start + entry.byte_len
                            ),
                        ));
                    }
                    _ => return Err(r),
                }
            }
            Err(r) => return Err(r),
        };
        if bytes.len() as u64 != entry.byte_len {
            return Err(Rejection::new(
                ErrorCode::CorruptBatch,
                format!(
                    "object {} returned {} bytes for a range of {}",
                    entry.object,
                    bytes.len(),
                    entry.byte_len
                ),
            ));
        }
        self.cache.put(key, bytes.clone());
        Ok(bytes)
    }
}
