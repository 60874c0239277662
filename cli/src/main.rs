//! `streamhouse`: run an agent, produce lines from stdin, consume them back, list topics.
//!
//! ```text
//! streamhouse agent   --data DIR --grpc 127.0.0.1:9092 --topic orders:6
//! seq 1 10000 | streamhouse produce --bootstrap grpc://127.0.0.1:9092 --topic orders
//! streamhouse consume --bootstrap grpc://127.0.0.1:9092 --topic orders
//! streamhouse topics  --bootstrap grpc://127.0.0.1:9092
//! ```
//!
//! Errors print one line (`error: …` with its causes) and exit with status 1.

mod acl;
mod agent;
mod bench;
mod cluster;
mod consume;
mod endpoints;
mod metrics_http;
mod produce;
mod topics;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// StreamHouse: a Kafka-class producer with swappable transports, and its reference agent.
#[derive(Parser)]
#[command(name = "streamhouse", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an agent: accept record batches over gRPC and/or QUIC and append them to partition
    /// logs in a data directory. Stops cleanly on Ctrl-C or SIGTERM (in-flight appends finish, logs are
    /// fsynced).
    Agent(Box<agent::Args>),
    /// Send every line of standard input as a record, then print what landed where.
    Produce(produce::Args),
    /// Compare transports and codecs: run the producer against an embedded agent on loopback
    /// (or a running one) and print records/s, latency, bytes and CPU per cell.
    Bench(Box<bench::Args>),
    /// Print the records of a topic (all partitions, or one) from an offset to the end.
    Consume(consume::Args),
    /// List, describe, create or delete topics on an agent.
    Topics(topics::Args),
    /// Look at an agent group in its metadata store: agents, heartbeats, leases, lag.
    Cluster(cluster::Args),
    /// List, add or remove the ACL rules of an agent (--file) or a group (--metadata).
    Acl(acl::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs redirected to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Agent(args) => agent::run(*args).await,
            Command::Produce(args) => produce::run(args).await,
            Command::Consume(args) => consume::run(args).await,
            Command::Bench(args) => bench::run(*args).await,
            Command::Topics(args) => topics::run(args).await,
            Command::Cluster(args) => cluster::run(args).await,
            Command::Acl(args) => acl::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
