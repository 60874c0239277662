//! [`StoreAcls`]: the ACL rules of an agent group, read from its metadata store and refreshed
//! in the background, so a rule added with `streamhouse acl add --metadata …` reaches every
//! agent of the group within [`REFRESH`].
//!
//! A rule the store holds but this build cannot read is skipped (and logged): rules only
//! allow, so skipping one never lets anyone do more. A store that cannot be reached keeps the
//! rules last read in force.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use streamhouse_auth::{Acls, Authorizer, Operation, Principal, Rule};
use streamhouse_metastore::MetadataStore;

/// How often the rules are read again.
pub const REFRESH: Duration = Duration::from_secs(2);

/// ACL rules from the metadata store; see the module documentation.
#[derive(Debug)]
pub struct StoreAcls {
    rules: RwLock<Arc<Acls>>,
}

impl StoreAcls {
    /// Reads the rules once, then keeps reading them every [`REFRESH`] until the returned
    /// authorizer is dropped.
    pub async fn start(
        store: Arc<dyn MetadataStore>,
    ) -> Result<Arc<StoreAcls>, streamhouse_metastore::StoreError> {
        let acls = Arc::new(StoreAcls {
            rules: RwLock::new(Arc::new(read(&*store).await?)),
        });
        let weak = Arc::downgrade(&acls);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH).await;
                let Some(acls) = weak.upgrade() else { return };
                match read(&*store).await {
                    Ok(rules) => {
                        *acls.rules.write().unwrap_or_else(PoisonError::into_inner) =
                            Arc::new(rules);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the ACL rules; keeping the last ones")
                    }
                }
            }
        });
        Ok(acls)
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<Acls> {
        self.rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

async fn read(store: &dyn MetadataStore) -> Result<Acls, streamhouse_metastore::StoreError> {
    let mut rules = Vec::new();
    for text in store.acl_rules().await? {
        match text.parse::<Rule>() {
            Ok(rule) => rules.push(rule),
            Err(why) => {
                tracing::warn!(rule = %text, why, "skipping an ACL rule this agent cannot read")
            }
        }
    }
    Ok(Acls { rules })
}

impl Authorizer for StoreAcls {
    fn allowed(&self, principal: &Principal, operation: Operation, topic: &str) -> bool {
        self.rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .allowed(principal, operation, topic)
    }
}
