//! [`StoreDiscovery`]: partition leaders read from an agent group's metadata store, without
//! asking any agent.

use crate::{MetadataStore, StoreError, assign};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use streamhouse::discovery::{Discovery, DiscoveryError, PartitionLeader, TopicMetadata};
use streamhouse::transport::Endpoint;
use tokio::time::Instant;

/// Reads an agent group's partition leaders straight from its metadata store: each
/// partition's live lease holder, or (while the partition has none, as during a failover) the
/// live agent that should take it. Answers are cached for `max_age` (default 5 minutes) and
/// dropped when the producer invalidates a topic ("not leader", an agent that cannot be
/// reached): the refresh rules of [`Bootstrap`](streamhouse::discovery::Bootstrap).
///
/// Leaders are reached at the endpoint their agent registered for `scheme`.
///
/// ```no_run
/// # async fn run(
/// #     transport: impl streamhouse::transport::Transport,
/// # ) -> Result<(), Box<dyn std::error::Error>> {
/// use streamhouse::producer::Producer;
/// use streamhouse_metastore::StoreDiscovery;
///
/// let store = streamhouse_metastore::open("postgres://app@db:5432/streamhouse").await?;
/// let discovery = StoreDiscovery::new(store, "prod", "grpc");
/// let producer = Producer::builder(transport, discovery).build()?;
/// # Ok(()) }
/// ```
pub struct StoreDiscovery {
    store: Arc<dyn MetadataStore>,
    group: String,
    scheme: String,
    max_age: Duration,
    cache: Mutex<HashMap<String, (Arc<TopicMetadata>, Instant)>>,
}

impl std::fmt::Debug for StoreDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreDiscovery")
            .field("group", &self.group)
            .field("scheme", &self.scheme)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl StoreDiscovery {
    /// Leaders of `group`'s agents in `store`, reached over the transport `scheme` names
    /// (`grpc`, `grpcs`, `quic`).
    pub fn new(
        store: Arc<dyn MetadataStore>,
        group: impl Into<String>,
        scheme: impl Into<String>,
    ) -> StoreDiscovery {
        StoreDiscovery {
            store,
            group: group.into(),
            scheme: scheme.into(),
            max_age: Duration::from_secs(300),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// How long an answer is reused before the store is asked again.
    #[must_use]
    pub fn max_age(mut self, max_age: Duration) -> StoreDiscovery {
        self.max_age = max_age;
        self
    }

    async fn read(&self, topic: &str) -> Result<TopicMetadata, DiscoveryError> {
        let unavailable = |e: StoreError| DiscoveryError::Unavailable(e.to_string());
        let topics = self.store.topics().await.map_err(unavailable)?;
        let Some(config) = topics.iter().find(|t| t.name == topic) else {
            return Err(DiscoveryError::UnknownTopic(topic.to_owned()));
        };
        let view = self.store.group(&self.group).await.map_err(unavailable)?;
        let live: Vec<u32> = view.live().map(|a| a.agent_id).collect();
        let all: Vec<(String, u32)> = topics
            .iter()
            .map(|t| (t.name.clone(), t.partitions))
            .collect();
        let owners = assign(&all, &live);
        let endpoint = |agent: u32| {
            view.live()
                .find(|a| a.agent_id == agent)?
                .endpoints
                .iter()
                .filter_map(|e| e.parse::<Endpoint>().ok())
                .find(|e| e.scheme() == self.scheme)
        };
        let leaders = (0..config.partitions)
            .map(|partition| {
                let held = view
                    .holder(topic, partition)
                    .map(|l| l.id.agent_id)
                    .filter(|agent| live.contains(agent));
                let agent = held
                    .or_else(|| owners.get(&(topic.to_owned(), partition)).copied())
                    .ok_or_else(|| {
                        DiscoveryError::Unavailable(format!(
                            "group {:?} has no live agent",
                            self.group
                        ))
                    })?;
                let endpoint = endpoint(agent).ok_or_else(|| {
                    DiscoveryError::Unavailable(format!(
                        "{topic}[{partition}]: agent {agent} has no {} endpoint",
                        self.scheme
                    ))
                })?;
                Ok(PartitionLeader {
                    agent_id: agent,
                    endpoint,
                })
            })
            .collect::<Result<Vec<_>, DiscoveryError>>()?;
        TopicMetadata::new(topic, leaders)
            .ok_or_else(|| DiscoveryError::Unavailable(format!("{topic} has no partitions")))
    }
}

#[async_trait::async_trait]
impl Discovery for StoreDiscovery {
    async fn topic(&self, topic: &str) -> Result<Arc<TopicMetadata>, DiscoveryError> {
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((metadata, at)) = cache.get(topic)
                && at.elapsed() < self.max_age
            {
                return Ok(metadata.clone());
            }
        }
        let metadata = Arc::new(self.read(topic).await?);
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.to_owned(), (metadata.clone(), Instant::now()));
        Ok(metadata)
    }

    fn invalidate(&self, topic: &str) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(topic);
    }
}
