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
        // One statement takes the next id; two agents racing for it on PostgreSQL collide on
        // the key, and the loser takes the one after.
        let mut last = None;
        for _ in 0..8 {
            let taken = sqlx::query(
                "INSERT INTO sh_producer_ids (producer_id, principal, created_ms)
                 SELECT COALESCE(MAX(producer_id), 0) + 1, $1, $2 FROM sh_producer_ids
                 RETURNING producer_id",
            )
            .bind(principal)
            .bind(crate::sql::now_ms())
            .fetch_one(self.pool())
            .await;
            match taken {
                Ok(row) => return Ok(row.try_get::<i64, _>(0)?),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(
            || StoreError::Backend("no producer id".into()),
            StoreError::from,
        ))
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
