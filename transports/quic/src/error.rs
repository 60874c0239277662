//! [`QuicError`], the stream error codes, and mapping quinn errors to transport errors.

use std::io;
use streamhouse::transport::TransportError;
use streamhouse::transport::frame::FrameError;

/// A frame over the limit.
pub const FRAME_TOO_LARGE: u32 = 1;
/// A malformed frame or message.
pub const MALFORMED: u32 = 2;
/// The agent is shutting down.
pub const UNAVAILABLE: u32 = 3;
/// The request's frame did not arrive whole within the server's read timeout.
pub const READ_TIMEOUT: u32 = 4;
/// The client did not read the answer within the server's write timeout.
pub const WRITE_TIMEOUT: u32 = 5;
/// Connection close: no request for the server's idle timeout.
pub const IDLE: u32 = 6;

/// Setting up a QUIC client or server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// Certificates or keys could not be read or used.
    #[error("tls setup: {0}")]
    Tls(String),
    /// The UDP socket could not be bound or used.
    #[error("quic endpoint")]
    Io(#[from] io::Error),
}

impl From<rustls::Error> for QuicError {
    fn from(e: rustls::Error) -> QuicError {
        QuicError::Tls(e.to_string())
    }
}

/// A connection-level failure as a transport error.
pub(crate) fn connection_error(e: quinn::ConnectionError) -> TransportError {
    use quinn::ConnectionError as C;
    match e {
        // TLS alerts travel as CRYPTO_ERROR codes 0x100..=0x1ff.
        C::TransportError(ref t) if (0x100..=0x1ff).contains(&u64::from(t.code)) => {
            TransportError::Tls(Some(Box::new(e)))
        }
        // The agent refused our certificate (none, unknown CA, expired): its own error, not a
        // lost connection to retry.
        C::ConnectionClosed(ref close)
            if (0x100..=0x1ff).contains(&u64::from(close.error_code)) =>
        {
            TransportError::Tls(Some(Box::new(e)))
        }
        C::VersionMismatch => TransportError::Protocol(e.to_string()),
        // Idle timeout, closed or reset connections: retriable, and a request in flight may
        // have been applied.
        _ => TransportError::connection_lost(e),
    }
}

/// A failed stream read or frame as a transport error (reset codes decide the kind).
pub(crate) fn read_error(e: FrameError, limit: usize) -> TransportError {
    if let FrameError::Io(io) = &e
        && let Some(read) = io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<quinn::ReadError>())
    {
        return match read {
            quinn::ReadError::Reset(code) => reset(u64::from(*code), limit),
            quinn::ReadError::ConnectionLost(c) => connection_error(c.clone()),
            _ => TransportError::connection_lost(e),
        };
    }
    e.into()
}

/// A failed stream write as a transport error.
pub(crate) fn write_error(e: quinn::WriteError, limit: usize) -> TransportError {
    match e {
        quinn::WriteError::Stopped(code) => reset(u64::from(code), limit),
        quinn::WriteError::ConnectionLost(c) => connection_error(c),
        other => TransportError::connection_lost(other),
    }
}

fn reset(code: u64, limit: usize) -> TransportError {
    match u32::try_from(code) {
        Ok(FRAME_TOO_LARGE) => TransportError::FrameTooLarge { size: 0, limit },
        Ok(MALFORMED) => TransportError::Protocol("agent refused the frame as malformed".into()),
        Ok(UNAVAILABLE) => TransportError::Unavailable(None),
        _ => TransportError::connection_lost(format!("stream reset with code {code}")),
    }
}
