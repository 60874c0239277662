//! [`Principal`]: who a request comes from, once authenticated; [`AuthError`]: why it could not
//! be told; [`Authenticator`]: the seam that tells it.

use std::fmt;
use std::sync::Arc;
use streamhouse::transport::{Metadata, Peer};

/// An authenticated identity: the name ACLs are written for (a token's principal, a JWT's
/// subject, a client certificate's name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(Arc<str>);

impl Principal {
    /// A principal named `name`.
    pub fn new(name: impl Into<Arc<str>>) -> Principal {
        Principal(name.into())
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a request's sender could not be authenticated. The message names what was wrong, never
/// the secret; it reaches the client with `UNAUTHENTICATED`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The request carries no credentials this authenticator reads.
    #[error("no credentials: send `authorization: Bearer TOKEN`")]
    Missing,
    /// The credentials are not in the expected form.
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    /// The token is longer than any this agent accepts.
    #[error("token of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The credentials are well formed but not valid (unknown or revoked token, bad signature).
    #[error("invalid credentials")]
    Invalid,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// The token is not valid yet (`nbf` in the future).
    #[error("token not yet valid")]
    NotYetValid,
    /// A claim the agent requires is wrong or missing.
    #[error("token refused: {0}")]
    Claim(&'static str),
}

impl AuthError {
    /// A short label for metrics and audit logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::TooLarge { .. } => "too_large",
            AuthError::Invalid => "invalid",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Claim(_) => "claim",
        }
    }
}

/// Tells who sent a request, from its connection and its metadata.
///
/// Called once per request, on the agent's request path: an implementation that does real
/// work (verifying a signature) caches its answer per credential. It is synchronous — every
/// authenticator here decides from what it holds in memory.
///
/// ```
/// use streamhouse::transport::{Metadata, Peer};
/// use streamhouse_auth::{AuthError, Authenticator, Principal};
///
/// /// Everyone on loopback is "local"; nobody else gets in.
/// struct LoopbackOnly;
///
/// impl Authenticator for LoopbackOnly {
///     fn authenticate(&self, peer: &Peer, _: &Metadata) -> Result<Principal, AuthError> {
///         match peer.addr {
///             Some(addr) if addr.ip().is_loopback() => Ok(Principal::new("local")),
///             _ => Err(AuthError::Invalid),
///         }
///     }
/// }
/// ```
pub trait Authenticator: Send + Sync + 'static {
    /// The principal of a request from `peer` carrying `metadata`.
    fn authenticate(&self, peer: &Peer, metadata: &Metadata) -> Result<Principal, AuthError>;
}

impl<A: Authenticator + ?Sized> Authenticator for Arc<A> {
    fn authenticate(&self, peer: &Peer, metadata: &Metadata) -> Result<Principal, AuthError> {
        (**self).authenticate(peer, metadata)
    }
}
