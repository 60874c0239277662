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
    let mut unlimited = usize::MAX;
    validate_batch_within(bytes, limits, codecs, &mut unlimited)
}

/// [`validate_batch`] within a decompression budget shared by the batches of one request:
/// each batch may inflate to at most what is left of `budget` (and its own
/// `max_uncompressed_bytes`), and what it inflated to is taken from it. A batch refused only
/// because the budget ran out answers [`ErrorCode::Throttled`]: sent again in a later request
/// it fits. So one small request cannot buy unbounded decompression work.
///
/// ```
/// use streamhouse::serve::validate_batch_within;
/// # use streamhouse::batch::*; use streamhouse::codec::{Codecs, NoCompression};
/// # let mut b = BatchBuilder::new(); b.append(1, None, Some(&[0u8; 1000]), &[]).unwrap();
/// # let batch = b.finish(ProducerStamp::NONE, &NoCompression).unwrap();
/// let mut budget = 1_500;
/// let limits = DecodeLimits::default();
/// assert!(validate_batch_within(batch.clone(), &limits, &Codecs::new(), &mut budget).is_ok());
/// let refused = validate_batch_within(batch, &limits, &Codecs::new(), &mut budget).unwrap_err();
/// assert_eq!(refused.code, streamhouse_proto::v1::ErrorCode::Throttled);
/// ```
///
/// The budget is charged for every block decompressed, also when its records then prove
/// corrupt, and for the whole limit when the block fails to decompress.
pub fn validate_batch_within(
    bytes: Bytes,
    limits: &DecodeLimits,
    codecs: &Codecs,
    budget: &mut usize,
) -> Result<Batch, Rejection> {
    let tight = *budget < limits.max_uncompressed_bytes;
    let mut within = *limits;
    within.max_uncompressed_bytes = limits.max_uncompressed_bytes.min(*budget);
    // Parsing checks what `within` shares with `limits`; the budget applies when decoding.
    let batch = Batch::parse(bytes, &within)?;
    if batch.header().record_count == 0 {
        return Err(Rejection::new(
            ErrorCode::InvalidRequest,
            "batch has no records",
        ));
    }
    let block = match batch.record_block(codecs) {
        Ok(block) => block,
        Err(e) if tight && e.code() == ErrorCode::BatchTooLarge => {
            return Err(Rejection::new(
                ErrorCode::Throttled,
                format!(
                    "the request decompresses past its budget ({} bytes left); send this batch \
                     again in another request",
                    *budget
                ),
            ));
        }
        Err(e) => {
            // A block that fails to decompress may have cost the work up to the limit: it is
            // charged as such, or a request of such blocks would decompress without a bound.
            *budget = budget.saturating_sub(within.max_uncompressed_bytes);
            return Err(e.into());
        }
    };
    // Charged before the records are checked: corrupt records cost the decompression too.
    *budget = budget.saturating_sub(block.as_bytes().len());
    for view in block.iter() {
        view?;
    }
    Ok(batch)
}
