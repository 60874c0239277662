//! A history checker for fault tests, in the spirit of Jepsen's log checker and Kafka's
//! idempotent-producer guarantees (KIP-98).
//!
//! Every record a test sends carries a unique [`RecordId`] (which producer, and its send
//! sequence) at the start of its value. The test writes down what the producer said of each send
//! in a [`History`] — acknowledged at an offset, failed and not persisted, or unknown (possibly
//! persisted) — and, once the faults have healed, reads every partition back and hands the
//! records to [`History::check`]. The [`Report`] says, per partition, what went wrong:
//!
//! | counter | meaning | a violation? |
//! |---|---|---|
//! | `lost` | acknowledged, not in the log of its partition | yes |
//! | `duplicated` | an id at more than one offset (each extra copy counts once) | yes |
//! | `reordered` | a producer's sequence going backwards along offsets | yes |
//! | `offset_mismatch` | acknowledged offset ≠ offset read back | yes |
//! | `failed_but_present` | reported as not persisted, yet in the log | yes |
//! | `phantom` | in the log, never sent | yes |
//! | `unseen_after_heal` | outcome unknown and not in the log (allowed) | no |
//! | `unknown_present` | outcome unknown and in the log (allowed) | no |
//!
//! ```
//! use streamhouse::batch::Record;
//! use streamhouse::history::{History, Outcome, RecordId};
//!
//! let mut history = History::new();
//! let id = RecordId::new(0, 0);
//! history.record(id, Outcome::Acked { partition: 0, offset: 0 });
//!
//! // What reading partition 0 back returned.
//! let record = Record {
//!     offset: 0,
//!     timestamp: 0,
//!     key: None,
//!     value: Some(id.value(8).into()),
//!     headers: Vec::new(),
//! };
//! let report = history.check([(0, vec![record])]);
//! assert!(report.is_clean(), "{report}");
//! ```

use crate::batch::Record;
use crate::producer::{DeliveryFuture, Persistence, ProduceError, RecordMetadata};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

const MAGIC: &[u8; 4] = b"shid";

/// The unique id of one sent record: which producer sent it, and its place in that producer's
/// send order. Encoded in the first 16 bytes of the record value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    /// The producer (a test may run several).
    pub producer: u32,
    /// The producer's send sequence: 0, 1, 2, … in the order `send` was called.
    pub seq: u64,
}

impl RecordId {
    /// Bytes an id takes at the start of a value.
    pub const LEN: usize = 16;

    /// The id of the `seq`-th record sent by `producer`.
    pub fn new(producer: u32, seq: u64) -> RecordId {
        RecordId { producer, seq }
    }

    /// A record value of at least `len` bytes that starts with this id; the rest is filler.
    pub fn value(&self, len: usize) -> Vec<u8> {
        let mut value = Vec::with_capacity(len.max(Self::LEN));
        value.extend_from_slice(MAGIC);
        value.extend_from_slice(&self.producer.to_be_bytes());
        value.extend_from_slice(&self.seq.to_be_bytes());
        value.resize(len.max(Self::LEN), b'.');
        value
    }

    /// The id a value starts with, if it starts with one.
    pub fn parse(value: &[u8]) -> Option<RecordId> {
        let head = value.get(..Self::LEN)?;
        if &head[..4] != MAGIC {
            return None;
        }
        Some(RecordId {
            producer: u32::from_be_bytes(head[4..8].try_into().ok()?),
            seq: u64::from_be_bytes(head[8..16].try_into().ok()?),
        })
    }
}

/// What the producer said of one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Acknowledged at this partition and offset.
    Acked {
        /// Partition of the acknowledgement.
        partition: u32,
        /// Offset of the acknowledgement.
        offset: i64,
    },
    /// Failed, and the producer says it is not in the log.
    Failed {
        /// The partition it was sent to.
        partition: u32,
    },
    /// Failed without knowing whether it is in the log (timeout, connection lost).
    Unknown {
        /// The partition it was sent to.
        partition: u32,
    },
}

impl Outcome {
    /// The outcome of a delivery future's result, for a record sent to `partition`
    /// ([`DeliveryFuture::partition`](crate::producer::DeliveryFuture::partition)).
    pub fn of(partition: u32, result: &Result<RecordMetadata, ProduceError>) -> Outcome {
        match result {
            Ok(meta) => Outcome::Acked {
                partition: meta.partition,
                offset: meta.offset,
            },
            Err(e) => match e.persistence() {
                Persistence::NotPersisted => Outcome::Failed { partition },
                Persistence::PossiblyPersisted => Outcome::Unknown { partition },
            },
        }
    }

    /// The partition the record was sent to.
    pub fn partition(&self) -> u32 {
        match *self {
            Outcome::Acked { partition, .. }
            | Outcome::Failed { partition }
            | Outcome::Unknown { partition } => partition,
        }
    }
}

/// What was sent and what the producer said of each send. Two runs of a deterministic test
/// compare equal iff every send had the same outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    sends: BTreeMap<RecordId, Outcome>,
}

/// The checker's findings for one partition; see the [module documentation](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)] // each field is described in the module's table
pub struct PartitionReport {
    pub records: u64,
    pub acked: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub offset_mismatch: u64,
    pub failed_but_present: u64,
    pub phantom: u64,
    pub unseen_after_heal: u64,
    pub unknown_present: u64,
}

impl PartitionReport {
    /// The sum of the counters that are violations.
    pub fn violations(&self) -> u64 {
        self.lost
            + self.duplicated
            + self.reordered
            + self.offset_mismatch
            + self.failed_but_present
            + self.phantom
    }

    fn add(&mut self, other: &PartitionReport) {
        self.records += other.records;
        self.acked += other.acked;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.offset_mismatch += other.offset_mismatch;
        self.failed_but_present += other.failed_but_present;
        self.phantom += other.phantom;
        self.unseen_after_heal += other.unseen_after_heal;
        self.unknown_present += other.unknown_present;
    }
}

/// The checker's findings, per partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Findings by partition.
    pub partitions: BTreeMap<u32, PartitionReport>,
    /// Up to 10 examples of violations, for the failure message.
    pub examples: Vec<String>,
}

impl Report {
    /// All partitions added up.
    pub fn total(&self) -> PartitionReport {
        let mut total = PartitionReport::default();
        for report in self.partitions.values() {
            total.add(report);
        }
        total
    }

    /// No violations anywhere.
    pub fn is_clean(&self) -> bool {
        self.total().violations() == 0
    }

    fn example(&mut self, text: impl FnOnce() -> String) {
        if self.examples.len() < 10 {
            self.examples.push(text());
        }
    }
}

impl fmt::Display for PartitionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "records {}, acked {}, lost {}, duplicated {}, reordered {}, offset mismatch {}, \
             failed but present {}, phantom {}, unseen after heal {}, unknown but present {}",
            self.records,
            self.acked,
            self.lost,
            self.duplicated,
            self.reordered,
            self.offset_mismatch,
            self.failed_but_present,
            self.phantom,
            self.unseen_after_heal,
            self.unknown_present
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "total: {}", self.total())?;
        for (partition, report) in &self.partitions {
            writeln!(f, "  partition {partition}: {report}")?;
        }
        for example in &self.examples {
            writeln!(f, "  e.g. {example}")?;
        }
        Ok(())
    }
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Writes down the outcome of one send; a later outcome for the same id replaces it.
    pub fn record(&mut self, id: RecordId, outcome: Outcome) {
        self.sends.insert(id, outcome);
    }

    /// Awaits `delivery` and writes down its outcome.
    pub async fn record_delivery(&mut self, id: RecordId, delivery: DeliveryFuture) {
        let partition = delivery.partition();
        let result = delivery.await;
        self.record(id, Outcome::of(partition, &result));
    }

    /// Number of sends written down.
    pub fn len(&self) -> usize {
        self.sends.len()
    }

    /// Whether nothing was written down.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }

    /// Sends by outcome: (acked, failed, unknown).
    pub fn outcomes(&self) -> (u64, u64, u64) {
        let mut counts = (0, 0, 0);
        for outcome in self.sends.values() {
            match outcome {
                Outcome::Acked { .. } => counts.0 += 1,
                Outcome::Failed { .. } => counts.1 += 1,
                Outcome::Unknown { .. } => counts.2 += 1,
            }
        }
        counts
    }

    /// Checks the history against every partition read back, in offset order. Partitions not
    /// given are taken as empty.
    pub fn check(&self, logs: impl IntoIterator<Item = (u32, Vec<Record>)>) -> Report {
        let mut report = Report::default();
        // Where each id was found: (partition, offset) of every copy.
        let mut found: HashMap<RecordId, Vec<(u32, i64)>> = HashMap::new();
        for (partition, records) in logs {
            let mut part = PartitionReport {
                records: records.len() as u64,
                ..PartitionReport::default()
            };
            let mut last_seq: HashMap<u32, u64> = HashMap::new();
            for record in &records {
                let Some(id) = record.value.as_deref().and_then(RecordId::parse) else {
                    part.phantom += 1;
                    report.example(|| {
                        format!("p{partition}@{}: a record nobody sent", record.offset)
                    });
                    continue;
                };
                let copies = found.entry(id).or_default();
                copies.push((partition, record.offset));
                if copies.len() > 1 {
                    part.duplicated += 1;
                    report.example(|| format!("{id:?} duplicated at {copies:?}"));
                    continue;
                }
                if let Some(&previous) = last_seq.get(&id.producer)
                    && id.seq < previous
                {
                    part.reordered += 1;
                    report.example(|| {
                        format!(
                            "p{partition}@{}: {id:?} after seq {previous} of the same producer",
                            record.offset
                        )
                    });
                }
                let last = last_seq.entry(id.producer).or_insert(id.seq);
                *last = (*last).max(id.seq);
                match self.sends.get(&id) {
                    None => {
                        part.phantom += 1;
                        report.example(|| format!("{id:?} in the log, never sent"));
                    }
                    Some(Outcome::Failed { .. }) => {
                        part.failed_but_present += 1;
                        report.example(|| {
                            format!("{id:?} failed as not persisted, yet at p{partition}")
                        });
                    }
                    Some(Outcome::Unknown { .. }) => part.unknown_present += 1,
                    Some(Outcome::Acked { .. }) => {}
                }
            }
            report.partitions.insert(partition, part);
        }
        for (id, outcome) in &self.sends {
            let copies = found.get(id).map(Vec::as_slice).unwrap_or_default();
            match *outcome {
                Outcome::Acked { partition, offset } => {
                    let part = report.partitions.entry(partition).or_default();
                    part.acked += 1;
                    match copies.iter().find(|(p, _)| *p == partition) {
                        None => {
                            part.lost += 1;
                            report.example(|| {
                                format!("{id:?} acked at p{partition}@{offset}, not in the log")
                            });
                        }
                        // A negative offset is "acknowledged, offset unknown" (an old duplicate).
                        Some(&(_, at)) if offset >= 0 && at != offset => {
                            part.offset_mismatch += 1;
                            report.example(|| {
                                format!("{id:?} acked at p{partition}@{offset}, read back at {at}")
                            });
                        }
                        Some(_) => {}
                    }
                }
                Outcome::Unknown { partition } if copies.is_empty() => {
                    report
                        .partitions
                        .entry(partition)
                        .or_default()
                        .unseen_after_heal += 1;
                }
                Outcome::Unknown { .. } | Outcome::Failed { .. } => {}
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(offset: i64, id: RecordId) -> Record {
        Record {
            offset,
            timestamp: 0,
            key: None,
            value: Some(Bytes::from(id.value(20))),
            headers: Vec::new(),
        }
    }

    fn acked(history: &mut History, seq: u64, partition: u32, offset: i64) {
        history.record(RecordId::new(1, seq), Outcome::Acked { partition, offset });
    }

    #[test]
    fn ids_round_trip_and_foreign_values_do_not_parse() {
        let id = RecordId::new(7, u64::MAX - 3);
        assert_eq!(RecordId::parse(&id.value(100)), Some(id));
        assert_eq!(id.value(3).len(), RecordId::LEN);
        assert_eq!(RecordId::parse(b"short"), None);
        assert_eq!(RecordId::parse(b"not an id, but long enough"), None);
    }

    #[test]
    fn a_clean_history_is_clean() {
        let mut h = History::new();
        acked(&mut h, 0, 0, 0);
        acked(&mut h, 1, 0, 1);
        h.record(RecordId::new(1, 2), Outcome::Unknown { partition: 0 });
        h.record(RecordId::new(1, 3), Outcome::Unknown { partition: 0 });
        h.record(RecordId::new(1, 4), Outcome::Failed { partition: 0 });
        let log = vec![
            rec(0, RecordId::new(1, 0)),
            rec(1, RecordId::new(1, 1)),
            rec(2, RecordId::new(1, 2)),
        ];
        let report = h.check([(0, log)]);
        assert!(report.is_clean(), "{report}");
        let total = report.total();
        assert_eq!((total.unknown_present, total.unseen_after_heal), (1, 1));
        assert_eq!((total.records, total.acked), (3, 2));
    }

    #[test]
    fn every_violation_is_counted() {
        let mut h = History::new();
        for seq in 0..6 {
            acked(&mut h, seq, 0, seq as i64);
        }
        h.record(RecordId::new(1, 6), Outcome::Failed { partition: 0 });
        let log = vec![
            rec(0, RecordId::new(1, 0)),
            rec(1, RecordId::new(1, 2)), // acked at 2: offset mismatch
            rec(2, RecordId::new(1, 1)), // after seq 2: reordered, and offset mismatch
            rec(3, RecordId::new(1, 0)), // duplicated
            rec(4, RecordId::new(1, 6)), // failed but present
            rec(5, RecordId::new(9, 0)), // phantom (an id nobody sent)
            Record {
                value: Some(Bytes::from_static(b"no id")),
                ..rec(6, RecordId::new(0, 0))
            }, // phantom
                                         // seqs 3, 4, 5 lost
        ];
        let report = h.check([(0, log)]);
        let p = report.partitions[&0];
        assert_eq!(p.lost, 3, "{report}");
        assert_eq!(p.duplicated, 1);
        assert_eq!(p.reordered, 1);
        assert_eq!(p.offset_mismatch, 2);
        assert_eq!(p.failed_but_present, 1);
        assert_eq!(p.phantom, 2);
        assert_eq!(p.violations(), 10);
        assert!(!report.is_clean());
        assert!(!report.examples.is_empty());
    }

    #[test]
    fn unknown_outcomes_are_counted_in_their_partition() {
        let mut h = History::new();
        h.record(RecordId::new(1, 0), Outcome::Unknown { partition: 2 });
        h.record(RecordId::new(1, 1), Outcome::Unknown { partition: 2 });
        let report = h.check([(2, vec![rec(0, RecordId::new(1, 1))])]);
        assert!(report.is_clean());
        assert_eq!(report.partitions[&2].unseen_after_heal, 1);
        assert_eq!(report.partitions[&2].unknown_present, 1);
    }

    #[test]
    fn acked_in_another_partition_is_lost_there() {
        let mut h = History::new();
        acked(&mut h, 0, 1, 0);
        let report = h.check([(0, vec![rec(0, RecordId::new(1, 0))]), (1, vec![])]);
        assert_eq!(report.partitions[&1].lost, 1);
    }
}
