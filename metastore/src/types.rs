//! The values a [`MetadataStore`](crate::MetadataStore) holds.

use streamhouse::serve::ProducerSnapshot;

/// A topic as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// Its name.
    pub name: String,
    /// This incarnation of the name: a topic deleted and created again gets a new id.
    pub id: i64,
    /// Its partition count.
    pub partitions: u32,
    /// When it was created, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Records are removed once older than this many milliseconds (`None`: kept).
    pub retention_ms: Option<i64>,
    /// Per partition, the oldest records are removed while it holds more than this many bytes
    /// (`None`: no bound).
    pub retention_bytes: Option<i64>,
}

/// A partition's committed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionMeta {
    /// The first offset still held (records before it were removed by retention).
    pub log_start: i64,
    /// The offset after the last committed record: every record below it is in an object.
    pub high_watermark: i64,
}

/// An object written to object storage, immutable once written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// Its key in the bucket.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// One partition's part of an object: records `first_offset..next_offset`, stored as whole
/// batches at `byte_start..byte_start + byte_len` of the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedRange {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// Offset of the range's first record: the partition's committed high watermark.
    pub first_offset: i64,
    /// Offset after its last record: the new high watermark.
    pub next_offset: i64,
    /// Where its batches start in the object.
    pub byte_start: u64,
    /// How many bytes they take.
    pub byte_len: u64,
    /// The state of each idempotent producer with a batch in the range, after the range.
    pub producers: Vec<ProducerSnapshot>,
    /// The partition lease the writer holds (agents of a group): the commit is refused with
    /// [`StoreError::Fenced`](crate::StoreError::Fenced) unless the lease is still this one.
    /// `None` for a lone agent, which holds no lease.
    pub lease: Option<LeaseId>,
}

/// Where a partition's records `first_offset..next_offset` are: a byte range of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Offset of the first record.
    pub first_offset: i64,
    /// Offset after the last record.
    pub next_offset: i64,
    /// The object's key.
    pub object: String,
    /// Where the batches start in the object.
    pub byte_start: u64,
    /// How many bytes they take.
    pub byte_len: u64,
    /// When the range was committed, milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// What a partition holds in object storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Distinct objects holding some of its records.
    pub objects: u64,
    /// Bytes of its records in them.
    pub bytes: u64,
    /// Index entries.
    pub entries: u64,
}

/// Which lease a writer holds: the agent and the lease's epoch (bumped each time the
/// partition changes hands, or is taken again after its lease expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId {
    /// The agent holding the lease.
    pub agent_id: u32,
    /// The lease's epoch.
    pub epoch: i64,
}

/// A partition lease: who leads the partition, under which epoch, until when (store clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The holder and epoch.
    pub id: LeaseId,
    /// The group the holder belongs to.
    pub group: String,
    /// When the lease runs out, milliseconds since the Unix epoch by the store's clock.
    pub expires_ms: i64,
    /// The offset after the last record in the holder's local log, as of its last renewal
    /// (-1: not reported); with the high watermark, how far the holder is ahead of objects.
    pub local_end: i64,
}

/// What [`acquire`](crate::MetadataStore::acquire) took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    /// The lease, now held by the caller.
    pub lease: Lease,
    /// The agent that held it before (`None`: nobody ever did). When it is the caller itself,
    /// nobody else wrote the partition since: the caller's local records past the high
    /// watermark are still its own.
    pub previous: Option<u32>,
    /// When the previous holder's lease ran out or was released (store clock; -1: there was
    /// none). `now_ms` minus this is how long the partition had no leader.
    pub previous_expires_ms: i64,
    /// The store's clock when the lease was taken.
    pub now_ms: i64,
}

/// A registered agent of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    /// Its id (unique in the group).
    pub agent_id: u32,
    /// Its advertised endpoint URLs, one per transport (`grpc://…`, `quic://…`).
    pub endpoints: Vec<String>,
    /// Its last heartbeat, milliseconds since the Unix epoch (store clock).
    pub heartbeat_ms: i64,
    /// When it counts as gone unless it heartbeats again (store clock).
    pub expires_ms: i64,
    /// Since when it has been live without a lapse (store clock): its registration, or its
    /// first heartbeat after its registration ran out (a paused agent that came back).
    pub live_since_ms: i64,
}

/// A group as the store sees it, at one instant of the store's clock.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupView {
    /// The store's clock, milliseconds since the Unix epoch.
    pub now_ms: i64,
    /// Registered agents (live or not: see [`GroupView::live`]), by id.
    pub agents: Vec<AgentRecord>,
    /// Every partition lease of the store (held or lapsed), by topic and partition.
    pub leases: Vec<Lease>,
}

impl GroupView {
    /// The agents whose registration has not run out.
    pub fn live(&self) -> impl Iterator<Item = &AgentRecord> {
        self.agents.iter().filter(|a| a.expires_ms > self.now_ms)
    }

    /// The lease of a partition, if it is held (not run out).
    pub fn holder(&self, topic: &str, partition: u32) -> Option<&Lease> {
        self.leases
            .iter()
            .find(|l| l.topic == topic && l.partition == partition && l.expires_ms > self.now_ms)
    }
}

/// Which of `agents` should lead a partition: rendezvous (highest random weight) hashing, so
/// each agent ranks first for about an equal share of partitions, and an agent joining or
/// leaving moves only the partitions it ranks first for. Every agent and every client computes
/// the same answer from the same list. `None` when `agents` is empty.
///
/// ```
/// use streamhouse_metastore::rendezvous;
/// let first = rendezvous("orders", 3, [1, 2, 3]).unwrap();
/// // Removing another agent does not move the partition.
/// let others: Vec<u32> = [1, 2, 3].into_iter().filter(|a| *a == first || *a == 1).collect();
/// assert_eq!(rendezvous("orders", 3, others), Some(first));
/// ```
pub fn rendezvous(
    topic: &str,
    partition: u32,
    agents: impl IntoIterator<Item = u32>,
) -> Option<u32> {
    agents
        .into_iter()
        .max_by_key(|agent| (weight(topic, partition, *agent), *agent))
}

/// Which agent should lead each partition of `topics` (name, partition count): rendezvous
/// hashing with bounded load. In a fixed order (topics by name, partitions by number) each
/// partition goes to the agent that ranks it highest among those holding fewer than
/// ⌈partitions / agents⌉, so no agent leads more than its share even with few partitions
/// (plain rendezvous hashing gives 6 of 12 to one of three agents as often as not), and an agent
/// joining or leaving still moves few partitions. Every agent and client computes the same
/// answer from the same lists. Empty when `agents` is.
///
/// ```
/// use streamhouse_metastore::assign;
/// let owners = assign(&[("orders".to_owned(), 12)], &[1, 2, 3]);
/// for agent in [1, 2, 3] {
///     assert_eq!(owners.values().filter(|a| **a == agent).count(), 4);
/// }
/// ```
pub fn assign(
    topics: &[(String, u32)],
    agents: &[u32],
) -> std::collections::BTreeMap<(String, u32), u32> {
    let mut owners = std::collections::BTreeMap::new();
    if agents.is_empty() {
        return owners;
    }
    let mut agents = agents.to_vec();
    agents.sort_unstable();
    agents.dedup();
    let mut topics = topics.to_vec();
    topics.sort();
    let total: u64 = topics.iter().map(|(_, n)| u64::from(*n)).sum();
    let cap = total.div_ceil(agents.len() as u64);
    let mut load: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    for (topic, partitions) in &topics {
        for partition in 0..*partitions {
            let owner = agents
                .iter()
                .copied()
                .filter(|a| load.get(a).copied().unwrap_or(0) < cap)
                .max_by_key(|agent| (weight(topic, partition, *agent), *agent));
            if let Some(owner) = owner {
                *load.entry(owner).or_default() += 1;
                owners.insert((topic.clone(), partition), owner);
            }
        }
    }
    owners
}

/// A partition's weight for an agent: FNV-1a over the three, then a 64-bit finaliser (the
/// same on every machine and build: never `std`'s randomised hasher).
fn weight(topic: &str, partition: u32, agent: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = topic
        .as_bytes()
        .iter()
        .copied()
        .chain([0xff])
        .chain(partition.to_le_bytes())
        .chain(agent.to_le_bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser: FNV's low bits alone are poorly mixed.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}
