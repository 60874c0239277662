//! [`StaticDiscovery`]: a fixed map of topics to leaders, for tests and single-agent setups.

use super::{Discovery, DiscoveryError, PartitionLeader, TopicMetadata};
use crate::transport::Endpoint;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, PoisonError, RwLock};

/// Topics and leaders given up front. `invalidate` is a no-op: the map is the truth. Topics can
/// be changed at run time with [`set_topic`](StaticDiscovery::set_topic) (tests use this to move
/// a leader).
///
/// ```
/// use streamhouse::discovery::StaticDiscovery;
/// use streamhouse::transport::Endpoint;
///
/// let agent: Endpoint = "grpc://127.0.0.1:9092".parse().unwrap();
/// let discovery = StaticDiscovery::new().with_topic("orders", 6, &agent);
/// ```
#[derive(Debug, Default)]
pub struct StaticDiscovery {
    topics: RwLock<HashMap<String, Arc<TopicMetadata>>>,
}

impl StaticDiscovery {
    /// No topics yet.
    pub fn new() -> StaticDiscovery {
        StaticDiscovery::default()
    }

    /// Adds `topic` with `partitions` partitions (at least 1), all led by the agent at
    /// `endpoint` (agent id 0).
    #[must_use]
    pub fn with_topic(self, topic: &str, partitions: u32, endpoint: &Endpoint) -> StaticDiscovery {
        let metadata = TopicMetadata::single_leader(
            topic,
            NonZeroU32::new(partitions).unwrap_or(NonZeroU32::MIN),
            PartitionLeader {
                agent_id: 0,
                endpoint: endpoint.clone(),
            },
        );
        self.set_topic(metadata);
        self
    }

    /// Adds or replaces a topic's metadata.
    pub fn set_topic(&self, metadata: TopicMetadata) {
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        topics.insert(metadata.topic().to_string(), Arc::new(metadata));
    }
}

#[async_trait::async_trait]
impl Discovery for StaticDiscovery {
    async fn topic(&self, topic: &str) -> Result<Arc<TopicMetadata>, DiscoveryError> {
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        topics
            .get(topic)
            .cloned()
            .ok_or_else(|| DiscoveryError::UnknownTopic(topic.to_owned()))
    }

    fn invalidate(&self, _topic: &str) {}
}
