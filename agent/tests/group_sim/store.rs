//! The simulated metadata store: the SQL store's group and commit rules, by its own clock.

use crate::agent::Append;
use crate::{GROUP, PARTITIONS, STORE_EPOCH_MS, TOPIC, TTL, elapsed};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use streamhouse::history::RecordId;
use streamhouse_metastore::{Acquired, AgentRecord, GroupView, Lease, LeaseId};

/// Why the store refused a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The lease moved on: the caller's epoch is not the current one.
    Fenced,
    /// The range does not start at the high watermark.
    Conflict,
}

/// A partition's committed state: its records and, per producer, its last five batches.
#[derive(Debug, Clone, Default)]
pub(crate) struct PartitionState {
    pub(crate) records: Vec<RecordId>,
    pub(crate) producers: BTreeMap<u64, VecDeque<(i32, i64)>>,
}

impl PartitionState {
    pub(crate) fn high_watermark(&self) -> i64 {
        self.records.len() as i64
    }
}

#[derive(Debug, Default)]
pub(crate) struct StoreState {
    pub(crate) agents: BTreeMap<u32, AgentRecord>,
    pub(crate) leases: BTreeMap<u32, Lease>,
    pub(crate) partitions: Vec<PartitionState>,
}

/// The metadata store, with the SQL store's rules, judged by its own clock (the simulation's).
/// `fencing: false` is the control that drops the epoch and high watermark checks.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pub(crate) state: Arc<Mutex<StoreState>>,
    pub(crate) fencing: bool,
    pub(crate) fenced: Arc<AtomicU64>,
}

pub(crate) fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

impl Store {
    pub(crate) fn new(fencing: bool) -> Store {
        let state = StoreState {
            partitions: vec![PartitionState::default(); PARTITIONS as usize],
            ..StoreState::default()
        };
        Store {
            state: Arc::new(Mutex::new(state)),
            fencing,
            fenced: Arc::default(),
        }
    }

    pub(crate) fn now_ms() -> i64 {
        STORE_EPOCH_MS + ms(elapsed())
    }

    pub(crate) fn heartbeat(&self, agent_id: u32) {
        let now = Store::now_ms();
        let mut s = self.state.lock().unwrap();
        let record = s.agents.entry(agent_id).or_insert(AgentRecord {
            agent_id,
            endpoints: vec![format!("sim://agent-{agent_id}")],
            heartbeat_ms: now,
            expires_ms: now,
            live_since_ms: now,
        });
        if record.expires_ms < now {
            record.live_since_ms = now;
        }
        record.heartbeat_ms = now;
        record.expires_ms = now + ms(TTL);
    }

    pub(crate) fn group(&self) -> GroupView {
        let s = self.state.lock().unwrap();
        GroupView {
            now_ms: Store::now_ms(),
            agents: s.agents.values().cloned().collect(),
            leases: s.leases.values().cloned().collect(),
        }
    }

    pub(crate) fn acquire(&self, agent_id: u32, partition: u32) -> Option<Acquired> {
        let now = Store::now_ms();
        let mut s = self.state.lock().unwrap();
        let old = s.leases.get(&partition).cloned();
        let held_by_me = old
            .as_ref()
            .is_some_and(|l| l.id.agent_id == agent_id && l.expires_ms > now);
        if old
            .as_ref()
            .is_some_and(|l| l.id.agent_id != agent_id && l.expires_ms > now)
        {
            return None;
        }
        let epoch = match &old {
            Some(l) if held_by_me => l.id.epoch,
            Some(l) => l.id.epoch + 1,
            None => 1,
        };
        let lease = Lease {
            topic: TOPIC.into(),
            partition,
            id: LeaseId { agent_id, epoch },
            group: GROUP.into(),
            expires_ms: now + ms(TTL),
            local_end: -1,
        };
        s.leases.insert(partition, lease.clone());
        Some(Acquired {
            lease,
            previous: old.as_ref().map(|l| l.id.agent_id),
            previous_expires_ms: old.map_or(-1, |l| l.expires_ms),
            now_ms: now,
        })
    }

    pub(crate) fn renew(&self, agent_id: u32, leases: &[(u32, i64)]) -> Vec<bool> {
        let now = Store::now_ms();
        let mut s = self.state.lock().unwrap();
        leases
            .iter()
            .map(|(partition, epoch)| match s.leases.get_mut(partition) {
                Some(l)
                    if l.id
                        == (LeaseId {
                            agent_id,
                            epoch: *epoch,
                        })
                        && l.expires_ms > now =>
                {
                    l.expires_ms = now + ms(TTL);
                    true
                }
                _ => false,
            })
            .collect()
    }

    pub(crate) fn release(&self, agent_id: u32, partition: u32, epoch: i64) {
        let now = Store::now_ms();
        let mut s = self.state.lock().unwrap();
        if let Some(l) = s.leases.get_mut(&partition)
            && l.id == (LeaseId { agent_id, epoch })
        {
            l.expires_ms = l.expires_ms.min(now);
        }
    }

    pub(crate) fn load(&self, partition: u32) -> PartitionState {
        self.state.lock().unwrap().partitions[partition as usize].clone()
    }

    pub(crate) fn commit(
        &self,
        partition: u32,
        lease: LeaseId,
        append: &Append,
        base: i64,
    ) -> Result<(), Refused> {
        let mut s = self.state.lock().unwrap();
        if self.fencing {
            if s.leases.get(&partition).map(|l| l.id) != Some(lease) {
                self.fenced.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Fenced);
            }
            if s.partitions[partition as usize].high_watermark() != base {
                return Err(Refused::Conflict);
            }
        }
        let state = &mut s.partitions[partition as usize];
        let at = state.high_watermark();
        state.records.extend(append.records.iter().copied());
        let window = state.producers.entry(append.producer).or_default();
        window.push_back((append.sequence, at));
        if window.len() > 5 {
            window.pop_front();
        }
        Ok(())
    }
}
