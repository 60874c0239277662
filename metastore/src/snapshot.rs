//! Producer snapshots as one text column: `epoch;first:last:offset,first:last:offset,…`
//! (oldest batch first). Text works the same in SQLite and PostgreSQL and stays readable in
//! `psql`.

use crate::StoreError;
use streamhouse::serve::{ProducerSnapshot, RememberedBatch};

/// The batches of a snapshot as stored.
pub(crate) fn encode(snapshot: &ProducerSnapshot) -> String {
    let batches: Vec<String> = snapshot
        .batches
        .iter()
        .map(|b| format!("{}:{}:{}", b.first_sequence, b.last_sequence, b.base_offset))
        .collect();
    batches.join(",")
}

/// A snapshot read back.
pub(crate) fn decode(
    producer_id: i64,
    epoch: i64,
    batches: &str,
) -> Result<ProducerSnapshot, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("producer {producer_id}: batches {batches:?}"));
    let epoch = i16::try_from(epoch).map_err(|_| corrupt())?;
    let batches = batches
        .split(',')
        .filter(|b| !b.is_empty())
        .map(|b| {
            let parts: Vec<&str> = b.split(':').collect();
            let [first, last, offset] = parts[..] else {
                return Err(corrupt());
            };
            Ok(RememberedBatch {
                first_sequence: first.parse().map_err(|_| corrupt())?,
                last_sequence: last.parse().map_err(|_| corrupt())?,
                base_offset: offset.parse().map_err(|_| corrupt())?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(ProducerSnapshot {
        producer_id,
        epoch,
        batches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_survive_the_text_column() {
        let snapshot = ProducerSnapshot {
            producer_id: 42,
            epoch: 3,
            batches: vec![
                RememberedBatch {
                    first_sequence: 2147483600,
                    last_sequence: -2147483640,
                    base_offset: 10,
                },
                RememberedBatch {
                    first_sequence: 0,
                    last_sequence: 0,
                    base_offset: 11,
                },
            ],
        };
        let text = encode(&snapshot);
        assert_eq!(decode(42, 3, &text).unwrap(), snapshot);
        assert!(decode(42, 3, "").unwrap().batches.is_empty());
    }

    #[test]
    fn damaged_snapshots_are_a_typed_error() {
        for bad in ["1:2", "a:b:c", "1:2:3,", "1:2:3:4x"] {
            let result = decode(1, 0, bad);
            if bad == "1:2:3," {
                assert!(result.is_ok(), "a trailing comma is harmless");
            } else {
                assert!(matches!(result, Err(StoreError::Corrupt(_))), "{bad}");
            }
        }
        assert!(matches!(decode(1, 70_000, ""), Err(StoreError::Corrupt(_))));
    }
}
