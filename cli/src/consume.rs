//! `streamhouse consume`.

use crate::endpoints;
use anyhow::{Context, bail};
use std::io::Write;
use streamhouse::discovery::Discovery;
use streamhouse::reader::PartitionReader;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    connection: endpoints::ClientArgs,
    /// Topic to read.
    #[arg(long)]
    topic: String,
    /// Read only this partition (default: every partition, one after the other).
    #[arg(long)]
    partition: Option<u32>,
    /// First offset to read in each partition.
    #[arg(long, default_value_t = 0)]
    from_offset: i64,
    /// Print the key before the value, tab-separated.
    #[arg(long)]
    print_key: bool,
    /// Print partition and offset before the record, tab-separated.
    #[arg(long)]
    print_offset: bool,
    /// Stop after this many records.
    #[arg(long)]
    max_records: Option<u64>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let (transport, discovery) = args.connection.connect().await?;
    let metadata = discovery
        .topic(&args.topic)
        .await
        .with_context(|| format!("cannot describe topic {:?}", args.topic))?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p < metadata.partition_count().get() => vec![p],
        Some(p) => bail!(
            "topic {:?} has {} partitions; there is no partition {p}",
            args.topic,
            metadata.partition_count()
        ),
        None => (0..metadata.partition_count().get()).collect(),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    'partitions: for partition in partitions {
        let Some(leader) = metadata.leader(partition) else {
            continue;
        };
        let connection = transport
            .connect(&leader.endpoint)
            .await
            .with_context(|| format!("cannot connect to {}", leader.endpoint))?;
        let mut reader = PartitionReader::new(connection, &args.topic, partition, args.from_offset)
            .with_codecs(streamhouse_codecs::all());
        while let Some(records) = reader
            .next_batch()
            .await
            .with_context(|| format!("cannot read {}[{partition}]", args.topic))?
        {
            for record in records {
                if args.max_records.is_some_and(|max| printed >= max) {
                    break 'partitions;
                }
                if args.print_offset {
                    write!(out, "{partition}\t{}\t", record.offset)?;
                }
                if args.print_key {
                    let key = record.key.as_deref().unwrap_or_default();
                    write!(out, "{}\t", String::from_utf8_lossy(key))?;
                }
                let value = record.value.as_deref().unwrap_or_default();
                writeln!(out, "{}", String::from_utf8_lossy(value))?;
                printed += 1;
            }
        }
    }
    out.flush()?;
    Ok(())
}
