//! Behaviour attached to the generated [`ErrorCode`]: which codes a client may retry.

use crate::v1::ErrorCode;

impl ErrorCode {
    /// Whether a request refused with this code may succeed if sent again (after a backoff and,
    /// for [`ErrorCode::NotLeader`] and [`ErrorCode::UnknownTopic`], a metadata refresh).
    ///
    /// [`ErrorCode::DuplicateSequence`] is not retriable because it is not a failure: the batch is
    /// already in the log, at the offset the response carries.
    ///
    /// ```
    /// use streamhouse_proto::v1::ErrorCode;
    /// assert!(ErrorCode::NotLeader.is_retriable());
    /// assert!(!ErrorCode::CorruptBatch.is_retriable());
    /// ```
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::UnknownTopic
                | ErrorCode::NotLeader
                | ErrorCode::Unavailable
                | ErrorCode::Throttled
                | ErrorCode::RequestTimedOut
                | ErrorCode::StorageError
                | ErrorCode::ProducerStateFull
                | ErrorCode::StorageFull
        )
    }

    /// Whether a batch refused with this code may be in the log all the same: the agent gave
    /// up waiting for it ([`ErrorCode::RequestTimedOut`]: it may still be appended) or wrote it
    /// without making it durable ([`ErrorCode::StorageError`]). A client that finally fails
    /// such a batch must report it as possibly persisted.
    ///
    /// ```
    /// use streamhouse_proto::v1::ErrorCode;
    /// assert!(ErrorCode::RequestTimedOut.may_have_been_appended());
    /// assert!(!ErrorCode::NotLeader.may_have_been_appended());
    /// ```
    pub fn may_have_been_appended(self) -> bool {
        matches!(self, ErrorCode::RequestTimedOut | ErrorCode::StorageError)
    }

    /// Whether the client should refresh its metadata before retrying.
    pub fn is_stale_metadata(self) -> bool {
        matches!(
            self,
            ErrorCode::UnknownTopic | ErrorCode::UnknownPartition | ErrorCode::NotLeader
        )
    }

    /// Decodes a wire value, mapping numbers this version does not know to
    /// [`ErrorCode::Internal`] so a newer agent's code is still an error, never success.
    pub fn from_wire(value: i32) -> ErrorCode {
        ErrorCode::try_from(value).unwrap_or(ErrorCode::Internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_wire_values_are_errors_not_success() {
        assert_eq!(ErrorCode::from_wire(0), ErrorCode::None);
        assert_eq!(ErrorCode::from_wire(3), ErrorCode::NotLeader);
        assert_eq!(ErrorCode::from_wire(9_999), ErrorCode::Internal);
        assert_eq!(ErrorCode::from_wire(-1), ErrorCode::Internal);
    }

    #[test]
    fn only_transient_codes_are_retriable() {
        let retriable: Vec<_> = (0..=25)
            .map(ErrorCode::from_wire)
            .filter(|c| c.is_retriable())
            .collect();
        assert_eq!(
            retriable,
            [
                ErrorCode::UnknownTopic,
                ErrorCode::NotLeader,
                ErrorCode::Unavailable,
                ErrorCode::Throttled,
                ErrorCode::RequestTimedOut,
                ErrorCode::StorageError,
                ErrorCode::ProducerStateFull,
                ErrorCode::StorageFull,
            ]
        );
    }
}
