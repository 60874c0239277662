//! The topics an agent holds: names to partition logs, created on demand, found on disk.

use crate::log::{LogConfig, PartitionLog, PartitionRecovery};
use crate::remote::Remote;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use streamhouse::serve::{Rejection, validate_topic_name};
use streamhouse_proto::v1::ErrorCode;

/// A topic: its partitions' logs, each with the I/O shard that appends to it.
pub(crate) struct Topic {
    pub(crate) name: Arc<str>,
    pub(crate) partitions: Vec<Part>,
}

/// One partition of a topic as this agent holds it.
#[derive(Clone)]
pub(crate) struct Part {
    /// Its log; `None` while this agent (of a group) does not lead it.
    pub(crate) log: Option<Arc<PartitionLog>>,
    /// The I/O thread that appends to it.
    pub(crate) shard: usize,
}

pub(crate) struct Topics {
    dir: PathBuf,
    config: LogConfig,
    map: RwLock<HashMap<String, Arc<Topic>>>,
    /// Held while creating topics or partitions (directory IO), never while reading `map`: a
    /// produce to an existing topic does not wait for another topic's creation.
    creating: std::sync::Mutex<()>,
    next_shard: AtomicUsize,
    /// With object storage: topics live in the metadata store too, and partitions open
    /// against their committed state there.
    remote: Option<Arc<Remote>>,
    /// In a group: partitions open only when their lease is taken (`Part::log` is `None`
    /// until then).
    leased: bool,
}

/// A partition directory name: `<topic>-<partition>`.
fn dir_name(topic: &str, partition: u32) -> String {
    format!("{topic}-{partition}")
}

impl Topics {
    /// Opens every partition found under `dir` (recovering each log).
    pub(crate) fn open(
        dir: PathBuf,
        config: LogConfig,
        remote: Option<Arc<Remote>>,
    ) -> std::io::Result<(Topics, Vec<PartitionRecovery>)> {
        std::fs::create_dir_all(&dir)?;
        let mut found: HashMap<String, u32> = HashMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            // Followed if a symlink: partitions moved to another disk are still found (each
            // partition directory is locked, so two agents cannot share one that way).
            if !std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some((topic, partition)) = name.rsplit_once('-') else {
                continue;
            };
            let (Ok(partition), Ok(())) = (partition.parse::<u32>(), validate_topic_name(topic))
            else {
                continue;
            };
            let count = found.entry(topic.to_owned()).or_insert(0);
            *count = (*count).max(partition + 1);
        }
        if remote.as_ref().is_some_and(|r| r.grouped()) {
            // In a group, a partition opens when its lease is taken, not because its
            // directory is here.
            found.clear();
        }
        if let Some(remote) = &remote {
            // A topic on disk but not in the store: data from before object storage was
            // configured (adopted), or a topic deleted meanwhile (its directories carry a
            // topic id: set aside, never uploaded again).
            let stored: std::collections::HashSet<String> = remote
                .topics_blocking()
                .map_err(std::io::Error::other)?
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            found.retain(|topic, partitions| {
                if stored.contains(topic) {
                    return true;
                }
                let dirs: Vec<PathBuf> = (0..*partitions)
                    .map(|p| dir.join(dir_name(topic, p)))
                    .collect();
                if !dirs.iter().any(|d| d.join(crate::log::TOPIC_ID).exists()) {
                    return true;
                }
                for d in dirs.iter().filter(|d| d.exists()) {
                    match crate::remote::set_aside(&dir, d) {
                        Ok(to) => tracing::warn!(%topic, moved_to = %to.display(),
                            "the topic was deleted from the metadata store: its local files are set aside"),
                        Err(e) => tracing::error!(%topic, error = %e, "cannot set aside a deleted topic's files"),
                    }
                }
                false
            });
        }
        let topics = Topics {
            dir,
            config,
            map: RwLock::new(HashMap::new()),
            creating: std::sync::Mutex::new(()),
            next_shard: AtomicUsize::new(0),
            leased: remote.as_ref().is_some_and(|r| r.grouped()),
            remote,
        };
        let mut reports = Vec::new();
        for (name, partitions) in found {
            reports.extend(
                topics
                    .ensure(&name, partitions)
                    .map_err(std::io::Error::other)?
                    .1,
            );
        }
        Ok((topics, reports))
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    pub(crate) fn all(&self) -> Vec<Arc<Topic>> {
        let mut all: Vec<_> = self
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Forgets a topic: its partition logs take no more appends and their directories are
    /// moved to `<data>/deleted/` then removed. Does directory IO: call it off the runtime.
    pub(crate) fn remove(&self, name: &str) -> Option<std::io::Result<()>> {
        let _creating = self.creating.lock().unwrap_or_else(PoisonError::into_inner);
        let topic = self
            .map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)?;
        let deleted = self.dir.join("deleted");
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let result = (|| {
            std::fs::create_dir_all(&deleted)?;
            for (partition, part) in topic.partitions.iter().enumerate() {
                if let Some(log) = &part.log {
                    log.fence(format!("topic {name:?} was deleted"));
                    log.release_lock();
                }
                let from = self.dir.join(dir_name(name, partition as u32));
                if !from.exists() {
                    continue;
                }
                let to = deleted.join(format!("{}.{stamp}", dir_name(name, partition as u32)));
                std::fs::rename(&from, &to)?;
                std::fs::remove_dir_all(&to)?;
            }
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        Some(result)
    }

    /// Topics held.
    pub(crate) fn count(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The topic with at least `partitions` partitions, creating it or adding partitions. Does
    /// directory IO: call it off the async runtime.
    pub(crate) fn ensure(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<(Arc<Topic>, Vec<PartitionRecovery>), Rejection> {
        self.ensure_within(name, partitions, usize::MAX)
    }

    /// [`ensure`](Self::ensure), refusing to create a new topic when `max_topics` are held.
    pub(crate) fn ensure_within(
        &self,
        name: &str,
        partitions: u32,
        max_topics: usize,
    ) -> Result<(Arc<Topic>, Vec<PartitionRecovery>), Rejection> {
        validate_topic_name(name)?;
        if partitions == 0 {
            return Err(Rejection::new(
                ErrorCode::InvalidRequest,
                format!("topic {name:?} would have no partition"),
            ));
        }
        if let Some(topic) = self.get(name)
            && topic.partitions.len() as u32 >= partitions
        {
            return Ok((topic, Vec::new()));
        }
        let _creating = self.creating.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.get(name);
        let existing = current.as_ref().map_or(0, |t| t.partitions.len() as u32);
        if let Some(topic) = current.clone()
            && existing >= partitions
        {
            return Ok((topic, Vec::new()));
        }
        if current.is_none() && self.count() >= max_topics {
            metrics::counter!("streamhouse_limit_hits_total", "limit" => "topics").increment(1);
            return Err(Rejection::new(
                ErrorCode::LimitExceeded,
                format!("the agent holds {max_topics} topics, its limit (--max-topics)"),
            ));
        }
        // The store may know more partitions (created by another agent, or before a restart).
        let (partitions, topic_id) = match &self.remote {
            Some(remote) => {
                let (stored, id) = remote.ensure_topic_blocking(name, partitions)?;
                (stored.max(partitions), id)
            }
            None => (partitions, 0),
        };
        let shared_name: Arc<str> = Arc::from(name);
        if existing > 0 && partitions > existing {
            // Kafka's rule too, but worth a line: keyed records map to other partitions now.
            tracing::warn!(
                topic = name,
                from = existing,
                to = partitions,
                "topic grown: keys map to other partitions from now on"
            );
        }
        let mut logs = current.map(|t| t.partitions.clone()).unwrap_or_default();
        let mut reports = Vec::new();
        for partition in existing..partitions {
            let shard = self.next_shard.fetch_add(1, Ordering::Relaxed);
            if self.leased {
                logs.push(Part { log: None, shard });
                continue;
            }
            let dir = self.dir.join(dir_name(name, partition));
            let (log, report) = match &self.remote {
                Some(remote) => remote.open_partition(
                    &self.dir,
                    &dir,
                    (&shared_name, topic_id),
                    partition,
                    self.config.clone(),
                    None,
                )?,
                None => PartitionLog::open(&dir, self.config.clone())
                    .map(|(log, report)| (Arc::new(log), report))
                    .map_err(|e| {
                        Rejection::new(
                            ErrorCode::Internal,
                            format!("cannot open {}: {e}", dir.display()),
                        )
                    })?,
            };
            reports.push(PartitionRecovery {
                topic: name.to_owned(),
                partition,
                report,
            });
            logs.push(Part {
                log: Some(log),
                shard,
            });
        }
        let topic = Arc::new(Topic {
            name: shared_name,
            partitions: logs,
        });
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), topic.clone());
        Ok((topic, reports))
    }
}

impl Topics {
    /// Replaces one partition's log (a lease taken: `Some`; lost or given up: `None`) and
    /// returns the one it held. Requests already routed keep the log they found.
    pub(crate) fn swap_log(
        &self,
        name: &str,
        partition: u32,
        log: Option<Arc<PartitionLog>>,
    ) -> Option<Arc<PartitionLog>> {
        let _creating = self.creating.lock().unwrap_or_else(PoisonError::into_inner);
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let topic = map.get(name)?;
        let mut partitions = topic.partitions.clone();
        let part = partitions.get_mut(partition as usize)?;
        let old = std::mem::replace(&mut part.log, log);
        let topic = Arc::new(Topic {
            name: topic.name.clone(),
            partitions,
        });
        map.insert(name.to_owned(), topic);
        old
    }

    /// Opens a partition whose lease this agent just took, against the store's committed
    /// state, and serves it. `lease`: the lease, and whether the local records past the high
    /// watermark are this agent's own (nobody led the partition since). Blocking.
    pub(crate) fn take_over(
        &self,
        name: &str,
        partition: u32,
        lease: crate::remote::Held,
    ) -> Result<Arc<PartitionLog>, Rejection> {
        let remote = self
            .remote
            .as_ref()
            .ok_or_else(|| Rejection::new(ErrorCode::Internal, "no metadata store"))?;
        let (_, topic_id) = remote.ensure_topic_blocking(name, partition + 1)?;
        let topic = self.ensure(name, partition + 1)?.0;
        if let Some(old) = self.swap_log(name, partition, None) {
            old.supersede("the partition was opened again".into());
            old.release_lock();
        }
        let dir = self.dir.join(dir_name(name, partition));
        let (log, _) = remote.open_partition(
            &self.dir,
            &dir,
            (&topic.name, topic_id),
            partition,
            self.config.clone(),
            Some(lease),
        )?;
        self.swap_log(name, partition, Some(log.clone()));
        Ok(log)
    }
}
