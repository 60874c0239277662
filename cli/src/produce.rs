//! `streamhouse produce`.

use crate::endpoints;
use anyhow::Context;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhouse::codec::{Codec, NoCompression};
use streamhouse::producer::{Acks, Producer, ProducerRecord};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum CodecArg {
    None,
    Lz4,
    Zstd,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum AcksArg {
    None,
    Leader,
    Durable,
}

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    connection: endpoints::ClientArgs,
    /// Topic to write to.
    #[arg(long)]
    topic: String,
    /// Split each line at the first occurrence of this string into key and value.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// Batch compression.
    #[arg(long, value_enum, default_value = "none")]
    codec: CodecArg,
    /// When a record counts as delivered.
    #[arg(long, value_enum, default_value = "durable")]
    acks: AcksArg,
    /// Write every record to this partition instead of letting the partitioner choose.
    #[arg(long)]
    partition: Option<u32>,
    /// Longest wait, in milliseconds, for a batch to fill before it is sent.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let (transport, discovery) = args.connection.connect().await?;
    let codec: Arc<dyn Codec> = match args.codec {
        CodecArg::None => Arc::new(NoCompression),
        CodecArg::Lz4 => Arc::new(streamhouse_codecs::Lz4),
        CodecArg::Zstd => Arc::new(streamhouse_codecs::Zstd::default()),
    };
    let acks = match args.acks {
        AcksArg::None => Acks::None,
        AcksArg::Leader => Acks::Leader,
        AcksArg::Durable => Acks::Durable,
    };
    let mut builder = Producer::builder(transport.clone(), discovery)
        .acks(acks)
        .codec_arc(codec)
        .linger(Duration::from_millis(args.linger_ms));
    if args.connection.has_credentials() && acks != Acks::None {
        // An agent that authenticates binds producer ids to principals: ask it for ours.
        let id =
            streamhouse::producer::init_producer_id(&*transport, &args.connection.first_seed()?)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        builder = builder.producer_id(id);
    }
    let producer = builder.build()?;

    let start = Instant::now();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut deliveries = Vec::new();
    while let Some(line) = lines
        .next_line()
        .await
        .context("cannot read standard input")?
    {
        let (key, value) = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(k), v),
                None => (None, line.as_str()),
            },
            None => (None, line.as_str()),
        };
        let mut record = ProducerRecord::new(&args.topic, value.as_bytes());
        if let Some(key) = key {
            record = record.key(key.as_bytes());
        }
        if let Some(partition) = args.partition {
            record = record.partition(partition);
        }
        let delivery = producer
            .send(record)
            .await
            .with_context(|| format!("cannot send to topic {:?}", args.topic))?;
        deliveries.push(delivery);
    }

    let total = deliveries.len();
    let mut ranges: BTreeMap<u32, (i64, i64, u64)> = BTreeMap::new();
    let mut failed = 0usize;
    let mut first_error = None;
    for delivery in deliveries {
        match delivery.await {
            Ok(meta) => {
                let range = ranges
                    .entry(meta.partition)
                    .or_insert((i64::MAX, i64::MIN, 0));
                range.0 = range.0.min(meta.offset);
                range.1 = range.1.max(meta.offset);
                range.2 += 1;
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    producer.close(Duration::from_secs(30)).await?;
    let elapsed = start.elapsed();
    println!(
        "{} records to {} in {:.3} s ({:.0} records/s)",
        total - failed,
        args.topic,
        elapsed.as_secs_f64(),
        (total - failed) as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    for (partition, (low, high, count)) in &ranges {
        if *low >= 0 {
            println!("  partition {partition}: {count} records, offsets {low}..={high}");
        } else {
            println!("  partition {partition}: {count} records (acks=none: offsets not reported)");
        }
    }
    match first_error {
        Some(e) => Err(anyhow::Error::new(e)
            .context(format!("{failed} of {total} records were not delivered"))),
        None => Ok(()),
    }
}
