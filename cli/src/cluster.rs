//! `streamhouse cluster status`: an agent group as its metadata store sees it — agents and
//! their heartbeats, the leases each holds, and per partition how far its leader's local log
//! is ahead of object storage.

use anyhow::Context;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print the group's agents, leases and per-partition lag.
    Status {
        /// The group's metadata store (`sqlite://PATH` or `postgres://…`).
        #[arg(long, value_name = "URL")]
        metadata: String,
        /// The group's name.
        #[arg(long, value_name = "NAME")]
        group: String,
    },
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let Command::Status { metadata, group } = args.command;
    // A read-only look: a mistyped SQLite path must not create an empty store.
    if let Some(path) = metadata.strip_prefix("sqlite://")
        && !std::path::Path::new(path).exists()
    {
        anyhow::bail!("no metadata store at {metadata}: {path} does not exist");
    }
    let store = streamhouse_metastore::open(&metadata)
        .await
        .with_context(|| format!("cannot open the metadata store {metadata}"))?;
    let mut view = store.group(&group).await?;
    if view.agents.is_empty() {
        let mut known: Vec<&str> = view.leases.iter().map(|l| l.group.as_str()).collect();
        known.sort_unstable();
        known.dedup();
        anyhow::bail!(
            "no agent has registered in group {group:?} in this store{}",
            if known.is_empty() {
                String::new()
            } else {
                format!(" (its leases belong to group {known:?})")
            }
        );
    }
    view.leases.retain(|l| l.group == group);
    let topics = store.topics().await?;
    let now = view.now_ms;
    let ago = |ms: i64| format!("{:.1}s", (now - ms) as f64 / 1e3);
    let mut held: BTreeMap<u32, usize> = BTreeMap::new();
    for lease in view.leases.iter().filter(|l| l.expires_ms > now) {
        *held.entry(lease.id.agent_id).or_default() += 1;
    }
    let mut out = String::new();
    // Written at the end in one piece; a closed pipe (`| head`) is no error.
    macro_rules! emit {
        ($($arg:tt)*) => {{
            let _ = writeln!(out, $($arg)*);
        }};
    }
    let live = view.live().count();
    emit!(
        "group {group}: {live} live agent(s) of {} registered",
        view.agents.len()
    );
    emit!(
        "{:>6}  {:<5}  {:>10}  {:>6}  endpoints",
        "agent",
        "state",
        "heartbeat",
        "leases"
    );
    for agent in &view.agents {
        let state = if agent.expires_ms > now {
            "live"
        } else {
            "gone"
        };
        emit!(
            "{:>6}  {:<5}  {:>10}  {:>6}  {}",
            agent.agent_id,
            state,
            format!("{} ago", ago(agent.heartbeat_ms)),
            held.get(&agent.agent_id).copied().unwrap_or(0),
            agent.endpoints.join(" ")
        );
    }
    out.push('\n');
    emit!(
        "{:<24} {:>4}  {:>6}  {:>6}  {:>10}  {:>14}  {:>14}  {:>8}",
        "topic",
        "part",
        "leader",
        "epoch",
        "expires",
        "high watermark",
        "local end",
        "lag"
    );
    for topic in &topics {
        for partition in 0..topic.partitions {
            let hw = store
                .partition(&topic.name, partition)
                .await?
                .map_or(0, |p| p.high_watermark);
            let lease = view
                .leases
                .iter()
                .find(|l| l.topic == topic.name && l.partition == partition);
            let (leader, epoch, expires, end, lag) = match lease {
                Some(l) if l.expires_ms > now => (
                    l.id.agent_id.to_string(),
                    l.id.epoch.to_string(),
                    format!("in {:.1}s", (l.expires_ms - now) as f64 / 1e3),
                    l.local_end.to_string(),
                    if l.local_end >= 0 {
                        (l.local_end - hw).max(0).to_string()
                    } else {
                        "?".into()
                    },
                ),
                Some(l) => (
                    "-".into(),
                    l.id.epoch.to_string(),
                    format!("{} ago", ago(l.expires_ms)),
                    "-".into(),
                    "-".into(),
                ),
                None => (
                    "-".into(),
                    "-".into(),
                    "never held".into(),
                    "-".into(),
                    "-".into(),
                ),
            };
            emit!(
                "{:<24} {:>4}  {:>6}  {:>6}  {:>10}  {:>14}  {:>14}  {:>8}",
                topic.name,
                partition,
                leader,
                epoch,
                expires,
                hw,
                end,
                lag
            );
        }
    }
    emit!(
        "(local end: the leader's local log end at its last lease renewal, -1 before its first; \
         lag: how much of it is not yet in object storage, ? when unknown)"
    );
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
