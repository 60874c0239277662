//! [`AgentConfig`] and [`TopicSpec`].

use std::path::PathBuf;
use std::str::FromStr;
use streamhouse::batch::DecodeLimits;
use streamhouse::serve::ProducerLimits;
use streamhouse::transport::Endpoint;

/// Decides whether a principal may have a topic auto-created: `(principal, topic) -> bool`.
/// A request without a principal (no authentication in front) may not, once a policy is set.
#[derive(Clone)]
pub struct CreatePolicy(pub std::sync::Arc<MayCreate>);

/// `(principal, topic) -> may it be created`.
pub type MayCreate = dyn Fn(&str, &str) -> bool + Send + Sync;

impl std::fmt::Debug for CreatePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CreatePolicy(..)")
    }
}

/// How an agent runs. `data_dir` is the only field without a default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentConfig {
    /// This agent's id in metadata answers. Default 0.
    pub id: u32,
    /// Where partition logs live (`<data_dir>/<topic>-<partition>/`).
    pub data_dir: PathBuf,
    /// Topics to create at start if missing (existing ones keep their partitions, or grow).
    pub topics: Vec<TopicSpec>,
    /// Create unknown topics on first use with this many partitions (at least 1). Default off.
    pub auto_create_partitions: Option<u32>,
    /// With authentication: who may have a topic auto-created (the `create` permission).
    /// `None`: anyone whose request reaches the agent.
    pub create_policy: Option<CreatePolicy>,
    /// Most bytes the batches of one produce request may decompress to, together; batches past
    /// it answer `THROTTLED` (sent again in a later request they fit). At least
    /// `max_uncompressed_bytes`. Default 256 MiB.
    pub max_request_decompressed_bytes: usize,
    /// Most batch bytes waiting for the I/O threads; past it batches answer `THROTTLED` with
    /// a `throttle_ms` the producer honours. Default 64 MiB.
    pub max_queued_bytes: usize,
    /// Fetch answers read from the logs and not yet delivered, all clients together; a fetch
    /// past it waits (a client that asks and never reads holds at most this much). Transports
    /// keep an answer's batches until its last byte is sent. At least `max_batch_bytes`.
    /// Default 32 MiB (an unread gRPC answer also holds its encoded copy: about twice this).
    pub max_fetch_answer_bytes: usize,
    /// Most topics the agent holds: auto-creation past it is refused with
    /// `LIMIT_EXCEEDED`. Default 1,000.
    pub max_topics: usize,
    /// Largest batch accepted (encoded, header included). Default 4 MiB.
    pub max_batch_bytes: usize,
    /// Largest record accepted (encoded). Default 1 MiB.
    pub max_record_bytes: usize,
    /// Largest records block after decompression. Default 32 MiB.
    pub max_uncompressed_bytes: usize,
    /// Segment files roll at this size. Default 256 MiB.
    pub segment_bytes: u64,
    /// One sparse index entry per this many log bytes. Default 4 KiB.
    pub index_interval: u64,
    /// Threads appending to and fsyncing partition logs. Default: one per core.
    pub io_threads: usize,
    /// Endpoints this agent tells clients to use, one per transport (`grpc://…`, `quic://…`).
    pub endpoints: Vec<Endpoint>,
    /// Idempotent-producer state kept per partition. Default: 10,000 producers, forgotten only
    /// after 15 minutes idle.
    pub producer_limits: ProducerLimits,
    /// Keep the durable state in a metadata store and object storage (see [`RemoteConfig`]).
    /// Default: none (local disk only; `acks=durable` means fsync).
    pub remote: Option<RemoteConfig>,
}

/// Where an agent keeps its durable state when its disk is only a cache: a metadata store and
/// object storage. Every `flush_interval` or `flush_bytes` of new batches, whichever comes first,
/// the agent writes one object holding the new batches of all its partitions and commits its
/// index to the store; `acks=durable` answers after that commit.
///
/// ```
/// use streamhouse_agent::{AgentConfig, RemoteConfig};
/// let config = AgentConfig::new("./data")
///     .remote(RemoteConfig::new("sqlite://./data/meta.db", "file://./data/objects"));
/// assert_eq!(config.remote.unwrap().flush_bytes, 8 << 20);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RemoteConfig {
    /// The metadata store: `sqlite://PATH`, `sqlite::memory:` or `postgres://USER@HOST:PORT/DB`.
    pub metadata: String,
    /// Object storage: `file://DIR`, `memory://`, or `s3://BUCKET[/PREFIX]` (feature `s3`).
    pub objects: String,
    /// S3 endpoint, region and credentials, over the usual `AWS_*` environment variables.
    pub s3: S3Options,
    /// Longest time new batches wait before they are written to an object. Default 100 ms.
    pub flush_interval: std::time::Duration,
    /// New bytes that start a flush at once; also the most one object holds (a larger backlog
    /// is written as several objects). Default 8 MiB.
    pub flush_bytes: usize,
    /// How long an `acks=durable` batch waits for its commit while object storage or the
    /// metadata store fails, before it is answered `STORAGE_ERROR` (retriable: written locally,
    /// not yet durable; the retry is answered as a duplicate once committed). Default 5 s.
    pub durable_timeout: std::time::Duration,
    /// Bytes of object ranges kept in memory for fetches below the local log. Default 64 MiB.
    pub read_cache_bytes: usize,
    /// How often topics' retention (`streamhouse topics create --retention-ms/--retention-bytes`)
    /// is applied: records past it are dropped from the index and objects no longer needed are
    /// deleted. Default 30 s.
    pub retention_check: std::time::Duration,
    /// Join an agent group: lead only the partitions whose lease this agent holds (see
    /// [`GroupConfig`]). Default: none (a lone agent leads every partition).
    pub group: Option<GroupConfig>,
}

/// Membership of an agent group: agents sharing one metadata store and object storage, each
/// leading the partitions whose lease it holds in the store. Leases are taken, renewed and
/// given up in store transactions; every object commit checks its lease's epoch, so an agent
/// that lost a lease (paused, cut off from the store) cannot commit for that partition again.
///
/// ```
/// use streamhouse_agent::{GroupConfig, RemoteConfig};
/// let mut remote = RemoteConfig::new("sqlite://./meta.db", "file://./objects");
/// remote.group = Some(GroupConfig::new("prod"));
/// assert_eq!(remote.group.unwrap().lease_ttl, std::time::Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GroupConfig {
    /// The group's name.
    pub name: String,
    /// How long a lease (and a registration) lasts without renewal, by the store's clock.
    /// Renewed every third of it; a partition whose leader died is taken over after about
    /// this long. Default 5 s.
    pub lease_ttl: std::time::Duration,
}

impl GroupConfig {
    /// The group `name` with the default lease time.
    pub fn new(name: impl Into<String>) -> GroupConfig {
        GroupConfig {
            name: name.into(),
            lease_ttl: std::time::Duration::from_secs(5),
        }
    }
}

impl RemoteConfig {
    /// Defaults for a metadata store and object storage named by URL.
    pub fn new(metadata: impl Into<String>, objects: impl Into<String>) -> RemoteConfig {
        RemoteConfig {
            metadata: metadata.into(),
            objects: objects.into(),
            s3: S3Options::default(),
            flush_interval: std::time::Duration::from_millis(100),
            flush_bytes: 8 << 20,
            durable_timeout: std::time::Duration::from_secs(5),
            read_cache_bytes: 64 << 20,
            retention_check: std::time::Duration::from_secs(30),
            group: None,
        }
    }
}

/// How to reach an S3-compatible service. Unset fields fall back to the usual environment
/// variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, …).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct S3Options {
    /// The service's URL (e.g. `http://127.0.0.1:9000` for a local S3 server); plain `http` is
    /// allowed when set here.
    pub endpoint: Option<String>,
    /// The region. Default from the environment, else `us-east-1`.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Send object bodies unsigned (`UNSIGNED-PAYLOAD`), saving a SHA-256 pass over every
    /// object on the agent and the server; meant for `https` endpoints. Also set by
    /// `AWS_UNSIGNED_PAYLOAD=true`.
    pub unsigned_payload: bool,
}

impl AgentConfig {
    /// Defaults for an agent storing its logs in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> AgentConfig {
        AgentConfig {
            id: 0,
            data_dir: data_dir.into(),
            topics: Vec::new(),
            auto_create_partitions: None,
            create_policy: None,
            max_topics: 1_000,
            max_queued_bytes: 64 << 20,
            max_fetch_answer_bytes: 32 << 20,
            max_request_decompressed_bytes: 256 << 20,
            max_batch_bytes: 4 << 20,
            max_record_bytes: 1 << 20,
            max_uncompressed_bytes: 32 << 20,
            segment_bytes: 256 << 20,
            index_interval: 4096,
            io_threads: std::thread::available_parallelism().map_or(2, usize::from),
            endpoints: Vec::new(),
            producer_limits: ProducerLimits::default(),
            remote: None,
        }
    }

    /// Keeps the durable state in a metadata store and object storage.
    #[must_use]
    pub fn remote(mut self, remote: RemoteConfig) -> AgentConfig {
        self.remote = Some(remote);
        self
    }

    /// Adds a topic to create at start.
    #[must_use]
    pub fn topic(mut self, name: &str, partitions: u32) -> AgentConfig {
        self.topics.push(TopicSpec {
            name: name.to_owned(),
            partitions,
        });
        self
    }

    /// Adds an advertised endpoint.
    #[must_use]
    pub fn endpoint(mut self, endpoint: Endpoint) -> AgentConfig {
        self.endpoints.push(endpoint);
        self
    }

    pub(crate) fn limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_batch_bytes: self.max_batch_bytes,
            max_uncompressed_bytes: self.max_uncompressed_bytes,
            max_records: DecodeLimits::default().max_records,
            max_record_bytes: self.max_record_bytes,
        }
    }
}

/// A topic and its partition count, written `name:partitions` on the command line.
///
/// ```
/// use streamhouse_agent::TopicSpec;
/// let spec: TopicSpec = "orders:6".parse().unwrap();
/// assert_eq!((spec.name.as_str(), spec.partitions), ("orders", 6));
/// assert!("orders".parse::<TopicSpec>().is_err());
/// assert!("orders:0".parse::<TopicSpec>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count (at least 1).
    pub partitions: u32,
}

impl FromStr for TopicSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<TopicSpec, String> {
        let (name, partitions) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected NAME:PARTITIONS, e.g. orders:6"))?;
        let partitions: u32 = partitions
            .parse()
            .map_err(|_| format!("{s:?}: partition count {partitions:?} is not a number"))?;
        if partitions == 0 {
            return Err(format!("{s:?}: a topic needs at least one partition"));
        }
        streamhouse::serve::validate_topic_name(name)
            .map_err(|e| format!("{s:?}: {}", e.message))?;
        Ok(TopicSpec {
            name: name.to_owned(),
            partitions,
        })
    }
}
