//! [`LeaseTable`]: which partition leases one agent holds and until when it may serve them,
//! and what it should take or give up next. No I/O and no clock of its own: the caller feeds
//! it the store's answers and the time, so the same code runs in the agent (tokio) and in the
//! simulation (a simulated store, clock and faults).
//!
//! The one safety rule it keeps: an agent serves a partition only until `started + ttl −
//! margin`, where `started` is the moment (on its own monotonic clock) it *sent* the acquire or
//! renewal that the store granted. The store let the lease run to at least `ttl` after it
//! handled that call, which was later, so the agent stops before the store can give the
//! partition to anyone else — whatever the agents' wall clocks say, as long as monotonic
//! clocks run at rates within `margin / ttl` of each other. The epoch check in every commit is
//! the backstop for the rest (a paused agent resumes with appends already refused: the
//! deadline is checked at each append).

use std::collections::BTreeMap;
use std::collections::BTreeMap as Owners;
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhouse_metastore::{GroupView, assign};

/// A partition: topic and number.
pub type Key = (Arc<str>, u32);

/// A lease this agent holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holding {
    /// The lease's epoch (what its commits carry).
    pub epoch: i64,
    /// Appends stop here unless a renewal lands first.
    pub until: Instant,
}

/// What an agent should do about its leases, from one look at the group.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Partitions this agent should lead and that are free: try to take them.
    pub take: Vec<Key>,
    /// Partitions it leads that another agent, live for a while, ranks first for: flush and
    /// give them up.
    pub give: Vec<Key>,
}

/// The leases one agent holds (see the module docs).
#[derive(Debug)]
pub struct LeaseTable {
    me: u32,
    ttl: Duration,
    held: BTreeMap<Key, Holding>,
}

impl LeaseTable {
    /// The table of agent `me`, for leases of `ttl`.
    pub fn new(me: u32, ttl: Duration) -> LeaseTable {
        LeaseTable {
            me,
            ttl,
            held: BTreeMap::new(),
        }
    }

    /// How much earlier than the store's expiry this agent stops serving.
    pub fn margin(&self) -> Duration {
        self.ttl / 5
    }

    /// How often leases should be renewed: a third of their time, so two renewals can fail
    /// before one runs out.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// The lease held on `key`.
    pub fn holding(&self, key: &Key) -> Option<Holding> {
        self.held.get(key).copied()
    }

    /// Every lease held, by partition.
    pub fn held(&self) -> impl Iterator<Item = (&Key, &Holding)> {
        self.held.iter()
    }

    /// Where serving must stop for a lease granted by a call sent at `started`.
    fn until(&self, started: Instant) -> Instant {
        started + self.ttl.saturating_sub(self.margin())
    }

    /// The store granted `key` under `epoch` to a call sent at `started`. Returns the instant
    /// serving must stop unless renewed.
    pub fn took(&mut self, key: Key, epoch: i64, started: Instant) -> Instant {
        let until = self.until(started);
        self.held.insert(key, Holding { epoch, until });
        until
    }

    /// Renewals sent at `started` came back: per lease asked, whether it is still held.
    /// Returns the new serving deadlines of the renewed and the keys lost (no longer held).
    pub fn renewed(
        &mut self,
        started: Instant,
        results: Vec<(Key, i64, bool)>,
    ) -> (Vec<(Key, Instant)>, Vec<Key>) {
        let until = self.until(started);
        let (mut kept, mut lost) = (Vec::new(), Vec::new());
        for (key, epoch, held) in results {
            // Only the lease the renewal was for: one taken again meanwhile is not touched.
            let Some(holding) = self.held.get_mut(&key).filter(|h| h.epoch == epoch) else {
                continue;
            };
            if held {
                holding.until = holding.until.max(until);
                kept.push((key, holding.until));
            } else {
                self.held.remove(&key);
                lost.push(key);
            }
        }
        (kept, lost)
    }

    /// Leases whose serving deadline has passed (no renewal in time): dropped and returned.
    pub fn lapsed(&mut self, now: Instant) -> Vec<Key> {
        let gone: Vec<Key> = self
            .held
            .iter()
            .filter(|(_, h)| h.until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &gone {
            self.held.remove(key);
        }
        gone
    }

    /// The lease on `key` is given up or lost.
    pub fn forget(&mut self, key: &Key) -> Option<Holding> {
        self.held.remove(key)
    }

    /// Whether `agent` has been live long enough to be handed partitions: twice the lease
    /// time. An agent that joins (or comes back from a pause) takes free partitions at once,
    /// but held ones move to it only once it has stayed up, so a flapping agent does not drag
    /// partitions back and forth.
    fn settled(&self, view: &GroupView, agent: u32) -> bool {
        let settle = i64::try_from((self.ttl * 2).as_millis()).unwrap_or(i64::MAX);
        view.live()
            .find(|a| a.agent_id == agent)
            .is_some_and(|a| view.now_ms - a.live_since_ms >= settle)
    }

    /// Which agent should lead each partition: [`assign`] over the live agents of `view`,
    /// this agent counted live.
    pub fn owners(&self, view: &GroupView, topics: &[(String, u32)]) -> Owners<(String, u32), u32> {
        let mut live: Vec<u32> = view.live().map(|a| a.agent_id).collect();
        if !live.contains(&self.me) {
            live.push(self.me);
        }
        assign(topics, &live)
    }

    /// What to take and give, from the group as the store sees it (`view`) and every topic's
    /// partition count. Each partition's leader should be the agent [`owners`](Self::owners)
    /// names; a partition is taken only when no other agent holds its lease, and given up only
    /// to a live agent.
    pub fn plan(&self, view: &GroupView, topics: &[(String, u32)]) -> Plan {
        let owners = self.owners(view, topics);
        let mut plan = Plan::default();
        for (topic, partitions) in topics {
            let name: Arc<str> = Arc::from(topic.as_str());
            for partition in 0..*partitions {
                let key: Key = (name.clone(), partition);
                let owner = owners.get(&(topic.clone(), partition)).copied();
                let held = self.held.contains_key(&key);
                if owner == Some(self.me) && !held {
                    let free = view
                        .holder(topic, partition)
                        .is_none_or(|l| l.id.agent_id == self.me);
                    if free {
                        plan.take.push(key);
                    }
                } else if held
                    && let Some(owner) = owner.filter(|o| *o != self.me)
                    && self.settled(view, owner)
                {
                    plan.give.push(key);
                }
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamhouse_metastore::{AgentRecord, Lease, LeaseId};

    fn view(now_ms: i64, agents: &[u32], leases: &[(u32, u32, i64)]) -> GroupView {
        GroupView {
            now_ms,
            agents: agents
                .iter()
                .map(|&agent_id| AgentRecord {
                    agent_id,
                    endpoints: vec![],
                    heartbeat_ms: now_ms,
                    expires_ms: now_ms + 5_000,
                    live_since_ms: now_ms - 60_000,
                })
                .collect(),
            leases: leases
                .iter()
                .map(|&(partition, agent_id, expires_ms)| Lease {
                    topic: "t".into(),
                    partition,
                    id: LeaseId { agent_id, epoch: 1 },
                    group: "g".into(),
                    expires_ms,
                    local_end: -1,
                })
                .collect(),
        }
    }

    #[test]
    fn every_partition_has_one_planned_taker_and_a_join_moves_only_some() {
        let topics = [("t".to_owned(), 12)];
        let takers = |agents: &[u32]| -> Vec<(u32, Vec<Key>)> {
            agents
                .iter()
                .map(|&me| {
                    let table = LeaseTable::new(me, Duration::from_secs(5));
                    (me, table.plan(&view(0, agents, &[]), &topics).take)
                })
                .collect()
        };
        let two = takers(&[1, 2]);
        assert!(
            two.iter().all(|(_, t)| t.len() == 6),
            "an equal share each: {two:?}"
        );
        let three = takers(&[1, 2, 3]);
        assert!(three.iter().all(|(_, t)| t.len() == 4), "{three:?}");
        // A join moves few partitions: most stay where they were.
        let stayed: usize = three[..2]
            .iter()
            .map(|(me, taken)| {
                let before = &two.iter().find(|(a, _)| a == me).unwrap().1;
                taken.iter().filter(|k| before.contains(k)).count()
            })
            .sum();
        assert!(stayed >= 6, "only {stayed} of 8 stayed on a join");
    }

    #[test]
    fn a_held_partition_is_not_taken_and_one_ranked_elsewhere_is_given() {
        let topics = [("t".to_owned(), 12)];
        let mut table = LeaseTable::new(1, Duration::from_secs(5));
        let plan = table.plan(&view(0, &[1, 2], &[]), &topics);
        let mine = plan.take[0].clone();
        // Someone else holds it (unexpired): not taken.
        let held_by_2 = view(0, &[1, 2], &[(mine.1, 2, 10_000)]);
        assert!(!table.plan(&held_by_2, &topics).take.contains(&mine));
        // Run out: taken.
        let lapsed = view(20_000, &[1, 2], &[(mine.1, 2, 10_000)]);
        assert!(table.plan(&lapsed, &topics).take.contains(&mine));
        // Held by 1, and only agent 2 is live besides: kept; a partition agent 2 ranks first
        // for, held by 1, is given.
        let now = Instant::now();
        let other = table.plan(&view(0, &[2], &[]), &topics).give;
        assert!(other.is_empty(), "nothing held yet");
        for p in 0..12 {
            table.took((Arc::from("t"), p), 1, now);
        }
        let give = table.plan(&view(0, &[1, 2], &[]), &topics).give;
        assert!(!give.contains(&mine));
        assert_eq!(give.len(), 12 - plan.take.len());
    }

    #[test]
    fn held_partitions_move_to_an_agent_only_once_it_has_stayed_up() {
        let topics = [("t".to_owned(), 12)];
        let mut table = LeaseTable::new(1, Duration::from_secs(5));
        for p in 0..12 {
            table.took((Arc::from("t"), p), 1, Instant::now());
        }
        // Agent 2 came back 3 s ago (less than twice the lease time): nothing is given yet.
        let mut back = view(100_000, &[1, 2], &[]);
        back.agents[1].live_since_ms = 97_000;
        assert!(table.plan(&back, &topics).give.is_empty());
        back.agents[1].live_since_ms = 89_000;
        assert_eq!(table.plan(&back, &topics).give.len(), 6);
    }

    #[test]
    fn serving_stops_a_margin_before_the_store_could_give_the_lease_away() {
        let ttl = Duration::from_secs(5);
        let mut table = LeaseTable::new(1, ttl);
        let t0 = Instant::now();
        let key: Key = (Arc::from("t"), 0);
        let until = table.took(key.clone(), 3, t0);
        assert_eq!(until, t0 + ttl - table.margin());
        assert!(table.lapsed(until - Duration::from_millis(1)).is_empty());
        // A renewal sent later extends it; one for an older epoch does not.
        let t1 = t0 + Duration::from_secs(1);
        let (kept, lost) = table.renewed(t1, vec![(key.clone(), 3, true)]);
        assert_eq!((kept[0].1, lost.len()), (t1 + ttl - table.margin(), 0));
        let (kept, _) = table.renewed(t1 + ttl, vec![(key.clone(), 2, true)]);
        assert!(kept.is_empty());
        // A renewal the store refused: lost at once.
        let (_, lost) = table.renewed(t1, vec![(key.clone(), 3, false)]);
        assert_eq!(lost, std::slice::from_ref(&key));
        table.took(key.clone(), 4, t1);
        assert_eq!(table.lapsed(t1 + ttl), [key]);
        assert_eq!(table.held().count(), 0);
    }
}
