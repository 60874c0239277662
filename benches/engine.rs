//! The producer engine over the in-memory mock transport: records/s with no network.
//!
//! `cargo bench --bench engine` — sends 1,000,000 records of 100-byte values (10-byte keys,
//! 8 partitions, acks=Leader, default batch size and linger) per round, awaits every delivery,
//! and prints each round and the median of 5. The mock agent validates every batch (CRC, every
//! record) and assigns offsets, as the reference agent does, in the same process: the figure
//! covers producer and agent together on this machine's cores.
//!
//! Options (environment): `RECORDS` (default 1000000), `ROUNDS` (5), `VALUE_SIZE` (100),
//! `PARTITIONS` (8), `CODEC` (none | lz4 | zstd).

use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhouse::codec::{Codec, NoCompression};
use streamhouse::mock::MockAgent;
use streamhouse::payload::EventGenerator;
use streamhouse::producer::{Acks, Producer, ProducerRecord};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let records = env("RECORDS", 1_000_000);
    let rounds = env("ROUNDS", 5);
    let value_size = env("VALUE_SIZE", 100);
    let partitions = env("PARTITIONS", 8) as u32;
    let codec_name = std::env::var("CODEC").unwrap_or_else(|_| "none".into());
    let codec: Arc<dyn Codec> = match codec_name.as_str() {
        "lz4" => Arc::new(streamhouse_codecs::Lz4),
        "zstd" => Arc::new(streamhouse_codecs::Zstd::new(1)),
        _ => Arc::new(NoCompression),
    };

    // A pool of distinct events, cycled, so generating them is not what is measured.
    let mut generator = EventGenerator::new(42);
    let events: Vec<(Vec<u8>, Vec<u8>)> = (0..4096)
        .map(|_| generator.next_event(value_size))
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rates = Vec::new();
    for round in 0..rounds {
        let agent = MockAgent::new()
            .with_codecs(streamhouse_codecs::all())
            .with_topic("bench", partitions);
        let elapsed = runtime.block_on(async {
            let producer = Producer::builder(agent.transport(), agent.discovery())
                .acks(Acks::Leader)
                .codec_arc(codec.clone())
                .build()
                .expect("producer");
            let start = Instant::now();
            let mut deliveries = Vec::with_capacity(records);
            for i in 0..records {
                let (key, value) = &events[i % events.len()];
                let record = ProducerRecord::new("bench", value).key(key);
                deliveries.push(producer.send(record).await.expect("send"));
            }
            for delivery in deliveries {
                delivery.await.expect("delivery");
            }
            let elapsed = start.elapsed();
            producer
                .close(Duration::from_secs(10))
                .await
                .expect("close");
            elapsed
        });
        assert_eq!(agent.stats().records_appended, records as u64);
        let rate = records as f64 / elapsed.as_secs_f64();
        println!(
            "round {round}: {records} records in {:.3} s = {:.0} records/s ({:.0} MB/s of values)",
            elapsed.as_secs_f64(),
            rate,
            rate * value_size as f64 / 1e6
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "engine over mock, {value_size}-B values, {partitions} partitions, acks=Leader, codec {codec_name}: \
         median {:.0} records/s over {rounds} rounds",
        rates[rates.len() / 2]
    );
}
