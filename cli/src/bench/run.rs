//! Running one benchmark cell: the producer at saturation, the raw transport ceiling, or the
//! producer at a fixed rate.

use super::payload::Payload;
use super::system::{cpu_seconds, peak_rss_mib, reset_peak_rss};
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhouse::batch::{BatchBuilder, ProducerStamp};
use streamhouse::codec::{Codec, NoCompression};
use streamhouse::discovery::Discovery;
use streamhouse::producer::{Acks, DeliveryFuture, Producer, ProducerRecord};
use streamhouse::proto::v1::{self, ErrorCode, PartitionBatch, ProduceRequest};
use streamhouse::transport::{Endpoint, Request, RequestMessage, Response, Transport};
use tokio::sync::mpsc;
use tower::ServiceExt;

/// What one cell measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CellResult {
    pub(crate) transport: String,
    pub(crate) codec: String,
    pub(crate) value_size: usize,
    /// `producer`, `raw` or `latency`.
    pub(crate) mode: String,
    pub(crate) records: u64,
    pub(crate) failed: u64,
    pub(crate) seconds: f64,
    pub(crate) records_per_sec: f64,
    /// Value bytes per second, in MB (10^6).
    pub(crate) mb_per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) wire_bytes_per_record: f64,
    pub(crate) compression_ratio: f64,
    /// CPU seconds (user + system, producer and embedded agent together) per million records.
    pub(crate) cpu_seconds_per_million: f64,
    pub(crate) peak_rss_mib: f64,
    /// Records/s as a percentage of the same transport's raw ceiling for the value size.
    pub(crate) percent_of_raw: Option<f64>,
    /// For latency cells: the rate asked for.
    pub(crate) target_rate: Option<f64>,
    pub(crate) retries: u64,
    /// Produce requests sent, and batches they carried.
    #[serde(default)]
    pub(crate) requests: u64,
    #[serde(default)]
    pub(crate) batches: u64,
    /// With `--objects`: what the embedded agent wrote to object storage and the store.
    #[serde(default)]
    pub(crate) storage: Option<StorageFigures>,
    /// The agent authenticated and authorized every request (`--auth token`).
    #[serde(default)]
    pub(crate) auth: bool,
}

/// Object storage and metadata store work of one cell's agent (start to shutdown).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct StorageFigures {
    /// Objects written (PUTs that succeeded).
    pub(crate) objects: u64,
    /// Bytes in them.
    pub(crate) bytes: u64,
    /// Metadata store commits (one transaction per object).
    pub(crate) commits: u64,
    /// Failed PUT and commit attempts (retried).
    pub(crate) errors: u64,
}

impl StorageFigures {
    /// PUTs per GiB written.
    pub(crate) fn puts_per_gib(&self) -> f64 {
        if self.bytes == 0 {
            0.0
        } else {
            self.objects as f64 / (self.bytes as f64 / f64::from(1u32 << 30))
        }
    }
}

/// Everything a cell needs to reach the agent.
pub(crate) struct Target {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) discovery: Arc<dyn Discovery>,
    pub(crate) endpoint: Endpoint,
    pub(crate) topic: String,
    pub(crate) partitions: u32,
    /// Ask the agent for the producer id (it binds ids to principals).
    pub(crate) ask_producer_id: bool,
}

/// Producer settings shared by every cell.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) acks: Acks,
    pub(crate) batch_size: usize,
    /// The producer's largest request (its default when `None`).
    pub(crate) max_request_size: Option<usize>,
    /// The producer's buffer memory (see `producer_cell` for the default).
    pub(crate) buffer_memory: Option<usize>,
    /// The producer's requests in flight per agent (its default when `None`).
    pub(crate) max_in_flight: Option<usize>,
    pub(crate) linger: Duration,
    pub(crate) producers: usize,
    pub(crate) duration: Duration,
    pub(crate) max_records: Option<u64>,
}

/// Latency is sampled on one record in this many at saturation: ~50,000 samples a second at
/// 3 M records/s, plenty for a p999, while the benchmark's own bookkeeping (a clock read and a
/// waiting future per sample) stays out of the producer's way.
const SAMPLE: u64 = 64;
/// Samples per second aimed at when sending at a set rate (every record below it).
const SAMPLES_PER_SEC: f64 = 20_000.0;

/// One record in how many is timed, at `rate` records/s (None: saturation).
fn sample_every(rate: Option<f64>) -> u64 {
    rate.map_or(SAMPLE, |r| ((r / SAMPLES_PER_SEC) as u64).clamp(1, SAMPLE))
}

/// Records sent between two looks at the clock (and the pace); also the most samples handed
/// to the waiter at once.
const CHUNK: usize = 256;

type Chunk = Vec<(DeliveryFuture, Instant)>;

fn histogram() -> Histogram<u64> {
    // Microseconds up to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Awaits the sampled deliveries and records each latency when its ack arrives (not in send
/// order: partitions are acked independently, and waiting in order would charge one
/// partition's slowness to the records of another). Every record's outcome is counted by the
/// producer's own statistics; holding a future per record would make the benchmark, not the
/// producer, the memory and CPU hog.
async fn waiter(mut chunks: mpsc::UnboundedReceiver<Chunk>) -> Histogram<u64> {
    let mut latencies = histogram();
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            chunk = chunks.recv(), if open => match chunk {
                Some(chunk) => {
                    for (delivery, sent) in chunk {
                        pending.push(async move { (delivery.await, sent) });
                    }
                }
                None => open = false,
            },
            Some((outcome, sent)) = pending.next(), if !pending.is_empty() => {
                if outcome.is_ok() {
                    latencies.saturating_record(sent.elapsed().as_micros() as u64);
                }
            }
        }
    }
    latencies
}

/// The producer, at saturation (`rate` None) or paced at `rate` records/s.
pub(crate) async fn producer_cell(
    target: &Target,
    settings: &Settings,
    codec: Arc<dyn Codec>,
    payload: Arc<Payload>,
    rate: Option<f64>,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> anyhow::Result<CellResult> {
    let mut builder = Producer::builder(target.transport.clone(), target.discovery.clone())
        .acks(settings.acks)
        .batch_size(settings.batch_size)
        .linger(settings.linger)
        .codec_arc(codec.clone());
    if let Some(bytes) = settings.max_request_size {
        // Room for five requests in flight and as much again filling up.
        builder = builder
            .max_request_size(bytes)
            .buffer_memory((10 * bytes).max(32 << 20));
    }
    if let Some(bytes) = settings.buffer_memory {
        builder = builder.buffer_memory(bytes);
    }
    if let Some(requests) = settings.max_in_flight {
        builder = builder.max_in_flight(requests);
    }
    if target.ask_producer_id {
        let id = streamhouse::producer::init_producer_id(&*target.transport, &target.endpoint)
            .await
            .map_err(|e| anyhow::anyhow!("cannot get a producer id from the agent: {e}"))?;
        builder = builder.producer_id(id);
    }
    let producer = builder.build()?;
    // Warm up: metadata and connections, outside the measurement.
    let (key, value) = &payload.records[0];
    producer
        .send_and_wait(ProducerRecord::new(&target.topic, value).key(key))
        .await?;
    let before = producer.stats();

    reset_peak_rss();
    let cpu_start = cpu_seconds();
    let start = Instant::now();
    let deadline = start + settings.duration;
    let (tx, rx) = mpsc::unbounded_channel();
    let waiter = tokio::spawn(waiter(rx));
    let progress = Arc::new(progress);
    let per_producer_rate = rate.map(|r| r / settings.producers as f64);
    let per_producer_max = settings.max_records.map(|m| m / settings.producers as u64);
    let mut senders = Vec::new();
    for p in 0..settings.producers {
        let producer = producer.clone();
        let payload = payload.clone();
        let topic = target.topic.clone();
        let tx = tx.clone();
        let progress = progress.clone();
        senders.push(tokio::spawn(async move {
            send_loop(
                &producer,
                &topic,
                &payload,
                p,
                deadline,
                per_producer_rate,
                per_producer_max,
                &tx,
                &*progress,
            )
            .await
        }));
    }
    drop(tx);
    for sender in senders {
        sender.await??;
    }
    producer.flush().await;
    let latencies = waiter.await?;
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    let rss = peak_rss_mib();
    let stats = producer.stats();
    let acked = stats.records_acked - before.records_acked;
    let failed = stats.records_failed - before.records_failed;
    producer.close(Duration::from_secs(30)).await?;

    let wire = stats.wire_bytes - before.wire_bytes;
    let uncompressed = stats.uncompressed_bytes - before.uncompressed_bytes;
    let value_size = payload.records[0].1.len();
    Ok(CellResult {
        auth: false,
        transport: target.endpoint.scheme().to_owned(),
        codec: codec.id().name().unwrap_or("custom").to_owned(),
        value_size,
        mode: if rate.is_some() {
            "latency"
        } else {
            "producer"
        }
        .to_owned(),
        records: acked,
        failed,
        seconds,
        records_per_sec: acked as f64 / seconds,
        mb_per_sec: (acked * value_size as u64) as f64 / seconds / 1e6,
        p50_ms: quantile(&latencies, 0.50),
        p99_ms: quantile(&latencies, 0.99),
        p999_ms: quantile(&latencies, 0.999),
        wire_bytes_per_record: wire as f64 / acked.max(1) as f64,
        compression_ratio: if wire == 0 {
            1.0
        } else {
            uncompressed as f64 / wire as f64
        },
        cpu_seconds_per_million: cpu / (acked.max(1) as f64 / 1e6),
        peak_rss_mib: rss,
        percent_of_raw: None,
        target_rate: rate,
        retries: stats.retries - before.retries,
        requests: stats.requests - before.requests,
        batches: stats.batches - before.batches,
        storage: None,
    })
}

#[allow(clippy::too_many_arguments)]
async fn send_loop(
    producer: &Producer,
    topic: &str,
    payload: &Payload,
    offset: usize,
    deadline: Instant,
    rate: Option<f64>,
    max: Option<u64>,
    tx: &mpsc::UnboundedSender<Chunk>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> anyhow::Result<()> {
    let records = &payload.records;
    let mut chunk: Chunk = Vec::with_capacity(CHUNK);
    let mut sent = 0u64;
    let start = Instant::now();
    let mut i = (offset * 7919) % records.len();
    let sample = sample_every(rate);
    loop {
        // Check the clock (and the pace) once per 256 records, not per record.
        let now = Instant::now();
        if now >= deadline || max.is_some_and(|m| sent >= m) {
            break;
        }
        let burst = match rate {
            Some(rate) => {
                let due = (now - start).as_secs_f64() * rate;
                if (sent as f64) >= due {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    continue;
                }
                ((due - sent as f64) as u64).clamp(1, CHUNK as u64)
            }
            None => CHUNK as u64,
        };
        for _ in 0..burst {
            let (key, value) = &records[i];
            i += 1;
            if i == records.len() {
                i = 0;
            }
            let record = ProducerRecord::new(topic, value).key(key);
            if sent.is_multiple_of(sample) {
                let stamp = Instant::now();
                chunk.push((producer.send(record).await?, stamp));
            } else {
                // Not sampled: the future is dropped, the delivery goes on.
                drop(producer.send(record).await?);
            }
            sent += 1;
        }
        // Hand the samples over after every burst: a sample the waiter gets late is measured
        // late (its ack may have come long before), so waiting to fill a chunk would add up
        // to CHUNK x sample / rate to the figures at low rates.
        if !chunk.is_empty() {
            let _ = tx.send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)));
        }
        progress(burst);
        // Let the other tasks of this worker (the delivery waiter, request tasks) run: the
        // send path rarely blocks, so without this the loop could hold its worker.
        tokio::task::yield_now().await;
    }
    Ok(())
}

fn quantile(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The raw ceiling: pre-encoded batches pushed through the bare transport client, as many
/// requests in flight as the producer allows, no producer engine.
pub(crate) async fn raw_cell(
    target: &Target,
    settings: &Settings,
    payload: Arc<Payload>,
    in_flight: usize,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> anyhow::Result<CellResult> {
    // One batch of `batch_size` per partition, built once; every request carries them all.
    let mut batches = Vec::new();
    let mut per_request = 0u64;
    let mut uncompressed = 0u64;
    let mut i = 0;
    for partition in 0..target.partitions {
        let mut builder = BatchBuilder::with_capacity(settings.batch_size);
        loop {
            let (key, value) = &payload.records[i % payload.records.len()];
            if !builder.append_within(
                settings.batch_size,
                1_764_115_200_000,
                Some(key),
                Some(value),
                &[],
            )? {
                break;
            }
            i += 1;
        }
        per_request += u64::from(builder.record_count());
        uncompressed += builder.encoded_len() as u64;
        batches.push(PartitionBatch {
            topic: target.topic.clone(),
            partition,
            batch: builder.finish(ProducerStamp::NONE, &NoCompression)?,
        });
    }
    let request = ProduceRequest {
        acks: match settings.acks {
            Acks::None => v1::Acks::None,
            Acks::Leader => v1::Acks::Leader,
            _ => v1::Acks::Durable,
        } as i32,
        timeout_ms: 30_000,
        batches,
    };
    let connection = target.transport.connect(&target.endpoint).await?;
    reset_peak_rss();
    let cpu_start = cpu_seconds();
    let start = Instant::now();
    let deadline = start + settings.duration;
    let progress = Arc::new(progress);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let connection = connection.clone();
        let request = request.clone();
        let progress = progress.clone();
        let max = settings.max_records.map(|m| m / in_flight as u64);
        tasks.spawn(async move {
            let mut latencies = histogram();
            let mut records = 0u64;
            while Instant::now() < deadline && max.is_none_or(|m| records < m) {
                let sent = Instant::now();
                let message = RequestMessage::Produce(request.clone());
                let Response::Produce(answer) =
                    connection.clone().oneshot(Request::new(message)).await?
                else {
                    anyhow::bail!("unexpected answer");
                };
                if let Some(bad) = answer
                    .results
                    .iter()
                    .find(|r| r.error_code != ErrorCode::None as i32)
                {
                    anyhow::bail!(
                        "agent refused a raw batch: {:?} {}",
                        ErrorCode::from_wire(bad.error_code),
                        bad.error_message
                    );
                }
                latencies.saturating_record(sent.elapsed().as_micros() as u64);
                records += per_request;
                progress(per_request);
            }
            Ok::<_, anyhow::Error>((latencies, records))
        });
    }
    let mut latencies = histogram();
    let mut records = 0;
    while let Some(done) = tasks.join_next().await {
        let (h, r) = done??;
        latencies.add(&h).ok();
        records += r;
    }
    let requests = latencies.len();
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    let value_size = payload.records[0].1.len();
    let wire: u64 = request.batches.iter().map(|b| b.batch.len() as u64).sum();
    Ok(CellResult {
        auth: false,
        transport: target.endpoint.scheme().to_owned(),
        codec: "raw".to_owned(),
        value_size,
        mode: "raw".to_owned(),
        records,
        failed: 0,
        seconds,
        records_per_sec: records as f64 / seconds,
        mb_per_sec: (records * value_size as u64) as f64 / seconds / 1e6,
        p50_ms: quantile(&latencies, 0.50),
        p99_ms: quantile(&latencies, 0.99),
        p999_ms: quantile(&latencies, 0.999),
        wire_bytes_per_record: wire as f64 / per_request as f64,
        compression_ratio: uncompressed as f64 / wire as f64,
        cpu_seconds_per_million: cpu / (records.max(1) as f64 / 1e6),
        peak_rss_mib: peak_rss_mib(),
        percent_of_raw: Some(100.0),
        target_rate: None,
        retries: 0,
        requests,
        batches: requests * u64::from(target.partitions),
        storage: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_rates_time_every_record_fast_ones_a_sample() {
        assert_eq!(sample_every(Some(1_000.0)), 1);
        assert_eq!(sample_every(Some(19_999.0)), 1);
        assert_eq!(sample_every(Some(1_000_000.0)), 50);
        assert_eq!(sample_every(Some(1e9)), SAMPLE);
        assert_eq!(sample_every(None), SAMPLE);
    }
}
