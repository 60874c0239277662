//! The checks of the conformance suite.

use super::{Harness, Outcome, Report};
use crate::batch::{Batch, BatchBuilder, DecodeLimits, ProducerStamp};
use crate::codec::{Codecs, NoCompression};
use crate::mock::MockAgent;
use crate::transport::{
    Connection, Endpoint, Metadata, Peer, Request, RequestMessage, Response, TransportError,
};
use bytes::Bytes;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use streamhouse_proto::v1::{
    Acks, ErrorCode, FetchRequest, MetadataRequest, PartitionBatch, ProduceRequest, ProduceResponse,
};
use tokio::time::Instant;
use tower::ServiceExt;

/// Longest any check may take.
const CHECK_LIMIT: Duration = Duration::from_secs(30);
/// Longest a request to an answering agent may take.
const CALL_LIMIT: Duration = Duration::from_secs(5);
const TOPIC: &str = "conformance";

type CheckResult = Result<(), String>;

pub(super) async fn run_all(harness: &mut (impl Harness + ?Sized)) -> Report {
    let agent = MockAgent::new()
        .with_limits(DecodeLimits {
            max_batch_bytes: usize::MAX,
            max_uncompressed_bytes: usize::MAX,
            ..DecodeLimits::default()
        })
        .with_topic(TOPIC, 1);
    // What the agent's side received of the last request that carried the check's marker.
    let seen: Seen = Arc::default();
    let recorder = seen.clone();
    let served = tower::ServiceBuilder::new()
        .map_request(move |request: Request| {
            if request.metadata.get(MARKER).is_some() {
                *recorder.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((request.metadata.clone(), request.peer.clone()));
            }
            request
        })
        .service(agent.service());
    let endpoint = harness
        .start(tower::util::BoxCloneSyncService::new(served))
        .await;
    let mut report = Report { checks: Vec::new() };

    macro_rules! check {
        ($name:literal, $body:expr) => {{
            let outcome = match tokio::time::timeout(CHECK_LIMIT, $body).await {
                Ok(Ok(())) => Outcome::Passed,
                Ok(Err(why)) => Outcome::Failed(why),
                Err(_) => Outcome::Failed(format!("no result within {CHECK_LIMIT:?} (hung)")),
            };
            // Leave the agent answering for the next check, whatever this one did.
            agent.set_stalled(false);
            report.checks.push(($name, outcome));
        }};
    }

    check!("round_trip", round_trip(harness, &endpoint, &agent));
    check!("metadata", metadata(harness, &endpoint, &seen));
    check!("large_batch", large_batch(harness, &endpoint));
    check!("oversized_frame", oversized_frame(harness, &endpoint));
    check!(
        "concurrent_requests",
        concurrent_requests(harness, &endpoint, &agent)
    );
    check!(
        "request_timeout",
        request_timeout(harness, &endpoint, &agent)
    );
    check!(
        "connection_drop",
        connection_drop(harness, &endpoint, &agent)
    );
    check!(
        "restart_reconnect",
        restart_reconnect(harness, &endpoint, &agent)
    );
    match harness.untrusted_transport() {
        Some(untrusted) => check!("tls_mismatch", tls_mismatch(untrusted, &endpoint)),
        None => report.checks.push((
            "tls_mismatch",
            Outcome::Skipped("the transport has no TLS".into()),
        )),
    }
    harness.stop().await;
    report
}

/// The metadata key that marks the `metadata` check's requests.
const MARKER: &str = "x-conformance";

type Seen = Arc<Mutex<Option<(Metadata, Option<Arc<Peer>>)>>>;

/// Metadata reaches the agent's side intact (each key's values in order, nothing added), with
/// the peer filled in by the server side, whatever the client put there.
async fn metadata(
    harness: &(impl Harness + ?Sized),
    endpoint: &Endpoint,
    seen: &Seen,
) -> CheckResult {
    let connection = connect(harness, endpoint).await?;
    let mut request = Request::new(RequestMessage::Metadata(MetadataRequest {
        topics: vec![TOPIC.into()],
    }));
    let pairs = [
        (MARKER, "1".to_string()),
        (
            "authorization",
            "Bearer conformance.token-~!#$%&'*+/=?^_`{|}".to_string(),
        ),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        ),
        (MARKER, "second value, same key".into()),
        ("x-large", "v".repeat(4096)),
        ("x-space", " leading and trailing ".into()),
    ];
    for (key, value) in &pairs {
        request
            .metadata
            .insert(*key, value.clone())
            .map_err(|e| e.to_string())?;
    }
    // A client cannot pose as a peer: the server side decides it.
    let forged = Arc::new(Peer::at(Some(([203, 0, 113, 7], 1).into())));
    request.peer = Some(forged.clone());
    let sent = request.metadata.clone();
    let response = call(connection, request).await?;
    if !matches!(response, Response::Metadata(_)) {
        return Err(format!("metadata answered with {response:?}"));
    }
    let Some((received, peer)) = seen.lock().unwrap_or_else(PoisonError::into_inner).take() else {
        return Err("the agent saw no request carrying the metadata".into());
    };
    let by_key = |m: &Metadata| {
        let mut pairs: Vec<(String, String)> =
            m.iter().map(|(k, v)| (k.into(), v.into())).collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0)); // stable: a key's values stay in order
        pairs
    };
    if by_key(&received) != by_key(&sent) {
        return Err(format!(
            "sent {:?}, the agent received {:?}",
            by_key(&sent),
            by_key(&received)
        ));
    }
    match peer {
        None => Err("the agent's side got no peer".into()),
        Some(peer) if peer == forged => Err("the client's forged peer reached the agent".into()),
        Some(_) => Ok(()),
    }
}

fn batch(records: usize, value_len: usize) -> Bytes {
    let mut builder = BatchBuilder::new();
    let value = vec![b'c'; value_len];
    for i in 0..records {
        builder
            .append(1_700_000_000_000 + i as i64, None, Some(&value), &[])
            .expect("small record");
    }
    builder
        .finish(ProducerStamp::NONE, &NoCompression)
        .expect("uncompressed batch")
}

fn produce(batches: Vec<Bytes>) -> Request {
    Request::new(RequestMessage::Produce(ProduceRequest {
        acks: Acks::Leader as i32,
        timeout_ms: 10_000,
        batches: batches
            .into_iter()
            .map(|batch| PartitionBatch {
                topic: TOPIC.into(),
                partition: 0,
                batch,
            })
            .collect(),
    }))
}

async fn connect(
    harness: &(impl Harness + ?Sized),
    endpoint: &Endpoint,
) -> Result<Connection, String> {
    harness
        .transport()
        .connect(endpoint)
        .await
        .map_err(|e| format!("connect to {endpoint} failed: {}", chain(&e)))
}

async fn call(connection: Connection, request: Request) -> Result<Response, String> {
    match tokio::time::timeout(CALL_LIMIT, connection.oneshot(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(format!("request failed: {}", chain(&e))),
        Err(_) => Err(format!("no answer within {CALL_LIMIT:?} (response lost?)")),
    }
}

fn produced(response: Response) -> Result<ProduceResponse, String> {
    match response {
        Response::Produce(r) => Ok(r),
        other => Err(format!("produce answered with {other:?}")),
    }
}

/// An error and its sources, on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn round_trip(
    harness: &(impl Harness + ?Sized),
    endpoint: &Endpoint,
    agent: &MockAgent,
) -> CheckResult {
    let connection = connect(harness, endpoint).await?;
    let before = agent.next_offset(TOPIC, 0).unwrap_or(0);
    let sent = batch(10, 100);
    let response = produced(call(connection.clone(), produce(vec![sent.clone()])).await?)?;
    let result = response
        .results
        .first()
        .ok_or("produce answer has no result")?;
    if ErrorCode::from_wire(result.error_code) != ErrorCode::None || result.base_offset != before {
        return Err(format!(
            "produce answered {:?} at offset {}, expected success at {before}",
            ErrorCode::from_wire(result.error_code),
            result.base_offset
        ));
    }
    match call(
        connection.clone(),
        Request::new(RequestMessage::Metadata(MetadataRequest::default())),
    )
    .await?
    {
        Response::Metadata(m) if m.topics.iter().any(|t| t.name == TOPIC) => {}
        other => return Err(format!("metadata answered with {other:?}")),
    }
    let fetch = Request::new(RequestMessage::Fetch(FetchRequest {
        topic: TOPIC.into(),
        partition: 0,
        offset: before,
        max_bytes: 1 << 20,
        max_wait_ms: 0,
    }));
    let Response::Fetch(fetched) = call(connection.clone(), fetch).await? else {
        return Err("fetch answered with another message".into());
    };
    let first = fetched.batches.first().ok_or("fetch returned no batch")?;
    let batch = Batch::parse(first.clone(), &DecodeLimits::default())
        .map_err(|e| format!("fetched batch is invalid: {e}"))?;
    let records = batch
        .records(&Codecs::new())
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if first.slice(8..) != sent.slice(8..) || records.len() != 10 || records[0].offset != before {
        return Err("fetched batch differs from the one produced".into());
    }
    Ok(())
}

async fn large_batch(harness: &(impl Harness + ?Sized), endpoint: &Endpoint) -> CheckResult {
    let connection = connect(harness, endpoint).await?;
    // 90 % of the limit, in 64 KiB records.
    let records = harness.max_message_size() * 9 / 10 / (64 << 10);
    let response = produced(
        call(
            connection.clone(),
            produce(vec![batch(records.max(1), 64 << 10)]),
        )
        .await?,
    )?;
    match response
        .results
        .first()
        .map(|r| ErrorCode::from_wire(r.error_code))
    {
        Some(ErrorCode::None) => Ok(()),
        other => Err(format!(
            "a batch of 90% of the message limit was answered {other:?}"
        )),
    }
}

async fn oversized_frame(harness: &(impl Harness + ?Sized), endpoint: &Endpoint) -> CheckResult {
    let connection = connect(harness, endpoint).await?;
    let oversized = Bytes::from(vec![0u8; harness.max_message_size() + 1]);
    match connection.clone().oneshot(produce(vec![oversized])).await {
        Err(TransportError::FrameTooLarge { .. }) => {}
        Err(other) => return Err(format!("expected FrameTooLarge, got {}", chain(&other))),
        Ok(response) => return Err(format!("an oversized request was answered: {response:?}")),
    }
    // Only that request failed: the connection (or a new one) still works.
    let connection = connect(harness, endpoint).await?;
    produced(call(connection.clone(), produce(vec![batch(1, 10)])).await?).map(|_| ())
}

async fn concurrent_requests(
    harness: &(impl Harness + ?Sized),
    endpoint: &Endpoint,
    agent: &MockAgent,
) -> CheckResult {
    const REQUESTS: usize = 64;
    let connection = connect(harness, endpoint).await?;
    let before = agent.next_offset(TOPIC, 0).unwrap_or(0);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let connection = connection.clone();
        tasks.spawn(async move {
            (
                i,
                call(connection.clone(), produce(vec![batch(5, 50)])).await,
            )
        });
    }
    let mut offsets = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, response) = joined.map_err(|e| e.to_string())?;
        let response = produced(response.map_err(|e| format!("request {i}: {e}"))?)?;
        let result = response
            .results
            .first()
            .ok_or(format!("request {i}: no result"))?;
        if ErrorCode::from_wire(result.error_code) != ErrorCode::None {
            return Err(format!(
                "request {i} answered {:?}",
                ErrorCode::from_wire(result.error_code)
            ));
        }
        offsets.push(result.base_offset);
    }
    offsets.sort_unstable();
    let expected: Vec<i64> = (0..REQUESTS as i64).map(|i| before + i * 5).collect();
    if offsets != expected {
        return Err(format!(
            "{REQUESTS} concurrent requests got offsets {offsets:?}"
        ));
    }
    Ok(())
}

async fn request_timeout(
    harness: &(impl Harness + ?Sized),
    endpoint: &Endpoint,
    agent: &MockAgent,
) -> CheckResult {
    let connection = connect(harness, endpoint).await?;
    agent.set_stalled(true);
    let start = Instant::now();
    let deadline = start + Duration::from_millis(300);
    let outcome = connection
        .clone()
        .oneshot(produce(vec![batch(1, 10)]).with_deadline(deadline))
        .await;
    let waited = start.elapsed();
    agent.set_stalled(false);
    match outcome {
        Err(e) if e.is_retriable() && e.may_have_been_applied() => {}
        Err(e) => {
            return Err(format!(
                "deadline passed, but the error is not a retriable timeout: {}",
                chain(&e)
            ));
        }
        Ok(r) => return Err(format!("a stalled agent answered: {r:?}")),
    }
    if waited > Duration::from_secs(3) {
        return Err(format!("the 300 ms deadline was noticed after {waited:?}"));
    }
    Ok(())
}

async fn connection_drop(
    harness: &mut (impl Harness + ?Sized),
    endpoint: &Endpoint,
    agent: &MockAgent,
) -> CheckResult {
    let connection = connect(harness, endpoint).await?;
    agent.set_stalled(true);
    let seen = agent.stats().produce_requests;
    let in_flight =
        tokio::spawn(async move { connection.oneshot(produce(vec![batch(1, 10)])).await });
    // Stop the server once the request has reached the (stalled) agent: it is in flight.
    let reached = tokio::time::timeout(Duration::from_secs(10), async {
        while agent.stats().produce_requests == seen {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    if reached.is_err() {
        agent.set_stalled(false);
        return Err("the request never reached the agent".into());
    }
    harness.stop().await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), in_flight).await;
    agent.set_stalled(false);
    harness.start(agent.service()).await;
    match outcome {
        Err(_) => Err("a request in flight when the server went away never ended".into()),
        Ok(Err(e)) => Err(format!("request task failed: {e}")),
        Ok(Ok(Ok(r))) => Err(format!("a stalled agent answered: {r:?}")),
        Ok(Ok(Err(e))) if e.is_retriable() => Ok(()),
        Ok(Ok(Err(e))) => Err(format!(
            "the server went away, but the error is not retriable: {}",
            chain(&e)
        )),
    }
}

async fn restart_reconnect(
    harness: &mut (impl Harness + ?Sized),
    endpoint: &Endpoint,
    agent: &MockAgent,
) -> CheckResult {
    // A connection that worked before the restart must work after it, by itself: reconnecting
    // is the connection's business (the producer keeps its connections across agent restarts).
    let connection = connect(harness, endpoint).await?;
    call(connection.clone(), produce(vec![batch(1, 10)]))
        .await
        .map_err(|e| format!("before the restart: {e}"))?;
    harness.stop().await;
    let restarted = harness.start(agent.service()).await;
    if restarted != *endpoint {
        return Err(format!("restarted at {restarted}, not {endpoint}"));
    }
    // The first attempts may meet the old connection's end; a retriable error is allowed.
    let mut last = String::new();
    for _ in 0..20 {
        let attempt = connection.clone().oneshot(produce(vec![batch(1, 10)]));
        let Ok(outcome) = tokio::time::timeout(CALL_LIMIT, attempt).await else {
            return Err(format!("no answer within {CALL_LIMIT:?} after the restart"));
        };
        match outcome {
            Ok(Response::Produce(_)) => return Ok(()),
            Ok(other) => return Err(format!("unexpected answer {other:?}")),
            Err(e) if e.is_retriable() => last = chain(&e),
            Err(e) => return Err(format!("non-retriable error after restart: {}", chain(&e))),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "the connection made before the restart did not reconnect in 20 attempts: {last}"
    ))
}

async fn tls_mismatch(
    untrusted: std::sync::Arc<dyn crate::transport::Transport>,
    endpoint: &Endpoint,
) -> CheckResult {
    let attempt = async {
        let connection = untrusted.connect(endpoint).await?;
        connection
            .oneshot(Request::new(RequestMessage::Metadata(
                MetadataRequest::default(),
            )))
            .await
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(response)) => Err(format!("an untrusted server was answered: {response:?}")),
        Ok(Err(_)) => Ok(()),
        Err(_) => Err("connecting to an untrusted server hung".into()),
    }
}
