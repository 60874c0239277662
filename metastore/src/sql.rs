//! [`SqlStore`]: the [`MetadataStore`] over SQLite or PostgreSQL through sqlx's `Any` driver
//! (one set of queries for both; see `schema` for the dialect rules they keep to).

use crate::schema;
use crate::snapshot;
use crate::{
    Acquired, CommittedRange, GroupView, IndexEntry, MetadataStore, ObjectRef, PartitionMeta,
    StoreError, StoreStats, TopicConfig,
};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor, Row};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use streamhouse::serve::ProducerSnapshot;

/// A metadata store in SQLite or PostgreSQL. Cheap to share (`Arc`); holds a connection pool.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    /// PostgreSQL (else SQLite): how write transactions begin.
    postgres: bool,
}

/// How long a call waits for a pooled connection before it fails as
/// [`StoreError::Unavailable`]: a store that is down is reported, not waited for.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a SQLite connection waits for another one's write lock (the `PRAGMA busy_timeout`
/// of [`sqlite_wal`] says it in milliseconds).
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Sets a SQLite connection's busy timeout and switches its file to WAL. The switch needs the
/// file to itself, and SQLite answers "database is locked" at once, without waiting the busy
/// timeout, while another connection is switching it too (agents started together on a new
/// file): that answer is retried for up to the busy timeout.
async fn sqlite_wal(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute("PRAGMA busy_timeout=5000").await?;
    let deadline = tokio::time::Instant::now() + SQLITE_BUSY_TIMEOUT;
    loop {
        match conn.execute("PRAGMA journal_mode=WAL").await {
            Err(sqlx::Error::Database(db))
                if db.code().as_deref() == Some("5") && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other.map(drop),
        }
    }
}

impl SqlStore {
    /// Connects to the store a URL names (see [`crate::open`]) and migrates its schema.
    /// An unreachable server, a missing permission or an unreadable file fails here.
    pub async fn open(url: &str) -> Result<SqlStore, StoreError> {
        sqlx::any::install_default_drivers();
        let invalid = |reason: &str| StoreError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (url, postgres, connections) = if url == "sqlite::memory:" {
            // Every connection to `:memory:` is a database of its own: one connection only.
            (url.to_owned(), false, 1)
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            let (file, query) = path.split_once('?').unwrap_or((path, ""));
            if file.is_empty() {
                return Err(invalid("no file path after sqlite://"));
            }
            if let Some(parent) = std::path::Path::new(file).parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Backend(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
            let url = if query.contains("mode=") {
                format!("sqlite://{path}")
            } else if query.is_empty() {
                format!("sqlite://{file}?mode=rwc")
            } else {
                format!("sqlite://{file}?{query}&mode=rwc")
            };
            (url, false, 4)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (url.to_owned(), true, 8)
        } else {
            return Err(invalid(
                "expected sqlite://PATH, sqlite::memory: or postgres://USER@HOST:PORT/DB",
            ));
        };
        let options = AnyConnectOptions::from_str(&url).map_err(|e| invalid(&e.to_string()))?;
        // One connection first, outside the pool: a wrong password, a missing database or a
        // file that is not a database fails here with its own message (the pool would retry
        // it until its timeout and report only that).
        if url != "sqlite::memory:" {
            use sqlx::{ConnectOptions, Connection};
            let mut probe = options.connect().await?;
            if !postgres {
                sqlite_wal(&mut probe).await?;
            }
            probe.close().await?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if postgres {
                        // A client paused or cut off inside a transaction (a commit holding a
                        // lease row, say) must not hold its locks for the others: the server
                        // ends the session after a second without a word from it.
                        conn.execute("SET idle_in_transaction_session_timeout = 1000")
                            .await?;
                    } else {
                        // Commits are durable (fsynced) before they are answered; readers
                        // do not block the writer.
                        sqlite_wal(conn).await?;
                        conn.execute("PRAGMA synchronous=FULL").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        schema::migrate(&pool, postgres).await?;
        Ok(SqlStore { pool, postgres })
    }

    /// Begins a write transaction. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`, waiting up to the busy timeout): a deferred transaction that reads first and
    /// then writes fails at once with "database is locked" when another connection wrote
    /// meanwhile.
    pub(crate) async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(self.pool.begin_with(begin_statement(self.postgres)).await?)
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub(crate) fn postgres(&self) -> bool {
        self.postgres
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// How a write transaction begins (see [`SqlStore::write`]).
pub(crate) fn begin_statement(postgres: bool) -> &'static str {
    if postgres { "BEGIN" } else { "BEGIN IMMEDIATE" }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn topic_from(row: &sqlx::any::AnyRow) -> Result<TopicConfig, StoreError> {
    let partitions: i64 = row.try_get(1)?;
    let limit = |v: i64| (v >= 0).then_some(v);
    Ok(TopicConfig {
        name: row.try_get(0)?,
        partitions: u32::try_from(partitions)
            .map_err(|_| StoreError::Corrupt(format!("partition count {partitions}")))?,
        created_ms: row.try_get(2)?,
        retention_ms: limit(row.try_get(3)?),
        retention_bytes: limit(row.try_get(4)?),
        id: row.try_get(5)?,
    })
}

/// Of `keys`, the objects no index row points to any more: removed from `sh_objects` and
/// returned (for deletion from object storage once the transaction commits).
async fn drop_unreferenced(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    mut keys: Vec<String>,
) -> Result<Vec<String>, StoreError> {
    keys.sort();
    keys.dedup();
    let mut orphans = Vec::new();
    for key in keys {
        let used = sqlx::query("SELECT 1 FROM sh_index WHERE object_key = $1 LIMIT 1")
            .bind(&key)
            .fetch_optional(&mut **tx)
            .await?;
        if used.is_none() {
            sqlx::query("DELETE FROM sh_objects WHERE object_key = $1")
                .bind(&key)
                .execute(&mut **tx)
                .await?;
            orphans.push(key);
        }
    }
    Ok(orphans)
}

/// A new topic's id: random, positive, never 0 (the id of topics from before ids existed).
fn new_topic_id(name: &str) -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(name.as_bytes());
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (hasher.finish() >> 1).max(1) as i64
}

fn unsigned(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value}")))
}

#[async_trait::async_trait]
impl MetadataStore for SqlStore {
    async fn ensure_topic(&self, name: &str, partitions: u32) -> Result<TopicConfig, StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO sh_topics (name, partitions, created_ms, topic_id) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET partitions = excluded.partitions
             WHERE sh_topics.partitions < excluded.partitions",
        )
        .bind(name)
        .bind(i64::from(partitions))
        .bind(now_ms())
        .bind(new_topic_id(name))
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT name, partitions, created_ms, retention_ms, retention_bytes, topic_id
             FROM sh_topics WHERE name = $1",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        let topic = topic_from(&row)?;
        for partition in 0..topic.partitions {
            sqlx::query(
                "INSERT INTO sh_partitions (topic, partition_id, log_start, high_watermark)
                 VALUES ($1, $2, 0, 0) ON CONFLICT (topic, partition_id) DO NOTHING",
            )
            .bind(name)
            .bind(i64::from(partition))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(topic)
    }

    async fn create_topic(&self, name: &str, partitions: u32) -> Result<TopicConfig, StoreError> {
        let exists = sqlx::query("SELECT 1 FROM sh_topics WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_some() {
            return Err(StoreError::TopicExists(name.to_owned()));
        }
        self.ensure_topic(name, partitions).await
    }

    async fn topics(&self) -> Result<Vec<TopicConfig>, StoreError> {
        sqlx::query(
            "SELECT name, partitions, created_ms, retention_ms, retention_bytes, topic_id
             FROM sh_topics ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(topic_from)
        .collect()
    }

    async fn delete_topic(&self, name: &str) -> Result<Option<Vec<String>>, StoreError> {
        let mut tx = self.write().await?;
        let keys: Vec<String> =
            sqlx::query("SELECT DISTINCT object_key FROM sh_index WHERE topic = $1")
                .bind(name)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?;
        for delete in [
            "DELETE FROM sh_index WHERE topic = $1",
            "DELETE FROM sh_producers WHERE topic = $1",
            "DELETE FROM sh_partitions WHERE topic = $1",
            "DELETE FROM sh_leases WHERE topic = $1",
        ] {
            sqlx::query(delete).bind(name).execute(&mut *tx).await?;
        }
        let deleted = sqlx::query("DELETE FROM sh_topics WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let orphans = drop_unreferenced(&mut tx, keys).await?;
        tx.commit().await?;
        Ok((deleted > 0).then_some(orphans))
    }

    async fn partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Option<PartitionMeta>, StoreError> {
        let row = sqlx::query(
            "SELECT log_start, high_watermark FROM sh_partitions
             WHERE topic = $1 AND partition_id = $2",
        )
        .bind(topic)
        .bind(i64::from(partition))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(PartitionMeta {
                log_start: row.try_get(0)?,
                high_watermark: row.try_get(1)?,
            })
        })
        .transpose()
    }

    async fn commit(
        &self,
        object: &ObjectRef,
        ranges: &[CommittedRange],
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        let done = sqlx::query("SELECT 1 FROM sh_objects WHERE object_key = $1")
            .bind(&object.key)
            .fetch_optional(&mut *tx)
            .await?;
        if done.is_some() {
            // Committed before; the answer was lost.
            return Ok(());
        }
        let now = now_ms();
        sqlx::query("INSERT INTO sh_objects (object_key, size, created_ms) VALUES ($1, $2, $3)")
            .bind(&object.key)
            .bind(object.size as i64)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        for range in ranges {
            if let Some(lease) = range.lease {
                crate::group::check_lease(
                    &mut tx,
                    self.postgres,
                    &range.topic,
                    range.partition,
                    lease,
                )
                .await?;
            }
            let partition = i64::from(range.partition);
            let moved = sqlx::query(
                "UPDATE sh_partitions SET high_watermark = $1
                 WHERE topic = $2 AND partition_id = $3 AND high_watermark = $4",
            )
            .bind(range.next_offset)
            .bind(&range.topic)
            .bind(partition)
            .bind(range.first_offset)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if moved != 1 {
                let found = sqlx::query(
                    "SELECT high_watermark FROM sh_partitions
                     WHERE topic = $1 AND partition_id = $2",
                )
                .bind(&range.topic)
                .bind(partition)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get::<i64, _>(0))
                .transpose()?
                .unwrap_or(-1);
                return Err(StoreError::Conflict {
                    topic: range.topic.clone(),
                    partition: range.partition,
                    expected: range.first_offset,
                    found,
                });
            }
            sqlx::query(
                "INSERT INTO sh_index (topic, partition_id, first_offset, next_offset, \
                 object_key, byte_start, byte_len, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&range.topic)
            .bind(partition)
            .bind(range.first_offset)
            .bind(range.next_offset)
            .bind(&object.key)
            .bind(range.byte_start as i64)
            .bind(range.byte_len as i64)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            for producer in &range.producers {
                sqlx::query(
                    "INSERT INTO sh_producers (topic, partition_id, producer_id, epoch, batches)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (topic, partition_id, producer_id)
                     DO UPDATE SET epoch = excluded.epoch, batches = excluded.batches",
                )
                .bind(&range.topic)
                .bind(partition)
                .bind(producer.producer_id)
                .bind(i64::from(producer.epoch))
                .bind(snapshot::encode(producer))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn index(
        &self,
        topic: &str,
        partition: u32,
        from: i64,
        limit: usize,
    ) -> Result<Vec<IndexEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT first_offset, next_offset, object_key, byte_start, byte_len, created_ms
             FROM sh_index
             WHERE topic = $1 AND partition_id = $2 AND next_offset > $3
             ORDER BY first_offset LIMIT $4",
        )
        .bind(topic)
        .bind(i64::from(partition))
        .bind(from)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(IndexEntry {
                    first_offset: row.try_get(0)?,
                    next_offset: row.try_get(1)?,
                    object: row.try_get(2)?,
                    byte_start: unsigned(row.try_get(3)?, "byte start")?,
                    byte_len: unsigned(row.try_get(4)?, "byte length")?,
                    created_ms: row.try_get(5)?,
                })
            })
            .collect()
    }

    async fn producers(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Vec<ProducerSnapshot>, StoreError> {
        let rows = sqlx::query(
            "SELECT producer_id, epoch, batches FROM sh_producers
             WHERE topic = $1 AND partition_id = $2 ORDER BY producer_id",
        )
        .bind(topic)
        .bind(i64::from(partition))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let batches: String = row.try_get(2)?;
                snapshot::decode(row.try_get(0)?, row.try_get(1)?, &batches)
            })
            .collect()
    }

    async fn set_retention(
        &self,
        topic: &str,
        retention_ms: Option<i64>,
        retention_bytes: Option<i64>,
    ) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE sh_topics SET retention_ms = $1, retention_bytes = $2 WHERE name = $3",
        )
        .bind(retention_ms.unwrap_or(-1))
        .bind(retention_bytes.unwrap_or(-1))
        .bind(topic)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    async fn truncate(
        &self,
        topic: &str,
        partition: u32,
        log_start: i64,
    ) -> Result<Vec<String>, StoreError> {
        let partition = i64::from(partition);
        let mut tx = self.write().await?;
        // Only whole ranges go, and never past the high watermark.
        let rows = sqlx::query(
            "SELECT object_key FROM sh_index
             WHERE topic = $1 AND partition_id = $2 AND next_offset <= $3",
        )
        .bind(topic)
        .bind(partition)
        .bind(log_start)
        .fetch_all(&mut *tx)
        .await?;
        let mut keys: Vec<String> = rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        keys.sort();
        keys.dedup();
        sqlx::query(
            "DELETE FROM sh_index WHERE topic = $1 AND partition_id = $2 AND next_offset <= $3",
        )
        .bind(topic)
        .bind(partition)
        .bind(log_start)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE sh_partitions
             SET log_start = CASE WHEN high_watermark < $1 THEN high_watermark ELSE $1 END
             WHERE topic = $2 AND partition_id = $3 AND log_start < $1",
        )
        .bind(log_start)
        .bind(topic)
        .bind(partition)
        .execute(&mut *tx)
        .await?;
        let orphans = drop_unreferenced(&mut tx, keys).await?;
        tx.commit().await?;
        Ok(orphans)
    }

    async fn stats(&self, topic: &str, partition: u32) -> Result<StoreStats, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(DISTINCT object_key), CAST(COALESCE(SUM(byte_len), 0) AS BIGINT), COUNT(*)
             FROM sh_index WHERE topic = $1 AND partition_id = $2",
        )
        .bind(topic)
        .bind(i64::from(partition))
        .fetch_one(&self.pool)
        .await?;
        Ok(StoreStats {
            objects: unsigned(row.try_get(0)?, "object count")?,
            bytes: unsigned(row.try_get(1)?, "byte total")?,
            entries: unsigned(row.try_get(2)?, "entry count")?,
        })
    }

    async fn heartbeat(
        &self,
        group: &str,
        agent_id: u32,
        endpoints: &[String],
        ttl: Duration,
    ) -> Result<i64, StoreError> {
        self.group_heartbeat(group, agent_id, endpoints, ttl).await
    }

    async fn leave(&self, group: &str, agent_id: u32) -> Result<(), StoreError> {
        self.group_leave(group, agent_id).await
    }

    async fn group(&self, group: &str) -> Result<GroupView, StoreError> {
        self.group_view(group).await
    }

    async fn acquire(
        &self,
        group: &str,
        agent_id: u32,
        topic: &str,
        partition: u32,
        ttl: Duration,
    ) -> Result<Option<Acquired>, StoreError> {
        self.lease_acquire(group, agent_id, topic, partition, ttl)
            .await
    }

    async fn renew(
        &self,
        agent_id: u32,
        leases: &[(String, u32, i64, i64)],
        ttl: Duration,
    ) -> Result<Vec<Option<i64>>, StoreError> {
        self.lease_renew(agent_id, leases, ttl).await
    }

    async fn release(
        &self,
        agent_id: u32,
        leases: &[(String, u32, i64)],
    ) -> Result<(), StoreError> {
        self.lease_release(agent_id, leases).await
    }

    async fn acl_rules(&self) -> Result<Vec<String>, StoreError> {
        self.acl_list().await
    }

    async fn add_acl_rule(&self, rule: &str) -> Result<bool, StoreError> {
        self.acl_add(rule).await
    }

    async fn remove_acl_rule(&self, rule: &str) -> Result<bool, StoreError> {
        self.acl_remove(rule).await
    }

    async fn allocate_producer_id(&self, principal: &str) -> Result<i64, StoreError> {
        self.producer_id_allocate(principal).await
    }

    async fn producer_id_owner(&self, id: i64) -> Result<Option<String>, StoreError> {
        SqlStore::producer_id_owner(self, id).await
    }
}
