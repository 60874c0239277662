//! Which agent leads each partition: the [`Discovery`] trait and [`StaticDiscovery`].
//!
//! The producer asks discovery once per topic and caches the answer ([`TopicMetadata`]); when
//! an agent answers "not leader" or "unknown topic" it calls [`Discovery::invalidate`] and asks
//! again. Discovery is on the slow path only: never once per record.

mod bootstrap;
mod fixed;

pub use bootstrap::Bootstrap;
pub use fixed::StaticDiscovery;

use crate::transport::Endpoint;
use std::num::NonZeroU32;
use std::sync::Arc;

/// The leader of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionLeader {
    /// The leading agent's id.
    pub agent_id: u32,
    /// Where to reach it, for the configured transport.
    pub endpoint: Endpoint,
}

/// A topic's partitions and their leaders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    topic: Arc<str>,
    leaders: Vec<PartitionLeader>,
}

impl TopicMetadata {
    /// Metadata for `topic` whose partition `i` is led by `leaders[i]`; `None` if `leaders` is
    /// empty (a topic has at least one partition).
    pub fn new(topic: impl Into<Arc<str>>, leaders: Vec<PartitionLeader>) -> Option<TopicMetadata> {
        if leaders.is_empty() || u32::try_from(leaders.len()).is_err() {
            return None;
        }
        Some(TopicMetadata {
            topic: topic.into(),
            leaders,
        })
    }

    /// Metadata for a topic whose `partitions` partitions are all led by one agent.
    pub fn single_leader(
        topic: impl Into<Arc<str>>,
        partitions: NonZeroU32,
        leader: PartitionLeader,
    ) -> TopicMetadata {
        TopicMetadata {
            topic: topic.into(),
            leaders: vec![leader; partitions.get() as usize],
        }
    }

    /// The topic name.
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    /// Number of partitions (at least one).
    pub fn partition_count(&self) -> NonZeroU32 {
        NonZeroU32::new(self.leaders.len() as u32).unwrap_or(NonZeroU32::MIN)
    }

    /// The leader of `partition`, if the partition exists.
    pub fn leader(&self, partition: u32) -> Option<&PartitionLeader> {
        self.leaders.get(partition as usize)
    }

    /// All partitions' leaders, by partition index.
    pub fn leaders(&self) -> &[PartitionLeader] {
        &self.leaders
    }
}

/// Why discovery could not describe a topic.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// No such topic.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The name is not a valid topic name.
    #[error("invalid topic name {0:?}")]
    InvalidTopic(String),
    /// No agent could be asked right now; retriable.
    #[error("metadata unavailable: {0}")]
    Unavailable(String),
    /// The agent refuses the topic for good (e.g. it would pass the agent's topic limit).
    #[error("topic refused: {0}")]
    Refused(String),
    /// The agent did not accept our credentials (none, malformed, unknown, expired).
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// Our principal may not describe the topic.
    #[error("not authorized to describe {0:?}")]
    Unauthorized(String),
}

impl DiscoveryError {
    /// Whether asking again later may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, DiscoveryError::Unavailable(_))
    }
}

/// Finds partition leaders.
///
/// Object safe (`Arc<dyn Discovery>`); `async` through `async-trait` because implementations
/// usually ask the network.
#[async_trait::async_trait]
pub trait Discovery: Send + Sync + 'static {
    /// The current metadata of `topic`.
    async fn topic(&self, topic: &str) -> Result<Arc<TopicMetadata>, DiscoveryError>;

    /// An agent said the cached metadata of `topic` is stale ("not leader", "unknown topic"):
    /// drop it so the next [`topic`](Discovery::topic) call asks again.
    fn invalidate(&self, topic: &str);
}

#[async_trait::async_trait]
impl<T: Discovery + ?Sized> Discovery for Arc<T> {
    async fn topic(&self, topic: &str) -> Result<Arc<TopicMetadata>, DiscoveryError> {
        (**self).topic(topic).await
    }

    fn invalidate(&self, topic: &str) {
        (**self).invalidate(topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _object_safe(_: &dyn Discovery) {}
}
