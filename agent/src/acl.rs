//! A group's security state in its metadata store: [`StoreAcls`], the ACL rules, read and
//! refreshed in the background, so a rule added with `streamhouse acl add --metadata …`
//! reaches every agent of the group within [`REFRESH`]; and [`StoreProducerIds`], producer ids
//! bound to principals, handed out by any agent and honoured by all.
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

/// Producer ids of an agent group, bound to principals in the metadata store: any agent of
/// the group hands them out, every agent honours them. Owners are remembered once read (a
/// binding never changes).
pub struct StoreProducerIds {
    store: Arc<dyn MetadataStore>,
    known: RwLock<std::collections::HashMap<i64, Principal>>,
}

impl std::fmt::Debug for StoreProducerIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreProducerIds").finish_non_exhaustive()
    }
}

impl StoreProducerIds {
    /// Producer ids in `store`.
    pub fn new(store: Arc<dyn MetadataStore>) -> StoreProducerIds {
        StoreProducerIds {
            store,
            known: RwLock::new(std::collections::HashMap::new()),
        }
    }
}

impl streamhouse_auth::ProducerIds for StoreProducerIds {
    fn allocate<'a>(
        &'a self,
        principal: &'a Principal,
    ) -> streamhouse::transport::BoxFuture<'a, Result<i64, String>> {
        Box::pin(async move {
            let id = self
                .store
                .allocate_producer_id(principal.name())
                .await
                .map_err(|e| e.to_string())?;
            self.known
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, principal.clone());
            Ok(id)
        })
    }

    fn owner(
        &self,
        id: i64,
    ) -> streamhouse::transport::BoxFuture<'_, Result<Option<Principal>, String>> {
        Box::pin(async move {
            if let Some(owner) = self
                .known
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&id)
            {
                return Ok(Some(owner.clone()));
            }
            let owner = self
                .store
                .producer_id_owner(id)
                .await
                .map_err(|e| e.to_string())?
                .map(Principal::new);
            if let Some(owner) = &owner {
                let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
                if known.len() >= 100_000 {
                    known.clear();
                }
                known.insert(id, owner.clone());
            }
            Ok(owner)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamhouse_auth::ProducerIds;

    #[tokio::test]
    async fn an_id_handed_out_by_one_agent_is_honoured_by_another() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/meta.db", dir.path().display());
        let one = StoreProducerIds::new(streamhouse_metastore::open(&url).await.unwrap());
        let two = StoreProducerIds::new(streamhouse_metastore::open(&url).await.unwrap());
        let payments = Principal::new("payments");
        let id = one.allocate(&payments).await.unwrap();
        assert_eq!(two.owner(id).await.unwrap(), Some(payments.clone()));
        assert_eq!(two.owner(id + 1).await.unwrap(), None);
        let other = two.allocate(&Principal::new("search")).await.unwrap();
        assert_ne!(other, id);
        assert_eq!(
            one.owner(other).await.unwrap(),
            Some(Principal::new("search"))
        );
    }

    #[tokio::test]
    async fn store_rules_are_read_and_a_rule_this_build_cannot_read_is_skipped() {
        let store = streamhouse_metastore::open("sqlite::memory:")
            .await
            .unwrap();
        store.add_acl_rule("allow p produce t").await.unwrap();
        store.add_acl_rule("allow p teleport t").await.unwrap();
        let acls = StoreAcls::start(store).await.unwrap();
        let p = Principal::new("p");
        assert!(acls.allowed(&p, Operation::Produce, "t"));
        assert!(!acls.allowed(&p, Operation::Fetch, "t"));
        assert_eq!(acls.rules().rules.len(), 1);
    }
}
