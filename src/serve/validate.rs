//! Checks on what a producer sends: topic names and batches.

use super::Rejection;
use crate::batch::{Batch, DecodeLimits};
use crate::codec::Codecs;
use bytes::Bytes;
use streamhouse_proto::v1::ErrorCode;

/// Longest topic name, as Kafka (249 characters).
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Kafka's topic name rules: 1 to 249 characters of `[a-zA-Z0-9._-]`, and not `.` or `..`
/// (which would be path components of the partition directory).
///
/// ```
/// use streamhouse::serve::validate_topic_name;
/// assert!(validate_topic_name("orders.v2_eu-west").is_ok());
/// for bad in ["", ".", "..", "a/b", "é"] {
///     assert!(validate_topic_name(bad).is_err());
/// }
/// ```
pub fn validate_topic_name(name: &str) -> Result<(), Rejection> {
    let invalid = |why: &str| Rejection::new(ErrorCode::InvalidTopic, format!("topic name {why}"));
    if name.is_empty() {
        return Err(invalid("is empty"));
    }
    if name == "." || name == ".." {
        return Err(invalid("cannot be \".\" or \"..\""));
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(invalid("is longer than 249 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid("has characters other than [a-zA-Z0-9._-]"));
    }
    Ok(())
}

/// Validates one batch as an agent must before appending it: the header, the CRC and the
/// limits ([`Batch::parse`]), a registered codec, and every record (walked as borrowed views,
/// so the check allocates nothing beyond a decompression buffer). Empty batches are refused:
/// they would consume no offsets and carry no data.
pub fn validate_batch(
    bytes: Bytes,
    limits: &DecodeLimits,
    codecs: &Codecs,
) -> Result<Batch, Rejection> {
    let batch = Batch::parse(bytes, limits)?;
    if batch.header().record_count == 0 {
        return Err(Rejection::new(
            ErrorCode::InvalidRequest,
            "batch has no records",
        ));
    }
    let block = batch.record_block(codecs)?;
    for view in block.iter() {
        view?;
    }
    Ok(batch)
}
