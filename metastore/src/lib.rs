//! The StreamHouse metadata store: the durable state of agents that keep their records in
//! object storage.
//!
//! ```text
//! agent ── every flush: PUT one object (batches of many partitions, bytes unchanged)
//!   │
//!   └─► MetadataStore::commit, one transaction:
//!         hw(p) == first offset of the range ?  insert index rows (offset range → object,
//!                                                byte range), save producer state, advance hw(p)
//!                                            :  Conflict (nothing written)
//!       Acks::Durable is answered after this commit.
//! ```
//!
//! The store holds topics and their configuration, each partition's committed high watermark
//! and log start, the object index, and per partition the idempotent producers' epochs and last
//! five batches (what a new owner needs to answer a retry as a duplicate). An agent restarted
//! with an empty disk rebuilds every partition from it.
//!
//! [`MetadataStore`] is the seam; [`SqlStore`] implements it over one schema in SQLite (embedded,
//! `sqlite://PATH`, no service) or PostgreSQL (`postgres://…`, for many machines). [`open`]
//! picks by URL and runs the schema migrations.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use streamhouse_metastore::{CommittedRange, MetadataStore, ObjectRef};
//!
//! let store = streamhouse_metastore::open("sqlite::memory:").await?;
//! store.ensure_topic("orders", 2).await?;
//! let object = ObjectRef { key: "v1/agent-1/0".into(), size: 300 };
//! let range = CommittedRange {
//!     topic: "orders".into(),
//!     partition: 1,
//!     first_offset: 0,
//!     next_offset: 10,
//!     byte_start: 0,
//!     byte_len: 300,
//!     producers: vec![],
//!     lease: None,
//! };
//! store.commit(&object, &[range]).await?;
//! assert_eq!(store.partition("orders", 1).await?.unwrap().high_watermark, 10);
//! assert_eq!(store.index("orders", 1, 5, 10).await?[0].object, "v1/agent-1/0");
//! # Ok(()) }
//! ```

mod acl;
mod discovery;
mod error;
mod group;
mod schema;
mod snapshot;
mod sql;
mod types;

pub mod testing;

pub use discovery::StoreDiscovery;
pub use error::StoreError;
pub use sql::SqlStore;
pub use types::{
    Acquired, AgentRecord, CommittedRange, GroupView, IndexEntry, Lease, LeaseId, ObjectRef,
    PartitionMeta, StoreStats, TopicConfig, assign, rendezvous,
};

use std::sync::Arc;
use streamhouse::serve::ProducerSnapshot;

/// The durable state of agents: topics, partitions' committed offsets, the object index and
/// producer state. Every method is one transaction; implementations are shared by many tasks.
#[async_trait::async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// The topic with at least `partitions` partitions: created, grown, or as it is. New
    /// partitions start empty (high watermark 0).
    async fn ensure_topic(&self, name: &str, partitions: u32) -> Result<TopicConfig, StoreError>;

    /// Creates a topic; [`StoreError::TopicExists`] if it is there already.
    async fn create_topic(&self, name: &str, partitions: u32) -> Result<TopicConfig, StoreError>;

    /// Every topic, by name.
    async fn topics(&self) -> Result<Vec<TopicConfig>, StoreError>;

    /// Deletes a topic with its partitions, index rows and producer state; `None` if there was
    /// none. Returns the keys of the objects no index row points to any more: delete them from
    /// object storage.
    async fn delete_topic(&self, name: &str) -> Result<Option<Vec<String>>, StoreError>;

    /// A partition's committed high watermark and log start, if it exists.
    async fn partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Option<PartitionMeta>, StoreError>;

    /// Records one object and its ranges, all or nothing. Each range must start at its
    /// partition's high watermark, which moves to the range's end; otherwise
    /// [`StoreError::Conflict`] and nothing is written. Committing an object that is already
    /// committed (a retry after a lost answer) succeeds without change.
    async fn commit(&self, object: &ObjectRef, ranges: &[CommittedRange])
    -> Result<(), StoreError>;

    /// Index entries of a partition from the one holding `from`, in offset order, at most
    /// `limit`.
    async fn index(
        &self,
        topic: &str,
        partition: u32,
        from: i64,
        limit: usize,
    ) -> Result<Vec<IndexEntry>, StoreError>;

    /// The producer state committed for a partition (as of its high watermark).
    async fn producers(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Vec<ProducerSnapshot>, StoreError>;

    /// Sets a topic's retention (`None`: no bound); `false` if there is no such topic.
    async fn set_retention(
        &self,
        topic: &str,
        retention_ms: Option<i64>,
        retention_bytes: Option<i64>,
    ) -> Result<bool, StoreError>;

    /// Moves a partition's log start to `log_start` (never back, never past its high
    /// watermark) and removes its index rows wholly below it, in one transaction; offsets below
    /// the log start are no longer served. Returns the keys of the objects no
    /// index row points to any more: delete them from object storage.
    async fn truncate(
        &self,
        topic: &str,
        partition: u32,
        log_start: i64,
    ) -> Result<Vec<String>, StoreError>;

    /// Objects and bytes indexed for a partition.
    async fn stats(&self, topic: &str, partition: u32) -> Result<StoreStats, StoreError>;

    /// Registers an agent in a group, or renews its registration: it counts as live until
    /// `ttl` from now by the store's clock. Returns that clock.
    async fn heartbeat(
        &self,
        group: &str,
        agent_id: u32,
        endpoints: &[String],
        ttl: std::time::Duration,
    ) -> Result<i64, StoreError>;

    /// Removes an agent's registration (it is leaving).
    async fn leave(&self, group: &str, agent_id: u32) -> Result<(), StoreError>;

    /// A group's registered agents and every partition lease, at one instant of the store's
    /// clock.
    async fn group(&self, group: &str) -> Result<GroupView, StoreError>;

    /// Takes a partition's lease for `agent_id` until `ttl` from now (store clock), when it is
    /// free, run out, or already the caller's; `None` when another agent holds it. The epoch
    /// moves on whenever the lease was not held by the caller a moment ago, so commits under
    /// any earlier lease are refused from now on.
    async fn acquire(
        &self,
        group: &str,
        agent_id: u32,
        topic: &str,
        partition: u32,
        ttl: std::time::Duration,
    ) -> Result<Option<Acquired>, StoreError>;

    /// Extends leases still held by the caller (same epoch, not run out) to `ttl` from now,
    /// recording each partition's local log end; per lease in order, the new expiry, or
    /// `None` when it was lost. One transaction.
    async fn renew(
        &self,
        agent_id: u32,
        leases: &[(String, u32, i64, i64)],
        ttl: std::time::Duration,
    ) -> Result<Vec<Option<i64>>, StoreError>;

    /// Gives leases up (the caller flushed them): they can be taken at once.
    async fn release(&self, agent_id: u32, leases: &[(String, u32, i64)])
    -> Result<(), StoreError>;

    /// The ACL rules every agent of the store's group authorizes by, sorted.
    async fn acl_rules(&self) -> Result<Vec<String>, StoreError>;

    /// Adds a rule (its text); `false` when it was there already.
    async fn add_acl_rule(&self, rule: &str) -> Result<bool, StoreError>;

    /// Removes a rule (its exact text); `false` when it was not there.
    async fn remove_acl_rule(&self, rule: &str) -> Result<bool, StoreError>;

    /// A new producer id, bound to `principal` for good.
    async fn allocate_producer_id(&self, principal: &str) -> Result<i64, StoreError>;

    /// The principal producer id `id` was handed to, if any.
    async fn producer_id_owner(&self, id: i64) -> Result<Option<String>, StoreError>;
}

/// Opens the store a URL names and brings its schema up to date: `sqlite://PATH` (the file is
/// created if missing), `sqlite::memory:` (one connection, gone at drop), or
/// `postgres://USER@HOST:PORT/DB`.
pub async fn open(url: &str) -> Result<Arc<dyn MetadataStore>, StoreError> {
    Ok(Arc::new(SqlStore::open(url).await?))
}
