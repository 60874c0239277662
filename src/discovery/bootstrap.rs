//! [`Bootstrap`]: metadata from any agent of a seed list, like Kafka's bootstrap servers.

use super::{Discovery, DiscoveryError, PartitionLeader, TopicMetadata};
use crate::transport::{Endpoint, Request, RequestMessage, Response, Transport};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use streamhouse_proto::v1::{ErrorCode, MetadataRequest, MetadataResponse};
use tokio::time::Instant;
use tower::ServiceExt;

/// Asks the agents of a seed list for topic metadata over the producer's own transport, and
/// caches each answer for `max_age` (default 5 minutes). The producer invalidates a topic when
/// an agent answers "not leader" or "unknown topic", so leadership changes are picked up at
/// once; `max_age` bounds how stale an unused entry can get.
///
/// Leaders are reached at the endpoint their agent advertises for the seed's scheme (a
/// `grpc://` seed list yields `grpc://` leaders); an agent that advertises none is reached at
/// the seed address it answered on.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use streamhouse::discovery::Bootstrap;
/// # let transport = streamhouse::mock::MockTransport::new();
/// let discovery = Bootstrap::new(transport, vec!["grpc://10.0.0.1:9092".parse()?]);
/// # Ok(()) }
/// ```
pub struct Bootstrap {
    transport: Arc<dyn Transport>,
    seeds: Vec<Endpoint>,
    max_age: Duration,
    timeout: Duration,
    cache: Mutex<HashMap<String, (Arc<TopicMetadata>, Instant)>>,
    /// The seed that answered last: asked first next time (a dead first seed costs one
    /// timeout, not one per refresh).
    last_good: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrap")
            .field("seeds", &self.seeds)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl Bootstrap {
    /// Discovery through `seeds` (tried in order until one answers).
    pub fn new(transport: impl Transport, seeds: Vec<Endpoint>) -> Bootstrap {
        Bootstrap {
            transport: Arc::new(transport),
            seeds,
            max_age: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
            cache: Mutex::new(HashMap::new()),
            last_good: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// How long an answer is reused before asking again.
    #[must_use]
    pub fn max_age(mut self, max_age: Duration) -> Bootstrap {
        self.max_age = max_age;
        self
    }

    /// How long to wait for one seed before trying the next.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Bootstrap {
        self.timeout = timeout;
        self
    }

    /// The raw metadata answer for `topics` (every topic when empty) from the first seed that
    /// answers, with the seed that answered.
    pub async fn describe(
        &self,
        topics: &[String],
    ) -> Result<(Endpoint, MetadataResponse), DiscoveryError> {
        let mut last_error = String::from("no seed endpoints");
        let first = self.last_good.load(std::sync::atomic::Ordering::Relaxed);
        let count = self.seeds.len();
        for i in 0..count {
            let index = (first + i) % count;
            let seed = &self.seeds[index];
            let request = Request::new(RequestMessage::Metadata(MetadataRequest {
                topics: topics.to_vec(),
            }))
            .with_deadline(Instant::now() + self.timeout);
            let attempt = async {
                let connection = self.transport.connect(seed).await?;
                connection.oneshot(request).await
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(Response::Metadata(response)))
                    if ErrorCode::from_wire(response.error_code) != ErrorCode::None =>
                {
                    // Refused whole (our credentials): every seed of the group would say so.
                    return Err(DiscoveryError::Unauthenticated(format!(
                        "{seed}: {}",
                        response.error_message
                    )));
                }
                Ok(Ok(Response::Metadata(response)))
                    if !response.topics.is_empty()
                        && response.topics.iter().all(|t| {
                            ErrorCode::from_wire(t.error_code) == ErrorCode::Unavailable
                        }) =>
                {
                    // The seed cannot tell (an agent of a group cut off from its store): the
                    // next one may.
                    last_error = format!("{seed}: {}", response.topics[0].error_message);
                }
                Ok(Ok(Response::Metadata(response))) => {
                    self.last_good
                        .store(index, std::sync::atomic::Ordering::Relaxed);
                    return Ok((seed.clone(), response));
                }
                Ok(Ok(_)) => last_error = format!("{seed}: unexpected answer"),
                Ok(Err(e)) => last_error = format!("{seed}: {e}"),
                Err(_) => last_error = format!("{seed}: no answer within {:?}", self.timeout),
            }
        }
        Err(DiscoveryError::Unavailable(last_error))
    }

    /// Every topic's metadata, freshly asked.
    pub async fn all_topics(&self) -> Result<Vec<TopicMetadata>, DiscoveryError> {
        let (seed, response) = self.describe(&[]).await?;
        response
            .topics
            .iter()
            .map(|t| to_metadata(&seed, &response, t))
            .collect()
    }
}

/// Builds the leaders of one topic of a metadata answer.
fn to_metadata(
    seed: &Endpoint,
    response: &MetadataResponse,
    topic: &streamhouse_proto::v1::TopicMetadata,
) -> Result<TopicMetadata, DiscoveryError> {
    match ErrorCode::from_wire(topic.error_code) {
        ErrorCode::None => {}
        ErrorCode::UnknownTopic => return Err(DiscoveryError::UnknownTopic(topic.name.clone())),
        ErrorCode::InvalidTopic => return Err(DiscoveryError::InvalidTopic(topic.name.clone())),
        ErrorCode::Unauthorized => return Err(DiscoveryError::Unauthorized(topic.name.clone())),
        ErrorCode::LimitExceeded => {
            return Err(DiscoveryError::Refused(format!(
                "{}: {}",
                topic.name, topic.error_message
            )));
        }
        code => {
            return Err(DiscoveryError::Unavailable(format!(
                "{}: {code:?} {}",
                topic.name, topic.error_message
            )));
        }
    }
    let mut partitions = topic.partitions.clone();
    partitions.sort_by_key(|p| p.partition);
    let contiguous = partitions
        .iter()
        .enumerate()
        .all(|(i, p)| p.partition as usize == i);
    if !contiguous || partitions.len() != topic.partition_count as usize {
        return Err(DiscoveryError::Unavailable(format!(
            "{}: metadata lists {} of {} partitions",
            topic.name,
            partitions.len(),
            topic.partition_count
        )));
    }
    let leaders = partitions
        .iter()
        .map(|p| {
            let endpoint = response
                .agents
                .iter()
                .find(|a| a.id == p.leader_id)
                .and_then(|agent| {
                    agent
                        .endpoints
                        .iter()
                        .filter_map(|e| e.parse::<Endpoint>().ok())
                        .find(|e| e.scheme() == seed.scheme())
                })
                .or_else(|| (p.leader_id == response.responder_id).then(|| seed.clone()))
                .ok_or_else(|| {
                    DiscoveryError::Unavailable(format!(
                        "{}[{}]: leader {} has no {} endpoint",
                        topic.name,
                        p.partition,
                        p.leader_id,
                        seed.scheme()
                    ))
                })?;
            Ok(PartitionLeader {
                agent_id: p.leader_id,
                endpoint,
            })
        })
        .collect::<Result<Vec<_>, DiscoveryError>>()?;
    TopicMetadata::new(topic.name.as_str(), leaders)
        .ok_or_else(|| DiscoveryError::Unavailable(format!("{} has no partitions", topic.name)))
}

#[async_trait::async_trait]
impl Discovery for Bootstrap {
    async fn topic(&self, topic: &str) -> Result<Arc<TopicMetadata>, DiscoveryError> {
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((metadata, at)) = cache.get(topic)
                && at.elapsed() < self.max_age
            {
                return Ok(metadata.clone());
            }
        }
        let (seed, response) = self.describe(&[topic.to_owned()]).await?;
        let described = response
            .topics
            .iter()
            .find(|t| t.name == topic)
            .ok_or_else(|| DiscoveryError::UnknownTopic(topic.to_owned()))?;
        let metadata = Arc::new(to_metadata(&seed, &response, described)?);
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

#[cfg(all(test, feature = "mock"))]
mod tests {
    use super::*;
    use crate::mock::MockAgent;

    #[tokio::test(start_paused = true)]
    async fn asks_a_seed_caches_and_refreshes() {
        let agent = MockAgent::new().with_topic("orders", 3);
        let discovery = Bootstrap::new(agent.transport(), vec![agent.endpoint()])
            .max_age(Duration::from_secs(60));
        let metadata = discovery.topic("orders").await.unwrap();
        assert_eq!(metadata.partition_count().get(), 3);
        assert_eq!(metadata.leader(2).unwrap().endpoint, agent.endpoint());
        assert!(matches!(
            discovery.topic("missing").await,
            Err(DiscoveryError::UnknownTopic(_))
        ));

        // Cached: a new partition is not seen until the entry ages out or is invalidated.
        agent.create_topic("grown", 1);
        let before = discovery.topic("grown").await.unwrap();
        assert_eq!(before.partition_count().get(), 1);
        let all = discovery.all_topics().await.unwrap();
        assert_eq!(all.len(), 2);
        discovery.invalidate("grown");
        assert_eq!(
            discovery
                .topic("grown")
                .await
                .unwrap()
                .partition_count()
                .get(),
            1
        );
    }

    /// A seed that answers every topic `UNAVAILABLE` (an agent of a group cut off from its
    /// metadata store) in front of a good one.
    struct CutOff(MockAgent);

    impl Transport for CutOff {
        fn connect(
            &self,
            endpoint: &Endpoint,
        ) -> crate::transport::BoxFuture<
            'static,
            Result<crate::transport::Connection, crate::transport::TransportError>,
        > {
            if endpoint.to_string() != "mock://cut-off" {
                return self.0.transport().connect(endpoint);
            }
            let service = tower::service_fn(|_: Request| async {
                Ok(Response::Metadata(MetadataResponse {
                    topics: vec![streamhouse_proto::v1::TopicMetadata {
                        name: "t".into(),
                        error_code: ErrorCode::Unavailable as i32,
                        error_message: "agent 7 has not reached the metadata store".into(),
                        ..Default::default()
                    }],
                    responder_id: 7,
                    ..Default::default()
                }))
            });
            Box::pin(async move { Ok(tower::util::BoxCloneService::new(service)) })
        }
    }

    /// Found by the group chaos test: the seed that answered last was an agent cut off from the
    /// store, which named itself leader of everything; the producer kept asking it.
    #[tokio::test(start_paused = true)]
    async fn a_seed_that_cannot_tell_is_skipped() {
        let agent = MockAgent::new().with_topic("t", 2);
        let cut: Endpoint = "mock://cut-off".parse().unwrap();
        let discovery = Bootstrap::new(CutOff(agent.clone()), vec![cut.clone(), agent.endpoint()]);
        let metadata = discovery.topic("t").await.unwrap();
        assert_eq!(metadata.leader(1).unwrap().endpoint, agent.endpoint());
        let alone = Bootstrap::new(CutOff(agent), vec![cut]);
        let Err(DiscoveryError::Unavailable(why)) = alone.topic("t").await else {
            panic!("a lone seed that cannot tell is unavailable");
        };
        assert!(why.contains("has not reached the metadata store"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_seeds_are_skipped() {
        let agent = MockAgent::new().with_topic("t", 1);
        let dead: Endpoint = "mock://agent-99".parse().unwrap();
        let discovery = Bootstrap::new(agent.transport(), vec![dead.clone(), agent.endpoint()]);
        assert!(discovery.topic("t").await.is_ok());
        let nobody = Bootstrap::new(agent.transport(), vec![dead]);
        assert!(matches!(
            nobody.topic("t").await,
            Err(DiscoveryError::Unavailable(_))
        ));
    }
}
