//! [`TransportError`]: why a request got no answer.

use std::error::Error as StdError;

type Source = Box<dyn StdError + Send + Sync>;

/// Why a connection could not deliver a request or its answer.
///
/// Retry decisions come from [`is_retriable`](TransportError::is_retriable); what a failure
/// means for the data from [`may_have_been_applied`](TransportError::may_have_been_applied).
/// Agent-level refusals (an `ErrorCode` in a response) are not transport errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The connection could not be established; nothing was sent.
    #[error("cannot connect to {endpoint}")]
    Connect {
        /// Where we tried to connect.
        endpoint: String,
        /// The underlying failure.
        #[source]
        source: Option<Source>,
    },
    /// The connection broke after the request may have been sent.
    #[error("connection lost")]
    ConnectionLost(#[source] Option<Source>),
    /// No answer within the request timeout; the agent may have applied the request.
    #[error("request timed out")]
    Timeout,
    /// The agent refused to take the request (overloaded, shutting down); nothing was applied.
    #[error("agent unavailable")]
    Unavailable(#[source] Option<Source>),
    /// A frame or message larger than the configured limit, in either direction.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// Size of the message.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The peer sent something that is not the protocol (bad frame, wrong response type).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// TLS handshake or certificate failure.
    #[error("tls failure")]
    Tls(#[source] Option<Source>),
    /// The agent requires credentials we did not present.
    #[error("unauthenticated")]
    Unauthenticated,
    /// The credentials do not allow this.
    #[error("unauthorized")]
    Unauthorized,
    /// The transport does not handle this endpoint's scheme.
    #[error("unsupported endpoint {0}")]
    UnsupportedEndpoint(String),
}

impl TransportError {
    /// Whether sending the same request again may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            TransportError::Connect { .. }
                | TransportError::ConnectionLost(_)
                | TransportError::Timeout
                | TransportError::Unavailable(_)
        )
    }

    /// Whether the agent may have applied the request although no answer arrived. When true, a
    /// retry without idempotence can duplicate records.
    pub fn may_have_been_applied(&self) -> bool {
        matches!(
            self,
            TransportError::ConnectionLost(_) | TransportError::Timeout
        )
    }

    /// A [`TransportError::ConnectionLost`] with a source.
    pub fn connection_lost(source: impl Into<Source>) -> TransportError {
        TransportError::ConnectionLost(Some(source.into()))
    }
}
