//! The sender task: drains sealed batches into produce requests and settles their outcomes.
//!
//! One task per producer, owning the connections. Each loop turn it seals expired batches,
//! routes ready partitions to their leader agent, sends at most `max_in_flight` requests per
//! agent (each request encodes its batches in its own task, so compression runs in parallel
//! with the sender), then sleeps until a batch seals, a request finishes, or a deadline passes.
//!
//! Outcomes per batch:
//! - success or `DuplicateSequence` → resolved with the base offset;
//! - retriable code (not leader, unavailable, throttled, …) → requeued at the front of its
//!   partition after a backoff (metadata refreshed first for stale-leader codes);
//! - `OutOfOrderSequence` / `UnknownProducerId` for a partition's first unsettled batch in the
//!   request → the partition starts a new epoch and its queued batches are restamped; behind an
//!   earlier failure of the same partition it only means "requeue, in order";
//! - any other code → failed with [`ProduceError::Rejected`];
//! - transport failure → requeued (possibly applied) if retriable, failed otherwise;
//! - past `delivery_timeout` → failed with [`ProduceError::DeliveryTimeout`].

use super::accumulator::{Failure, Payload, QueuedBatch, Ready};
use super::delivery::{Completion, Outcome};
use super::stats::Counters;
use super::{Inner, Persistence, Phase, ProduceError};
use crate::batch::ProducerStamp;
use crate::codec::Codec;
use crate::discovery::{DiscoveryError, PartitionLeader, TopicMetadata};
use crate::layers::{self, Backoff, BoxConnection, LayerFn, RetryPolicy};
use crate::rng::Rng;
use crate::transport::{
    Connection, Endpoint, Request, RequestMessage, Response, Transport, TransportError,
};
use rustc_hash::{FxHashMap, FxHashSet};
use std::error::Error as StdError;
use std::sync::Arc;
use streamhouse_proto::v1::{
    AgentInfo, ErrorCode, PartitionBatch, ProduceRequest, ProduceResponse,
};
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tower::ServiceExt;

type TopicPartition = (Arc<str>, u32);

/// While a request to an agent is in flight, a ready batch waits at most this long for more
/// batches to join its request (unless half a request's worth is already ready). Few large
/// requests cost far less per record than many small ones; with nothing in flight, batches go
/// at once, so light load pays no delay.
const REQUEST_HOLD: std::time::Duration = std::time::Duration::from_millis(1);

/// The longest an agent's `throttle_ms` holds this producer's requests to it.
const MAX_THROTTLE: std::time::Duration = std::time::Duration::from_secs(30);

/// A batch's completion and how it ended, to resolve outside the lock.
type Resolution = (Arc<Completion>, Outcome);

pub(crate) struct Sender {
    inner: Arc<Inner>,
    transport: Arc<dyn Transport>,
    codec: Arc<dyn Codec>,
    layers: Vec<LayerFn>,
    retry: RetryPolicy,
    backoff: Backoff,
    rng: Rng,
    agents: FxHashMap<Endpoint, Agent>,
    /// Topics whose metadata is being fetched (`None`) or may be fetched again after an instant.
    refreshing: FxHashMap<Arc<str>, Option<Instant>>,
    tasks: JoinSet<Event>,
    /// What each running request task carries, to settle its batches if the task dies.
    requests: FxHashMap<Id, InFlight>,
    /// When cached metadata is next asked again (`metadata_max_age`).
    metadata_refresh: Instant,
    /// When a batch held back for company must go (see [`REQUEST_HOLD`]).
    hold_until: Option<Instant>,
}

struct Agent {
    conn: Conn,
    in_flight: usize,
    failures: u32,
    /// The agent asked (`throttle_ms`) for no request before this instant.
    throttled_until: Option<Instant>,
}

enum Conn {
    Idle,
    Connecting,
    Ready(BoxConnection),
    Waiting(Instant),
}

struct InFlight {
    endpoint: Endpoint,
    /// Batch id, completion, partition and record count of each batch.
    batches: Vec<(u64, Arc<Completion>, TopicPartition, u32)>,
}

enum Event {
    Connected {
        endpoint: Endpoint,
        result: Result<Connection, TransportError>,
    },
    Produced {
        endpoint: Endpoint,
        sent: Vec<QueuedBatch>,
        unencodable: Vec<(QueuedBatch, ProduceError)>,
        outcome: RequestOutcome,
    },
    Metadata {
        topic: Arc<str>,
        result: Result<Arc<TopicMetadata>, DiscoveryError>,
    },
}

enum RequestOutcome {
    Answered(ProduceResponse),
    Failed {
        error: Arc<dyn StdError + Send + Sync>,
        retriable: bool,
    },
    DeadlinePassed,
}

impl Sender {
    pub(crate) fn new(
        inner: Arc<Inner>,
        transport: Arc<dyn Transport>,
        codec: Arc<dyn Codec>,
        layers: Vec<LayerFn>,
        rng: Rng,
    ) -> Sender {
        let backoff = Backoff::new(inner.config.retry_backoff, inner.config.retry_backoff_max);
        // A request is retried here a few times on its connection; past that — or at once
        // when it timed out — the sender takes its batches back, asks discovery again and may
        // send them elsewhere (the partition may have moved to another agent of a group).
        let mut retry = RetryPolicy::new(backoff)
            .max_retries(MAX_REQUEST_RETRIES)
            .without_timeout_retries()
            .with_seed(rng.next_u64())
            .with_counter(inner.counters.request_retries.clone());
        if at_most_once(&inner) {
            retry = retry.at_most_once();
        }
        Sender {
            transport,
            codec,
            layers,
            retry,
            backoff,
            rng,
            agents: FxHashMap::default(),
            refreshing: FxHashMap::default(),
            tasks: JoinSet::new(),
            requests: FxHashMap::default(),
            metadata_refresh: Instant::now() + inner.config.metadata_max_age,
            hold_until: None,
            inner,
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            let now = Instant::now();
            let (failures, ready, phase, idle) = {
                let mut state = self.inner.lock();
                if state.phase != Phase::Open {
                    // Closing: nothing waits for linger any more.
                    state.acc.seal_all(now.into_std());
                }
                let failures = state.acc.expire(now.into_std());
                let ready = state.acc.ready(now.into_std());
                (failures, ready, state.phase, state.acc.is_idle())
            };
            self.settle_failures(failures);
            match phase {
                Phase::Abort => return self.abort().await,
                // Nothing unsettled: dials and metadata lookups still running serve nobody.
                Phase::Closing if idle && self.requests.is_empty() => {
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                    return;
                }
                _ => {}
            }
            self.dispatch(ready, now);
            if now >= self.metadata_refresh {
                self.refresh_all(now);
            }

            let wake_at = self.next_wake();
            tokio::select! {
                biased;
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    match joined {
                        Ok((id, event)) => {
                            self.requests.remove(&id);
                            self.on_event(event);
                        }
                        Err(error) => self.on_task_lost(error.id()),
                    }
                }
                () = self.inner.wake_sender.notified() => {}
                () = tokio::time::sleep_until(wake_at.unwrap_or_else(far_future)), if wake_at.is_some() => {}
            }
        }
    }

    /// The earliest instant something time-based must happen.
    fn next_wake(&self) -> Option<Instant> {
        let now = Instant::now();
        let acc = self
            .inner
            .lock()
            .acc
            .next_deadline(now.into_std())
            .map(Instant::from_std);
        let agents = self.agents.values().filter_map(|a| match a.conn {
            Conn::Waiting(at) => Some(at),
            _ => None,
        });
        let throttles = self
            .agents
            .values()
            .filter_map(|a| a.throttled_until)
            .filter(|until| *until > now);
        let refreshes = self.refreshing.values().filter_map(|at| *at);
        acc.into_iter()
            .chain(agents)
            .chain(throttles)
            .chain(refreshes)
            .chain(self.hold_until)
            .chain([self.metadata_refresh])
            .min()
    }

    /// Routes ready partitions to their leaders and sends what the in-flight limits allow.
    fn dispatch(&mut self, mut ready: Vec<Ready>, now: Instant) {
        self.hold_until = None;
        if ready.is_empty() {
            return;
        }
        // Longest waiting first: requests fill up to `max_request_size`, and a fixed partition
        // order would let the first partitions take every request while the last ones wait.
        ready.sort_by_key(|r| r.since);
        let mut routes: FxHashMap<Endpoint, Vec<Ready>> = FxHashMap::default();
        let mut missing = FxHashSet::default();
        let mut gone = Vec::new();
        {
            let mut state = self.inner.lock();
            for ready in ready {
                let (topic, partition) = (ready.topic.clone(), ready.partition);
                let route = state.metadata.get(&topic).map(|t| {
                    let count = t.metadata.partition_count().get();
                    (
                        count,
                        t.metadata.leader(partition).map(|l| l.endpoint.clone()),
                    )
                });
                match route {
                    Some((_, Some(endpoint))) => routes.entry(endpoint).or_default().push(ready),
                    Some((count, None)) if partition >= count => {
                        // The topic shrank below this partition: no refresh will bring it back.
                        let error = ProduceError::UnknownPartition {
                            partition,
                            partitions: count,
                        };
                        gone.extend(state.acc.fail_partition(&topic, partition, &error));
                    }
                    _ => {
                        missing.insert(topic);
                    }
                }
            }
        }
        self.settle_failures(gone);
        for topic in missing {
            self.refresh(topic, now);
        }
        let max_in_flight = self.inner.config.max_in_flight;
        let max_request_size = self.inner.config.max_request_size;
        for (endpoint, ready) in routes {
            let agent = self.agents.entry(endpoint.clone()).or_insert(Agent {
                conn: Conn::Idle,
                in_flight: 0,
                failures: 0,
                throttled_until: None,
            });
            if agent.throttled_until.is_some_and(|until| until > now) {
                continue;
            }
            let service = match &agent.conn {
                Conn::Ready(service) => service.clone(),
                Conn::Connecting => continue,
                Conn::Waiting(at) if *at > now => continue,
                Conn::Idle | Conn::Waiting(_) => {
                    agent.conn = Conn::Connecting;
                    let connect = self.transport.connect(&endpoint);
                    self.tasks.spawn(async move {
                        Event::Connected {
                            endpoint,
                            result: connect.await,
                        }
                    });
                    continue;
                }
            };
            let bytes: usize = ready.iter().map(|r| r.bytes).sum();
            let oldest = ready.iter().map(|r| Instant::from_std(r.since)).min();
            if let Some(oldest) = oldest
                && agent.in_flight > 0
                && bytes < max_request_size / 2
                && now < oldest + REQUEST_HOLD
            {
                let until = oldest + REQUEST_HOLD;
                self.hold_until = Some(self.hold_until.map_or(until, |h| h.min(until)));
                continue;
            }
            let mut partitions: Vec<TopicPartition> =
                ready.into_iter().map(|r| (r.topic, r.partition)).collect();
            while agent.in_flight < max_in_flight && !partitions.is_empty() {
                let batches = drain_request(&self.inner, &mut partitions, now);
                if batches.is_empty() {
                    break;
                }
                agent.in_flight += 1;
                spawn_request(
                    &mut self.tasks,
                    &mut self.requests,
                    &self.inner,
                    &self.codec,
                    endpoint.clone(),
                    service.clone(),
                    batches,
                );
            }
        }
    }

    /// Asks discovery again about every cached topic (`metadata_max_age` passed).
    fn refresh_all(&mut self, now: Instant) {
        self.metadata_refresh = now + self.inner.config.metadata_max_age;
        let topics: Vec<Arc<str>> = self.inner.lock().metadata.keys().cloned().collect();
        for topic in topics {
            self.refresh(topic, now);
        }
    }

    /// Drops the cached metadata of every topic with a partition led at `endpoint` and asks
    /// discovery again (the agent cannot be reached).
    fn forget_leader(&mut self, endpoint: &Endpoint, now: Instant) {
        let stale: Vec<Arc<str>> = {
            let mut state = self.inner.lock();
            let stale: Vec<Arc<str>> = state
                .metadata
                .iter()
                .filter(|(_, t)| t.metadata.leaders().iter().any(|l| l.endpoint == *endpoint))
                .map(|(topic, _)| topic.clone())
                .collect();
            for topic in &stale {
                state.metadata.remove(topic);
            }
            stale
        };
        for topic in stale {
            self.inner.discovery.invalidate(&topic);
            self.refresh(topic, now);
        }
    }

    fn refresh(&mut self, topic: Arc<str>, now: Instant) {
        match self.refreshing.get(&topic) {
            Some(None) => return,
            Some(Some(at)) if *at > now => return,
            _ => {}
        }
        self.refreshing.insert(topic.clone(), None);
        let discovery = self.inner.discovery.clone();
        self.tasks.spawn(async move {
            let result = discovery.topic(&topic).await;
            Event::Metadata { topic, result }
        });
    }

    fn on_event(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Connected { endpoint, result } => {
                let agent = self.agents.get_mut(&endpoint);
                let Some(agent) = agent else { return };
                match result {
                    Ok(connection) => {
                        agent.failures = 0;
                        agent.conn = Conn::Ready(layers::stack(
                            connection,
                            &self.layers,
                            self.inner.config.request_timeout,
                            self.retry.clone(),
                        ));
                    }
                    Err(error) => {
                        tracing::debug!(%endpoint, %error, "cannot connect to the agent");
                        let delay = self.backoff.jittered(agent.failures, self.rng.unit());
                        agent.failures = agent.failures.saturating_add(1);
                        agent.conn = Conn::Waiting(now + delay);
                        // The agent may be gone for good (a group moves its partitions to
                        // another): ask again who leads what it led.
                        self.forget_leader(&endpoint, now);
                    }
                }
            }
            Event::Metadata { topic, result } => match result {
                Ok(metadata) => {
                    tracing::debug!(
                        %topic,
                        leaders = ?metadata.leaders().iter().map(|l| l.agent_id).collect::<Vec<_>>(),
                        "metadata"
                    );
                    self.refreshing.remove(&topic);
                    self.inner.lock().set_metadata(metadata);
                }
                Err(error) => {
                    tracing::debug!(%topic, %error, "metadata lookup failed");
                    let delay = self.backoff.jittered(0, self.rng.unit());
                    self.refreshing.insert(topic, Some(now + delay));
                }
            },
            Event::Produced {
                endpoint,
                sent,
                unencodable,
                outcome,
            } => self.on_produced(endpoint, sent, unencodable, outcome, now),
        }
    }

    fn on_produced(
        &mut self,
        endpoint: Endpoint,
        sent: Vec<QueuedBatch>,
        unencodable: Vec<(QueuedBatch, ProduceError)>,
        outcome: RequestOutcome,
        now: Instant,
    ) {
        let agent = self.agents.get_mut(&endpoint);
        if let Some(agent) = agent {
            agent.in_flight = agent.in_flight.saturating_sub(1);
            if let RequestOutcome::Answered(response) = &outcome
                && response.throttle_ms > 0
            {
                // Kafka's quota protocol: the agent says how long to hold off.
                let pause = std::time::Duration::from_millis(u64::from(response.throttle_ms));
                agent.throttled_until = Some(now + pause.min(MAX_THROTTLE));
                Counters::add(&self.inner.counters.throttled, 1);
            }
            if matches!(outcome, RequestOutcome::Failed { .. }) {
                // Reconnect before the next request; in-flight clones finish on their own.
                agent.conn = Conn::Idle;
            }
        }
        let mut settle = Settlement::new(&self.inner, now);
        for (batch, error) in unencodable {
            settle.fail(batch, error);
        }
        match outcome {
            RequestOutcome::Answered(response) if response.results.len() == sent.len() => {
                tracing::trace!(
                    %endpoint,
                    answers = ?sent
                        .iter()
                        .zip(&response.results)
                        .map(|(b, r)| (b.partition, b.attempts, r.error_code))
                        .collect::<Vec<_>>(),
                    "request answered"
                );
                for (batch, result) in sent.into_iter().zip(response.results) {
                    if result.error_code != 0 {
                        tracing::debug!(
                            %endpoint,
                            partition = batch.partition,
                            code = ?ErrorCode::from_wire(result.error_code),
                            leader = ?result.leader.as_ref().map(|l| l.id),
                            attempts = batch.attempts,
                            "batch refused"
                        );
                    }
                    if let Some(leader) = result.leader {
                        settle.named_leader(&batch, result.error_code, leader);
                    }
                    settle.answer(
                        batch,
                        result.error_code,
                        result.base_offset,
                        result.error_message,
                    );
                }
            }
            RequestOutcome::Answered(response) => {
                let error: Arc<dyn StdError + Send + Sync> =
                    Arc::new(TransportError::Protocol(format!(
                        "{} results for {} batches",
                        response.results.len(),
                        sent.len()
                    )));
                for batch in sent {
                    settle.transport_failure(batch, &error, false);
                }
            }
            RequestOutcome::Failed { error, retriable } => {
                tracing::debug!(%endpoint, %error, retriable, batches = sent.len(), "request failed");
                for batch in sent {
                    settle.transport_failure(batch, &error, retriable);
                }
            }
            RequestOutcome::DeadlinePassed => {
                tracing::debug!(%endpoint, batches = sent.len(), "request past its deadline");
                let at_most_once = at_most_once(&self.inner);
                for mut batch in sent {
                    batch.maybe_applied = true;
                    if at_most_once {
                        let persistence = batch.persistence();
                        settle.fail(
                            batch,
                            ProduceError::DeliveryTimeout {
                                timeout: self.inner.config.delivery_timeout,
                                persistence,
                            },
                        );
                    } else {
                        settle.retry(batch, false);
                    }
                }
            }
        }
        let (outcomes, stale_topics) = settle.finish(&self.backoff, &self.rng);
        for topic in stale_topics {
            self.inner.discovery.invalidate(&topic);
            self.inner.lock().metadata.remove(&topic);
        }
        self.settle(outcomes);
    }

    /// A request task ended without reporting (it panicked): its batches' fate is unknown.
    fn on_task_lost(&mut self, id: Id) {
        let Some(lost) = self.requests.remove(&id) else {
            return;
        };
        if let Some(agent) = self.agents.get_mut(&lost.endpoint) {
            agent.in_flight = agent.in_flight.saturating_sub(1);
        }
        let error: Arc<dyn StdError + Send + Sync> = Arc::new(TransportError::Protocol(
            "request task ended abnormally".into(),
        ));
        let mut outcomes = Vec::new();
        {
            let mut state = self.inner.lock();
            for (batch_id, completion, (topic, partition), records) in lost.batches {
                Counters::add(&self.inner.counters.records_failed, u64::from(records));
                state.acc.complete(batch_id);
                state.acc.unmute(&topic, partition);
                outcomes.push((
                    completion,
                    Outcome::Failed(ProduceError::Transport {
                        source: error.clone(),
                        persistence: Persistence::PossiblyPersisted,
                    }),
                ));
            }
        }
        self.settle(outcomes);
    }

    /// Close timed out: fail everything still pending and stop.
    async fn abort(mut self) {
        self.tasks.abort_all();
        let mut outcomes: Vec<Resolution> = Vec::new();
        {
            let mut state = self.inner.lock();
            let queued: Vec<Failure> = state.acc.abort();
            for failure in queued {
                Counters::add(
                    &self.inner.counters.records_failed,
                    u64::from(failure.records),
                );
                outcomes.push((failure.completion, Outcome::Failed(failure.error)));
            }
            for (_, in_flight) in self.requests.drain() {
                for (batch_id, completion, _, records) in in_flight.batches {
                    Counters::add(&self.inner.counters.records_failed, u64::from(records));
                    state.acc.complete(batch_id);
                    outcomes.push((
                        completion,
                        Outcome::Failed(ProduceError::Closed {
                            persistence: Persistence::PossiblyPersisted,
                        }),
                    ));
                }
            }
        }
        self.settle(outcomes);
        while self.tasks.join_next().await.is_some() {}
    }

    /// Reports batches the accumulator failed (delivery timeout, close).
    fn settle_failures(&self, failures: Vec<Failure>) {
        let outcomes = failures
            .into_iter()
            .map(|failure| {
                Counters::add(
                    &self.inner.counters.records_failed,
                    u64::from(failure.records),
                );
                (failure.completion, Outcome::Failed(failure.error))
            })
            .collect();
        self.settle(outcomes);
    }

    /// Resolves completions (outside the lock) and tells blocked senders memory was freed.
    fn settle(&self, outcomes: Vec<Resolution>) {
        if outcomes.is_empty() {
            return;
        }
        for (completion, outcome) in outcomes {
            completion.resolve(outcome);
        }
        self.inner.memory_freed.notify_waiters();
    }
}

/// Takes batches from `partitions` for one request, up to `max_request_size`; partitions
/// drained are removed from the list, those that did not fit stay for the next request.
fn drain_request(
    inner: &Inner,
    partitions: &mut Vec<TopicPartition>,
    now: Instant,
) -> Vec<QueuedBatch> {
    let max = inner.config.max_request_size;
    let mut batches = Vec::new();
    let mut bytes = 0;
    let mut state = inner.lock();
    partitions.retain(|(topic, partition)| {
        if bytes >= max {
            return true;
        }
        let drained = state
            .acc
            .drain(topic, *partition, max - bytes, now.into_std());
        if drained.is_empty() {
            return true;
        }
        bytes += drained.iter().map(|b| b.payload.len()).sum::<usize>();
        batches.extend(drained);
        false
    });
    batches
}

fn spawn_request(
    tasks: &mut JoinSet<Event>,
    requests: &mut FxHashMap<Id, InFlight>,
    inner: &Arc<Inner>,
    codec: &Arc<dyn Codec>,
    endpoint: Endpoint,
    service: BoxConnection,
    batches: Vec<QueuedBatch>,
) {
    let config = &inner.config;
    let deadline = batches
        .iter()
        .map(|b| Instant::from_std(b.created + config.delivery_timeout))
        .min()
        .unwrap_or_else(|| Instant::now() + config.delivery_timeout);
    tracing::trace!(
        %endpoint,
        batches = ?batches.iter().map(|b| (b.partition, b.attempts)).collect::<Vec<_>>(),
        "request sent"
    );
    let refs = batches
        .iter()
        .map(|b| {
            let key = (b.topic.clone(), b.partition);
            (b.id, b.completion.clone(), key, b.record_count)
        })
        .collect();
    let request = ProduceRequest {
        acks: config.acks.to_wire() as i32,
        timeout_ms: u32::try_from(config.request_timeout.as_millis()).unwrap_or(u32::MAX),
        batches: Vec::new(),
    };
    let codec = codec.clone();
    let task_endpoint = endpoint.clone();
    let inner = inner.clone();
    let handle = tasks.spawn(async move {
        produce(
            &inner,
            task_endpoint,
            service,
            request,
            batches,
            codec,
            deadline,
        )
        .await
    });
    requests.insert(
        handle.id(),
        InFlight {
            endpoint,
            batches: refs,
        },
    );
}

/// One request: encode the batches that are still builders, send, classify the outcome.
async fn produce(
    inner: &Inner,
    endpoint: Endpoint,
    service: BoxConnection,
    mut request: ProduceRequest,
    batches: Vec<QueuedBatch>,
    codec: Arc<dyn Codec>,
    deadline: Instant,
) -> Event {
    let mut sent = Vec::with_capacity(batches.len());
    let mut unencodable = Vec::new();
    let counters = &inner.counters;
    for mut batch in batches {
        let encoded = match std::mem::replace(&mut batch.payload, Payload::Taken) {
            Payload::Built(builder) => {
                let uncompressed = builder.encoded_len() as u64;
                let encoded = builder
                    .finish(batch.stamp.unwrap_or(ProducerStamp::NONE), codec.as_ref())
                    .map_err(|e| ProduceError::Encoding(Arc::new(e)));
                if let Ok(bytes) = &encoded {
                    Counters::add(&counters.batches, 1);
                    Counters::add(&counters.uncompressed_bytes, uncompressed);
                    Counters::add(&counters.wire_bytes, bytes.len() as u64);
                }
                encoded
            }
            Payload::Encoded(bytes) => Ok(bytes),
            Payload::Taken => Err(ProduceError::Closed {
                persistence: Persistence::NotPersisted,
            }),
        };
        match encoded {
            Ok(bytes) => {
                request.batches.push(PartitionBatch {
                    topic: batch.topic.to_string(),
                    partition: batch.partition,
                    batch: bytes.clone(),
                });
                batch.payload = Payload::Encoded(bytes);
                batch.attempts += 1;
                sent.push(batch);
            }
            Err(error) => unencodable.push((batch, error)),
        }
    }
    let outcome = if sent.is_empty() {
        RequestOutcome::Answered(ProduceResponse::default())
    } else {
        Counters::add(&counters.requests, 1);
        let request = Request::new(RequestMessage::Produce(request)).with_deadline(deadline);
        match tokio::time::timeout_at(deadline, service.oneshot(request)).await {
            Err(_) => RequestOutcome::DeadlinePassed,
            Ok(Ok(Response::Produce(response))) => RequestOutcome::Answered(response),
            Ok(Ok(_)) => RequestOutcome::Failed {
                error: Arc::new(TransportError::Protocol(
                    "answer to a produce request is not a produce response".into(),
                )),
                retriable: false,
            },
            Ok(Err(error)) => RequestOutcome::Failed {
                retriable: layers::is_retriable(error.as_ref())
                    && !(at_most_once(inner) && layers::may_have_been_applied(error.as_ref())),
                error: Arc::from(error),
            },
        }
    };
    Event::Produced {
        endpoint,
        sent,
        unencodable,
        outcome,
    }
}

/// Retries of one request by the transport retry layer before its batches go back to the
/// sender (which retries them until their delivery timeout, rerouting as metadata changes).
const MAX_REQUEST_RETRIES: u32 = 2;

/// Collects the consequences of one answered request, then applies them under one lock.
struct Settlement<'a> {
    inner: &'a Inner,
    now: Instant,
    outcomes: Vec<Resolution>,
    completed: Vec<u64>,
    /// Buffers of settled batches, offered back to the accumulator's pool.
    recycled: Vec<bytes::BytesMut>,
    /// Batches to send again, per partition in order, and whether to back off first.
    requeue: Vec<(TopicPartition, Vec<QueuedBatch>, bool)>,
    /// Partitions with an unsettled batch earlier in this request.
    behind_failure: FxHashSet<TopicPartition>,
    reset: FxHashSet<TopicPartition>,
    stale_topics: FxHashSet<Arc<str>>,
    /// Partitions an agent said it does not lead, with the leader it named.
    leaders: Vec<(TopicPartition, AgentInfo)>,
    partitions: FxHashSet<TopicPartition>,
}

impl<'a> Settlement<'a> {
    fn new(inner: &'a Inner, now: Instant) -> Settlement<'a> {
        Settlement {
            inner,
            now,
            outcomes: Vec::new(),
            completed: Vec::new(),
            recycled: Vec::new(),
            requeue: Vec::new(),
            behind_failure: FxHashSet::default(),
            reset: FxHashSet::default(),
            stale_topics: FxHashSet::default(),
            leaders: Vec::new(),
            partitions: FxHashSet::default(),
        }
    }

    fn key(batch: &QueuedBatch) -> TopicPartition {
        (batch.topic.clone(), batch.partition)
    }

    /// A settled batch's buffer goes back to the pool if nothing else holds it.
    fn reclaim(&mut self, payload: Payload) {
        if let Payload::Encoded(bytes) = payload
            && let Ok(buffer) = bytes.try_into_mut()
        {
            self.recycled.push(buffer);
        }
    }

    fn succeed(&mut self, batch: QueuedBatch, base_offset: i64) {
        Counters::add(
            &self.inner.counters.records_acked,
            u64::from(batch.record_count),
        );
        self.partitions.insert(Self::key(&batch));
        self.completed.push(batch.id);
        self.reclaim(batch.payload);
        self.outcomes.push((
            batch.completion,
            Outcome::Acked {
                base_offset,
                log_append_time: None,
            },
        ));
    }

    fn fail(&mut self, batch: QueuedBatch, error: ProduceError) {
        Counters::add(
            &self.inner.counters.records_failed,
            u64::from(batch.record_count),
        );
        let key = Self::key(&batch);
        self.partitions.insert(key.clone());
        self.behind_failure.insert(key);
        self.completed.push(batch.id);
        self.reclaim(batch.payload);
        self.outcomes
            .push((batch.completion, Outcome::Failed(error)));
    }

    /// Sends the batch again later, unless its delivery timeout has passed.
    fn retry(&mut self, batch: QueuedBatch, backoff: bool) {
        let timeout = self.inner.config.delivery_timeout;
        if Instant::from_std(batch.created + timeout) <= self.now {
            let persistence = batch.persistence();
            return self.fail(
                batch,
                ProduceError::DeliveryTimeout {
                    timeout,
                    persistence,
                },
            );
        }
        Counters::add(&self.inner.counters.retries, 1);
        let key = Self::key(&batch);
        self.partitions.insert(key.clone());
        self.behind_failure.insert(key.clone());
        match self.requeue.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, batches, back_off)) => {
                batches.push(batch);
                *back_off |= backoff;
            }
            None => self.requeue.push((key, vec![batch], backoff)),
        }
    }

    /// A `NOT_LEADER` answer named the partition's leader: the producer goes there without
    /// waiting for discovery (see `finish`).
    fn named_leader(&mut self, batch: &QueuedBatch, code: i32, leader: AgentInfo) {
        if ErrorCode::from_wire(code) == ErrorCode::NotLeader {
            self.leaders.push((Self::key(batch), leader));
        }
    }

    fn answer(&mut self, mut batch: QueuedBatch, code: i32, base_offset: i64, message: String) {
        let key = Self::key(&batch);
        let code = ErrorCode::from_wire(code);
        if code.may_have_been_appended() {
            // The agent gave up on it or could not make it durable: it may be in the log.
            batch.maybe_applied = true;
        }
        match code {
            ErrorCode::None => self.succeed(batch, base_offset),
            ErrorCode::DuplicateSequence => {
                Counters::add(&self.inner.counters.duplicates, 1);
                self.succeed(batch, base_offset);
            }
            ErrorCode::UnknownProducerId if batch.maybe_applied => {
                // An earlier attempt may have been appended and the agent has since lost this
                // producer's state: sent again under a new epoch it could be appended twice.
                if !self.behind_failure.contains(&key) {
                    self.reset.insert(key);
                }
                self.reject(batch, code, message);
            }
            ErrorCode::OutOfOrderSequence | ErrorCode::UnknownProducerId => {
                // First unsettled batch of its partition: the agent lost or never had the
                // batches before it, so start a new epoch. Behind an earlier failure it only
                // waits its turn.
                if !self.behind_failure.contains(&key) {
                    self.reset.insert(key);
                }
                self.retry(batch, false);
            }
            code if code.is_retriable() || code == ErrorCode::UnknownPartition => {
                if code.is_stale_metadata() {
                    self.stale_topics.insert(batch.topic.clone());
                }
                self.retry(batch, true);
            }
            code => self.reject(batch, code, message),
        }
    }

    /// Fails a batch the agent refused for good (an earlier attempt may still have landed).
    fn reject(&mut self, batch: QueuedBatch, code: ErrorCode, message: String) {
        let persistence = batch.persistence();
        self.fail(
            batch,
            ProduceError::Rejected {
                code,
                message,
                persistence,
            },
        );
    }

    fn transport_failure(
        &mut self,
        mut batch: QueuedBatch,
        error: &Arc<dyn StdError + Send + Sync>,
        retriable: bool,
    ) {
        // Sent, no answer: whatever the error says about the last attempt, an earlier one
        // inside the retry layer may have been appended — unless that layer is at most once,
        // where it only retries failures that say nothing was sent.
        let at_most_once = at_most_once(self.inner);
        let error_ref: &(dyn StdError + 'static) = error.as_ref();
        if !at_most_once || layers::may_have_been_applied(error_ref) {
            batch.maybe_applied = true;
        }
        if retriable {
            // The agent may be gone: its partitions may have moved (agent groups).
            self.stale_topics.insert(batch.topic.clone());
            self.retry(batch, true);
        } else {
            let persistence = batch.persistence();
            self.fail(
                batch,
                ProduceError::Transport {
                    source: error.clone(),
                    persistence,
                },
            );
        }
    }

    /// Applies everything to the accumulator; returns the completions to resolve and the
    /// topics whose metadata went stale.
    fn finish(self, backoff: &Backoff, rng: &Rng) -> (Vec<Resolution>, FxHashSet<Arc<str>>) {
        let mut state = self.inner.lock();
        for id in self.completed {
            state.acc.complete(id);
        }
        for buffer in self.recycled {
            state.acc.recycle(buffer);
        }
        for (_, batches, back_off) in self.requeue {
            let attempts = batches.iter().map(|b| b.attempts).max().unwrap_or(1);
            let retry_at = back_off.then(|| {
                (self.now + backoff.jittered(attempts.saturating_sub(1), rng.unit())).into_std()
            });
            state.acc.requeue(batches, retry_at, self.now.into_std());
        }
        let mut outcomes = self.outcomes;
        for (topic, partition) in &self.reset {
            for failure in state.acc.reset_sequence(topic, *partition) {
                Counters::add(
                    &self.inner.counters.records_failed,
                    u64::from(failure.records),
                );
                outcomes.push((failure.completion, Outcome::Failed(failure.error)));
            }
        }
        for (topic, partition) in &self.partitions {
            state.acc.unmute(topic, *partition);
        }
        let mut stale = self.stale_topics;
        for ((topic, partition), leader) in self.leaders {
            let patched = state
                .metadata
                .get(&topic)
                .and_then(|entry| with_leader(&entry.metadata, partition, &leader));
            if let Some(patched) = patched {
                Counters::add(&self.inner.counters.reroutes, 1);
                state.set_metadata(Arc::new(patched));
                // Discovery's copy is stale too: the next refresh asks afresh. The patched
                // route is used meanwhile.
                if stale.remove(&topic) {
                    self.inner.discovery.invalidate(&topic);
                }
            }
        }
        (outcomes, stale)
    }
}

/// `metadata` with `partition` led by `leader`, reached over the transport (scheme) the
/// partition's current leader uses; `None` when the leader has no such endpoint.
fn with_leader(
    metadata: &TopicMetadata,
    partition: u32,
    leader: &AgentInfo,
) -> Option<TopicMetadata> {
    let current = metadata.leader(partition)?;
    let scheme = current.endpoint.scheme();
    let endpoint: Endpoint = leader
        .endpoints
        .iter()
        .filter_map(|e| e.parse::<Endpoint>().ok())
        .find(|e| e.scheme() == scheme)?;
    let mut leaders = metadata.leaders().to_vec();
    leaders[partition as usize] = PartitionLeader {
        agent_id: leader.id,
        endpoint,
    };
    TopicMetadata::new(metadata.topic().clone(), leaders)
}

/// Without idempotence and with `acks=none`, a request the agent may have applied is never
/// sent again: such a producer is at most once, as Kafka's `acks=0` (a retry could only add a
/// second copy, and the answer would not say).
fn at_most_once(inner: &Inner) -> bool {
    inner.config.acks == super::Acks::None && !inner.config.idempotence
}

fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}
