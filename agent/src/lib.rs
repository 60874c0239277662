//! The StreamHouse reference agent: receives record batches and appends them to durable
//! partition logs on local disk.
//!
//! ```text
//! transport server adaptor (gRPC, QUIC)
//!   │ Request::Produce
//!   ▼
//! Agent::service ── validate (streamhouse::serve: topic name, CRC, limits, every record)
//!   │ one job per batch, to the partition's I/O thread
//!   ▼
//! I/O thread: admit (sequence / duplicate / epoch), stamp the base offset, one write per
//!             partition per round, answer acks=leader; fsync once per round, answer
//!             acks=durable (group commit)
//!   ▼
//! <data>/<topic>-<partition>/<base offset>.log   segments, rolled by size, sparse index
//! ```
//!
//! With [`AgentConfig::remote`] ([`RemoteConfig`]: a metadata store and object storage) the
//! local log is a cache: a flusher writes the new batches of all partitions as one object and
//! commits their index to the store, `acks=durable` answers after that commit, and a partition
//! whose local log is behind the store (or lost) restarts at the committed high watermark,
//! serving earlier offsets from objects.
//!
//! On start the agent takes an exclusive lock on the data directory ([`AgentError::Locked`] if
//! another agent holds it) and recovers every partition log: the index and the producers'
//! sequence windows are rebuilt from the batch headers, a torn tail of the last segment is cut,
//! and a break anywhere else fences the partition with its data kept in a quarantine directory
//! (nothing is ever deleted; see [`RecoveryReport`]). Fetches check every batch's CRC32C.
//! [`Agent::shutdown`] stops taking produce requests, lets the queued appends finish, fsyncs
//! every log and releases the lock.
//!
//! # Metrics
//!
//! Emitted through the `metrics` facade (the CLI installs a Prometheus exporter):
//!
//! | name | labels | what |
//! |---|---|---|
//! | `streamhouse_records_appended_total` | `topic` | records appended |
//! | `streamhouse_bytes_appended_total` | `topic` | batch bytes appended |
//! | `streamhouse_dedup_hits_total` | `topic` | retried batches answered as duplicates |
//! | `streamhouse_errors_total` | `code` | batches refused, by error code |
//! | `streamhouse_fsyncs_total` | | fsyncs (one per partition per group commit) |
//! | `streamhouse_fsync_seconds` | | fsync latency histogram |
//! | `streamhouse_produce_requests_total` | | produce requests |
//! | `streamhouse_corrupt_reads_total` | | fetches refused for a corrupt stored batch |
//! | `streamhouse_recovery_truncated_bytes_total` | | torn-tail bytes cut at start (kept in `quarantine/`) |
//! | `streamhouse_recovery_quarantined_bytes_total` | | bytes moved into `quarantine/` after a break |
//! | `streamhouse_partitions_fenced_total` | | partitions fenced: a `BROKEN` note at start, or a commit refused (lease lost, another writer) |
//! | `streamhouse_lease_acquisitions_total` | | partition leases taken (`--group`) |
//! | `streamhouse_lease_losses_total` | | leases lost: run out before a renewal landed, refused at renewal, or fenced at a commit |
//! | `streamhouse_lease_handovers_total` | | leases given up to the partition's new owner (flushed, released) |
//! | `streamhouse_leases_held` | | partition leases this agent holds (gauge) |
//! | `streamhouse_failover_seconds` | | at a takeover from another agent, how long the partition had no leader (store clock) |
//! | `streamhouse_fenced_commits_total` | | object commits the store refused because the lease's epoch moved on |
//!
//! `PRODUCER_STATE_FULL` refusals (a partition tracking `producer_limits.max_producers`
//! producers, none idle) show in `streamhouse_errors_total{code="ERROR_CODE_PRODUCER_STATE_FULL"}`.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use streamhouse_agent::{Agent, AgentConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let agent = Agent::open(AgentConfig::new(dir.path()).topic("orders", 6)).await?;
//! let service = agent.service(); // hand this to streamhouse_grpc::serve
//! agent.shutdown().await;
//! # Ok(()) }
//! ```

pub mod acl;
mod admin;
mod config;
mod group;
mod io;
mod listen;
mod log;
mod remote;
mod service;
mod topics;

pub use config::{
    AgentConfig, CreatePolicy, GroupConfig, MayCreate, RemoteConfig, S3Options, TopicSpec,
};
pub use group::GroupStats;
pub use group::table::{Holding, Key as LeaseKey, LeaseTable, Plan};
pub use listen::{ListenError, ListenOptions, Listeners, Security, Serving};
pub use log::{PartitionRecovery, RecoveryReport};
pub use remote::RemoteStats;

use io::Io;
use log::LogConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use streamhouse::batch::DecodeLimits;
use streamhouse::codec::Codecs;
use streamhouse::serve::Rejection;
use streamhouse::transport::{AgentService, Request, RequestMessage, Response};
use topics::Topics;
use tower::BoxError;

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The data directory could not be read or written.
    #[error("data directory {path}: {source}")]
    Io {
        /// The directory.
        path: std::path::PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Another agent (or another process) holds the data directory's lock.
    #[error(
        "data directory {path} is in use by another agent (it holds the directory's lock); \
         two agents on one directory would hand out the same offsets"
    )]
    Locked {
        /// The directory.
        path: std::path::PathBuf,
    },
    /// A setting cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The metadata store could not be opened (bad URL, unreachable, permissions, schema).
    #[error("metadata store {url}: {error}")]
    Metadata {
        /// Its URL (password hidden).
        url: String,
        /// What failed (in the message: not a `source`, so error chains do not repeat it).
        error: streamhouse_metastore::StoreError,
    },
    /// Object storage could not be opened or used (bad URL, unreachable, missing bucket,
    /// permissions).
    #[error("object storage {url}: {reason}")]
    Objects {
        /// Its URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A configured topic is invalid.
    #[error("topic {name:?}: {rejection}")]
    Topic {
        /// The topic name.
        name: String,
        /// Why.
        #[source]
        rejection: Rejection,
    },
}

/// A running agent. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    config: AgentConfig,
    limits: DecodeLimits,
    codecs: Codecs,
    topics: Topics,
    io: Io,
    stopping: AtomicBool,
    recovery: Vec<PartitionRecovery>,
    /// Requests being validated at once (decompression runs on blocking threads): one per core.
    validating: Arc<tokio::sync::Semaphore>,
    /// Fetch answers read and not yet delivered (`max_fetch_answer_bytes`).
    answers: streamhouse::serve::ByteBudget,
    /// The exclusive lock on the data directory, held until shutdown.
    lock: std::sync::Mutex<Option<std::fs::File>>,
    /// The metadata store and object storage, when the durable state lives there.
    remote: Option<Arc<remote::Remote>>,
    /// Held by topic administration (one change at a time).
    admin_lock: tokio::sync::Mutex<()>,
    /// Membership of an agent group, when configured.
    group: Option<Arc<group::Group>>,
}

impl Shared {
    /// The log of a partition this agent serves now.
    pub(crate) fn led_log(
        &self,
        (topic, partition): &group::table::Key,
    ) -> Option<Arc<log::PartitionLog>> {
        self.topics
            .get(topic)?
            .partitions
            .get(*partition as usize)?
            .log
            .clone()
    }
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("id", &self.shared.config.id)
            .field("data_dir", &self.shared.config.data_dir)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Opens the data directory (recovering every partition log found there), creates the
    /// configured topics, and starts the I/O threads.
    pub async fn open(config: AgentConfig) -> Result<Agent, AgentError> {
        let path = config.data_dir.clone();
        let io_error = |source| AgentError::Io {
            path: path.clone(),
            source,
        };
        if config.auto_create_partitions == Some(0) {
            return Err(AgentError::Config(
                "auto-created topics need at least one partition".into(),
            ));
        }
        if config.max_request_decompressed_bytes < config.max_uncompressed_bytes {
            return Err(AgentError::Config(format!(
                "the decompression budget per request ({}) must hold one batch's largest \
                 records block ({})",
                config.max_request_decompressed_bytes, config.max_uncompressed_bytes
            )));
        }
        if config.max_fetch_answer_bytes < config.max_batch_bytes {
            return Err(AgentError::Config(format!(
                "the fetch answer budget ({}) must hold one largest batch ({})",
                config.max_fetch_answer_bytes, config.max_batch_bytes
            )));
        }
        let lock = lock_data_dir(&config.data_dir)?;
        let remote = match &config.remote {
            Some(remote) => Some(remote::Remote::open(remote, config.id).await?),
            None => None,
        };
        let log_config = LogConfig {
            segment_bytes: config.segment_bytes,
            index_interval: config.index_interval,
            storage: Arc::new(log::storage::Disk),
            producers: config.producer_limits,
        };
        let dir = config.data_dir.clone();
        let specs = config.topics.clone();
        let opening = remote.clone();
        // Recovery reads files and the store: off the async threads.
        let (topics, recovery) =
            tokio::task::spawn_blocking(move || open_topics(dir, log_config, opening, &specs))
                .await
                .map_err(|e| io_error(std::io::Error::other(e)))??;
        let sink = remote.as_ref().map(|r| r.sink());
        let io = Io::start(config.io_threads, config.max_queued_bytes, sink).map_err(io_error)?;
        let group = match (
            &remote,
            config.remote.as_ref().and_then(|r| r.group.as_ref()),
        ) {
            (Some(remote), Some(group)) => {
                if config.endpoints.is_empty() {
                    return Err(AgentError::Config(
                        "an agent of a group needs advertised endpoints (clients are sent to them)"
                            .into(),
                    ));
                }
                if !group::LEASE_TTL_RANGE.contains(&group.lease_ttl) {
                    return Err(AgentError::Config(format!(
                        "a lease time of {:?} is outside {:?}..={:?}",
                        group.lease_ttl,
                        group::LEASE_TTL_RANGE.start(),
                        group::LEASE_TTL_RANGE.end()
                    )));
                }
                group::admit(
                    remote.store().as_ref(),
                    &group.name,
                    config.id,
                    group.lease_ttl,
                )
                .await
                .map_err(AgentError::Config)?;
                let endpoints: Vec<String> =
                    config.endpoints.iter().map(ToString::to_string).collect();
                remote
                    .store()
                    .heartbeat(&group.name, config.id, &endpoints, group.lease_ttl)
                    .await
                    .map_err(|error| AgentError::Metadata {
                        url: String::from("(joining the group)"),
                        error,
                    })?;
                Some(group::Group::new(group, config.id, endpoints))
            }
            _ => None,
        };
        let agent = Agent {
            shared: Arc::new(Shared {
                limits: config.limits(),
                codecs: streamhouse_codecs::all(),
                topics,
                io,
                stopping: AtomicBool::new(false),
                recovery,
                validating: Arc::new(tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(2, usize::from),
                )),
                lock: std::sync::Mutex::new(Some(lock)),
                remote,
                admin_lock: tokio::sync::Mutex::new(()),
                answers: streamhouse::serve::ByteBudget::new(
                    "fetch_answer_bytes",
                    config.max_fetch_answer_bytes,
                ),
                config,
                group,
            }),
        };
        if let Some(group) = &agent.shared.group {
            tracing::info!(
                group = group.name(),
                id = agent.shared.config.id,
                "joined the agent group"
            );
            group.start(Arc::downgrade(&agent.shared));
        }
        Ok(agent)
    }

    /// Lease counters, when the agent is one of a group.
    pub fn group_stats(&self) -> Option<GroupStats> {
        self.shared.group.as_ref().map(|g| g.stats())
    }

    /// What recovery found, per partition opened at start.
    pub fn recovery(&self) -> &[PartitionRecovery] {
        &self.shared.recovery
    }

    /// Bytes of fetch answers read from the logs and not yet delivered (at most
    /// [`AgentConfig::max_fetch_answer_bytes`], plus one stored batch larger than the current
    /// batch limit).
    pub fn fetch_answer_bytes_held(&self) -> usize {
        self.shared.answers.leased()
    }

    /// The agent as a service for a transport's server adaptor.
    pub fn service(&self) -> AgentService {
        let shared = self.shared.clone();
        AgentService::new(tower::service_fn(move |request: Request| {
            let shared = shared.clone();
            async move {
                let principal = request.principal;
                Ok::<_, BoxError>(match request.message {
                    RequestMessage::Produce(r) => {
                        Response::Produce(shared.produce(r, principal.as_deref()).await)
                    }
                    RequestMessage::Metadata(r) => {
                        Response::Metadata(shared.metadata(&r, principal.as_deref()).await)
                    }
                    RequestMessage::Fetch(r) => Response::Fetch(shared.fetch(r).await),
                    RequestMessage::Admin(r) => Response::Admin(shared.admin(r).await),
                    _ => {
                        return Err(BoxError::from("unsupported request"));
                    }
                })
            }
        }))
    }

    /// The offset the next record of a partition gets, if the partition exists.
    pub fn next_offset(&self, topic: &str, partition: u32) -> Option<i64> {
        let topic = self.shared.topics.get(topic)?;
        let log = topic.partitions.get(partition as usize)?.log.as_ref()?;
        Some(log.next_offset())
    }

    /// Object storage and metadata store counters since start, when the agent keeps its
    /// durable state there.
    pub fn remote_stats(&self) -> Option<RemoteStats> {
        self.shared.remote.as_ref().map(|r| r.stats())
    }

    /// What `acks=durable` means on this agent.
    pub fn durability(&self) -> streamhouse_proto::v1::Durability {
        match self.shared.remote {
            Some(_) => streamhouse_proto::v1::Durability::ObjectStore,
            None => streamhouse_proto::v1::Durability::LocalFsync,
        }
    }

    /// fsyncs performed since start (one per partition per group commit).
    pub fn fsyncs(&self) -> u64 {
        self.shared.io.fsyncs()
    }

    /// Stops taking produce requests, finishes every append already queued, fsyncs every log,
    /// and releases the data directory's lock (another agent may open it). Fetch and metadata
    /// keep working until the transport stops.
    pub async fn shutdown(&self) {
        if let Some(group) = &self.shared.group {
            // Every partition handed over (flushed, released) while this agent still answers.
            group.leave(&self.shared).await;
        }
        self.shared.stopping.store(true, Ordering::Release);
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.io.shutdown()).await;
        if let Some(remote) = &self.shared.remote {
            remote.shutdown().await;
        }
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for topic in shared.topics.all() {
                for log in topic.partitions.iter().filter_map(|p| p.log.as_ref()) {
                    if let Err(e) = log.sync() {
                        tracing::error!(topic = %topic.name, error = %e, "final fsync failed");
                    }
                    log.release_lock();
                }
            }
            let lock = shared
                .lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            drop(lock);
        })
        .await;
    }
}

/// Raises this process's soft limit on open file descriptors to its hard limit (capped at
/// 1,048,576) and returns `(before, after)`. Every connection holds a descriptor; the default
/// soft limit of 1,024 is what a flood of idle connections exhausts first. Call once at start.
///
/// ```
/// let (before, after) = streamhouse_agent::raise_fd_limit().unwrap();
/// assert!(after >= before);
/// ```
pub fn raise_fd_limit() -> std::io::Result<(u64, u64)> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current.unwrap_or(u64::MAX);
    let target = limit.maximum.unwrap_or(u64::MAX).min(1 << 20);
    if before >= target {
        return Ok((before, before));
    }
    let raised = rustix::process::Rlimit {
        current: Some(target),
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, raised).map_err(std::io::Error::from)?;
    Ok((before, target))
}

/// The most connections an agent should accept under a descriptor limit of `fd_limit`: a
/// quarter of it (at least 256) stays free for partition logs, so a flood of connections can
/// never take the descriptors a segment roll or a directory fsync needs. At most 4,096.
///
/// ```
/// assert_eq!(streamhouse_agent::connection_limit_for(1_024), 768);
/// assert_eq!(streamhouse_agent::connection_limit_for(1 << 20), 4_096);
/// assert_eq!(streamhouse_agent::connection_limit_for(200), 0);
/// ```
pub fn connection_limit_for(fd_limit: u64) -> usize {
    let reserve = (fd_limit / 4).max(256);
    let usable = fd_limit.saturating_sub(reserve);
    usize::try_from(usable).unwrap_or(usize::MAX).min(4_096)
}

/// Opens the partition logs found in `dir`, then (with object storage) every topic in the
/// metadata store, then the configured topics. Blocking.
fn open_topics(
    dir: std::path::PathBuf,
    config: LogConfig,
    remote: Option<Arc<remote::Remote>>,
    specs: &[TopicSpec],
) -> Result<(Topics, Vec<PartitionRecovery>), AgentError> {
    let io_error = |source| AgentError::Io {
        path: dir.clone(),
        source,
    };
    let (topics, mut recovery) =
        Topics::open(dir.clone(), config, remote.clone()).map_err(io_error)?;
    let mut wanted: Vec<(String, u32)> = match &remote {
        Some(remote) => remote
            .topics_blocking()
            .map_err(|error| AgentError::Metadata {
                url: String::from("(listing topics)"),
                error,
            })?,
        None => Vec::new(),
    };
    wanted.extend(specs.iter().map(|s| (s.name.clone(), s.partitions)));
    for (name, partitions) in wanted {
        let (_, reports) = topics
            .ensure(&name, partitions)
            .map_err(|rejection| AgentError::Topic { name, rejection })?;
        recovery.extend(reports);
    }
    Ok((topics, recovery))
}

/// Takes the exclusive lock (`flock`) on the data directory itself, creating it if needed.
/// Locking the directory, not a file in it, means no file can be deleted to fool a second
/// agent; the kernel drops the lock when the process dies, so a crash never leaves it behind.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, AgentError> {
    let io_error = |source| AgentError::Io {
        path: dir.to_owned(),
        source,
    };
    use log::storage::Storage;
    log::storage::Disk
        .create_dir_durable(dir)
        .map_err(io_error)?;
    let handle = std::fs::File::open(dir).map_err(io_error)?;
    match handle.try_lock() {
        Ok(()) => Ok(handle),
        Err(std::fs::TryLockError::WouldBlock) => Err(AgentError::Locked {
            path: dir.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_error(e)),
    }
}
