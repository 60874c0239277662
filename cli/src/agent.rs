//! `streamhouse agent`.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use streamhouse::serve::ServerLimits;
use streamhouse::transport::Endpoint;
use streamhouse::transport::tls::ServerTls;
use streamhouse_agent::{Agent, AgentConfig, ListenOptions, Listeners, RemoteConfig, TopicSpec};
use streamhouse_grpc::GrpcConfig;
use streamhouse_quic::{QuicConfig, dev_certificate};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("authorization").args(["acl_file", "acl_store"])))]
pub(crate) struct Args {
    /// Directory of the partition logs (created if missing).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Address to serve gRPC on; port 0 picks a free port (printed at start).
    #[arg(long, value_name = "ADDR", required_unless_present = "quic")]
    grpc: Option<SocketAddr>,
    /// Address to serve QUIC on (UDP); needs a certificate (--tls-cert/--tls-key or
    /// --dev-cert). Both transports can run at once, on the same logs.
    #[arg(long, value_name = "ADDR")]
    quic: Option<SocketAddr>,
    /// PEM certificate (chain) for QUIC, and for gRPC with --grpc-tls.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "dev_cert"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Development only: use DIR/cert.pem and DIR/key.pem, writing a self-signed certificate
    /// for localhost, 127.0.0.1 and ::1 there first if missing. Clients trust it with
    /// `--ca DIR/cert.pem`.
    #[arg(long, value_name = "DIR")]
    dev_cert: Option<PathBuf>,
    /// Require clients to present a certificate signed by this CA (mutual TLS); needs a
    /// server certificate and --acl-file or --acl-store. A client's principal is the first DNS name among its
    /// certificate's subject alternative names.
    #[arg(long, value_name = "FILE", requires = "authorization")]
    client_ca: Option<PathBuf>,
    /// Authenticate every request by bearer token: a file of `sha256:HEX PRINCIPAL` lines, the
    /// hash of each token (`printf %s TOKEN | sha256sum`). Needs --acl-file or --acl-store: nothing is allowed
    /// without a rule. SIGHUP reads it (and --acl-file) again: a token removed stops working.
    #[arg(long, value_name = "FILE", requires = "authorization")]
    token_file: Option<PathBuf>,
    /// Authenticate bearer tokens that are JWTs signed with this key: the HS256 secret's
    /// bytes (at least 32), or the PEM public key for RS256/ES256. The principal is `sub`.
    /// Needs --acl-file or --acl-store.
    #[arg(long, value_name = "FILE", requires_all = ["jwt_algorithm", "authorization"])]
    jwt_key: Option<PathBuf>,
    /// The one algorithm JWTs must be signed with: HS256, RS256 or ES256.
    #[arg(long, value_name = "ALG", requires = "jwt_key")]
    jwt_algorithm: Option<streamhouse_auth::JwtAlgorithm>,
    /// Require JWTs to carry this issuer (`iss`).
    #[arg(long, value_name = "ISSUER", requires = "jwt_key")]
    jwt_issuer: Option<String>,
    /// Require JWTs to name this audience (`aud`).
    #[arg(long, value_name = "AUDIENCE", requires = "jwt_key")]
    jwt_audience: Option<String>,
    /// Who may do what, one rule per line: `allow PRINCIPAL OPERATION[,…] TOPIC` (operations
    /// produce, fetch, describe, create, delete, admin, all; TOPIC a name, `prefix*` or `*`).
    /// Everything else is denied. Needs --token-file or --client-ca (who the principals are).
    #[arg(long, value_name = "FILE")]
    acl_file: Option<PathBuf>,
    /// Authorize by the ACL rules in the metadata store (--metadata), shared by every agent
    /// of the group and managed with `streamhouse acl --metadata URL`; read again every 2 s.
    #[arg(long, requires = "metadata")]
    acl_store: bool,
    /// Limit a principal's produce rate, as PRINCIPAL=RATE (repeatable; `*=RATE` for every
    /// principal without its own): bytes per second, with an optional kB, MB, GB (decimal) or
    /// KiB, MiB, GiB suffix, e.g. `payments=1MB`. Over it, answers carry `throttle_ms` and a
    /// client that sends anyway is answered THROTTLED.
    #[arg(long = "quota", value_name = "PRINCIPAL=RATE", value_parser = parse_quota, requires = "authorization")]
    quotas: Vec<(String, u64)>,
    /// With authentication: most connections one principal may hold open at once; requests on
    /// one more are refused LIMIT_EXCEEDED.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(usize))]
    max_connections_per_principal: usize,
    /// Serve a non-loopback address without TLS or without authentication (refused otherwise).
    #[arg(long)]
    insecure: bool,
    /// Serve gRPC over TLS too (grpcs://), with the same certificate as QUIC.
    #[arg(long, requires = "grpc")]
    grpc_tls: bool,
    /// Topic to create if missing, as NAME:PARTITIONS (repeatable). An existing topic with
    /// fewer partitions grows to PARTITIONS (logged: keys map to other partitions after it);
    /// one with more keeps them.
    #[arg(long = "topic", value_name = "NAME:PARTITIONS")]
    topics: Vec<TopicSpec>,
    /// Create unknown topics on first use with this many partitions. With authentication, only
    /// for principals the ACLs give `create` on the topic's name.
    #[arg(long, value_name = "PARTITIONS", value_parser = clap::value_parser!(u32).range(1..))]
    auto_create: Option<u32>,
    /// Seconds a shutdown (SIGTERM, Ctrl-C) waits for requests in flight before it drops
    /// them [default: 30].
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    shutdown_timeout: u64,
    /// Most bytes the batches of one produce request may decompress to together; the rest
    /// answer THROTTLED and are sent again [default: 268435456, 256 MiB].
    #[arg(long, value_name = "BYTES")]
    max_request_decompressed_bytes: Option<usize>,
    /// Most batch bytes waiting to be written; past it batches answer THROTTLED and the
    /// producer holds off [default: 67108864, 64 MiB].
    #[arg(long, value_name = "BYTES")]
    max_queued_bytes: Option<usize>,
    /// Most topics this agent holds; auto-creation past it is refused (LIMIT_EXCEEDED)
    /// [default: 1000].
    #[arg(long, value_name = "N")]
    max_topics: Option<usize>,
    /// Connections open at once, all clients together; more are closed as soon as accepted
    /// [default: 4096, lowered to leave a quarter of the open-file limit (at least 256) to the
    /// partition logs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// Connections open at once from one IP address [default: 256].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections_per_peer: Option<u64>,
    /// Close a connection after this many seconds without a request [default: 600].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: Option<u64>,
    /// Requests one connection may have in progress at once (HTTP/2 and QUIC streams)
    /// [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_streams_per_connection: Option<u32>,
    /// Seconds a request may take to arrive whole, and its answer to be read, before the
    /// stream is ended [default: 60 for gRPC, 30 for QUIC].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout: Option<u64>,
    /// Request bytes received and not yet handled, all connections together; past it the
    /// agent stops reading and clients are held back by flow control
    /// [default: 67108864, 64 MiB].
    #[arg(long, value_name = "BYTES")]
    max_request_bytes: Option<usize>,
    /// The same, for the connections of one IP address together
    /// [default: 33554432, 32 MiB].
    #[arg(long, value_name = "BYTES")]
    max_peer_request_bytes: Option<usize>,
    /// The same, per connection; more than one largest message (16 MiB)
    /// [default: 20971520, 20 MiB].
    #[arg(long, value_name = "BYTES")]
    max_connection_request_bytes: Option<usize>,
    /// Requests in progress at once (HTTP/2 and QUIC streams), all clients together; past it
    /// new requests are refused at once as unavailable (clients retry) [default: 1024].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_requests: Option<u64>,
    /// The same, for the clients of one IP address together [default: 256].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_requests_per_peer: Option<u64>,
    /// Receive-window bytes (HTTP/2 and QUIC) granted to connections, all together: what
    /// clients can make the agent buffer before it reads. The first connections get the full
    /// 8 MiB window, later ones smaller windows as this runs out, down to 64 KiB; one IP
    /// address gets at most half [default: 33554432, 32 MiB].
    #[arg(long, value_name = "BYTES")]
    max_window_bytes: Option<usize>,
    /// Fetch answers read and not yet delivered, all clients together; past it fetches wait
    /// [default: 33554432, 32 MiB].
    #[arg(long, value_name = "BYTES")]
    max_fetch_answer_bytes: Option<usize>,
    /// The same, for the clients of one IP address together: one client that never reads its
    /// answers waits on its own [default: 16777216, 16 MiB].
    #[arg(long, value_name = "BYTES")]
    max_peer_answer_bytes: Option<usize>,
    /// Serve Prometheus metrics on this address, at `GET /metrics` only. The names carry
    /// topic names: a non-loopback address needs --metrics-token-file (or --insecure).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Require scrapes to send `Authorization: Bearer TOKEN`, the token being this file's
    /// content (surrounding whitespace ignored).
    #[arg(long, value_name = "FILE", requires = "metrics")]
    metrics_token_file: Option<PathBuf>,
    /// URL clients should use to reach this agent (default: the bound addresses).
    #[arg(long, value_name = "URL")]
    advertise: Vec<Endpoint>,
    /// This agent's id in metadata.
    #[arg(long, default_value_t = 0)]
    id: u32,
    /// Roll segment files at this size in bytes [default: 268435456, 256 MiB].
    #[arg(long, value_name = "BYTES")]
    segment_bytes: Option<u64>,
    /// Refuse new batches larger than this many bytes [default: 4194304, 4 MiB]. Batches
    /// already stored are kept whatever this says.
    #[arg(long, value_name = "BYTES")]
    max_batch_bytes: Option<usize>,
    /// Refuse new records larger than this many bytes [default: 1048576, 1 MiB].
    #[arg(long, value_name = "BYTES")]
    max_record_bytes: Option<usize>,
    /// Idempotent producers tracked per partition; a new one past this is refused with
    /// PRODUCER_STATE_FULL until one has been idle for --producer-idle-expiry-secs
    /// [default: 10000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_producers_per_partition: Option<u32>,
    /// Seconds a producer must be idle before its state may be forgotten to make room. Keep it
    /// above the producers' delivery timeout (120 s by default), or a late retry may be
    /// appended twice [default: 900].
    #[arg(long, value_name = "SECONDS")]
    producer_idle_expiry_secs: Option<u64>,
    /// Keep the durable state in this metadata store: `sqlite://PATH` (embedded) or
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DB`. Needs --objects. Without both, the local disk
    /// is the only storage (acks=durable means fsync).
    #[arg(long, value_name = "URL", requires = "objects")]
    metadata: Option<String>,
    /// Object storage for the records: `file://DIR` (embedded) or `s3://BUCKET[/PREFIX]`
    /// (builds with the `s3` feature; endpoint, region and credentials from the --s3-* flags
    /// or the usual AWS_* environment variables). Needs --metadata.
    #[arg(long, value_name = "URL", requires = "metadata")]
    objects: Option<String>,
    /// Longest time new batches wait before they are written to an object, e.g. `100ms`,
    /// `1s` [default: 100ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "objects")]
    flush_interval: Option<std::time::Duration>,
    /// New bytes that start writing an object at once; also the largest object
    /// [default: 8388608, 8 MiB].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..), requires = "objects")]
    flush_bytes: Option<u64>,
    /// How long an acks=durable batch waits for its commit while object storage or the
    /// metadata store fails, before it is answered STORAGE_ERROR (retriable) [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "objects")]
    durable_timeout: Option<std::time::Duration>,
    /// S3 endpoint URL, e.g. `http://127.0.0.1:9000` (default: AWS_ENDPOINT_URL, else AWS).
    #[arg(long, value_name = "URL", requires = "objects")]
    s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long, value_name = "REGION", requires = "objects")]
    s3_region: Option<String>,
    /// S3 access key id (default: AWS_ACCESS_KEY_ID).
    #[arg(long, value_name = "ID", requires = "objects")]
    s3_access_key_id: Option<String>,
    /// S3 secret access key (default: AWS_SECRET_ACCESS_KEY; prefer the variable: a flag shows
    /// in the process list).
    #[arg(long, value_name = "SECRET", requires = "objects")]
    s3_secret_access_key: Option<String>,
    /// Send object bodies unsigned (`UNSIGNED-PAYLOAD`): the agent does not hash every object
    /// for the request signature, and the server need not check it. Safe over `https`, where
    /// TLS protects the body; over plain `http` the signature is its only integrity check
    /// (default: AWS_UNSIGNED_PAYLOAD, else signed).
    #[arg(long, requires = "objects")]
    s3_unsigned_payload: bool,
    /// Join this agent group: agents sharing --metadata and --objects, each leading the
    /// partitions whose lease it holds in the metadata store (give each a distinct --id and
    /// reachable --advertise endpoints). Without it the agent leads every partition alone.
    #[arg(long, value_name = "NAME", requires = "objects")]
    group: Option<String>,
    /// How long a partition lease lasts without renewal (e.g. 5s, 1500ms; 500ms to 1h); a
    /// partition whose leader died moves to another agent after about this long [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "group")]
    lease_ttl: Option<std::time::Duration>,
}

/// `PRINCIPAL=RATE`, the rate in bytes per second with an optional unit (`1MB`, `512KiB`,
/// `2000000`, a trailing `/s` allowed).
fn parse_quota(text: &str) -> Result<(String, u64), String> {
    let (principal, rate) = text
        .split_once('=')
        .ok_or("expected PRINCIPAL=RATE, e.g. payments=1MB")?;
    if principal.is_empty() {
        return Err("no principal before '='".into());
    }
    let rate = rate.trim().trim_end_matches("/s");
    let split = rate
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rate.len());
    let (number, unit) = rate.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("bad rate {rate:?}: a number of bytes per second"))?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?}: kB, MB, GB, KiB, MiB or GiB"
            ));
        }
    };
    let bytes = number
        .checked_mul(scale)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("rate {rate:?} is zero or too large"))?;
    Ok((principal.to_owned(), bytes))
}

/// A duration: `250ms`, `2s`, `1m`, or a bare number of milliseconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration such as 100ms or 2s"))?;
    let duration = match unit {
        "" | "ms" => std::time::Duration::from_millis(n),
        "s" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(
            n.checked_mul(60)
                .ok_or_else(|| format!("{text:?}: too long"))?,
        ),
        _ => return Err(format!("{text:?}: the unit must be ms, s or m")),
    };
    if duration.is_zero() {
        return Err(format!("{text:?}: must be above zero"));
    }
    Ok(duration)
}

/// The agent's certificate, from files or the development directory.
fn certificate(args: &Args) -> anyhow::Result<Option<ServerTls>> {
    let (cert, key) = match (&args.tls_cert, &args.tls_key, &args.dev_cert) {
        (Some(cert), Some(key), _) => (cert.clone(), key.clone()),
        (_, _, Some(dir)) => {
            let dev = dev_certificate(dir).with_context(|| {
                format!(
                    "cannot create a development certificate in {}",
                    dir.display()
                )
            })?;
            (dev.cert, dev.key)
        }
        _ => return Ok(None),
    };
    let mut tls = ServerTls::from_files(&cert, &key).context("cannot load the certificate")?;
    if let Some(ca) = &args.client_ca {
        tls = tls
            .with_client_ca_file(ca)
            .context("cannot load --client-ca")?;
    }
    Ok(Some(tls))
}

/// Connections, idle timeout, request budgets and stream limits from the command line, and the
/// connection cap fitted under the open-file limit `fd_limit`.
fn server_limits(args: &Args, fd_limit: u64) -> (ServerLimits, GrpcConfig, QuicConfig) {
    let mut limits = ServerLimits::default();
    let fitting = streamhouse_agent::connection_limit_for(fd_limit);
    limits.max_connections = match args.max_connections {
        Some(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > fitting {
                eprintln!(
                    "warning: --max-connections {n} leaves less than a quarter of the open-file \
                     limit ({fd_limit}) to the partition logs; a flood of connections may take \
                     partitions offline"
                );
            }
            n
        }
        None => limits.max_connections.min(fitting).max(1),
    };
    if let Some(n) = args.max_connections_per_peer {
        limits.max_connections_per_peer = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(secs) = args.idle_timeout {
        limits.idle_timeout = Duration::from_secs(secs);
    }
    if let Some(bytes) = args.max_request_bytes {
        limits.max_request_bytes = bytes;
    }
    if let Some(bytes) = args.max_peer_answer_bytes {
        limits.max_peer_answer_bytes = bytes;
    }
    if let Some(n) = args.max_requests {
        limits.max_requests = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = args.max_requests_per_peer {
        limits.max_requests_per_peer = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(bytes) = args.max_window_bytes {
        limits.max_window_bytes = bytes;
    }
    if let Some(bytes) = args.max_peer_request_bytes {
        limits.max_peer_request_bytes = bytes;
    }
    if let Some(bytes) = args.max_connection_request_bytes {
        limits.max_connection_request_bytes = bytes;
    }
    // Checked against the message limits when the listeners are bound.
    let mut grpc = GrpcConfig::default();
    let mut quic = QuicConfig::default();
    if let Some(n) = args.max_streams_per_connection {
        grpc.max_concurrent_streams = n;
        quic.max_concurrent_streams = n;
    }
    if let Some(secs) = args.request_timeout {
        grpc.request_timeout = Duration::from_secs(secs);
        quic.read_timeout = Duration::from_secs(secs);
        quic.write_timeout = Duration::from_secs(secs);
    }
    (limits, grpc, quic)
}

/// Refuses settings that would serve less securely than they look: a client CA without a
/// certificate (it would be ignored) or beside plaintext gRPC, a wildcard address advertised
/// as-is, a non-loopback listener (or `/metrics`) without TLS or without authentication
/// (unless --insecure).
fn check_security(args: &Args, tls: bool) -> anyhow::Result<()> {
    if args.client_ca.is_some() && !tls {
        bail!(
            "--client-ca needs a server certificate (--tls-cert/--tls-key or --dev-cert); without one it would be ignored and clients served without TLS"
        );
    }
    if args.client_ca.is_some() && args.grpc.is_some() && !args.grpc_tls && !args.insecure {
        bail!(
            "--client-ca applies to QUIC and grpcs:// only: plaintext gRPC on {} would serve clients without certificates; add --grpc-tls, or --insecure to serve it anyway",
            args.grpc.map(|a| a.to_string()).unwrap_or_default()
        );
    }
    let addrs = args.grpc.iter().chain(args.quic.iter());
    if args.advertise.is_empty()
        && let Some(wildcard) = addrs.clone().find(|a| a.ip().is_unspecified())
    {
        bail!(
            "{wildcard} is not an address clients can use: give --advertise URL (e.g. grpc://agent-1.internal:{})",
            wildcard.port()
        );
    }
    // `::ffff:127.0.0.1` is loopback too.
    let loopback = |a: &SocketAddr| a.ip().to_canonical().is_loopback();
    if !args.insecure {
        let authenticated =
            args.token_file.is_some() || args.jwt_key.is_some() || args.client_ca.is_some();
        if let Some(grpc) = args.grpc.filter(|a| !loopback(a))
            && !(args.grpc_tls && authenticated)
        {
            let missing = match (args.grpc_tls, authenticated) {
                (false, false) => {
                    "without TLS and authentication: add --grpc-tls and --token-file/--acl-file (or --client-ca)"
                }
                (false, true) => "without TLS: add --grpc-tls",
                _ => "without authentication: add --token-file/--acl-file (or --client-ca)",
            };
            bail!("refusing to serve gRPC on non-loopback {grpc} {missing}, or --insecure");
        }
        if let Some(quic) = args.quic.filter(|a| !loopback(a))
            && !authenticated
        {
            bail!(
                "refusing to serve QUIC on non-loopback {quic} without authentication: add --token-file/--acl-file (or --client-ca), or --insecure"
            );
        }
    } else {
        eprintln!(
            "warning: --insecure: non-loopback listeners may serve without TLS or authentication, and /metrics without a token"
        );
    }
    if let Some(metrics) = args.metrics
        && !loopback(&metrics)
        && args.metrics_token_file.is_none()
        && !args.insecure
    {
        bail!(
            "refusing to serve /metrics on non-loopback {metrics} without --metrics-token-file (its names carry topic names), or --insecure"
        );
    }
    Ok(())
}

/// The files SIGHUP reads again: tokens added or revoked, rules changed.
#[derive(Default)]
struct Reloadable {
    tokens: Option<Arc<streamhouse_auth::TokenFile>>,
    acls: Option<Arc<streamhouse_auth::AclFile>>,
}

impl Reloadable {
    /// Reads the files again; a file that fails keeps what was in force (and says why).
    fn reload(&self) {
        if let Some(tokens) = &self.tokens {
            match tokens.reload() {
                Ok(count) => eprintln!("reloaded --token-file: {count} token(s)"),
                Err(e) => eprintln!("--token-file NOT reloaded, the previous tokens stay: {e:#}"),
            }
        }
        if let Some(acls) = &self.acls {
            match acls.reload() {
                Ok(count) => eprintln!("reloaded --acl-file: {count} rule(s)"),
                Err(e) => eprintln!("--acl-file NOT reloaded, the previous rules stay: {e:#}"),
            }
        }
    }
}

/// Reads the token and ACL files again on every SIGHUP.
fn reload_on_hangup(files: Reloadable) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // Registered now, not in the task: from here on SIGHUP no longer ends the process.
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                files.reload();
            }
        });
    }
    #[cfg(not(unix))]
    drop(files);
}

/// The authenticator and authorizer of --token-file, --jwt-key, --client-ca and --acl-file,
/// and the files SIGHUP reloads.
async fn security(
    args: &Args,
) -> anyhow::Result<(Option<streamhouse_agent::Security>, Reloadable)> {
    if args.acl_file.is_none() && !args.acl_store {
        return Ok((None, Reloadable::default()));
    }
    let mut reloadable = Reloadable::default();
    let mut authenticators: Vec<Arc<dyn streamhouse_auth::Authenticator>> = Vec::new();
    if let Some(tokens) = &args.token_file {
        let tokens = Arc::new(
            streamhouse_auth::TokenFile::load(tokens).context("cannot load --token-file")?,
        );
        tracing::info!(tokens = tokens.len(), "authentication by bearer token");
        reloadable.tokens = Some(tokens.clone());
        authenticators.push(tokens);
    }
    if let (Some(key), Some(algorithm)) = (&args.jwt_key, args.jwt_algorithm) {
        let mut jwt =
            streamhouse_auth::Jwt::from_file(algorithm, key).context("cannot load --jwt-key")?;
        if let Some(issuer) = &args.jwt_issuer {
            jwt = jwt.issuer(issuer);
        }
        if let Some(audience) = &args.jwt_audience {
            jwt = jwt.audience(audience);
        }
        tracing::info!(?algorithm, "authentication by JWT");
        authenticators.push(Arc::new(jwt));
    }
    if args.client_ca.is_some() {
        tracing::info!("authentication by client certificate (its first DNS name)");
        authenticators.push(Arc::new(streamhouse_auth::CertificateNames));
    }
    if authenticators.is_empty() {
        bail!(
            "ACLs need --token-file, --jwt-key or --client-ca: the rules name principals, and these say who they are"
        );
    }
    let authorizer: Arc<dyn streamhouse_auth::Authorizer> = match (&args.acl_file, &args.metadata) {
        (Some(acls), _) => {
            if !acls.exists() {
                bail!(
                    "--acl-file {} does not exist (create it with `streamhouse acl add --file`; an empty file denies everything)",
                    acls.display()
                );
            }
            let acls =
                Arc::new(streamhouse_auth::AclFile::load(acls).context("cannot load --acl-file")?);
            tracing::info!(
                rules = acls.rules().rules.len(),
                "authorization by ACL file"
            );
            reloadable.acls = Some(acls.clone());
            acls
        }
        (None, Some(url)) => {
            let store = streamhouse_metastore::open(url).await.with_context(|| {
                format!("cannot open the metadata store for --acl-store: {url}")
            })?;
            let acls = streamhouse_agent::acl::StoreAcls::start(store)
                .await
                .context("cannot read the ACL rules from the metadata store")?;
            tracing::info!(
                rules = acls.rules().rules.len(),
                "authorization by ACLs in the store"
            );
            acls
        }
        (None, None) => bail!("--acl-store needs --metadata"),
    };
    let mut quotas = streamhouse_auth::Quotas::new();
    for (principal, rate) in &args.quotas {
        quotas = match principal.as_str() {
            "*" => quotas.default_limit(*rate),
            name => quotas.limit(name, *rate),
        };
    }
    // Producer ids are bound to the principal that asked for them (InitProducerId): in the
    // group's metadata store, or a lone agent's data directory.
    let producer_ids: Arc<dyn streamhouse_auth::ProducerIds> = match (&args.group, &args.metadata) {
        (Some(_), Some(url)) => {
            let store = streamhouse_metastore::open(url)
                .await
                .with_context(|| format!("cannot open the metadata store {url}"))?;
            Arc::new(streamhouse_agent::acl::StoreProducerIds::new(store))
        }
        _ => {
            std::fs::create_dir_all(&args.data)
                .with_context(|| format!("cannot create {}", args.data.display()))?;
            let path = args.data.join("producer-ids");
            Arc::new(
                streamhouse_auth::FileProducerIds::open(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            )
        }
    };
    let producer_ids = Some(producer_ids);
    let security = streamhouse_agent::Security {
        authenticator: Arc::new(streamhouse_auth::FirstOf::new(authenticators)),
        authorizer,
        quotas: Arc::new(quotas),
        producer_ids,
        max_connections_per_principal: Some(args.max_connections_per_principal),
    };
    Ok((Some(security), reloadable))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let fd_limit = match streamhouse_agent::raise_fd_limit() {
        Ok((before, after)) => {
            if after > before {
                tracing::info!(before, after, "raised the open-file limit");
            }
            after
        }
        Err(e) => {
            eprintln!("warning: cannot raise the open-file limit: {e}");
            1_024
        }
    };
    let (limits, grpc_config, quic_config) = server_limits(&args, fd_limit);
    tracing::info!(
        max_connections = limits.max_connections,
        fd_limit,
        "connection limit"
    );
    let tls = certificate(&args)?;
    if (args.quic.is_some() || args.grpc_tls) && tls.is_none() {
        bail!(
            "QUIC and --grpc-tls need a certificate: --tls-cert FILE --tls-key FILE, or --dev-cert DIR"
        );
    }
    check_security(&args, tls.is_some())?;
    let (security, reloadable) = security(&args).await?;
    let security_for_create = security.clone();
    reload_on_hangup(reloadable);
    let listeners = Listeners::bind(ListenOptions {
        grpc: args.grpc,
        quic: args.quic,
        tls,
        grpc_tls: args.grpc_tls,
        grpc_config,
        quic_config,
        limits,
        security,
    })
    .await?;
    let mut config = AgentConfig::new(&args.data);
    config.id = args.id;
    config.topics = args.topics;
    config.auto_create_partitions = args.auto_create;
    if let Some(security) = &security_for_create {
        // Auto-creation is the `create` permission of the topic's name.
        let authorizer = security.authorizer.clone();
        config.create_policy = Some(streamhouse_agent::CreatePolicy(Arc::new(
            move |principal, topic| {
                authorizer.allowed(
                    &streamhouse_auth::Principal::new(principal),
                    streamhouse_auth::Operation::Create,
                    topic,
                )
            },
        )));
    }
    if let Some(bytes) = args.max_request_decompressed_bytes {
        config.max_request_decompressed_bytes = bytes;
    }
    if let Some(bytes) = args.max_queued_bytes {
        config.max_queued_bytes = bytes;
    }
    if let Some(n) = args.max_topics {
        config.max_topics = n;
    }
    if let Some(bytes) = args.max_fetch_answer_bytes {
        config.max_fetch_answer_bytes = bytes;
    }
    config.endpoints = if args.advertise.is_empty() {
        listeners.endpoints().to_vec()
    } else {
        args.advertise
    };
    if let Some(bytes) = args.segment_bytes {
        config.segment_bytes = bytes;
    }
    if let Some(bytes) = args.max_batch_bytes {
        config.max_batch_bytes = bytes;
    }
    if let Some(bytes) = args.max_record_bytes {
        config.max_record_bytes = bytes;
    }
    if let Some(n) = args.max_producers_per_partition {
        config.producer_limits.max_producers = n as usize;
    }
    if let Some(secs) = args.producer_idle_expiry_secs {
        if secs < 120 {
            eprintln!(
                "warning: --producer-idle-expiry-secs {secs} is below the producers' default \
                 delivery timeout (120 s): a producer idle that long may be forgotten while its \
                 retry is pending, and the retry appended twice"
            );
        }
        config.producer_limits.idle_expiry = std::time::Duration::from_secs(secs);
    }
    if let (Some(metadata), Some(objects)) = (args.metadata, args.objects) {
        let mut remote = RemoteConfig::new(metadata, objects);
        if let Some(interval) = args.flush_interval {
            remote.flush_interval = interval;
        }
        if let Some(bytes) = args.flush_bytes {
            remote.flush_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        }
        if let Some(timeout) = args.durable_timeout {
            remote.durable_timeout = timeout;
        }
        remote.s3.endpoint = args.s3_endpoint;
        remote.s3.region = args.s3_region;
        remote.s3.access_key_id = args.s3_access_key_id;
        remote.s3.secret_access_key = args.s3_secret_access_key;
        remote.s3.unsigned_payload = args.s3_unsigned_payload;
        if let Some(name) = args.group {
            let mut group = streamhouse_agent::GroupConfig::new(name);
            if let Some(ttl) = args.lease_ttl {
                group.lease_ttl = ttl;
            }
            remote.group = Some(group);
        }
        config.remote = Some(remote);
    }
    let metrics = match args.metrics {
        Some(addr) => {
            let token = match &args.metrics_token_file {
                Some(file) => {
                    let token = std::fs::read_to_string(file)
                        .with_context(|| {
                            format!("cannot read --metrics-token-file {}", file.display())
                        })?
                        .trim()
                        .to_owned();
                    if token.is_empty() {
                        bail!("--metrics-token-file {} is empty", file.display());
                    }
                    Some(token)
                }
                None => None,
            };
            Some(crate::metrics_http::serve(addr, token).await?)
        }
        None => None,
    };
    let agent = Agent::open(config)
        .await
        .with_context(|| format!("cannot start the agent on {}", args.data.display()))?;
    for recovered in agent.recovery() {
        let report = &recovered.report;
        if report.truncated_bytes > 0 {
            eprintln!(
                "recovered {}-{}: cut {} bytes of a torn tail (a copy is in its quarantine/)",
                recovered.topic, recovered.partition, report.truncated_bytes
            );
        }
        if let Some(note) = &report.broken {
            eprintln!("FENCED {}-{}: {note}", recovered.topic, recovered.partition);
        }
    }
    // The first lines of standard output say where to connect (useful with port 0), written
    // at once and never failing the agent (a reader that went away is not an error).
    let mut lines = String::new();
    for endpoint in listeners.endpoints() {
        lines.push_str(&format!(
            "{} listening on {}\n",
            endpoint.scheme(),
            endpoint.authority()
        ));
    }
    if let Some(addr) = metrics {
        lines.push_str(&format!("metrics listening on {addr}\n"));
    }
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_all(lines.as_bytes())
            .and_then(|()| stdout.flush());
    }
    let serving = listeners.serve(&agent);
    shutdown_signal().await;
    let timeout = std::time::Duration::from_secs(args.shutdown_timeout);
    let stopped = serving.stop_within(timeout).await;
    agent.shutdown().await;
    if !stopped.context("gRPC server failed")? {
        eprintln!(
            "requests still in flight after --shutdown-timeout {}s were dropped",
            args.shutdown_timeout
        );
    }
    eprintln!("agent stopped cleanly");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
