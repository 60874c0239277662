//! The schema and its migrations. One schema serves SQLite and PostgreSQL: only `TEXT` and
//! `BIGINT` columns, `ON CONFLICT` upserts, `$N` parameters. Each migration runs once, in a
//! transaction, and bumps the version in `sh_schema`; a store whose version is newer than this
//! build knows is refused ([`StoreError::SchemaTooNew`]).

use crate::StoreError;
use sqlx::{AnyPool, Row};

/// Migrations in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE IF NOT EXISTS sh_topics (
        name TEXT PRIMARY KEY,
        partitions BIGINT NOT NULL,
        created_ms BIGINT NOT NULL
    )",
        "CREATE TABLE IF NOT EXISTS sh_partitions (
        topic TEXT NOT NULL,
        partition_id BIGINT NOT NULL,
        log_start BIGINT NOT NULL,
        high_watermark BIGINT NOT NULL,
        PRIMARY KEY (topic, partition_id)
    )",
        "CREATE TABLE IF NOT EXISTS sh_objects (
        object_key TEXT PRIMARY KEY,
        size BIGINT NOT NULL,
        created_ms BIGINT NOT NULL
    )",
        "CREATE TABLE IF NOT EXISTS sh_index (
        topic TEXT NOT NULL,
        partition_id BIGINT NOT NULL,
        first_offset BIGINT NOT NULL,
        next_offset BIGINT NOT NULL,
        object_key TEXT NOT NULL,
        byte_start BIGINT NOT NULL,
        byte_len BIGINT NOT NULL,
        PRIMARY KEY (topic, partition_id, first_offset)
    )",
        "CREATE INDEX IF NOT EXISTS sh_index_by_object ON sh_index (object_key)",
        "CREATE TABLE IF NOT EXISTS sh_producers (
        topic TEXT NOT NULL,
        partition_id BIGINT NOT NULL,
        producer_id BIGINT NOT NULL,
        epoch BIGINT NOT NULL,
        batches TEXT NOT NULL,
        PRIMARY KEY (topic, partition_id, producer_id)
    )",
    ],
    &[
        // Retention (-1: none) and when each index row was committed.
        "ALTER TABLE sh_topics ADD COLUMN retention_ms BIGINT NOT NULL DEFAULT -1",
        "ALTER TABLE sh_topics ADD COLUMN retention_bytes BIGINT NOT NULL DEFAULT -1",
        "ALTER TABLE sh_index ADD COLUMN created_ms BIGINT NOT NULL DEFAULT 0",
    ],
    &[
        // Each topic's incarnation: a topic deleted and created again under the same name
        // gets a new id, so files of the old one are never taken for the new one's.
        "ALTER TABLE sh_topics ADD COLUMN topic_id BIGINT NOT NULL DEFAULT 0",
    ],
    &[
        // Agent groups: registrations and partition leases (times by the store's clock).
        "CREATE TABLE IF NOT EXISTS sh_agents (
        group_name TEXT NOT NULL,
        agent_id BIGINT NOT NULL,
        endpoints TEXT NOT NULL,
        heartbeat_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        started_ms BIGINT NOT NULL,
        PRIMARY KEY (group_name, agent_id)
    )",
        "CREATE TABLE IF NOT EXISTS sh_leases (
        topic TEXT NOT NULL,
        partition_id BIGINT NOT NULL,
        group_name TEXT NOT NULL,
        agent_id BIGINT NOT NULL,
        epoch BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        acquired_ms BIGINT NOT NULL,
        local_end BIGINT NOT NULL,
        PRIMARY KEY (topic, partition_id)
    )",
    ],
    &[
        // ACL rules of the group (one store, one group).
        "CREATE TABLE IF NOT EXISTS sh_acls (
        rule TEXT PRIMARY KEY,
        added_ms BIGINT NOT NULL
    )",
    ],
    &[
        // Producer ids handed out by InitProducerId, each bound to the principal that asked.
        "CREATE TABLE IF NOT EXISTS sh_producer_ids (
        producer_id BIGINT PRIMARY KEY,
        principal TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    )",
    ],
];

/// The newest schema version this build knows.
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the store's schema to [`VERSION`].
pub(crate) async fn migrate(pool: &AnyPool, postgres: bool) -> Result<(), StoreError> {
    let mut tx = pool
        .begin_with(crate::sql::begin_statement(postgres))
        .await?;
    if postgres {
        // Agents starting together against one database migrate one at a time.
        sqlx::query("SELECT pg_advisory_xact_lock(7468756)")
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("CREATE TABLE IF NOT EXISTS sh_schema (version BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await?;
    let found: Option<i64> = sqlx::query("SELECT MAX(version) FROM sh_schema")
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    let found = found.unwrap_or(0);
    if found > VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: VERSION,
        });
    }
    for (i, steps) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        for step in *steps {
            sqlx::query(*step).execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO sh_schema (version) VALUES ($1)")
            .bind(i as i64 + 1)
            .execute(&mut *tx)
            .await?;
        tracing::info!(version = i + 1, "metadata store schema migrated");
    }
    tx.commit().await?;
    Ok(())
}
