//! [`Metadata`]: key/value pairs a request carries besides its message, and [`Peer`]: who sent
//! it, as the agent's side of a connection sees it.
//!
//! Metadata is how credentials, trace context and a user's own headers travel, written by tower
//! layers on the producer's side and read by the agent's. Every transport carries it alike:
//! gRPC as its metadata, QUIC as a `RequestHeaders` frame before the request's frame, the mock
//! in process. So that one value means the same on all of them, the pairs follow gRPC's rules:
//! keys lowercase `[a-z0-9_.-]` (and not `grpc-…` or the HTTP/2 headers gRPC owns), values
//! visible ASCII.
//!
//! ```
//! use streamhouse::transport::{Metadata, Request};
//! use streamhouse::proto::v1::MetadataRequest;
//!
//! let mut request = Request::from(MetadataRequest::default());
//! request.metadata.insert("authorization", "Bearer s3cret").unwrap();
//! request.metadata.insert("x-team", "payments").unwrap();
//! assert_eq!(request.metadata.get("authorization"), Some("Bearer s3cret"));
//! // Keys and values that not every transport can carry are refused up front.
//! assert!(request.metadata.insert("Authorization", "x").is_err());
//! assert!(request.metadata.insert("x-note", "line\nbreak").is_err());
//! ```

use std::net::SocketAddr;

/// Why a pair cannot be metadata.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The key is empty, not lowercase `[a-z0-9_.-]`, or one gRPC reserves.
    #[error(
        "invalid metadata key {0:?}: lowercase a-z, 0-9, '_', '.', '-', not grpc-* or an HTTP/2 header"
    )]
    InvalidKey(String),
    /// The value holds a byte outside visible ASCII and space.
    #[error("invalid value for metadata key {0:?}: visible ASCII only")]
    InvalidValue(String),
}

/// Ordered key/value pairs carried with a request. A key may appear more than once;
/// [`get`](Metadata::get) returns the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pairs: Vec<(String, String)>,
}

/// Keys gRPC (HTTP/2) uses itself: a transport could not carry them as the user's.
const RESERVED: &[&str] = &["content-type", "te", "user-agent", "host", "connection"];

impl Metadata {
    /// No pairs.
    pub fn new() -> Metadata {
        Metadata::default()
    }

    /// Whether `key` can travel as metadata on every transport.
    pub fn valid_key(key: &str) -> bool {
        !key.is_empty()
            && key
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'))
            && !key.starts_with("grpc-")
            && !RESERVED.contains(&key)
    }

    /// Whether `value` can travel as metadata on every transport.
    pub fn valid_value(value: &str) -> bool {
        value.bytes().all(|b| (0x20..0x7f).contains(&b))
    }

    /// Appends a pair, refusing one that not every transport can carry.
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), MetadataError> {
        let (key, value) = (key.into(), value.into());
        if !Metadata::valid_key(&key) {
            return Err(MetadataError::InvalidKey(key));
        }
        if !Metadata::valid_value(&value) {
            return Err(MetadataError::InvalidValue(key));
        }
        self.pairs.push((key, value));
        Ok(())
    }

    /// Replaces every pair of `key` with this one.
    pub fn set(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), MetadataError> {
        let key = key.into();
        self.remove(&key);
        self.insert(key, value)
    }

    /// Removes every pair of `key`.
    pub fn remove(&mut self, key: &str) {
        self.pairs.retain(|(k, _)| k != key);
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Bytes of keys and values together.
    pub fn byte_len(&self) -> usize {
        self.pairs.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// Metadata as a server received it: pairs that could not have been sent through
    /// [`insert`](Metadata::insert) (a hand-made client's) are dropped, so the agent sees only
    /// what every transport would have carried.
    pub fn received(pairs: impl IntoIterator<Item = (String, String)>) -> Metadata {
        Metadata {
            pairs: pairs
                .into_iter()
                .filter(|(k, v)| Metadata::valid_key(k) && Metadata::valid_value(v))
                .collect(),
        }
    }
}

/// The sending end of a connection, as the agent's side sees it: filled in by a transport's
/// server adaptor, never sent by a client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Peer {
    /// The client's address, when the transport has one.
    pub addr: Option<SocketAddr>,
    /// The client's TLS certificate chain (DER, leaf first), when it presented one and the
    /// server verified it.
    pub certificates: Vec<Vec<u8>>,
    /// The connection the request came on, when the transport tells connections apart (so
    /// connections can be counted per principal).
    pub connection: Option<ConnectionToken>,
}

/// Identifies one live connection of a server adaptor, and tells when it has closed: it
/// watches an object the adaptor keeps for exactly as long as the connection is open.
#[derive(Clone)]
pub struct ConnectionToken(std::sync::Weak<dyn std::any::Any + Send + Sync>);

impl ConnectionToken {
    /// A token for the connection that `alive` lives as long as.
    pub fn of<T: Send + Sync + 'static>(alive: &std::sync::Arc<T>) -> ConnectionToken {
        let alive: std::sync::Arc<dyn std::any::Any + Send + Sync> = alive.clone();
        ConnectionToken(std::sync::Arc::downgrade(&alive))
    }

    /// Whether the connection is still open.
    pub fn is_open(&self) -> bool {
        self.0.strong_count() > 0
    }

    fn address(&self) -> *const () {
        self.0.as_ptr() as *const ()
    }
}

impl PartialEq for ConnectionToken {
    fn eq(&self, other: &ConnectionToken) -> bool {
        std::ptr::eq(self.address(), other.address())
    }
}

impl Eq for ConnectionToken {}

impl std::fmt::Debug for ConnectionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ConnectionToken({:p}, open: {})",
            self.address(),
            self.is_open()
        )
    }
}

impl Peer {
    /// A peer at `addr` without a certificate.
    pub fn at(addr: Option<SocketAddr>) -> Peer {
        Peer {
            addr,
            certificates: Vec::new(),
            connection: None,
        }
    }

    /// The same peer, on the connection `token` identifies.
    #[must_use]
    pub fn on(mut self, token: ConnectionToken) -> Peer {
        self.connection = Some(token);
        self
    }

    /// The same peer with its verified certificate chain (leaf first).
    #[must_use]
    pub fn with_certificates(mut self, certificates: Vec<Vec<u8>>) -> Peer {
        self.certificates = certificates;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_follow_grpc_rules() {
        let mut m = Metadata::new();
        for key in ["authorization", "traceparent", "x-team.id_2"] {
            m.insert(key, "v").unwrap();
        }
        for key in [
            "",
            "X-Upper",
            "grpc-timeout",
            "content-type",
            "te",
            "spa ce",
            "ütf",
        ] {
            assert_eq!(
                m.insert(key, "v"),
                Err(MetadataError::InvalidKey(key.into()))
            );
        }
        for value in ["tab\there", "nul\0", "é"] {
            assert!(matches!(
                m.insert("k", value),
                Err(MetadataError::InvalidValue(_))
            ));
        }
        assert_eq!(m.len(), 3);
        m.insert("traceparent", "second").unwrap();
        assert_eq!(m.get("traceparent"), Some("v"));
        m.set("traceparent", "only").unwrap();
        assert_eq!(m.get("traceparent"), Some("only"));
        assert_eq!(m.iter().filter(|(k, _)| *k == "traceparent").count(), 1);
    }

    #[test]
    fn received_metadata_drops_what_no_client_could_send() {
        let m = Metadata::received([
            ("ok".to_string(), "yes".to_string()),
            ("Bad".to_string(), "x".to_string()),
            ("grpc-status".to_string(), "0".to_string()),
            ("bin".to_string(), "\u{1}".to_string()),
        ]);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![("ok", "yes")]);
    }
}
