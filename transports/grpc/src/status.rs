//! Mapping between tonic's `Status` and the typed transport errors.

use streamhouse::transport::TransportError;
use tonic::{Code, Status};

/// Classifies a failed RPC so that the retry policy decides from the kind, not the text.
///
/// `Unavailable` after the call was issued means the connection broke or could not carry it:
/// the agent may have applied it, so it maps to `ConnectionLost` (retriable, possibly applied).
/// So does a status that the client built itself from an I/O or HTTP/2 failure (it carries that
/// failure as its source; tonic reports a reset connection as `Unknown: transport error`),
/// whatever its code: statuses sent by a server carry no source.
pub(crate) fn to_transport_error(status: Status, max_message_size: usize) -> TransportError {
    if tls_refusal(&status) {
        return TransportError::Tls(Some(Box::new(status)));
    }
    if std::error::Error::source(&status).is_some()
        && !matches!(
            status.code(),
            Code::DeadlineExceeded | Code::ResourceExhausted | Code::Unauthenticated
        )
    {
        return TransportError::connection_lost(status);
    }
    match status.code() {
        Code::Unavailable | Code::Cancelled | Code::Aborted => {
            TransportError::connection_lost(status)
        }
        Code::DeadlineExceeded => TransportError::Timeout,
        Code::ResourceExhausted => TransportError::FrameTooLarge {
            size: 0,
            limit: max_message_size,
        },
        Code::Unauthenticated => TransportError::Unauthenticated,
        Code::PermissionDenied => TransportError::Unauthorized,
        _ => TransportError::Protocol(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// The status a server returns when the agent service itself failed (not a refusal: those are
/// error codes inside the response).
pub(crate) fn from_agent_error(error: &(dyn std::error::Error + 'static)) -> Status {
    match error.downcast_ref::<TransportError>() {
        Some(TransportError::FrameTooLarge { .. }) => Status::resource_exhausted(error.to_string()),
        Some(TransportError::Unauthenticated) => Status::unauthenticated(error.to_string()),
        Some(TransportError::Unauthorized) => Status::permission_denied(error.to_string()),
        _ => Status::unavailable(error.to_string()),
    }
}

/// Whether the call failed on a TLS alert from the agent (our certificate refused: none,
/// unknown CA, expired) — its own error, not a lost connection to retry. HTTP/2 (h2) keeps an
/// I/O error's kind and text only, so rustls's error is recognised by its text under
/// `InvalidData`. In TLS 1.3 the agent judges the client's certificate after the client
/// considers the handshake done, so a request written first can also fail with a broken pipe
/// before the alert is read: that one stays a retriable lost connection, and the retry meets
/// the alert.
fn tls_refusal(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::InvalidData
        {
            let text = io.to_string();
            if text.starts_with("received fatal alert")
                || text.starts_with("invalid peer certificate")
            {
                return true;
            }
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_decide_retries() {
        let lost = to_transport_error(Status::unavailable("connection reset"), 1);
        assert!(lost.is_retriable() && lost.may_have_been_applied());
        let timeout = to_transport_error(Status::deadline_exceeded("slow"), 1);
        assert!(timeout.is_retriable() && timeout.may_have_been_applied());
        let big = to_transport_error(Status::resource_exhausted("too large"), 16);
        assert!(matches!(
            big,
            TransportError::FrameTooLarge { limit: 16, .. }
        ));
        assert!(!big.is_retriable());
        let bug = to_transport_error(Status::invalid_argument("bad"), 1);
        assert!(matches!(bug, TransportError::Protocol(_)) && !bug.is_retriable());
        // A status the client made from a broken connection is a lost connection.
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let local = Status::from_error(Box::new(reset));
        assert_eq!(local.code(), Code::Unknown);
        let lost = to_transport_error(local, 1);
        assert!(lost.is_retriable() && lost.may_have_been_applied());
        // The same code sent by a server (no source) is not retried.
        assert!(!to_transport_error(Status::unknown("server bug"), 1).is_retriable());
        assert!(matches!(
            to_transport_error(Status::unauthenticated(""), 1),
            TransportError::Unauthenticated
        ));
    }
}
