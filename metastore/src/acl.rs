//! ACL rules in the store (`sh_acls`): the rules every agent of the group authorizes by, kept
//! where the group's other shared state is. Rules are stored as their text (one `allow …`
//! line each, as `streamhouse_auth` prints them); the store does not interpret them.

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
}
