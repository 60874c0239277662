//! Agent groups in the store: registrations (`sh_agents`) and partition leases
//! (`sh_leases`), judged by the store's clock.
//!
//! ```text
//! agent, every TTL/3:  heartbeat ── sh_agents.expires_ms = now + ttl
//!                      renew     ── sh_leases SET expires_ms = now + ttl
//!                                   WHERE agent = me AND epoch = mine AND expires_ms > now
//!                      acquire   ── one transaction: the row is absent, run out or mine?
//!                                   take it (epoch + 1 unless it was mine and still held)
//! flusher commit:      sh_leases.(agent, epoch) == the writer's, in the commit's transaction
//!                      (see `SqlStore::commit`), else `Fenced`
//! ```
//!
//! "Now" is always the store's clock (`clock_timestamp()` in PostgreSQL, `unixepoch('subsec')`
//! in SQLite), read inside the transaction that uses it: agents' clocks never decide who
//! leads. Only the epoch fences a commit: a lease that ran out and was not taken by anyone
//! else still guards its partition, since nobody else can have written it.

use crate::sql::SqlStore;
use crate::{Acquired, AgentRecord, GroupView, Lease, LeaseId, StoreError};
use sqlx::Row;
use std::time::Duration;

/// The store's clock, in milliseconds since the Unix epoch.
fn now_query(postgres: bool) -> &'static str {
    if postgres {
        "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
    } else {
        "SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER)"
    }
}

fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4)
}

fn id(value: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value}")))
}

fn lease_from(row: &sqlx::any::AnyRow) -> Result<Lease, StoreError> {
    Ok(Lease {
        topic: row.try_get(0)?,
        partition: id(row.try_get(1)?, "partition")?,
        group: row.try_get(2)?,
        id: LeaseId {
            agent_id: id(row.try_get(3)?, "agent id")?,
            epoch: row.try_get(4)?,
        },
        expires_ms: row.try_get(5)?,
        local_end: row.try_get(6)?,
    })
}

const LEASE_COLUMNS: &str =
    "topic, partition_id, group_name, agent_id, epoch, expires_ms, local_end";

impl SqlStore {
    async fn now(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<i64, StoreError> {
        Ok(sqlx::query(now_query(self.postgres()))
            .fetch_one(&mut **tx)
            .await?
            .try_get(0)?)
    }

    pub(crate) async fn group_heartbeat(
        &self,
        group: &str,
        agent_id: u32,
        endpoints: &[String],
        ttl: Duration,
    ) -> Result<i64, StoreError> {
        let mut tx = self.write().await?;
        let now = self.now(&mut tx).await?;
        sqlx::query(
            "INSERT INTO sh_agents (group_name, agent_id, endpoints, heartbeat_ms, expires_ms, \
             started_ms) VALUES ($1, $2, $3, $4, $5, $4)
             ON CONFLICT (group_name, agent_id) DO UPDATE SET endpoints = excluded.endpoints,
             heartbeat_ms = excluded.heartbeat_ms, expires_ms = excluded.expires_ms,
             started_ms = CASE WHEN sh_agents.expires_ms < excluded.heartbeat_ms
                          THEN excluded.heartbeat_ms ELSE sh_agents.started_ms END",
        )
        .bind(group)
        .bind(i64::from(agent_id))
        .bind(endpoints.join(" "))
        .bind(now)
        .bind(now.saturating_add(millis(ttl)))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(now)
    }

    pub(crate) async fn group_leave(&self, group: &str, agent_id: u32) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sh_agents WHERE group_name = $1 AND agent_id = $2")
            .bind(group)
            .bind(i64::from(agent_id))
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub(crate) async fn group_view(&self, group: &str) -> Result<GroupView, StoreError> {
        // One read transaction: the clock, the agents and the leases of one instant.
        let mut tx = self.pool().begin().await?;
        let now_ms = self.now(&mut tx).await?;
        let agents = sqlx::query(
            "SELECT agent_id, endpoints, heartbeat_ms, expires_ms, started_ms FROM sh_agents
             WHERE group_name = $1 ORDER BY agent_id",
        )
        .bind(group)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| {
            let endpoints: String = row.try_get(1)?;
            Ok(AgentRecord {
                agent_id: id(row.try_get(0)?, "agent id")?,
                endpoints: endpoints.split_whitespace().map(str::to_owned).collect(),
                heartbeat_ms: row.try_get(2)?,
                expires_ms: row.try_get(3)?,
                live_since_ms: row.try_get(4)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        let leases = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LEASE_COLUMNS} FROM sh_leases ORDER BY topic, partition_id"
        )))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(lease_from)
        .collect::<Result<Vec<_>, StoreError>>()?;
        tx.commit().await?;
        Ok(GroupView {
            now_ms,
            agents,
            leases,
        })
    }

    pub(crate) async fn lease_acquire(
        &self,
        group: &str,
        agent_id: u32,
        topic: &str,
        partition: u32,
        ttl: Duration,
    ) -> Result<Option<Acquired>, StoreError> {
        let mut tx = self.write().await?;
        let now = self.now(&mut tx).await?;
        let exists =
            sqlx::query("SELECT 1 FROM sh_partitions WHERE topic = $1 AND partition_id = $2")
                .bind(topic)
                .bind(i64::from(partition))
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(StoreError::Backend(format!(
                "no partition {topic}-{partition} in the store"
            )));
        }
        let current = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LEASE_COLUMNS} FROM sh_leases WHERE topic = $1 AND partition_id = $2"
        )))
        .bind(topic)
        .bind(i64::from(partition))
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(lease_from)
        .transpose()?;
        let expires_ms = now.saturating_add(millis(ttl));
        let (epoch, previous) = match &current {
            None => (1, None),
            Some(lease) if lease.expires_ms > now && lease.id.agent_id != agent_id => {
                return Ok(None);
            }
            // Still ours: the same epoch, extended.
            Some(lease) if lease.expires_ms > now => (lease.id.epoch, Some(agent_id)),
            // Run out (ours or not): a new epoch, so commits under the old one are refused.
            Some(lease) => (lease.id.epoch + 1, Some(lease.id.agent_id)),
        };
        // Compare-and-set on the row as read: another agent taking it meanwhile (PostgreSQL
        // reads without locking here) makes this write nothing.
        let (was_agent, was_epoch) = current
            .as_ref()
            .map_or((-1, -1), |l| (i64::from(l.id.agent_id), l.id.epoch));
        let taken = sqlx::query(
            "INSERT INTO sh_leases (topic, partition_id, group_name, agent_id, epoch, expires_ms, \
             acquired_ms, local_end) VALUES ($1, $2, $3, $4, $5, $6, $7, -1)
             ON CONFLICT (topic, partition_id) DO UPDATE SET group_name = excluded.group_name,
             agent_id = excluded.agent_id, epoch = excluded.epoch,
             expires_ms = excluded.expires_ms, acquired_ms = excluded.acquired_ms
             WHERE sh_leases.agent_id = $8 AND sh_leases.epoch = $9",
        )
        .bind(topic)
        .bind(i64::from(partition))
        .bind(group)
        .bind(i64::from(agent_id))
        .bind(epoch)
        .bind(expires_ms)
        .bind(now)
        .bind(was_agent)
        .bind(was_epoch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if taken != 1 {
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(Acquired {
            lease: Lease {
                topic: topic.to_owned(),
                partition,
                id: LeaseId { agent_id, epoch },
                group: group.to_owned(),
                expires_ms,
                local_end: -1,
            },
            previous,
            previous_expires_ms: current.as_ref().map_or(-1, |l| l.expires_ms),
            now_ms: now,
        }))
    }

    pub(crate) async fn lease_renew(
        &self,
        agent_id: u32,
        leases: &[(String, u32, i64, i64)],
        ttl: Duration,
    ) -> Result<Vec<Option<i64>>, StoreError> {
        let mut tx = self.write().await?;
        let now = self.now(&mut tx).await?;
        let expires_ms = now.saturating_add(millis(ttl));
        let mut out = Vec::with_capacity(leases.len());
        for (topic, partition, epoch, local_end) in leases {
            let renewed = sqlx::query(
                "UPDATE sh_leases SET expires_ms = $1, local_end = $2
                 WHERE topic = $3 AND partition_id = $4 AND agent_id = $5 AND epoch = $6
                 AND expires_ms > $7",
            )
            .bind(expires_ms)
            .bind(*local_end)
            .bind(topic)
            .bind(i64::from(*partition))
            .bind(i64::from(agent_id))
            .bind(*epoch)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            out.push((renewed == 1).then_some(expires_ms));
        }
        tx.commit().await?;
        Ok(out)
    }

    pub(crate) async fn lease_release(
        &self,
        agent_id: u32,
        leases: &[(String, u32, i64)],
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        let now = self.now(&mut tx).await?;
        for (topic, partition, epoch) in leases {
            sqlx::query(
                "UPDATE sh_leases SET expires_ms = $1
                 WHERE topic = $2 AND partition_id = $3 AND agent_id = $4 AND epoch = $5",
            )
            .bind(now)
            .bind(topic)
            .bind(i64::from(*partition))
            .bind(i64::from(agent_id))
            .bind(*epoch)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// In a commit's transaction: the partition's lease must still be `lease`.
/// On PostgreSQL the lease row stays locked until the commit ends, so an `acquire` racing it
/// waits, and the new holder reads the high watermark this commit leaves.
pub(crate) async fn check_lease(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    postgres: bool,
    topic: &str,
    partition: u32,
    lease: LeaseId,
) -> Result<(), StoreError> {
    let query = if postgres {
        "SELECT agent_id, epoch FROM sh_leases WHERE topic = $1 AND partition_id = $2 FOR UPDATE"
    } else {
        "SELECT agent_id, epoch FROM sh_leases WHERE topic = $1 AND partition_id = $2"
    };
    let row = sqlx::query(query)
        .bind(topic)
        .bind(i64::from(partition))
        .fetch_optional(&mut **tx)
        .await?;
    let current = row
        .map(|row| Ok::<_, StoreError>((row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?)))
        .transpose()?;
    if current == Some((i64::from(lease.agent_id), lease.epoch)) {
        return Ok(());
    }
    Err(StoreError::Fenced {
        topic: topic.to_owned(),
        partition,
        agent_id: lease.agent_id,
        epoch: lease.epoch,
        current: current.map_or_else(|| "none".to_owned(), |(a, e)| format!("{a}/{e}")),
    })
}
