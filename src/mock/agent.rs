//! [`MockAgent`]: the agent semantics over in-memory partition logs.

use super::MockTransport;
use crate::batch::{Batch, DecodeLimits, Record, set_base_offset};
use crate::codec::Codecs;
use crate::discovery::{PartitionLeader, StaticDiscovery, TopicMetadata};
use crate::serve::{
    Admission, PartitionState, ProducerLimits, Rejection, validate_batch, validate_topic_name,
};
use crate::transport::{AgentService, Endpoint, Request, RequestMessage, Response, TransportError};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
use streamhouse_proto::v1::{
    Acks, AdminRequest, AdminResponse, AgentInfo, Durability, ErrorCode, FetchRequest,
    FetchResponse, MetadataRequest, MetadataResponse, PartitionMetadata, PartitionResult,
    ProduceRequest, ProduceResponse, admin_request,
};
use tower::BoxError;

/// An in-process agent. Cheap to clone; clones share the logs.
#[derive(Clone)]
pub struct MockAgent {
    inner: Arc<Shared>,
}

struct Shared {
    id: u32,
    endpoint: Endpoint,
    codecs: Codecs,
    limits: DecodeLimits,
    producer_limits: ProducerLimits,
    /// One lock over all logs: appends are short and a test agent needs no more.
    topics: Mutex<HashMap<String, Vec<MockPartition>>>,
    stalled: AtomicBool,
    fail_next: Mutex<VecDeque<ErrorCode>>,
    fail_after_append: Mutex<VecDeque<ErrorCode>>,
    stats: Counters,
}

#[derive(Default)]
struct MockPartition {
    state: PartitionState,
    /// Batches as received, with the base offset they were assigned (stamped on read).
    batches: Vec<(i64, Bytes)>,
    /// How many of `batches` are "fsynced": a durable produce syncs its partition, and
    /// [`MockAgent::crash`] loses everything after this.
    synced: usize,
}

#[derive(Default)]
struct Counters {
    produce_requests: AtomicU64,
    batches_appended: AtomicU64,
    records_appended: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    crashes: AtomicU64,
    unsynced_lost: AtomicU64,
}

/// What a [`MockAgent`] has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MockStats {
    /// Produce requests handled (stalled and failed ones included).
    pub produce_requests: u64,
    /// Batches appended to a log.
    pub batches_appended: u64,
    /// Records appended to a log.
    pub records_appended: u64,
    /// Batches answered as duplicates of one already appended (idempotence at work).
    pub duplicates: u64,
    /// Batches refused with an error code.
    pub rejected: u64,
    /// Times [`MockAgent::crash`] was called.
    pub crashes: u64,
    /// Batches the crashes discarded because no durable request had synced them.
    pub unsynced_lost: u64,
}

impl Default for MockAgent {
    fn default() -> MockAgent {
        MockAgent::new()
    }
}

impl std::fmt::Debug for MockAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockAgent")
            .field("id", &self.inner.id)
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

impl MockAgent {
    /// Agent 0 at `mock://agent-0`, no topics, default limits, every shipped codec that the
    /// core knows (uncompressed only; add codecs with [`MockAgent::with_codecs`]).
    pub fn new() -> MockAgent {
        MockAgent::with_id(0)
    }

    /// Agent `id` at `mock://agent-{id}`.
    pub fn with_id(id: u32) -> MockAgent {
        MockAgent {
            inner: Arc::new(Shared {
                id,
                endpoint: Endpoint::mock(id),
                codecs: Codecs::new(),
                limits: DecodeLimits::default(),
                producer_limits: ProducerLimits::default(),
                topics: Mutex::new(HashMap::new()),
                stalled: AtomicBool::new(false),
                fail_next: Mutex::new(VecDeque::new()),
                fail_after_append: Mutex::new(VecDeque::new()),
                stats: Counters::default(),
            }),
        }
    }

    /// Uses `codecs` to validate compressed batches (e.g. `streamhouse_codecs::all()`).
    /// Call before sharing the agent.
    #[must_use]
    pub fn with_codecs(self, codecs: Codecs) -> MockAgent {
        self.rebuild(|shared| shared.codecs = codecs)
    }

    /// Enforces `limits` on every batch.
    #[must_use]
    pub fn with_limits(self, limits: DecodeLimits) -> MockAgent {
        self.rebuild(|shared| shared.limits = limits)
    }

    /// Keeps idempotent-producer state within `limits` (see [`ProducerLimits`]), as the
    /// reference agent's `producer_limits` does. Call before creating topics.
    #[must_use]
    pub fn with_producer_limits(self, limits: ProducerLimits) -> MockAgent {
        self.rebuild(|shared| shared.producer_limits = limits)
    }

    fn rebuild(self, change: impl FnOnce(&mut Shared)) -> MockAgent {
        match Arc::try_unwrap(self.inner) {
            Ok(mut shared) => {
                change(&mut shared);
                MockAgent {
                    inner: Arc::new(shared),
                }
            }
            // Already shared: configuration is fixed.
            Err(inner) => MockAgent { inner },
        }
    }

    /// Creates a topic with `partitions` partitions (at least 1).
    #[must_use]
    pub fn with_topic(self, name: &str, partitions: u32) -> MockAgent {
        self.create_topic(name, partitions);
        self
    }

    /// Creates a topic with `partitions` partitions (at least 1); existing topics keep theirs.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let limits = self.inner.producer_limits;
        let mut topics = self.topics();
        topics.entry(name.to_owned()).or_insert_with(|| {
            (0..partitions.max(1))
                .map(|_| MockPartition {
                    state: PartitionState::with_limits(0, limits),
                    ..MockPartition::default()
                })
                .collect()
        });
    }

    /// This agent's id.
    pub fn id(&self) -> u32 {
        self.inner.id
    }

    /// This agent's endpoint (`mock://agent-{id}`).
    pub fn endpoint(&self) -> Endpoint {
        self.inner.endpoint.clone()
    }

    /// This agent as a service, for a transport's server adaptor (serving the mock over gRPC or
    /// QUIC in tests). A stalled agent's requests never complete.
    pub fn service(&self) -> AgentService {
        let agent = self.clone();
        AgentService::new(tower::service_fn(move |request: Request| {
            let answer = agent.handle(request);
            async move {
                match answer {
                    Some(result) => result.map_err(BoxError::from),
                    None => std::future::pending().await,
                }
            }
        }))
    }

    /// A transport reaching this agent alone.
    pub fn transport(&self) -> MockTransport {
        MockTransport::new().with_agent(self.clone())
    }

    /// A discovery naming this agent leader of every topic it has now.
    pub fn discovery(&self) -> StaticDiscovery {
        let discovery = StaticDiscovery::new();
        for (name, partitions) in self.topics().iter() {
            let leaders = vec![
                PartitionLeader {
                    agent_id: self.inner.id,
                    endpoint: self.inner.endpoint.clone(),
                };
                partitions.len()
            ];
            if let Some(metadata) = TopicMetadata::new(name.as_str(), leaders) {
                discovery.set_topic(metadata);
            }
        }
        discovery
    }

    /// While `true`, requests are accepted and never answered.
    pub fn set_stalled(&self, stalled: bool) {
        self.inner.stalled.store(stalled, Ordering::SeqCst);
    }

    /// Whether requests are being stalled.
    pub fn is_stalled(&self) -> bool {
        self.inner.stalled.load(Ordering::SeqCst)
    }

    /// Answers the next `count` produce requests with `code` for every batch, appending nothing.
    pub fn fail_next(&self, count: usize, code: ErrorCode) {
        inject(&self.inner.fail_next, count, code);
    }

    /// Handles the next `count` produce requests as usual — their batches are appended — but
    /// answers each appended batch with `code` (before any [`fail_next`](Self::fail_next)
    /// refusals take effect), as an agent that gave up waiting
    /// ([`ErrorCode::RequestTimedOut`]) or failed to fsync ([`ErrorCode::StorageError`]) does.
    pub fn fail_after_append(&self, count: usize, code: ErrorCode) {
        inject(&self.inner.fail_after_append, count, code);
    }

    /// Counters of what the agent has seen.
    pub fn stats(&self) -> MockStats {
        let c = &self.inner.stats;
        MockStats {
            produce_requests: c.produce_requests.load(Ordering::Relaxed),
            batches_appended: c.batches_appended.load(Ordering::Relaxed),
            records_appended: c.records_appended.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            crashes: c.crashes.load(Ordering::Relaxed),
            unsynced_lost: c.unsynced_lost.load(Ordering::Relaxed),
        }
    }

    /// Simulates a crash and restart, as a power loss would leave the disk: every batch no
    /// durable (`acks=Durable`) request has synced yet is gone, and each partition's offsets and
    /// idempotence windows are rebuilt from what is left, as the reference agent's recovery
    /// does. A durable request syncs the partitions it touched before answering, so an
    /// acknowledged durable record survives; a missing sync shows up as loss. Returns the
    /// number of batches lost.
    pub fn crash(&self) -> u64 {
        let mut lost = 0;
        for partitions in self.topics().values_mut() {
            for log in partitions.iter_mut() {
                lost += (log.batches.len() - log.synced) as u64;
                log.batches.truncate(log.synced);
                let mut state = PartitionState::with_limits(0, self.inner.producer_limits);
                for (base, bytes) in &log.batches {
                    if let Ok(batch) = Batch::parse(bytes.clone(), &self.inner.limits) {
                        // Stored unstamped: the offset the batch was given is kept beside it.
                        let mut header = *batch.header();
                        header.base_offset = *base;
                        state.restore(&header);
                    }
                }
                log.state = state;
            }
        }
        let stats = &self.inner.stats;
        stats.crashes.fetch_add(1, Ordering::Relaxed);
        stats.unsynced_lost.fetch_add(lost, Ordering::Relaxed);
        lost
    }

    /// The batches of a partition's log, with their base offsets stamped, in offset order.
    pub fn batches(&self, topic: &str, partition: u32) -> Vec<Bytes> {
        let topics = self.topics();
        let Some(p) = topics.get(topic).and_then(|t| t.get(partition as usize)) else {
            return Vec::new();
        };
        p.batches
            .iter()
            .map(|(offset, bytes)| stamped(bytes, *offset))
            .collect()
    }

    /// Every record of a partition's log, decoded, in offset order.
    pub fn records(&self, topic: &str, partition: u32) -> Vec<Record> {
        let mut records = Vec::new();
        for bytes in self.batches(topic, partition) {
            // Every stored batch passed validation, so decoding succeeds.
            let Ok(batch) = Batch::parse(bytes, &self.inner.limits) else {
                continue;
            };
            if let Ok(block) = batch.records(&self.inner.codecs) {
                records.extend(block.flatten());
            }
        }
        records
    }

    /// The offset the next record of a partition will get.
    pub fn next_offset(&self, topic: &str, partition: u32) -> Option<i64> {
        let topics = self.topics();
        topics
            .get(topic)
            .and_then(|t| t.get(partition as usize))
            .map(|p| p.state.next_offset())
    }

    fn topics(&self) -> MutexGuard<'_, HashMap<String, Vec<MockPartition>>> {
        self.inner
            .topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Handles one request as the agent would. `None` means the agent does not answer
    /// (stalled).
    pub fn handle(&self, request: Request) -> Option<Result<Response, TransportError>> {
        if let RequestMessage::Produce(_) = &request.message {
            self.inner
                .stats
                .produce_requests
                .fetch_add(1, Ordering::Relaxed);
        }
        if self.is_stalled() {
            return None;
        }
        Some(Ok(match request.message {
            RequestMessage::Produce(r) => Response::Produce(self.produce(r)),
            RequestMessage::Metadata(r) => Response::Metadata(self.metadata(&r)),
            RequestMessage::Fetch(r) => Response::Fetch(self.fetch(&r)),
            RequestMessage::Admin(r) => Response::Admin(self.admin(r)),
        }))
    }

    /// Topic administration, as the agent does it (without its topic limit).
    fn admin(&self, request: AdminRequest) -> AdminResponse {
        let refuse = |code: ErrorCode, message: String| AdminResponse {
            error_code: code as i32,
            error_message: message,
            ..AdminResponse::default()
        };
        match request.action {
            Some(admin_request::Action::CreateTopic(create)) => {
                if let Err(r) = crate::serve::validate_topic_name(&create.name) {
                    return refuse(r.code, r.message);
                }
                if create.partitions == 0 {
                    return refuse(ErrorCode::InvalidRequest, "no partitions".into());
                }
                if self.topics().contains_key(&create.name) {
                    return refuse(
                        ErrorCode::TopicAlreadyExists,
                        format!("topic {:?} exists", create.name),
                    );
                }
                self.create_topic(&create.name, create.partitions);
                let described = self.metadata(&MetadataRequest {
                    topics: vec![create.name],
                });
                AdminResponse {
                    topic: described.topics.into_iter().next(),
                    ..AdminResponse::default()
                }
            }
            Some(admin_request::Action::DeleteTopic(delete)) => {
                match self.topics().remove(&delete.name) {
                    Some(_) => AdminResponse::default(),
                    None => refuse(
                        ErrorCode::UnknownTopic,
                        format!("no topic {:?}", delete.name),
                    ),
                }
            }
            Some(admin_request::Action::AlterTopic(_)) => refuse(
                ErrorCode::InvalidRequest,
                "retention needs an agent with object storage; the mock keeps every record".into(),
            ),
            Some(admin_request::Action::InitProducerId(_)) => AdminResponse {
                producer_id: crate::serve::new_producer_id(),
                ..AdminResponse::default()
            },
            None => refuse(ErrorCode::InvalidRequest, "no admin action".into()),
        }
    }

    fn produce(&self, request: ProduceRequest) -> ProduceResponse {
        // Injected failures after the append go first: they model the request before the
        // refusals that follow it.
        let after_append = next_injected(&self.inner.fail_after_append);
        let injected = match after_append {
            Some(_) => None,
            None => next_injected(&self.inner.fail_next),
        };
        let acks_none = request.acks == Acks::None as i32;
        let durable = request.acks == Acks::Durable as i32;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        // Validate (the CPU-heavy part) before taking the log lock.
        let checked: Vec<_> = request
            .batches
            .into_iter()
            .map(|b| {
                let batch = match injected {
                    Some(code) => Err(Rejection::new(code, "failure injected by the test")),
                    None => validate_topic_name(&b.topic).and_then(|()| {
                        validate_batch(b.batch, &self.inner.limits, &self.inner.codecs)
                    }),
                };
                (b.topic, b.partition, batch)
            })
            .collect();
        let mut topics = self.topics();
        let results = checked
            .into_iter()
            .map(|(topic, partition, batch)| {
                let outcome = batch.and_then(|batch| {
                    let partitions = topics.get_mut(&topic).ok_or_else(|| {
                        Rejection::new(ErrorCode::UnknownTopic, format!("no topic {topic:?}"))
                    })?;
                    let log = partitions.get_mut(partition as usize).ok_or_else(|| {
                        Rejection::new(
                            ErrorCode::UnknownPartition,
                            format!("topic {topic:?} has no partition {partition}"),
                        )
                    })?;
                    let header = *batch.header();
                    // The clock of the test (paused or simulated time moves it).
                    let now = tokio::time::Instant::now().into_std();
                    let admitted = log.state.admit_at(&header, now);
                    if acks_none && admitted.is_err() {
                        // As the reference agent: with acks=none the answer does not wait for
                        // the log, so a refusal there is never seen by the producer.
                        self.inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
                        return Ok((ErrorCode::None, -1));
                    }
                    if durable {
                        // Group commit: this answer waits for the partition's fsync, which
                        // covers every batch appended before it (a duplicate's first copy too).
                        let appended = usize::from(matches!(admitted, Ok(Admission::Append)));
                        log.synced = log.batches.len() + appended;
                    }
                    match admitted? {
                        Admission::Duplicate { base_offset } => {
                            self.inner.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                            Ok((ErrorCode::DuplicateSequence, base_offset))
                        }
                        Admission::Append => {
                            let base_offset = log.state.append_at(&header, now);
                            log.batches.push((base_offset, batch.into_bytes()));
                            let stats = &self.inner.stats;
                            stats.batches_appended.fetch_add(1, Ordering::Relaxed);
                            stats
                                .records_appended
                                .fetch_add(header.record_count as u64, Ordering::Relaxed);
                            Ok((ErrorCode::None, base_offset))
                        }
                    }
                });
                let (error_code, error_message, base_offset) = match (outcome, after_append) {
                    (Ok((ErrorCode::None, _)), Some(code)) => {
                        (code, "failure injected after the append".to_owned(), -1)
                    }
                    // A duplicate is success, at the offset the batch got the first time.
                    (Ok((code, offset)), _) => (code, String::new(), offset),
                    (Err(r), _) => {
                        self.inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
                        (r.code, r.message, -1)
                    }
                };
                PartitionResult {
                    topic,
                    partition,
                    error_code: error_code as i32,
                    error_message,
                    base_offset: if acks_none { -1 } else { base_offset },
                    log_append_time_ms: now,
                    log_start_offset: 0,
                    leader: None,
                }
            })
            .collect::<Vec<PartitionResult>>();
        // As the reference agent: a refusal for load asks the producer to hold off a little.
        let throttled = results
            .iter()
            .any(|r| r.error_code == ErrorCode::Throttled as i32);
        ProduceResponse {
            results,
            throttle_ms: if throttled { 10 } else { 0 },
            // The mock keeps its logs in memory: durable means nothing more than appended.
            durability: Durability::Unspecified as i32,
        }
    }

    fn metadata(&self, request: &MetadataRequest) -> MetadataResponse {
        let topics = self.topics();
        let describe = |name: &str| match topics.get(name) {
            Some(partitions) => streamhouse_proto::v1::TopicMetadata {
                name: name.to_owned(),
                error_code: ErrorCode::None as i32,
                error_message: String::new(),
                partition_count: partitions.len() as u32,
                partitions: (0..partitions.len() as u32)
                    .map(|partition| PartitionMetadata {
                        partition,
                        leader_id: self.inner.id,
                        error_code: ErrorCode::None as i32,
                    })
                    .collect(),
            },
            None => streamhouse_proto::v1::TopicMetadata {
                name: name.to_owned(),
                error_code: ErrorCode::UnknownTopic as i32,
                error_message: format!("no topic {name:?}"),
                partition_count: 0,
                partitions: Vec::new(),
            },
        };
        let names: Vec<String> = if request.topics.is_empty() {
            topics.keys().cloned().collect()
        } else {
            request.topics.clone()
        };
        MetadataResponse {
            agents: vec![AgentInfo {
                id: self.inner.id,
                endpoints: vec![self.inner.endpoint.to_string()],
            }],
            topics: names.iter().map(|n| describe(n)).collect(),
            responder_id: self.inner.id,
            ..MetadataResponse::default()
        }
    }

    fn fetch(&self, request: &FetchRequest) -> FetchResponse {
        let topics = self.topics();
        let mut response = FetchResponse {
            topic: request.topic.clone(),
            partition: request.partition,
            ..FetchResponse::default()
        };
        let Some(log) = topics
            .get(&request.topic)
            .and_then(|t| t.get(request.partition as usize))
        else {
            response.error_code = ErrorCode::UnknownTopic as i32;
            response.error_message = format!("no {}/{}", request.topic, request.partition);
            return response;
        };
        response.high_watermark = log.state.next_offset();
        if request.offset < 0 || request.offset > response.high_watermark {
            response.error_code = ErrorCode::OffsetOutOfRange as i32;
            response.error_message = format!(
                "offset {} outside 0..={}",
                request.offset, response.high_watermark
            );
            return response;
        }
        // The first batch whose last offset reaches the requested one.
        let start = log.batches.partition_point(|(base, bytes)| {
            let count = Batch::parse(bytes.clone(), &self.inner.limits)
                .map_or(0, |b| i64::from(b.header().record_count));
            base + count <= request.offset
        });
        let mut size = 0usize;
        for (base, bytes) in &log.batches[start..] {
            if !response.batches.is_empty() && size + bytes.len() > request.max_bytes as usize {
                break;
            }
            size += bytes.len();
            response.batches.push(stamped(bytes, *base));
        }
        response
    }
}

/// A copy of `batch` with its base offset written in.
fn stamped(batch: &Bytes, base_offset: i64) -> Bytes {
    let mut copy = batch.to_vec();
    // Stored batches passed validation, so they hold a full header.
    let _ = set_base_offset(&mut copy, base_offset);
    Bytes::from(copy)
}

/// Queues `count` injected failures with `code`.
fn inject(queue: &Mutex<VecDeque<ErrorCode>>, count: usize, code: ErrorCode) {
    queue
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(std::iter::repeat_n(code, count));
}

/// The next injected failure, if one is queued (one per produce request).
fn next_injected(queue: &Mutex<VecDeque<ErrorCode>>) -> Option<ErrorCode> {
    queue
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop_front()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, ProducerStamp};
    use crate::codec::NoCompression;
    use streamhouse_proto::v1::PartitionBatch;

    fn produce(agent: &MockAgent, acks: Acks, seq: i32) -> (ErrorCode, i64) {
        let mut builder = BatchBuilder::new();
        builder.append(1, None, Some(b"v"), &[]).unwrap();
        let stamp = ProducerStamp {
            producer_id: 1,
            producer_epoch: 0,
            base_sequence: seq,
        };
        let response = agent.produce(ProduceRequest {
            acks: acks as i32,
            timeout_ms: 1_000,
            batches: vec![PartitionBatch {
                topic: "t".into(),
                partition: 0,
                batch: builder.finish(stamp, &NoCompression).unwrap(),
            }],
        });
        let result = &response.results[0];
        (ErrorCode::from_wire(result.error_code), result.base_offset)
    }

    #[test]
    fn a_crash_loses_exactly_the_unsynced_batches_and_rebuilds_the_state() {
        let agent = MockAgent::new().with_topic("t", 1);
        assert_eq!(produce(&agent, Acks::Leader, 0), (ErrorCode::None, 0));
        assert_eq!(produce(&agent, Acks::Durable, 1), (ErrorCode::None, 1));
        assert_eq!(produce(&agent, Acks::Leader, 2), (ErrorCode::None, 2));
        assert_eq!(
            agent.crash(),
            1,
            "only the batch after the last durable one"
        );
        assert_eq!(agent.next_offset("t", 0), Some(2));
        // Synced batches are still known to the dedup window; the lost one is appended again.
        assert_eq!(
            produce(&agent, Acks::Leader, 1),
            (ErrorCode::DuplicateSequence, 1)
        );
        assert_eq!(produce(&agent, Acks::Leader, 2), (ErrorCode::None, 2));
        let stats = agent.stats();
        assert_eq!((stats.crashes, stats.unsynced_lost), (1, 1));
    }
}
