//! Object storage and the metadata store: where an agent keeps its durable state when its local
//! disk is only a cache (`AgentConfig::remote`).
//!
//! ```text
//! I/O thread ── append to the local log; acks=durable: Sink::wait(end offset) ──┐
//!                                                                               ▼
//! flusher (one task) ── every flush_interval / flush_bytes: read new batches of every
//!   partition from the local log → PUT one object → MetadataStore::commit (index rows,
//!   producer snapshots, high watermarks) → answer the waiters the new high watermarks cover
//!
//! Topics::ensure → Remote::open_partition: the store's high watermark and producer state;
//!   a local log behind it (or broken, or lost) is set aside and restarted at it
//! fetch below the local log → Remote::read: index rows → ranged GETs (cached)
//! ```
//!
//! Nothing is acknowledged `acks=durable` before the commit that covers it. While object storage
//! or the store fails, the flusher retries with backoff and waiting answers turn into
//! `STORAGE_ERROR` (retriable) after `durable_timeout`.

mod flusher;
mod objects;
mod read;
mod retention;
mod upload;

use crate::io::AppendReply;
use crate::log::{LogConfig, PartitionLog, RecoveryReport};
use crate::{AgentError, RemoteConfig};
use objects::Objects;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;
use streamhouse::serve::{ProducerSnapshot, Rejection};
use streamhouse_metastore::{LeaseId, MetadataStore, StoreError};
use streamhouse_proto::v1::ErrorCode;
use tokio::sync::{mpsc, oneshot};

/// An `acks=durable` answer waiting for the commit of every offset below `end`.
pub(crate) struct Waiter {
    end: i64,
    reply: oneshot::Sender<AppendReply>,
    result: AppendReply,
    since: Instant,
}

impl Waiter {
    pub(crate) fn new(
        end: i64,
        reply: oneshot::Sender<AppendReply>,
        result: AppendReply,
    ) -> Waiter {
        Waiter {
            end,
            reply,
            result,
            since: Instant::now(),
        }
    }

    fn answer(self) {
        let _ = self.reply.send(self.result);
    }

    fn fail(self, rejection: Rejection) {
        let _ = self.reply.send(Err(rejection));
    }
}

/// A partition lease an agent of a group took, as its partition is opened.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held {
    /// The lease.
    pub(crate) id: LeaseId,
    /// Nobody else led the partition since this agent last did: its local records past the
    /// committed high watermark are its own (else they are set aside).
    pub(crate) own_tail: bool,
    /// Appends stop at this instant unless the lease is renewed first.
    pub(crate) until: Instant,
}

/// What the flusher is told.
enum Msg {
    /// Upload this partition from `committed` on (under `lease`, in a group).
    Track {
        topic: Arc<str>,
        partition: u32,
        log: Arc<PartitionLog>,
        committed: i64,
        snapshots: Vec<ProducerSnapshot>,
        lease: Option<LeaseId>,
    },
    /// Stop uploading a partition whose lease is gone: with `flush`, after committing what its
    /// log holds (a graceful handover, bounded by the durable timeout); waiting answers are
    /// then refused `NOT_LEADER`. Answers the committed offset.
    Release {
        key: upload::Key,
        log: Arc<PartitionLog>,
        flush: bool,
        done: oneshot::Sender<i64>,
    },
    /// Answer these once committed.
    Wait {
        topic: Arc<str>,
        partition: u32,
        waiters: Vec<Waiter>,
    },
    /// Forget a deleted topic's partitions.
    Untrack { topic: Arc<str> },
    /// Upload everything, answer every waiter, stop.
    Shutdown(oneshot::Sender<()>),
}

/// The I/O threads' side of the flusher: durable answers and new bytes. The flusher stops
/// when the last `Sink` is dropped.
pub(crate) struct Sink {
    tx: mpsc::UnboundedSender<Msg>,
    pressure: Arc<Pressure>,
}

/// New bytes not yet uploaded, and the flusher's wake-up when they pass `flush_bytes`.
struct Pressure {
    /// Bytes appended and not yet uploaded (approximate: starts at 0 after a restart).
    unflushed: AtomicUsize,
    flush_bytes: usize,
    wake: tokio::sync::Notify,
    /// When batches were appended (one lock per append).
    times: std::sync::Mutex<Appends>,
    /// Signalled when a commit was fenced (the group driver looks at its leases then).
    fenced: Arc<tokio::sync::Notify>,
}

/// When batches were appended.
#[derive(Default)]
struct Appends {
    /// The oldest batch not yet collected for an object.
    oldest: Option<Instant>,
    /// The last batch.
    last: Option<Instant>,
}

impl Pressure {
    fn times(&self) -> std::sync::MutexGuard<'_, Appends> {
        self.times
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long the oldest batch not yet in an object has waited (zero when none waits).
    fn waited(&self) -> std::time::Duration {
        self.times()
            .oldest
            .map_or(std::time::Duration::ZERO, |t| t.elapsed())
    }

    /// Batches were read for an object: `more` still wait (they wait from now).
    fn collected(&self, more: bool) {
        self.times().oldest = more.then(Instant::now);
    }

    /// Batches wait that were not appended through the sink (a local tail found at start,
    /// or objects dropped before their commit).
    fn waiting(&self) {
        self.times().oldest.get_or_insert_with(Instant::now);
    }

    /// How long no batch has been appended (`None`: none ever was).
    fn quiet(&self) -> Option<std::time::Duration> {
        self.times().last.map(|t| t.elapsed())
    }

    fn unflushed(&self) -> usize {
        self.unflushed.load(Ordering::Relaxed)
    }

    /// Bytes of objects dropped before their commit: waiting again.
    fn add_back(&self, bytes: usize) {
        self.unflushed.fetch_add(bytes, Ordering::Relaxed);
        self.waiting();
    }

    fn uploaded(&self, bytes: usize) {
        let _ = self
            .unflushed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(bytes))
            });
    }
}

impl Sink {
    /// `bytes` of new batches were appended: a flush starts at once past `flush_bytes`.
    pub(crate) fn appended(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let p = &self.pressure;
        {
            let now = Instant::now();
            let mut times = p.times();
            times.oldest.get_or_insert(now);
            times.last = Some(now);
        }
        let before = p.unflushed.fetch_add(bytes, Ordering::Relaxed);
        // Half of flush_bytes starts an object (see the flusher).
        let half = p.flush_bytes / 2;
        if before < half && before + bytes >= half {
            p.wake.notify_one();
        }
    }

    /// Hands durable answers to the flusher (answered at once, as unavailable, when it is gone).
    pub(crate) fn wait(&self, topic: &Arc<str>, partition: u32, waiters: Vec<Waiter>) {
        if waiters.is_empty() {
            return;
        }
        let msg = Msg::Wait {
            topic: topic.clone(),
            partition,
            waiters,
        };
        if let Err(mpsc::error::SendError(Msg::Wait { waiters, .. })) = self.tx.send(msg) {
            for waiter in waiters {
                waiter.fail(Rejection::new(
                    ErrorCode::StorageError,
                    "written locally; the agent stopped before committing it to object storage",
                ));
            }
        }
    }
}

/// Object storage and metadata store counters since start (see `Agent::remote_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteStats {
    /// Objects written (successful PUTs).
    pub objects_written: u64,
    /// Bytes in them.
    pub bytes_written: u64,
    /// PUT attempts that failed (each retried).
    pub put_errors: u64,
    /// Metadata store commits that succeeded (one per object).
    pub commits: u64,
    /// Commit attempts that failed (each retried, or the partition fenced on a conflict).
    pub commit_errors: u64,
    /// `acks=durable` answers that gave up waiting for a commit (`STORAGE_ERROR`).
    pub durable_timeouts: u64,
    /// Fetches served from objects (below the local log).
    pub object_reads: u64,
    /// Ranged GETs those fetches made (the rest came from the cache).
    pub object_gets: u64,
    /// Objects deleted by retention and topic deletion.
    pub objects_deleted: u64,
}

#[derive(Default)]
struct Counters {
    objects_written: AtomicU64,
    bytes_written: AtomicU64,
    put_errors: AtomicU64,
    commits: AtomicU64,
    commit_errors: AtomicU64,
    durable_timeouts: AtomicU64,
    object_reads: AtomicU64,
    object_gets: AtomicU64,
    objects_deleted: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// The metadata store and object storage of one agent, with its flusher.
pub(crate) struct Remote {
    store: Arc<dyn MetadataStore>,
    objects: Arc<Objects>,
    config: RemoteConfig,
    sink: Arc<Sink>,
    runtime: tokio::runtime::Handle,
    counters: Arc<Counters>,
    cache: read::Cache,
    flusher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Log starts moved by retention, per partition.
    starts: retention::Starts,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("metadata", &self.config.metadata)
            .field("objects", &self.objects)
            .finish_non_exhaustive()
    }
}

/// A name no other run of any agent uses: object keys carry it, so none is ever written twice.
fn incarnation() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

fn unavailable(what: &str, e: &StoreError) -> Rejection {
    Rejection::new(ErrorCode::Unavailable, format!("{what}: {e}"))
}

impl Remote {
    /// Connects to the store (migrating its schema) and to object storage (writing a probe
    /// object), and starts the flusher. Fails with a clear error on a bad URL, an unreachable
    /// service or a permission problem.
    pub(crate) async fn open(
        config: &RemoteConfig,
        agent_id: u32,
    ) -> Result<Arc<Remote>, AgentError> {
        if config.flush_bytes == 0 || config.flush_interval.is_zero() {
            return Err(AgentError::Config(
                "the flush interval and flush bytes must be above zero".into(),
            ));
        }
        const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
        for (name, value) in [
            ("flush interval", config.flush_interval),
            ("durable timeout", config.durable_timeout),
            ("retention check", config.retention_check),
        ] {
            if value > HOUR || value.is_zero() {
                return Err(AgentError::Config(format!(
                    "the {name} must be above zero and at most an hour, not {value:?}"
                )));
            }
        }
        if config.metadata == "sqlite::memory:" || config.objects == "memory://" {
            tracing::warn!(
                metadata = %redact(&config.metadata),
                objects = %config.objects,
                "the metadata store or object storage is in memory: acks=durable records do \
                 not survive this process (for tests only)"
            );
        }
        let store = streamhouse_metastore::open(&config.metadata)
            .await
            .map_err(|error| AgentError::Metadata {
                url: redact(&config.metadata),
                error,
            })?;
        let objects = Arc::new(Objects::open(&config.objects, &config.s3)?);
        let incarnation = incarnation();
        let prefix = format!("v1/agent-{agent_id}/{incarnation}/");
        objects.probe(&format!("{prefix}probe")).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let pressure = Arc::new(Pressure {
            unflushed: AtomicUsize::new(0),
            flush_bytes: config.flush_bytes,
            wake: tokio::sync::Notify::new(),
            times: std::sync::Mutex::default(),
            fenced: Arc::new(tokio::sync::Notify::new()),
        });
        let sink = Arc::new(Sink {
            tx,
            pressure: pressure.clone(),
        });
        let counters = Arc::new(Counters::default());
        let flusher = flusher::Flusher::new(
            store.clone(),
            objects.clone(),
            config.clone(),
            pressure,
            counters.clone(),
            prefix,
            rx,
        );
        let task = tokio::spawn(flusher.run());
        tracing::info!(
            metadata = %redact(&config.metadata),
            objects = %config.objects,
            %incarnation,
            "durable state in object storage"
        );
        let remote = Arc::new(Remote {
            store,
            objects,
            cache: read::Cache::new(config.read_cache_bytes),
            config: config.clone(),
            sink,
            runtime: tokio::runtime::Handle::current(),
            counters,
            flusher: std::sync::Mutex::new(Some(task)),
            starts: retention::Starts::default(),
        });
        tokio::spawn(retention::run(
            Arc::downgrade(&remote),
            config.retention_check,
        ));
        Ok(remote)
    }

    pub(crate) fn sink(&self) -> Arc<Sink> {
        self.sink.clone()
    }

    /// Signalled whenever a commit is fenced.
    pub(crate) fn fenced_signal(&self) -> Arc<tokio::sync::Notify> {
        self.sink.pressure.fenced.clone()
    }

    /// Whether this agent is one of a group (it leads only partitions it holds leases for).
    pub(crate) fn grouped(&self) -> bool {
        self.config.group.is_some()
    }

    /// The metadata store.
    pub(crate) fn store(&self) -> &Arc<dyn MetadataStore> {
        &self.store
    }

    /// Stops uploading a partition (its lease is gone or given up); with `flush`, after what
    /// its log holds is committed. The committed offset then.
    pub(crate) async fn release(
        &self,
        topic: &Arc<str>,
        partition: u32,
        log: Arc<PartitionLog>,
        flush: bool,
    ) -> Option<i64> {
        let (done, wait) = oneshot::channel();
        let msg = Msg::Release {
            key: (topic.clone(), partition),
            log,
            flush,
            done,
        };
        self.sink.tx.send(msg).ok()?;
        self.sink.pressure.wake.notify_one();
        wait.await.ok()
    }

    /// Every topic in the store: `(name, partitions)`. Blocking: call off the runtime.
    pub(crate) fn topics_blocking(&self) -> Result<Vec<(String, u32)>, StoreError> {
        let topics = self.runtime.block_on(self.store.topics())?;
        Ok(topics.into_iter().map(|t| (t.name, t.partitions)).collect())
    }

    /// Creates the topic in the store, or grows it; its partition count and id there.
    /// Blocking.
    pub(crate) fn ensure_topic_blocking(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<(u32, i64), Rejection> {
        self.runtime
            .block_on(self.store.ensure_topic(name, partitions))
            .map(|t| (t.partitions, t.id))
            .map_err(|e| unavailable("creating the topic in the metadata store", &e))
    }

    /// Opens a partition's local log against the store (blocking): the log must end at or past
    /// the committed high watermark and start at or before it; otherwise (the disk was lost,
    /// or lost unsynced writes, or the log is broken) the local directory is moved into
    /// `<data>/quarantine/` and a new log starts at the high watermark. The committed producer
    /// state is merged in, and the flusher starts uploading from the high watermark.
    pub(crate) fn open_partition(
        &self,
        data_dir: &Path,
        dir: &Path,
        (topic, topic_id): (&Arc<str>, i64),
        partition: u32,
        config: LogConfig,
        lease: Option<Held>,
    ) -> Result<(Arc<PartitionLog>, RecoveryReport), Rejection> {
        let (meta, snapshots, stats) = self
            .runtime
            .block_on(async {
                let meta = self.store.partition(topic, partition).await?;
                let snapshots = self.store.producers(topic, partition).await?;
                let stats = self.store.stats(topic, partition).await?;
                Ok::<_, StoreError>((meta, snapshots, stats))
            })
            .map_err(|e| unavailable("reading the partition from the metadata store", &e))?;
        let hw = meta.map_or(0, |m| m.high_watermark);
        if let Some(meta) = meta {
            self.set_log_start(topic, partition, meta.log_start);
        }
        let io = |e: std::io::Error| {
            Rejection::new(
                ErrorCode::Internal,
                format!("cannot open {}: {e}", dir.display()),
            )
        };
        // Files of an earlier topic of the same name (deleted, created again) are not this
        // topic's: set aside before anything reads them.
        let marker = dir.join(crate::log::TOPIC_ID);
        if let Ok(found) = std::fs::read_to_string(&marker)
            && found.trim() != topic_id.to_string()
        {
            let aside = set_aside(data_dir, dir).map_err(io)?;
            tracing::warn!(%topic, partition, moved_to = %aside.display(),
                "local files of an earlier topic of the same name set aside");
        }
        let (mut log, mut report) = PartitionLog::open_at(dir, config.clone(), hw).map_err(io)?;
        if !marker.exists() {
            write_durably(&marker, topic_id.to_string().as_bytes()).map_err(io)?;
        }
        let (start, end) = log.local_range();
        let reason = match log.broken() {
            Some(note) => Some(format!("the local log is broken ({note})")),
            None if end < hw => Some(format!(
                "the local log ends at {end}, before the committed high watermark {hw}"
            )),
            None if start > hw => Some(format!(
                "the local log starts at {start}, after the committed high watermark {hw}"
            )),
            // Records past the high watermark written under an earlier lease, when another
            // agent has led the partition since: they are not the partition's (the new
            // leader wrote its own at those offsets, or will).
            None if end > hw && lease.is_some_and(|l| !l.own_tail) => Some(format!(
                "the local log ends at {end}, past the committed high watermark {hw}, and \
                 another agent led the partition since"
            )),
            None => None,
        };
        if let Some(reason) = reason {
            log.release_lock();
            drop(log);
            let aside = set_aside(data_dir, dir).map_err(io)?;
            tracing::warn!(
                %topic, partition, %reason, moved_to = %aside.display(),
                "local log set aside; the partition restarts at the committed high watermark"
            );
            (log, report) = PartitionLog::open_at(dir, config, hw).map_err(io)?;
            write_durably(&marker, topic_id.to_string().as_bytes()).map_err(io)?;
            report.broken = None;
        }
        log.restore_producers(&snapshots);
        if let Some(lease) = &lease {
            log.serve_until(Some(lease.until));
        }
        // What the partition holds in object storage; the flusher adds each commit.
        let labels = [
            ("topic", topic.to_string()),
            ("partition", partition.to_string()),
        ];
        metrics::gauge!("streamhouse_partition_objects", &labels).set(stats.objects as f64);
        metrics::gauge!("streamhouse_partition_object_bytes", &labels).set(stats.bytes as f64);
        let log = Arc::new(log);
        let _ = self.sink.tx.send(Msg::Track {
            topic: topic.clone(),
            partition,
            log: log.clone(),
            committed: hw,
            snapshots,
            lease: lease.map(|l| l.id),
        });
        Ok((log, report))
    }

    /// Creates a topic in the store; `TOPIC_ALREADY_EXISTS` if it is there.
    pub(crate) async fn create_topic(&self, name: &str, partitions: u32) -> Result<(), Rejection> {
        match self.store.create_topic(name, partitions).await {
            Ok(_) => Ok(()),
            Err(StoreError::TopicExists(_)) => Err(Rejection::new(
                ErrorCode::TopicAlreadyExists,
                format!("topic {name:?} exists in the metadata store"),
            )),
            Err(e) => Err(unavailable("creating the topic in the metadata store", &e)),
        }
    }

    /// Sets a topic's retention in the store (applied by the next retention pass).
    pub(crate) async fn set_retention(
        &self,
        name: &str,
        retention_ms: Option<i64>,
        retention_bytes: Option<i64>,
    ) -> Result<(), Rejection> {
        match self
            .store
            .set_retention(name, retention_ms, retention_bytes)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Rejection::new(
                ErrorCode::UnknownTopic,
                format!("no topic {name:?} in the metadata store"),
            )),
            Err(e) => Err(unavailable(
                "setting the retention in the metadata store",
                &e,
            )),
        }
    }

    /// Deletes a topic from the store (its index rows and producer state) and the objects no
    /// other topic needs, and stops uploading it.
    pub(crate) async fn delete_topic(&self, name: &str) -> Result<(), Rejection> {
        let orphans = self
            .store
            .delete_topic(name)
            .await
            .map_err(|e| unavailable("deleting the topic from the metadata store", &e))?;
        let _ = self.sink.tx.send(Msg::Untrack {
            topic: Arc::from(name),
        });
        for key in orphans.unwrap_or_default() {
            match self.objects.delete(&key).await {
                Ok(()) => bump(&self.counters.objects_deleted, 1),
                Err(e) => tracing::warn!(%key, error = %e, "object of a deleted topic not deleted"),
            }
        }
        Ok(())
    }

    /// Uploads and commits everything appended, answers every waiting durable answer, and
    /// stops the flusher (bounded: while the services fail it gives up after twice the
    /// durable timeout; what was not committed stays in the local log and is uploaded at the
    /// next start).
    pub(crate) async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.sink.tx.send(Msg::Shutdown(done)).is_ok() {
            let _ = wait.await;
        }
        let task = self
            .flusher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    pub(crate) fn stats(&self) -> RemoteStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RemoteStats {
            objects_written: get(&c.objects_written),
            bytes_written: get(&c.bytes_written),
            put_errors: get(&c.put_errors),
            commits: get(&c.commits),
            commit_errors: get(&c.commit_errors),
            durable_timeouts: get(&c.durable_timeouts),
            object_reads: get(&c.object_reads),
            object_gets: get(&c.object_gets),
            objects_deleted: get(&c.objects_deleted),
        }
    }
}

/// Writes a small file and fsyncs it and its directory.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)?;
    std::fs::File::open(path)?.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Moves a partition directory to `<data>/quarantine/<name>.<unix ms>` (nothing is deleted).
pub(crate) fn set_aside(data_dir: &Path, dir: &Path) -> std::io::Result<std::path::PathBuf> {
    let quarantine = data_dir.join("quarantine");
    std::fs::create_dir_all(&quarantine)?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let target = quarantine.join(format!("{name}.{stamp}"));
    std::fs::rename(dir, &target)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(target)
}

/// A URL with its password (if any) replaced, for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user_info = &url[scheme + 3..at];
            match user_info.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            super::redact("postgres://app:s3cret@db:5432/meta"),
            "postgres://app:***@db:5432/meta"
        );
        assert_eq!(
            super::redact("postgres://app@db/meta"),
            "postgres://app@db/meta"
        );
        assert_eq!(super::redact("sqlite://./meta.db"), "sqlite://./meta.db");
    }
}
