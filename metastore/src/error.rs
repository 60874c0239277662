//! [`StoreError`]: what a metadata store call can fail with, and which failures are worth a
//! retry.

/// A metadata store call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL names no store this build knows.
    #[error("metadata store URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store could not be reached or dropped the connection (retriable: the call may or
    /// may not have taken effect).
    #[error("metadata store unreachable: {0}")]
    Unavailable(String),
    /// A range did not start at its partition's committed high watermark: another writer
    /// committed first, or the caller's view is stale. Nothing was written.
    #[error(
        "commit conflict on {topic}-{partition}: range starts at {expected}, the committed \
         high watermark is {found}"
    )]
    Conflict {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// Where the range started.
        expected: i64,
        /// The committed high watermark (-1: the partition does not exist).
        found: i64,
    },
    /// A commit carried a partition lease that is no longer the partition's: another agent
    /// took the partition (or the lease ran out and was taken again). Nothing was written;
    /// the writer must stop serving the partition.
    #[error(
        "{topic}-{partition} is fenced: the commit holds lease epoch {epoch} of agent \
         {agent_id}, the store's lease is {current}"
    )]
    Fenced {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The writer.
        agent_id: u32,
        /// The epoch it held.
        epoch: i64,
        /// The store's lease now (`agent/epoch`, or `none`).
        current: String,
    },
    /// `create_topic` of a topic that exists.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// The store's schema is newer than this build knows.
    #[error(
        "the metadata store's schema is version {found}; this build knows up to {known}: \
         upgrade the agent"
    )]
    SchemaTooNew {
        /// The version in the store.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// A stored value cannot be read (written by something else, or damaged).
    #[error("metadata store holds an unreadable value: {0}")]
    Corrupt(String),
    /// Any other failure of the store (permissions, constraint, SQL).
    #[error("metadata store: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether the same call may succeed later (the store was unreachable or busy).
    pub fn is_retriable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(db) => {
                // SQLite: busy/locked; PostgreSQL: serialization failure, deadlock, shutdown,
                // too many connections.
                let code = db.code().unwrap_or_default();
                let busy = matches!(
                    code.as_ref(),
                    "5" | "6" | "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300"
                ) || code.starts_with("08");
                if busy {
                    StoreError::Unavailable(e.to_string())
                } else {
                    StoreError::Backend(e.to_string())
                }
            }
            _ => StoreError::Backend(e.to_string()),
        }
    }
}
