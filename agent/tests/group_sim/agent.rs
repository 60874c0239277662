//! The mock agent: the real [`LeaseTable`] driven as the reference agent's group driver drives
//! it, its links to the store (latency, outages), its pause gate and its append path.

use crate::store::{PartitionState, Refused, Store};
use crate::{FLUSH_INTERVAL, PARTITIONS, Rng, STORE_TIMEOUT, TOPIC, TTL, elapsed};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use streamhouse::history::RecordId;
use streamhouse_agent::{LeaseKey, LeaseTable};
use streamhouse_metastore::{GroupView, LeaseId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep};
/// Faults of the links to the store: per agent (and everyone at once), until when it is down.
#[derive(Debug, Default)]
pub(crate) struct LinkFaults {
    pub(crate) down_until: BTreeMap<u32, Duration>,
    pub(crate) all_down_until: Duration,
}

impl LinkFaults {
    pub(crate) fn down(&self, agent: u32) -> bool {
        let now = elapsed();
        now < self.all_down_until || self.down_until.get(&agent).is_some_and(|u| now < *u)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkDown;

/// One agent's link to the store: a few milliseconds each way; while down, a call is lost
/// before the store or its answer after (drawn), and the caller hears nothing until its
/// timeout. The agent's pause gate holds it on both sides.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) agent: u32,
    pub(crate) store: Store,
    pub(crate) faults: Arc<Mutex<LinkFaults>>,
    pub(crate) rng: Arc<Mutex<Rng>>,
    pub(crate) gate: Gate,
    pub(crate) stats: Arc<Stats>,
}

impl Link {
    pub(crate) async fn call<T>(&self, f: impl FnOnce(&Store) -> T) -> Result<T, LinkDown> {
        self.gate.pass().await;
        let start = Instant::now();
        let (there, back, lose_request) = {
            let mut rng = self.rng.lock().unwrap();
            let d = |rng: &mut Rng| rng.between(Duration::from_millis(1), Duration::from_millis(8));
            (d(&mut rng), d(&mut rng), rng.unit() < 0.5)
        };
        sleep(there).await;
        let down = self.faults.lock().unwrap().down(self.agent);
        if down && lose_request {
            self.stats.lost_calls.fetch_add(1, Ordering::Relaxed);
            sleep_until_timeout(start).await;
            return Err(LinkDown);
        }
        let answer = f(&self.store);
        sleep(back).await;
        if down || self.faults.lock().unwrap().down(self.agent) {
            self.stats.lost_answers.fetch_add(1, Ordering::Relaxed);
            sleep_until_timeout(start).await;
            return Err(LinkDown);
        }
        self.gate.pass().await;
        Ok(answer)
    }
}

pub(crate) async fn sleep_until_timeout(start: Instant) {
    tokio::time::sleep_until(start + STORE_TIMEOUT).await;
}

/// SIGSTOP: while paused, the agent makes no step anywhere.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gate(Arc<Mutex<Duration>>);

impl Gate {
    pub(crate) async fn pass(&self) {
        loop {
            let until = *self.0.lock().unwrap();
            let now = elapsed();
            if now >= until {
                return;
            }
            sleep(until - now).await;
        }
    }
    pub(crate) fn pause(&self, until: Duration) {
        *self.0.lock().unwrap() = until;
    }
}

/// A produce request for one batch.
#[derive(Debug, Clone)]
pub(crate) struct Append {
    pub(crate) partition: u32,
    pub(crate) producer: u64,
    pub(crate) sequence: i32,
    pub(crate) records: Vec<RecordId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    Appended(i64),
    Duplicate(i64),
    NotLeader(Option<u32>),
    OutOfOrder,
    Unavailable,
}

pub(crate) type Inbox = mpsc::UnboundedSender<(Append, oneshot::Sender<Reply>)>;

/// What every agent and the client share: the store, the links' faults, the agents' inboxes.
#[derive(Clone)]
pub(crate) struct World {
    pub(crate) store: Store,
    pub(crate) faults: Arc<Mutex<LinkFaults>>,
    pub(crate) inboxes: Arc<Mutex<BTreeMap<u32, Inbox>>>,
    pub(crate) gates: BTreeMap<u32, Gate>,
    /// Each agent's clock rate (its monotonic clock against the simulation's).
    pub(crate) rates: BTreeMap<u32, f64>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) seed: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) lost_calls: AtomicU64,
    pub(crate) lost_answers: AtomicU64,
    pub(crate) takeovers: AtomicU64,
    pub(crate) lapsed: AtomicU64,
    pub(crate) refused_past_deadline: AtomicU64,
    pub(crate) not_leader: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) fenced_appends: AtomicU64,
    pub(crate) out_of_order: AtomicU64,
}

/// A partition this agent leads: its state as loaded from the store (`None`: load first), and
/// whether an append is committing.
#[derive(Debug, Default)]
pub(crate) struct Led {
    pub(crate) loaded: Option<PartitionState>,
    pub(crate) busy: bool,
}

pub(crate) struct AgentState {
    pub(crate) table: LeaseTable,
    pub(crate) led: BTreeMap<u32, Led>,
    pub(crate) view: GroupView,
}

#[derive(Clone)]
pub(crate) struct Agent {
    pub(crate) id: u32,
    pub(crate) link: Link,
    pub(crate) state: Arc<Mutex<AgentState>>,
    /// The agent's monotonic clock: the simulation's at its own rate.
    pub(crate) origin: std::time::Instant,
    pub(crate) rate: f64,
    pub(crate) stats: Arc<Stats>,
}

pub(crate) fn key(partition: u32) -> LeaseKey {
    (Arc::from(TOPIC), partition)
}

impl Agent {
    pub(crate) fn now(&self) -> std::time::Instant {
        self.origin + elapsed().mul_f64(self.rate)
    }

    /// The partition's lease, if this agent may serve it now.
    pub(crate) fn serving(&self, state: &AgentState, partition: u32) -> Option<LeaseId> {
        let holding = state.table.holding(&key(partition))?;
        (holding.until > self.now()).then_some(LeaseId {
            agent_id: self.id,
            epoch: holding.epoch,
        })
    }

    /// The driver: heartbeats, renewals, takeovers, handovers.
    pub(crate) async fn lead(self) {
        let topics = [(TOPIC.to_owned(), PARTITIONS)];
        let mut next_renew = Instant::now();
        loop {
            self.link.gate.pass().await;
            if Instant::now() >= next_renew {
                next_renew = Instant::now() + TTL / 3;
                let _ = self.link.call(|s| s.heartbeat(self.id)).await;
                let held: Vec<(u32, i64)> = {
                    let s = self.state.lock().unwrap();
                    s.table.held().map(|(k, h)| (k.1, h.epoch)).collect()
                };
                let started = self.now();
                if let Ok(results) = self.link.call(|s| s.renew(self.id, &held)).await {
                    let mut s = self.state.lock().unwrap();
                    let results = held
                        .iter()
                        .zip(results)
                        .map(|((p, epoch), kept)| (key(*p), *epoch, kept))
                        .collect();
                    let (_, lost) = s.table.renewed(started, results);
                    for k in lost {
                        s.led.remove(&k.1);
                    }
                }
            }
            {
                let mut s = self.state.lock().unwrap();
                let now = self.now();
                for k in s.table.lapsed(now) {
                    self.stats.lapsed.fetch_add(1, Ordering::Relaxed);
                    s.led.remove(&k.1);
                }
            }
            if let Ok(view) = self.link.call(Store::group).await {
                let plan = {
                    let mut s = self.state.lock().unwrap();
                    s.view = view.clone();
                    s.table.plan(&view, &topics)
                };
                for k in plan.take {
                    let started = self.now();
                    let Ok(Some(acquired)) = self.link.call(|s| s.acquire(self.id, k.1)).await
                    else {
                        continue;
                    };
                    if acquired.previous.is_some_and(|p| p != self.id) {
                        self.stats.takeovers.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut s = self.state.lock().unwrap();
                    s.table.took(k.clone(), acquired.lease.id.epoch, started);
                    // Loaded from the store at the first append (the store is the truth).
                    s.led.insert(k.1, Led::default());
                }
                for k in plan.give {
                    let holding = {
                        let mut s = self.state.lock().unwrap();
                        if s.led.get(&k.1).is_some_and(|l| l.busy) {
                            continue;
                        }
                        s.led.remove(&k.1);
                        s.table.forget(&k)
                    };
                    if let Some(h) = holding {
                        let _ = self.link.call(|s| s.release(self.id, k.1, h.epoch)).await;
                    }
                }
            }
            sleep(TTL / 10).await;
        }
    }

    /// One produce request (acks=durable): answered after the commit, or refused.
    pub(crate) async fn append(self, append: Append) -> Reply {
        self.link.gate.pass().await;
        let p = append.partition;
        let refuse = |s: &AgentState| {
            let hint = s
                .view
                .holder(TOPIC, p)
                .map(|l| l.id.agent_id)
                .filter(|a| *a != self.id);
            self.stats.not_leader.fetch_add(1, Ordering::Relaxed);
            Reply::NotLeader(hint)
        };
        // Loaded? Else load (the partition is busy meanwhile).
        let lease = {
            let mut s = self.state.lock().unwrap();
            let Some(lease) = self.serving(&s, p) else {
                if s.table.holding(&key(p)).is_some() {
                    self.stats
                        .refused_past_deadline
                        .fetch_add(1, Ordering::Relaxed);
                }
                return refuse(&s);
            };
            let Some(led) = s.led.get_mut(&p) else {
                return refuse(&s);
            };
            if led.busy {
                return Reply::Unavailable;
            }
            led.busy = true;
            lease
        };
        let loaded = self
            .state
            .lock()
            .unwrap()
            .led
            .get(&p)
            .and_then(|l| l.loaded.clone());
        let mut loaded = match loaded {
            Some(loaded) => loaded,
            None => match self.link.call(|s| s.load(p)).await {
                Ok(loaded) => loaded,
                Err(LinkDown) => return self.settle(p, lease, None, Reply::Unavailable),
            },
        };
        // Idempotence, against the state committed with the records.
        let window = loaded.producers.get(&append.producer);
        if let Some((_, base)) = window.and_then(|w| w.iter().find(|(s, _)| *s == append.sequence))
        {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            let reply = Reply::Duplicate(*base);
            return self.settle(p, lease, Some(loaded), reply);
        }
        let last = window.and_then(|w| w.back()).map_or(-1, |(s, _)| *s);
        if append.sequence != last + 1 {
            self.stats.out_of_order.fetch_add(1, Ordering::Relaxed);
            return self.settle(p, lease, Some(loaded), Reply::OutOfOrder);
        }
        // The deadline was checked above. As in the reference agent, the batch goes to the
        // local log and waits for the flusher (up to its interval) before the commit: a pause
        // may strike in between, and the epoch in the commit is what stops a stale leader then.
        let base = loaded.high_watermark();
        let flush_wait = self
            .link
            .rng
            .lock()
            .unwrap()
            .between(Duration::ZERO, FLUSH_INTERVAL);
        sleep(flush_wait).await;
        match self.link.call(|s| s.commit(p, lease, &append, base)).await {
            Ok(Ok(())) => {
                loaded.records.extend(append.records.iter().copied());
                let window = loaded.producers.entry(append.producer).or_default();
                window.push_back((append.sequence, base));
                if window.len() > 5 {
                    window.pop_front();
                }
                self.settle(p, lease, Some(loaded), Reply::Appended(base))
            }
            Ok(Err(Refused::Fenced)) => {
                self.stats.fenced_appends.fetch_add(1, Ordering::Relaxed);
                let mut s = self.state.lock().unwrap();
                if s.table
                    .holding(&key(p))
                    .is_some_and(|h| h.epoch == lease.epoch)
                {
                    s.table.forget(&key(p));
                    s.led.remove(&p);
                }
                refuse(&s)
            }
            // Stale state, or an answer lost (the commit may have landed): reload first.
            Ok(Err(Refused::Conflict)) | Err(LinkDown) => {
                self.settle(p, lease, None, Reply::Unavailable)
            }
        }
    }

    /// Ends an append: the partition's state kept (or dropped to be reloaded), not busy.
    pub(crate) fn settle(
        &self,
        p: u32,
        lease: LeaseId,
        loaded: Option<PartitionState>,
        reply: Reply,
    ) -> Reply {
        let mut s = self.state.lock().unwrap();
        let same = s
            .table
            .holding(&key(p))
            .is_some_and(|h| h.epoch == lease.epoch);
        if let Some(led) = s.led.get_mut(&p).filter(|_| same) {
            led.busy = false;
            led.loaded = loaded;
        }
        reply
    }
}

/// An agent's software: what turmoil starts, and starts again after a crash (with nothing of
/// its memory).
pub(crate) async fn run_agent(world: World, id: u32) -> turmoil::Result {
    let link = Link {
        agent: id,
        store: world.store.clone(),
        faults: world.faults.clone(),
        rng: Arc::new(Mutex::new(Rng(world.seed
            ^ (u64::from(id) << 48)
            ^ elapsed().as_nanos() as u64))),
        gate: world.gates[&id].clone(),
        stats: world.stats.clone(),
    };
    let agent = Agent {
        id,
        link,
        state: Arc::new(Mutex::new(AgentState {
            table: LeaseTable::new(id, TTL),
            led: BTreeMap::new(),
            view: GroupView::default(),
        })),
        origin: std::time::Instant::now(),
        rate: world.rates[&id],
        stats: world.stats.clone(),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    world.inboxes.lock().unwrap().insert(id, tx);
    tokio::spawn(agent.clone().lead());
    while let Some((append, reply)) = rx.recv().await {
        let agent = agent.clone();
        tokio::spawn(async move {
            let _ = reply.send(agent.append(append).await);
        });
    }
    Ok(())
}
