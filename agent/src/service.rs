//! The agent's request handling: produce, metadata, fetch.

use crate::Shared;
use crate::io::AppendJob;
use crate::log::Appended;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use streamhouse::batch::Batch;
use streamhouse::serve::{
    ByteBudget, Lease, Rejection, validate_batch_within, validate_topic_name,
};
use streamhouse_proto::v1::{
    Acks, AgentInfo, Durability, ErrorCode, FetchRequest, FetchResponse, MetadataRequest,
    MetadataResponse, PartitionBatch, PartitionMetadata, PartitionResult, ProduceRequest,
    ProduceResponse, TopicMetadata,
};
use tokio::sync::oneshot;

/// Answer time when a request sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest fetch answer, whatever the request asks (below the transports' message limits).
const MAX_FETCH_BYTES: usize = 8 << 20;
/// Longest a fetch waits for data, whatever its `max_wait_ms`.
const MAX_FETCH_WAIT: Duration = Duration::from_secs(30);

/// Reads from `offset`; when nothing is there yet, waits up to `wait` for an append and reads
/// again (a consumer at the end of the log waits here instead of spinning).
///
/// Each read first leases what it may return — `max_bytes`, or one largest batch if more — from
/// the client's answer budget (per peer address, when the transport runs the request in
/// `serve::for_client`) and from `answers`; the batches it returns keep the used part of that
/// lease until the transport has dropped them, so answers nobody reads cannot pile up past the
/// budgets. An empty read
/// gives its lease back before waiting.
async fn long_poll(
    log: Arc<crate::log::PartitionLog>,
    offset: i64,
    max_bytes: usize,
    wait: Duration,
    answers: &ByteBudget,
    largest_batch: usize,
) -> Result<crate::log::ReadResult, Rejection> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let appended = log.appended();
        tokio::pin!(appended);
        // Registered before the read: an append between the read and the wait still wakes it.
        appended.as_mut().enable();
        let lease = lease_answer(answers, max_bytes.max(largest_batch)).await;
        let reader = log.clone();
        let mut read = tokio::task::spawn_blocking(move || reader.read(offset, max_bytes))
            .await
            .unwrap_or_else(|_| Err(Rejection::new(ErrorCode::Internal, "read task failed")))?;
        if !read.batches.is_empty() {
            read.batches = hold(read.batches, lease);
            return Ok(read);
        }
        drop(lease);
        if tokio::time::Instant::now() >= deadline
            || tokio::time::timeout_at(deadline, appended).await.is_err()
        {
            return Ok(read);
        }
    }
}

/// Leases `wanted` answer bytes: the client's share first (one that never reads cannot take
/// everyone's), then the agent's.
async fn lease_answer(answers: &ByteBudget, wanted: usize) -> AnswerLease {
    let client = match streamhouse::serve::client_answers() {
        Some(client) => Some(client.take(wanted).await),
        None => None,
    };
    (client, answers.take(wanted).await)
}

/// The batches of one answer, each keeping a share of `lease` (shrunk to their total) until
/// the last of them is dropped.
fn hold(batches: Vec<Bytes>, mut lease: AnswerLease) -> Vec<Bytes> {
    let total = batches.iter().map(Bytes::len).sum();
    if let Some(client) = &mut lease.0 {
        client.shrink_to(total);
    }
    lease.1.shrink_to(total);
    let lease = Arc::new(lease);
    batches
        .into_iter()
        .map(|batch| {
            Bytes::from_owner(Held {
                // Read into a fresh buffer and not shared: no copy.
                bytes: Vec::from(batch),
                _lease: lease.clone(),
            })
        })
        .collect()
}

/// An answer's bytes in the client's answer budget (when the transport said who the client
/// is) and in the agent's.
type AnswerLease = (Option<Lease>, Lease);

/// A batch's bytes and the answer lease they count against.
struct Held {
    bytes: Vec<u8>,
    _lease: Arc<AnswerLease>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A batch's partition log, its I/O shard, its topic's name and its partition.
type Route = (Arc<crate::log::PartitionLog>, usize, Arc<str>, u32);

/// Decompressed bytes of a request checked on the async runtime before the rest of its
/// validation moves to a blocking thread.
const INLINE_DECOMPRESSED: usize = 4 << 20;

/// How long a producer is asked to wait after a refusal for load (`THROTTLED`).
const THROTTLE_MS: u32 = 10;

enum Slot {
    Done(ErrorCode, String, i64),
    Waiting(oneshot::Receiver<crate::io::AppendReply>),
}

impl Shared {
    /// A fetch served from object storage, under the answer budgets.
    async fn read_objects(
        &self,
        remote: &crate::remote::Remote,
        request: &FetchRequest,
        max_bytes: usize,
        high_watermark: i64,
    ) -> Result<crate::log::ReadResult, Rejection> {
        let lease = lease_answer(&self.answers, max_bytes.max(self.config.max_batch_bytes)).await;
        let mut read = remote
            .read(
                &request.topic,
                request.partition,
                request.offset,
                max_bytes,
                high_watermark,
            )
            .await?;
        read.batches = hold(read.batches, lease);
        Ok(read)
    }

    pub(crate) async fn produce(
        self: Arc<Self>,
        request: ProduceRequest,
        principal: Option<&str>,
    ) -> ProduceResponse {
        metrics::counter!("streamhouse_produce_requests_total").increment(1);
        let acks = Acks::try_from(request.acks).unwrap_or(Acks::Unspecified);
        let durable = !matches!(acks, Acks::Leader | Acks::None);
        let timeout = match request.timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let mut keys = Vec::with_capacity(request.batches.len());
        let mut routed = Vec::with_capacity(request.batches.len());
        for batch in request.batches {
            keys.push((batch.topic.clone(), batch.partition));
            routed.push(
                self.route(&batch, principal)
                    .await
                    .map(|route| (route, batch.batch)),
            );
        }
        let mut throttled = false;
        // Each batch goes to its write thread as soon as it is checked, so the writes of the
        // first batches overlap the checks of the rest.
        let submit = |checked: Result<(Route, Batch), Rejection>| {
            let submitted = checked.and_then(|((log, shard, topic, partition), batch)| {
                let (reply, rx) = oneshot::channel();
                let job = AppendJob {
                    log,
                    topic,
                    partition,
                    batch,
                    durable,
                    reply,
                };
                self.io.submit(shard, job).map(|()| rx)
            });
            match submitted {
                Ok(rx) => Slot::Waiting(rx),
                Err(r) => {
                    throttled |= r.code == ErrorCode::Throttled;
                    Slot::Done(r.code, r.message, -1)
                }
            }
        };
        let slots = self.clone().validate(routed, submit).await;
        let deadline = tokio::time::Instant::now() + timeout;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(-1, |d| d.as_millis() as i64);
        let mut results = Vec::with_capacity(slots.len());
        for ((topic, partition), slot) in keys.into_iter().zip(slots) {
            let (code, message, base_offset) = match slot {
                Slot::Done(code, message, offset) => (code, message, offset),
                // Queued for the log; the answer does not wait for it (offsets unknown).
                Slot::Waiting(_) if acks == Acks::None => (ErrorCode::None, String::new(), -1),
                Slot::Waiting(rx) => match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(Ok(Appended::New { base_offset, .. }))) => {
                        (ErrorCode::None, String::new(), base_offset)
                    }
                    Ok(Ok(Ok(Appended::Duplicate { base_offset }))) => {
                        (ErrorCode::DuplicateSequence, String::new(), base_offset)
                    }
                    Ok(Ok(Err(r))) => (r.code, r.message, -1),
                    Ok(Err(_)) => (ErrorCode::Unavailable, "agent stopped".to_owned(), -1),
                    Err(_) => (
                        ErrorCode::RequestTimedOut,
                        format!("not appended within {timeout:?}"),
                        -1,
                    ),
                },
            };
            if code != ErrorCode::None && code != ErrorCode::DuplicateSequence {
                metrics::counter!("streamhouse_errors_total", "code" => code.as_str_name())
                    .increment(1);
            }
            // In a group: where the partition is led now, so the producer goes there at once.
            let leader = match &self.group {
                Some(group) if code == ErrorCode::NotLeader => group.leader(&topic, partition),
                _ => None,
            };
            results.push(PartitionResult {
                topic,
                partition,
                error_code: code as i32,
                error_message: message,
                base_offset,
                log_append_time_ms: now_ms,
                log_start_offset: 0,
                leader,
            });
        }
        let durability = match (durable, &self.remote) {
            (false, _) => Durability::Unspecified,
            (true, Some(_)) => Durability::ObjectStore,
            (true, None) => Durability::LocalFsync,
        };
        ProduceResponse {
            results,
            throttle_ms: if throttled { THROTTLE_MS } else { 0 },
            durability: durability as i32,
        }
    }

    /// Where a batch goes: its partition's log, I/O shard and topic name.
    async fn route(
        self: &Arc<Self>,
        batch: &PartitionBatch,
        principal: Option<&str>,
    ) -> Result<Route, Rejection> {
        if self.stopping.load(Ordering::Acquire) {
            // In a group another agent takes its partitions over: send there.
            let code = match self.group {
                Some(_) => ErrorCode::NotLeader,
                None => ErrorCode::Unavailable,
            };
            return Err(Rejection::new(code, "agent is shutting down"));
        }
        let topic = self.topic(&batch.topic, principal).await?;
        let part = topic
            .partitions
            .get(batch.partition as usize)
            .ok_or_else(|| {
                Rejection::new(
                    ErrorCode::UnknownPartition,
                    format!(
                        "topic {:?} has {} partitions, not {}",
                        batch.topic,
                        topic.partitions.len(),
                        batch.partition
                    ),
                )
            })?
            .clone();
        let log = part
            .log
            .ok_or_else(|| not_led(&batch.topic, batch.partition))?;
        Ok((log, part.shard, topic.name.clone(), batch.partition))
    }

    /// Validates a request's batches (every record; decompression) within the request's
    /// decompression budget. The first 4 MiB of decompressed records are checked right here
    /// (ordinary requests: a hop to another thread costs them ~10%); the rest of a larger
    /// request moves to a blocking thread, at most one request per core at a time, so the
    /// async runtime, and with it every other connection's metadata and fetches, never waits
    /// behind more than that. Each batch is handed to `submit` (its write thread) as soon as it
    /// is checked, in request order.
    async fn validate(
        self: Arc<Self>,
        routed: Vec<Result<(Route, Bytes), Rejection>>,
        mut submit: impl FnMut(Result<(Route, Batch), Rejection>) -> Slot,
    ) -> Vec<Slot> {
        let count = routed.len();
        let mut budget = self.config.max_request_decompressed_bytes;
        let mut inline_left = INLINE_DECOMPRESSED.min(budget);
        let mut checked = Vec::with_capacity(count);
        let mut routed = routed.into_iter();
        let mut moved = None;
        for entry in routed.by_ref() {
            let (route, bytes) = match entry {
                Ok(entry) => entry,
                Err(r) => {
                    checked.push(submit(Err(r)));
                    continue;
                }
            };
            let mut left = inline_left;
            match validate_batch_within(bytes.clone(), &self.limits, &self.codecs, &mut left) {
                Err(r) if r.code == ErrorCode::Throttled => {
                    // Past what is checked here: this batch and the rest go to a thread.
                    moved = Some(Ok((route, bytes)));
                    break;
                }
                result => {
                    budget -= inline_left - left;
                    inline_left = left;
                    checked.push(submit(result.map(|batch| (route, batch))));
                }
            }
        }
        let Some(first) = moved else {
            return checked;
        };
        let rest: Vec<_> = std::iter::once(first).chain(routed).collect();
        let remaining = rest.len();
        let Ok(_permit) = self.validating.clone().acquire_owned().await else {
            checked.extend((0..remaining).map(|_| {
                submit(Err(Rejection::new(
                    ErrorCode::Unavailable,
                    "agent is shutting down",
                )))
            }));
            return checked;
        };
        let shared = self.clone();
        let offloaded = tokio::task::spawn_blocking(move || {
            let mut refused = 0u64;
            let checked: Vec<_> = rest
                .into_iter()
                .map(|entry| {
                    let (route, bytes) = entry?;
                    let batch =
                        validate_batch_within(bytes, &shared.limits, &shared.codecs, &mut budget)
                            .inspect_err(|r| refused += u64::from(r.code == ErrorCode::Throttled))?;
                    Ok((route, batch))
                })
                .collect();
            if refused > 0 {
                metrics::counter!("streamhouse_limit_hits_total", "limit" => "request_decompressed_bytes")
                    .increment(refused);
            }
            checked
        })
        .await
        .unwrap_or_else(|_| {
            (0..remaining)
                .map(|_| Err(Rejection::new(ErrorCode::Internal, "validation failed")))
                .collect()
        });
        checked.extend(offloaded.into_iter().map(submit));
        checked
    }

    /// The topic, created if auto-creation is on (within `max_topics`, off the runtime:
    /// creation does directory IO).
    async fn topic(
        self: &Arc<Self>,
        name: &str,
        principal: Option<&str>,
    ) -> Result<Arc<crate::topics::Topic>, Rejection> {
        if let Some(topic) = self.topics.get(name) {
            return Ok(topic);
        }
        validate_topic_name(name)?;
        let Some(partitions) = self.config.auto_create_partitions else {
            return Err(Rejection::new(
                ErrorCode::UnknownTopic,
                format!("no topic {name:?} (auto-creation is off)"),
            ));
        };
        if let Some(policy) = &self.config.create_policy
            && !principal.is_some_and(|p| (policy.0)(p, name))
        {
            metrics::counter!("streamhouse_auth_denied_total", "operation" => "create")
                .increment(1);
            return Err(Rejection::new(
                ErrorCode::Unauthorized,
                format!("no topic {name:?}, and no permission to create it"),
            ));
        }
        let (shared, name) = (self.clone(), name.to_owned());
        tokio::task::spawn_blocking(move || {
            let max = shared.config.max_topics;
            shared.topics.ensure_within(&name, partitions, max)
        })
        .await
        .unwrap_or_else(|_| Err(Rejection::new(ErrorCode::Internal, "topic creation failed")))
        .map(|(topic, _)| topic)
    }

    pub(crate) async fn metadata(
        self: &Arc<Self>,
        request: &MetadataRequest,
        principal: Option<&str>,
    ) -> MetadataResponse {
        // A group member cut off from the store knows no leaders any more: it says so
        // (retriable) for every topic it knows, and `Bootstrap` asks another seed.
        let stale = self.group.as_ref().and_then(|g| g.stale());
        let describe =
            |name: &str, topic: Result<Arc<crate::topics::Topic>, Rejection>| match (topic, &stale)
            {
                (Ok(_), Some(message)) => self.describe(
                    name,
                    Err(Rejection::new(ErrorCode::Unavailable, message.clone())),
                ),
                (topic, _) => self.describe(name, topic),
            };
        let topics: Vec<TopicMetadata> = if request.topics.is_empty() {
            self.topics
                .all()
                .iter()
                .map(|t| describe(&t.name, Ok(t.clone())))
                .collect()
        } else {
            let mut described = Vec::with_capacity(request.topics.len());
            for name in &request.topics {
                described.push(describe(name, self.topic(name, principal).await));
            }
            described
        };
        let me = AgentInfo {
            id: self.config.id,
            endpoints: self
                .config
                .endpoints
                .iter()
                .map(ToString::to_string)
                .collect(),
        };
        MetadataResponse {
            agents: match &self.group {
                Some(group) => group.agents(me),
                None => vec![me],
            },
            topics,
            responder_id: self.config.id,
            ..MetadataResponse::default()
        }
    }

    pub(crate) fn describe(
        &self,
        name: &str,
        topic: Result<Arc<crate::topics::Topic>, Rejection>,
    ) -> TopicMetadata {
        match topic {
            Ok(topic) => TopicMetadata {
                name: name.to_owned(),
                error_code: ErrorCode::None as i32,
                error_message: String::new(),
                partition_count: topic.partitions.len() as u32,
                partitions: (0..topic.partitions.len() as u32)
                    .map(|partition| PartitionMetadata {
                        partition,
                        leader_id: self.leader_id(&topic, partition),
                        error_code: ErrorCode::None as i32,
                    })
                    .collect(),
            },
            Err(r) => TopicMetadata {
                name: name.to_owned(),
                error_code: r.code as i32,
                error_message: r.message,
                partition_count: 0,
                partitions: Vec::new(),
            },
        }
    }

    /// Who leads a partition: this agent when it serves it; in a group, else the live lease
    /// holder or the agent that should take it (this one, when it knows no other).
    fn leader_id(&self, topic: &crate::topics::Topic, partition: u32) -> u32 {
        let serving = topic
            .partitions
            .get(partition as usize)
            .and_then(|p| p.log.as_ref())
            .is_some_and(|log| !log.lease_lapsed() && !log.superseded());
        match &self.group {
            Some(group) if !serving => group
                .leader(&topic.name, partition)
                .map_or(self.config.id, |a| a.id),
            _ => self.config.id,
        }
    }

    pub(crate) async fn fetch(self: Arc<Self>, request: FetchRequest) -> FetchResponse {
        let mut response = FetchResponse {
            topic: request.topic.clone(),
            partition: request.partition,
            ..FetchResponse::default()
        };
        let log = self
            .topics
            .get(&request.topic)
            .ok_or_else(|| {
                Rejection::new(
                    ErrorCode::UnknownTopic,
                    format!("no topic {:?}", request.topic),
                )
            })
            .and_then(|t| {
                t.partitions
                    .get(request.partition as usize)
                    .ok_or_else(|| Rejection::new(ErrorCode::UnknownPartition, "no such partition"))
                    .and_then(|p| {
                        p.log
                            .clone()
                            .ok_or_else(|| not_led(&request.topic, request.partition))
                    })
            });
        let max_bytes = match request.max_bytes as usize {
            0 => 1 << 20,
            n => n.min(MAX_FETCH_BYTES),
        };
        let wait = Duration::from_millis(u64::from(request.max_wait_ms)).min(MAX_FETCH_WAIT);
        let below_start = self
            .remote
            .as_ref()
            .map(|r| r.log_start(&request.topic, request.partition))
            .filter(|start| request.offset < *start);
        let read = match log {
            Ok(_) if below_start.is_some() => Err(Rejection::new(
                ErrorCode::OffsetOutOfRange,
                format!(
                    "offset {} is before the log start {} (removed by retention)",
                    request.offset,
                    below_start.unwrap_or_default()
                ),
            )),
            Ok(log) if self.remote.is_some() && log.superseded() => Err(Rejection::new(
                ErrorCode::NotLeader,
                "another agent writes this partition to object storage; this one no longer \
                 serves it",
            )),
            Ok(log) => match &self.remote {
                Some(remote) if request.offset < log.local_range().0 => {
                    // Below the local log: from objects (no waiting: those records exist).
                    self.read_objects(remote, &request, max_bytes, log.local_range().1)
                        .await
                }
                Some(remote) => {
                    let largest = self.config.max_batch_bytes;
                    let end = log.local_range().1;
                    match long_poll(log, request.offset, max_bytes, wait, &self.answers, largest)
                        .await
                    {
                        // The local copy is damaged; the committed one may not be.
                        Err(r) if r.code == ErrorCode::CorruptBatch => {
                            match self.read_objects(remote, &request, max_bytes, end).await {
                                Ok(read) if !read.batches.is_empty() => {
                                    metrics::counter!(
                                        "streamhouse_corrupt_reads_served_from_objects_total"
                                    )
                                    .increment(1);
                                    Ok(read)
                                }
                                _ => Err(r),
                            }
                        }
                        other => other,
                    }
                }
                None => {
                    let largest = self.config.max_batch_bytes;
                    long_poll(log, request.offset, max_bytes, wait, &self.answers, largest).await
                }
            },
            Err(r) => Err(r),
        };
        match read {
            Ok(read) => {
                response.batches = read.batches;
                response.high_watermark = read.high_watermark;
                response.log_start_offset = match &self.remote {
                    Some(remote) => read
                        .log_start_offset
                        .max(remote.log_start(&request.topic, request.partition)),
                    None => read.log_start_offset,
                };
            }
            Err(r) => {
                response.error_code = r.code as i32;
                response.error_message = r.message;
            }
        }
        response
    }
}

/// A partition this agent (of a group) does not lead.
fn not_led(topic: &str, partition: u32) -> Rejection {
    Rejection::new(
        ErrorCode::NotLeader,
        format!("this agent does not lead {topic}-{partition}"),
    )
}
