//! Security state shared by a group: ACL rules (`sh_acls`), the rules every agent of the group
//! authorizes by, stored as their text (one `allow …` line each, as `streamhouse_auth` prints
//! them; the store does not interpret them); and producer ids bound to principals
//! (`sh_producer_ids`), handed out by any agent and honoured by all.

use crate::StoreError;
use crate::sql::SqlStore;
use sqlx::Row;

impl SqlStore {
    pub(crate) async fn acl_list(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT rule FROM sh_acls ORDER BY rule")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|row| row.try_get::<String, _>(0).map_err(StoreError::from))
            .collect()
    }

    pub(crate) async fn acl_add(&self, rule: &str) -> Result<bool, StoreError> {
        let added = sqlx::query(
            "INSERT INTO sh_acls (rule, added_ms) VALUES ($1, $2) ON CONFLICT (rule) DO NOTHING",
        )
        .bind(rule)
        .bind(crate::sql::now_ms())
        .execute(self.pool())
        .await?;
        Ok(added.rows_affected() > 0)
    }

    pub(crate) async fn acl_remove(&self, rule: &str) -> Result<bool, StoreError> {
        let removed = sqlx::query("DELETE FROM sh_acls WHERE rule = $1")
            .bind(rule)
            .execute(self.pool())
            .await?;
        Ok(removed.rows_affected() > 0)
    }

    pub(crate) async fn producer_id_allocate(&self, principal: &str) -> Result<i64, StoreError> {
        // Agents handing out ids at once take turns: SQLite's write transaction takes the
        // file's write lock at its start, PostgreSQL takes an advisory lock for this.
        let mut tx = self.write().await?;
        if self.postgres() {
            sqlx::query("SELECT pg_advisory_xact_lock(7468757)")
                .execute(&mut *tx)
                .await?;
        }
        let id: i64 = sqlx::query(
            "INSERT INTO sh_producer_ids (producer_id, principal, created_ms)
             SELECT COALESCE(MAX(producer_id), 0) + 1, $1, $2 FROM sh_producer_ids
             RETURNING producer_id",
        )
        .bind(principal)
        .bind(crate::sql::now_ms())
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        tx.commit().await?;
        Ok(id)
    }

    pub(crate) async fn producer_id_owner(&self, id: i64) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT principal FROM sh_producer_ids WHERE producer_id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
            .transpose()
    }
}
