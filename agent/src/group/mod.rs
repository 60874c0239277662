//! Agent groups: many agents on one metadata store and object storage, each leading the
//! partitions whose lease it holds.
//!
//! ```text
//! driver task, every lease TTL / 3 (and when a partition is fenced):
//!   lapsed leases (no renewal in time) ──► stop serving (appends already refused at the
//!                                          deadline by the log itself)
//!   renew held leases (one transaction) ──► extend the serving deadlines; lost ones stop
//!   heartbeat the registration; read the group (agents, leases) and the topics
//!   plan (LeaseTable): partitions rendezvous-ranked to this agent and free ──► acquire,
//!        open against the store (Topics::take_over), serve
//!                      held partitions ranked to another live agent ──► stop appends,
//!        commit what the log holds, release the lease (a graceful handover)
//! ```
//!
//! Metadata answers name each partition's lease holder, or (no live holder) the agent that
//! should take it; produce requests for partitions this agent does not lead are answered
//! `NOT_LEADER` with that agent, so a producer reroutes without asking for metadata again.

pub(crate) mod table;

use crate::Shared;
use crate::remote::Held;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};
use streamhouse_metastore::{GroupView, StoreError};
use streamhouse_proto::v1::AgentInfo;
use table::{Key, LeaseTable};

/// Lease counters since start (see `Agent::group_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStats {
    /// Leases taken.
    pub acquired: u64,
    /// Leases lost: not renewed in time, refused at renewal, or fenced at a commit.
    pub lost: u64,
    /// Leases given up to another agent after a flush (joins, shutdown).
    pub handed_over: u64,
    /// Leases held now.
    pub held: u64,
}

#[derive(Default)]
struct Counters {
    acquired: AtomicU64,
    lost: AtomicU64,
    handed_over: AtomicU64,
}

/// The lease times an agent accepts: store round trips must fit well inside a third of it,
/// and an agent that dies must not hold its partitions for hours.
pub(crate) const LEASE_TTL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(500)..=Duration::from_secs(3600);

/// Checks, before an agent registers, that it may join `group` as `me`: the store serves no
/// other group (topics and leases are the store's, so two groups would lead the same
/// partitions), and no live agent is registered under the same id (two agents with one id
/// would share lease epochs and hand out the same offsets). A registration still live from an
/// earlier run of this agent (killed, restarting) is told apart by waiting half a lease time:
/// a live agent heartbeats in that time, a dead one does not.
pub(crate) async fn admit(
    store: &dyn streamhouse_metastore::MetadataStore,
    group: &str,
    me: u32,
    ttl: Duration,
) -> Result<(), String> {
    let view = store.group(group).await.map_err(|e| e.to_string())?;
    let mut others: Vec<&str> = view
        .leases
        .iter()
        .filter(|l| l.group != group && l.expires_ms > view.now_ms)
        .map(|l| l.group.as_str())
        .collect();
    others.sort_unstable();
    others.dedup();
    if !others.is_empty() {
        return Err(format!(
            "the metadata store already serves agent group {others:?}: one store holds one group \
             (its topics and partition leases belong to the store, not to a group); join that \
             group or use another store"
        ));
    }
    let registered = |view: &GroupView| {
        view.agents
            .iter()
            .find(|a| a.agent_id == me && a.expires_ms > view.now_ms)
            .map(|a| a.heartbeat_ms)
    };
    if let Some(heartbeat) = registered(&view) {
        tokio::time::sleep(ttl / 2).await;
        let again = store.group(group).await.map_err(|e| e.to_string())?;
        if registered(&again).is_some_and(|h| h > heartbeat) {
            return Err(format!(
                "agent id {me} is in use in group {group:?}: another agent registered under it is \
                 heartbeating; give each agent of a group its own --id"
            ));
        }
    }
    Ok(())
}

/// The group as last read, with the leader each partition should have.
#[derive(Default)]
struct Look {
    view: GroupView,
    owners: std::collections::BTreeMap<(String, u32), u32>,
    /// When it was read (`None`: never).
    at: Option<Instant>,
}

impl Look {
    /// Whether it was read within `ttl`: older, the leases it names may all have moved.
    fn fresh(&self, ttl: Duration) -> bool {
        self.at.is_some_and(|at| at.elapsed() <= ttl)
    }
}

/// This agent's membership of a group.
pub(crate) struct Group {
    name: String,
    me: u32,
    ttl: Duration,
    endpoints: Vec<String>,
    /// The group as last read from the store, and who should lead each partition.
    view: RwLock<Arc<Look>>,
    table: tokio::sync::Mutex<LeaseTable>,
    /// Runs a round now (stopping).
    wake: tokio::sync::Notify,
    stopping: AtomicBool,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    counters: Counters,
}

impl Group {
    pub(crate) fn new(config: &crate::GroupConfig, me: u32, endpoints: Vec<String>) -> Arc<Group> {
        Arc::new(Group {
            name: config.name.clone(),
            me,
            ttl: config.lease_ttl,
            endpoints,
            view: RwLock::default(),
            table: tokio::sync::Mutex::new(LeaseTable::new(me, config.lease_ttl)),
            wake: tokio::sync::Notify::new(),
            stopping: AtomicBool::new(false),
            task: std::sync::Mutex::default(),
            counters: Counters::default(),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Starts the driver (after the agent is open).
    pub(crate) fn start(self: &Arc<Self>, shared: Weak<Shared>) {
        let group = self.clone();
        let task = tokio::spawn(async move { group.run(shared).await });
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    fn view(&self) -> Arc<Look> {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn stats(&self) -> GroupStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GroupStats {
            acquired: get(&self.counters.acquired),
            lost: get(&self.counters.lost),
            handed_over: get(&self.counters.handed_over),
            held: self.table.try_lock().map_or(0, |t| t.held().count() as u64),
        }
    }

    /// Why this agent cannot say who leads what: it has not read the group from the store
    /// for longer than the lease time (its link to the store is down), so the leases it knows
    /// may all have moved. `None` when its view is fresh.
    pub(crate) fn stale(&self) -> Option<String> {
        let look = self.view();
        if look.fresh(self.ttl) {
            return None;
        }
        match look.at {
            Some(at) => Some(format!(
                "agent {} has not reached the metadata store for {:.1} s: ask another agent",
                self.me,
                at.elapsed().as_secs_f64()
            )),
            None => Some(format!(
                "agent {} has not read its group from the metadata store yet",
                self.me
            )),
        }
    }

    /// The live agents as clients should see them (this one included).
    pub(crate) fn agents(&self, me: AgentInfo) -> Vec<AgentInfo> {
        let look = self.view();
        let mut agents: Vec<AgentInfo> = look
            .view
            .live()
            .filter(|a| a.agent_id != self.me)
            .map(|a| AgentInfo {
                id: a.agent_id,
                endpoints: a.endpoints.clone(),
            })
            .collect();
        agents.push(me);
        agents.sort_by_key(|a| a.id);
        agents
    }

    /// Who leads a partition this agent does not: the live lease holder, else the live
    /// agent that should take it. `None` when no other agent is known.
    pub(crate) fn leader(&self, topic: &str, partition: u32) -> Option<AgentInfo> {
        let look = self.view();
        if !look.fresh(self.ttl) {
            return None;
        }
        let info = |id: u32| {
            look.view
                .live()
                .find(|a| a.agent_id == id)
                .map(|a| AgentInfo {
                    id,
                    endpoints: a.endpoints.clone(),
                })
        };
        if let Some(lease) = look.view.holder(topic, partition)
            && lease.id.agent_id != self.me
            && let Some(agent) = info(lease.id.agent_id)
        {
            return Some(agent);
        }
        look.owners
            .get(&(topic.to_owned(), partition))
            .filter(|owner| **owner != self.me)
            .and_then(|owner| info(*owner))
    }

    /// When the group, as of the last look, next changes without anyone acting: another
    /// agent's lease or registration runs out (it stopped renewing: a failover). Projected
    /// from the store's clock onto this agent's monotonic clock, a few milliseconds late so
    /// the store agrees it has. Healthy agents renew well before, so in steady state this is
    /// later than the next regular look.
    fn next_expiry(&self) -> Option<Instant> {
        let look = self.view();
        let at = look.at?;
        let now_ms = look.view.now_ms;
        let leases = look
            .view
            .leases
            .iter()
            .filter(|l| l.id.agent_id != self.me)
            .map(|l| l.expires_ms);
        let agents = look
            .view
            .agents
            .iter()
            .filter(|a| a.agent_id != self.me)
            .map(|a| a.expires_ms);
        leases
            .chain(agents)
            .filter(|expires| *expires > now_ms)
            .min()
            .map(|expires| at + Duration::from_millis((expires - now_ms) as u64 + 5))
    }

    async fn run(self: Arc<Self>, shared: Weak<Shared>) {
        // Leases are renewed every third of their time; the group is looked at more often,
        // so a partition whose lease ran out is taken soon after.
        let renew_every = self.ttl / 3;
        let look_every =
            (self.ttl / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
        let mut renewed: Option<Instant> = None;
        loop {
            {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                if self.stopping.load(Ordering::Acquire) {
                    return;
                }
                let renew = renewed.is_none_or(|at| at.elapsed() >= renew_every);
                if renew {
                    renewed = Some(Instant::now());
                }
                self.round(&shared, renew).await;
            }
            let fenced = shared
                .upgrade()
                .and_then(|s| s.remote.clone())
                .map(|r| r.fenced_signal());
            // Look again at the next interval, or just after a lease this agent should take
            // runs out (its holder stopped renewing: a failover), whichever is first.
            let next = self.next_expiry().map_or(look_every, |at| {
                at.saturating_duration_since(Instant::now()).min(look_every)
            });
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                () = self.wake.notified() => {}
                // A commit was fenced: that lease is gone, look now.
                () = async {
                    match &fenced {
                        Some(signal) => signal.notified().await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    /// A store call bounded by a third of the lease time: a store that hangs must not hold
    /// the driver past the deadlines it keeps.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.ttl / 3, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {:?}",
                self.ttl / 3
            ))),
        }
    }

    /// One look at the group: drop lapsed and lost leases, (with `renew`) renew the rest and
    /// heartbeat, then take and give partitions as planned.
    async fn round(&self, shared: &Arc<Shared>, renew: bool) {
        let Some(remote) = shared.remote.clone() else {
            return;
        };
        let store = remote.store().clone();
        let mut table = self.table.lock().await;
        for key in table.lapsed(Instant::now()) {
            self.lose(shared, &key, "its lease ran out before a renewal landed")
                .await;
        }
        // Partitions fenced at a commit (another agent took the lease).
        let fenced: Vec<Key> = table
            .held()
            .filter(|(key, _)| shared.led_log(key).is_none_or(|log| log.superseded()))
            .map(|(key, _)| key.clone())
            .collect();
        for key in fenced {
            if let Some(holding) = table.forget(&key) {
                let release = [(key.0.to_string(), key.1, holding.epoch)];
                let _ = self.bounded(store.release(self.me, &release)).await;
            }
            self.lose(shared, &key, "a commit was fenced").await;
        }
        let asked: Vec<(Key, i64, i64)> = table
            .held()
            .map(|(key, h)| {
                let end = shared.led_log(key).map_or(-1, |l| l.local_range().1);
                (key.clone(), h.epoch, end)
            })
            .collect();
        if renew && !asked.is_empty() {
            let started = Instant::now();
            let leases: Vec<(String, u32, i64, i64)> = asked
                .iter()
                .map(|(k, epoch, end)| (k.0.to_string(), k.1, *epoch, *end))
                .collect();
            match self.bounded(store.renew(self.me, &leases, self.ttl)).await {
                Ok(results) => {
                    let results = asked
                        .into_iter()
                        .zip(results)
                        .map(|((key, epoch, _), r)| (key, epoch, r.is_some()))
                        .collect();
                    let (kept, lost) = table.renewed(started, results);
                    for (key, until) in kept {
                        if let Some(log) = shared.led_log(&key) {
                            log.serve_until(Some(until));
                        }
                    }
                    for key in lost {
                        self.lose(
                            shared,
                            &key,
                            "the store refused its renewal (taken by another agent)",
                        )
                        .await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed; serving until the leases' deadlines")
                }
            }
        }
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        if renew {
            let heartbeat = store.heartbeat(&self.name, self.me, &self.endpoints, self.ttl);
            if let Err(e) = self.bounded(heartbeat).await {
                tracing::warn!(error = %e, "group heartbeat failed");
                return;
            }
        }
        let (view, topics) = match self
            .bounded(async { Ok((store.group(&self.name).await?, store.topics().await?)) })
            .await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the group from the metadata store");
                return;
            }
        };
        let topics: Vec<(String, u32)> =
            topics.into_iter().map(|t| (t.name, t.partitions)).collect();
        let plan = table.plan(&view, &topics);
        let owners = table.owners(&view, &topics);
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Look {
            view,
            owners,
            at: Some(Instant::now()),
        });
        for key in plan.give {
            if let Some(holding) = table.forget(&key) {
                self.hand_over(shared, &key, holding.epoch).await;
            }
        }
        for key in plan.take {
            if self.stopping.load(Ordering::Acquire) {
                break;
            }
            self.take(shared, &mut table, key).await;
        }
        metrics::gauge!("streamhouse_leases_held").set(table.held().count() as f64);
    }

    /// Takes a partition's lease and opens the partition against the store.
    async fn take(&self, shared: &Arc<Shared>, table: &mut LeaseTable, key: Key) {
        let Some(remote) = shared.remote.clone() else {
            return;
        };
        let started = Instant::now();
        let acquire = remote
            .store()
            .acquire(&self.name, self.me, &key.0, key.1, self.ttl);
        let acquired = match self.bounded(acquire).await {
            Ok(Some(acquired)) => acquired,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(topic = %key.0, partition = key.1, error = %e, "lease not taken");
                return;
            }
        };
        let until = table.took(key.clone(), acquired.lease.id.epoch, started);
        let held = Held {
            id: acquired.lease.id,
            own_tail: acquired.previous == Some(self.me),
            until,
        };
        let opening = shared.clone();
        let (topic, partition) = key.clone();
        let opened =
            tokio::task::spawn_blocking(move || opening.topics.take_over(&topic, partition, held))
                .await;
        match opened {
            Ok(Ok(_)) => {
                self.counters.acquired.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("streamhouse_lease_acquisitions_total").increment(1);
                if acquired.previous.is_some_and(|p| p != self.me) {
                    // How long the partition had no leader (store clock).
                    let gap = (acquired.now_ms - acquired.previous_expires_ms).max(0);
                    metrics::histogram!("streamhouse_failover_seconds").record(gap as f64 / 1e3);
                }
                tracing::info!(topic = %key.0, partition = key.1, epoch = held.id.epoch,
                    previous = ?acquired.previous, "partition lease taken");
            }
            failed => {
                let reason = match failed {
                    Ok(Err(r)) => r.message,
                    _ => "the opening task failed".into(),
                };
                tracing::error!(topic = %key.0, partition = key.1, %reason,
                    "lease taken but the partition cannot be opened; giving it up");
                table.forget(&key);
                let release = [(key.0.to_string(), key.1, held.id.epoch)];
                let _ = self
                    .bounded(remote.store().release(self.me, &release))
                    .await;
            }
        }
    }

    /// Stops serving a partition whose lease is gone (waiting durable answers are refused
    /// `NOT_LEADER`; `Acks::Leader` records not yet in an object are lost to the partition).
    async fn lose(&self, shared: &Arc<Shared>, key: &Key, why: &str) {
        self.counters.lost.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("streamhouse_lease_losses_total").increment(1);
        tracing::warn!(topic = %key.0, partition = key.1, reason = why, "partition lease lost");
        if let Some(log) = shared.topics.swap_log(&key.0, key.1, None) {
            log.supersede(format!("this agent no longer leads the partition: {why}"));
            if let Some(remote) = &shared.remote {
                remote.release(&key.0, key.1, log.clone(), false).await;
            }
            log.release_lock();
        }
    }

    /// Gives a partition up gracefully: appends stop, what its log holds is committed (within
    /// the durable timeout), then the lease is released for the next leader.
    async fn hand_over(&self, shared: &Arc<Shared>, key: &Key, epoch: i64) {
        let Some(remote) = shared.remote.clone() else {
            return;
        };
        let Some(log) = shared.led_log(key) else {
            return;
        };
        log.serve_until(Some(Instant::now()));
        let timeout = shared
            .config
            .remote
            .as_ref()
            .map_or(Duration::from_secs(5), |r| r.durable_timeout);
        let flushed =
            tokio::time::timeout(timeout, remote.release(&key.0, key.1, log.clone(), true)).await;
        if let Some(log) = shared.topics.swap_log(&key.0, key.1, None) {
            log.supersede("this agent handed the partition over".into());
            log.release_lock();
        }
        let release = [(key.0.to_string(), key.1, epoch)];
        match self
            .bounded(remote.store().release(self.me, &release))
            .await
        {
            Ok(()) => {
                self.counters.handed_over.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("streamhouse_lease_handovers_total").increment(1);
                tracing::info!(topic = %key.0, partition = key.1, committed = ?flushed.ok().flatten(),
                    "partition handed over");
            }
            Err(e) => tracing::warn!(topic = %key.0, partition = key.1, error = %e,
                "lease not released; it runs out on its own"),
        }
    }

    /// At shutdown: stop the driver, hand every partition over, leave the group.
    pub(crate) async fn leave(&self, shared: &Arc<Shared>) {
        self.stopping.store(true, Ordering::Release);
        self.wake.notify_one();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let mut table = self.table.lock().await;
        let held: Vec<(Key, i64)> = table.held().map(|(k, h)| (k.clone(), h.epoch)).collect();
        for (key, epoch) in held {
            table.forget(&key);
            self.hand_over(shared, &key, epoch).await;
        }
        if let Some(remote) = &shared.remote {
            let _ = self
                .bounded(remote.store().leave(&self.name, self.me))
                .await;
        }
    }
}
