//! `streamhouse bench`: the transport comparison benchmark.
//!
//! Runs a matrix of transports × codecs × value sizes against an embedded agent (in this
//! process, on loopback, in a temporary directory) or an external one, one fresh agent per cell,
//! and reports per cell: records/s, MB/s, send→ack latency percentiles, wire bytes per record,
//! compression ratio, CPU seconds per million records, peak RSS, and the percentage of the
//! transport's raw ceiling (pre-encoded batches through the bare client).

mod embedded;
mod payload;
mod report;
mod run;
mod system;

use crate::endpoints::ClientArgs;
use crate::produce::{AcksArg, CodecArg};
use anyhow::{Context, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use payload::{Payload, PayloadKind};
use report::Report;
use run::{CellResult, Settings};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use streamhouse::codec::{Codec, NoCompression};
use streamhouse::producer::Acks;
use system::Machine;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Transports to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "grpc,quic")]
    transports: Vec<String>,
    /// Security of the embedded agent, comma-separated, each a row of its own: `off`, or
    /// `token` (every request authenticated by a bearer token and authorized by an ACL rule,
    /// as `agent --token-file --acl-file` does). `off,token` measures what security costs.
    #[arg(long, value_delimiter = ',', default_value = "off", value_parser = ["off", "token"])]
    auth: Vec<String>,
    /// Codecs to compare, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "none,lz4,zstd"
    )]
    codecs: Vec<CodecArg>,
    /// Value sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1024")]
    value_size: Vec<usize>,
    /// How long each cell sends (e.g. 3s, 500ms).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    duration: Duration,
    /// Also stop each cell after this many records.
    #[arg(long)]
    records: Option<u64>,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// When a record counts as delivered.
    #[arg(long, value_enum, default_value = "leader")]
    acks: AcksArg,
    /// Producer batch size in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    batch_size: usize,
    /// Producer max request size in bytes (the producer's in-flight bytes per agent are up to
    /// five of these) [default: 1048576].
    #[arg(long)]
    max_request_size: Option<usize>,
    /// Producer buffer memory in bytes: what it holds of records sent and not yet
    /// acknowledged. With a slow acknowledgement (`--acks durable` on object storage) this,
    /// not the agent, bounds throughput: bytes/s ≤ buffer / ack latency [default: 32 MiB, or
    /// ten max request sizes when that is more].
    #[arg(long)]
    buffer_memory: Option<usize>,
    /// Producer requests in flight per agent [default: 5].
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Producer linger (e.g. 5ms).
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    linger: Duration,
    /// Tasks sending through the producer at once.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Values: json (realistic events, the default), random, zeros, or file:PATH.
    #[arg(long, default_value = "json")]
    payload: PayloadKind,
    /// Measure latency at a fixed rate instead of throughput at saturation. Without --rate,
    /// each cell first measures its peak, then runs at half of it.
    #[arg(long)]
    latency: bool,
    /// Records/s for --latency.
    #[arg(long, requires = "latency")]
    rate: Option<f64>,
    /// Skip the raw transport ceiling rows.
    #[arg(long)]
    no_raw: bool,
    /// Run against a running agent instead of an embedded one (its scheme is the only transport
    /// measured; the topic must exist).
    #[arg(long, value_name = "URLS")]
    bootstrap: Option<String>,
    /// PEM CA for an external quic:// or grpcs:// agent.
    #[arg(long, value_name = "FILE", requires = "bootstrap")]
    ca: Option<PathBuf>,
    /// File holding the bearer token for an external agent that authenticates.
    #[arg(long, value_name = "FILE", requires = "bootstrap")]
    token_file: Option<PathBuf>,
    /// Topic to use on an external agent.
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Write every figure and the machine to this JSON file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw throughput and p99 latency per cell into this SVG file.
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
    /// Replace the section between `<!-- bench:begin -->` and `<!-- bench:end -->` of this
    /// file (the README) with the results table (`bench-latency` markers with --latency)
    #[arg(long, value_name = "FILE")]
    update_readme: Option<PathBuf>,
    /// Give the embedded agent object storage (acks=durable then means "in an object committed
    /// to the metadata store"): `embedded` (a directory in each cell's temporary directory),
    /// or a URL (`file://DIR`, `s3://BUCKET[/PREFIX]` with --s3-endpoint or AWS_* variables).
    #[arg(long, value_name = "URL|embedded", conflicts_with = "bootstrap")]
    objects: Option<String>,
    /// The metadata store with --objects [default: SQLite in each cell's directory].
    #[arg(long, value_name = "URL", requires = "objects")]
    metadata: Option<String>,
    /// S3 endpoint for --objects s3://… (e.g. a local S3 server's http://127.0.0.1:PORT).
    #[arg(long, value_name = "URL", requires = "objects")]
    s3_endpoint: Option<String>,
    /// The agent's flush interval with --objects [default: 100ms].
    #[arg(long, value_parser = parse_duration, requires = "objects")]
    flush_interval: Option<Duration>,
    /// The agent's flush bytes with --objects [default: 8388608].
    #[arg(long, requires = "objects")]
    flush_bytes: Option<usize>,
    /// Internal: run one cell in this process (JSON spec) and print its result as JSON.
    #[arg(long, hide = true, value_name = "SPEC")]
    cell: Option<String>,
}

/// Everything one cell needs, passed to the child process that runs it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CellSpec {
    /// `raw`, `producer` or `latency`.
    mode: String,
    transport: String,
    codec: String,
    value_size: usize,
    payload: String,
    partitions: u32,
    acks: String,
    batch_size: usize,
    #[serde(default)]
    max_request_size: Option<usize>,
    #[serde(default)]
    buffer_memory: Option<usize>,
    #[serde(default)]
    max_in_flight: Option<usize>,
    linger_ms: f64,
    producers: usize,
    duration_s: f64,
    records: Option<u64>,
    rate: Option<f64>,
    bootstrap: Option<String>,
    ca: Option<PathBuf>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    /// The embedded agent authenticates and authorizes (`--auth token`).
    #[serde(default)]
    auth: bool,
    topic: String,
    #[serde(default)]
    storage: Option<embedded::Storage>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| s.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 3s, 500ms, 1m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

fn codec(arg: CodecArg) -> Arc<dyn Codec> {
    match arg {
        CodecArg::None => Arc::new(NoCompression),
        CodecArg::Lz4 => Arc::new(streamhouse_codecs::Lz4),
        CodecArg::Zstd => Arc::new(streamhouse_codecs::Zstd::default()),
    }
}

/// Runs one cell in a child process (so its CPU time and peak memory are its own), showing
/// the child's progress on `bar`.
async fn run_child(spec: &CellSpec, bar: &ProgressBar) -> anyhow::Result<CellResult> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let exe = std::env::current_exe().context("cannot find this program to run a cell")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("bench")
        .arg("--cell")
        .arg(serde_json::to_string(spec)?)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the cell process")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut errors = String::new();
    while let Some(line) = lines.next_line().await? {
        match line
            .strip_prefix("progress ")
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(n) => bar.set_position(n),
            None => {
                errors.push_str(&line);
                errors.push('\n');
            }
        }
    }
    let output = child.wait_with_output().await?;
    if !output.status.success() {
        bail!("{}", errors.trim());
    }
    serde_json::from_slice(&output.stdout).context("cannot read the cell's result")
}

/// The child's side: one cell, against a fresh embedded agent or the external one.
async fn run_cell(spec: &CellSpec) -> anyhow::Result<CellResult> {
    let acks = match spec.acks.as_str() {
        "none" => Acks::None,
        "leader" => Acks::Leader,
        _ => Acks::Durable,
    };
    let settings = Settings {
        acks,
        batch_size: spec.batch_size,
        max_request_size: spec.max_request_size,
        buffer_memory: spec.buffer_memory,
        max_in_flight: spec.max_in_flight,
        linger: Duration::from_secs_f64(spec.linger_ms / 1000.0),
        producers: spec.producers,
        duration: Duration::from_secs_f64(spec.duration_s),
        max_records: spec.records,
    };
    let codec = codec(match spec.codec.as_str() {
        "lz4" => CodecArg::Lz4,
        "zstd" => CodecArg::Zstd,
        _ => CodecArg::None,
    });
    let payload_kind: PayloadKind = spec.payload.parse().map_err(anyhow::Error::msg)?;
    let payload = Arc::new(Payload::generate(&payload_kind, spec.value_size)?);
    let (embedded, target) = match &spec.bootstrap {
        Some(list) => {
            let client = ClientArgs::new(list.clone(), spec.ca.clone())
                .with_token_file(spec.token_file.clone());
            let (transport, discovery) = client.connect().await?;
            (
                None,
                embedded::external(transport, discovery, &spec.topic).await?,
            )
        }
        None => {
            let agent = embedded::Embedded::start(
                "bench",
                spec.partitions,
                spec.storage.as_ref(),
                spec.auth,
            )
            .await?;
            let target = agent.target(&spec.transport, "bench", spec.partitions)?;
            (Some(agent), target)
        }
    };
    // Progress for the parent, at most five times a second.
    let reported = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ticker = {
        let reported = reported.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                eprintln!(
                    "progress {}",
                    reported.load(std::sync::atomic::Ordering::Relaxed)
                );
            }
        })
    };
    let tick = {
        let reported = reported.clone();
        move |n: u64| {
            reported.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let result = match spec.mode.as_str() {
        "raw" => run::raw_cell(&target, &settings, payload, 5, tick).await,
        "latency" => {
            let rate = match spec.rate {
                Some(rate) => rate,
                None => {
                    let mut peak = settings.clone();
                    peak.duration = settings.duration / 2;
                    let peak = run::producer_cell(
                        &target,
                        &peak,
                        codec.clone(),
                        payload.clone(),
                        None,
                        |_| {},
                    )
                    .await?;
                    peak.records_per_sec / 2.0
                }
            };
            run::producer_cell(&target, &settings, codec, payload, Some(rate), tick).await
        }
        _ => run::producer_cell(&target, &settings, codec, payload, None, tick).await,
    };
    ticker.abort();
    let mut result = result;
    if let Ok(result) = &mut result {
        result.auth = spec.auth;
    }
    if let Some(agent) = embedded {
        let storage = agent.stop().await?;
        if let Ok(result) = &mut result {
            result.storage = storage;
        }
    }
    result
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(spec) = &args.cell {
        let spec: CellSpec = serde_json::from_str(spec).context("bad --cell spec")?;
        let result = run_cell(&spec).await?;
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate >= 1.0)
    {
        bail!("--rate must be at least 1 record/s, not {rate}");
    }
    let acks = format!("{:?}", args.acks).to_lowercase();
    let transports: Vec<String> = match &args.bootstrap {
        Some(list) => {
            let scheme = list.split("://").next().unwrap_or_default().to_owned();
            vec![scheme]
        }
        None => {
            for t in &args.transports {
                if !matches!(t.as_str(), "grpc" | "quic") {
                    bail!("unknown transport {t:?} (embedded agent: grpc, quic)");
                }
            }
            args.transports.clone()
        }
    };
    if args.bootstrap.is_some() && args.auth.iter().any(|a| a != "off") {
        bail!("--auth applies to the embedded agent; with --bootstrap give --token-file");
    }
    let spec = |mode: &str, transport: &str, codec: &str, size: usize, auth: bool| CellSpec {
        auth,
        mode: mode.to_owned(),
        transport: transport.to_owned(),
        codec: codec.to_owned(),
        value_size: size,
        payload: args.payload.to_string(),
        partitions: args.partitions,
        acks: acks.clone(),
        batch_size: args.batch_size,
        max_request_size: args.max_request_size,
        buffer_memory: args.buffer_memory,
        max_in_flight: args.max_in_flight,
        linger_ms: args.linger.as_secs_f64() * 1000.0,
        producers: args.producers.max(1),
        duration_s: args.duration.as_secs_f64(),
        records: args.records,
        rate: args.rate,
        bootstrap: args.bootstrap.clone(),
        ca: args.ca.clone(),
        token_file: args.token_file.clone(),
        topic: args.topic.clone(),
        storage: args.objects.as_ref().map(|objects| embedded::Storage {
            objects: objects.clone(),
            metadata: args.metadata.clone(),
            s3_endpoint: args.s3_endpoint.clone(),
            flush_interval_ms: args.flush_interval.map(|d| d.as_secs_f64() * 1000.0),
            flush_bytes: args.flush_bytes,
        }),
    };
    let mut jobs = Vec::new();
    for &size in &args.value_size {
        for transport in &transports {
            if !args.no_raw && !args.latency {
                jobs.push(spec("raw", transport, "none", size, false));
            }
            for codec in &args.codecs {
                let mode = if args.latency { "latency" } else { "producer" };
                // The security variants of one cell run one after the other.
                for auth in &args.auth {
                    jobs.push(spec(
                        mode,
                        transport,
                        &format!("{codec:?}").to_lowercase(),
                        size,
                        auth == "token",
                    ));
                }
            }
        }
    }

    let bars = MultiProgress::new();
    let overall = bars.add(ProgressBar::new(jobs.len() as u64));
    overall.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} cells  {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    overall.set_prefix("bench");
    let mut results: Vec<CellResult> = Vec::new();
    for job in jobs {
        let name = format!(
            "{}/{}/{}B{}",
            job.transport,
            if job.mode == "raw" { "raw" } else { &job.codec },
            job.value_size,
            if job.auth { "/token" } else { "" }
        );
        let bar = bars.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} {spinner} {msg} {human_pos} records ({per_sec})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix("cell");
        bar.set_message(name.clone());
        bar.enable_steady_tick(Duration::from_millis(200));
        let mut result = run_child(&job, &bar)
            .await
            .with_context(|| format!("cell {name} failed"))?;
        if result.mode == "producer"
            && let Some(raw) = results.iter().find(|r| {
                r.mode == "raw"
                    && r.transport == result.transport
                    && r.value_size == result.value_size
            })
        {
            result.percent_of_raw = Some(100.0 * result.records_per_sec / raw.records_per_sec);
        }
        bar.finish_and_clear();
        overall.inc(1);
        results.push(result);
    }
    overall.finish_and_clear();

    let command = std::env::args()
        .enumerate()
        .map(|(i, a)| if i == 0 { "streamhouse".to_owned() } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    let report = Report {
        machine: Machine::detect(),
        command,
        settings: serde_json::json!({
            "duration_s": args.duration.as_secs_f64(),
            "records": args.records,
            "partitions": args.partitions,
            "acks": acks,
            "batch_size": args.batch_size,
            "max_request_size": args.max_request_size,
            "buffer_memory": args.buffer_memory,
            "max_in_flight": args.max_in_flight,
            "linger_ms": args.linger.as_secs_f64() * 1000.0,
            "producers": args.producers.max(1),
            "payload": args.payload.to_string(),
            "latency_mode": args.latency,
            "rate": args.rate,
            "embedded_agent": args.bootstrap.is_none(),
            "objects": args.objects,
            "metadata": args.metadata,
            "flush_interval_ms": args.flush_interval.map(|d| d.as_secs_f64() * 1000.0),
            "flush_bytes": args.flush_bytes,
            "process_per_cell": true,
        }),
        cells: results,
    };
    print!("{}", report::table(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.chart {
        std::fs::write(path, report::svg(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(readme) = &args.update_readme {
        let chart = args.chart.as_ref().and_then(|c| {
            let base = readme.parent().unwrap_or(std::path::Path::new("."));
            c.strip_prefix(base)
                .ok()
                .map(|p| p.display().to_string())
                .or_else(|| Some(c.display().to_string()))
        });
        let marker = if args.latency {
            "bench-latency"
        } else {
            "bench"
        };
        report::update_readme(readme, marker, &report::markdown(&report, chart.as_deref()))?;
    }
    let failed: u64 = report.cells.iter().map(|c| c.failed).sum();
    if failed > 0 {
        bail!("{failed} records failed during the benchmark");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3h").is_err());
    }
}
