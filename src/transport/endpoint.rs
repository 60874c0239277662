//! [`Endpoint`]: where an agent listens, as a URL whose scheme names the transport.

use std::fmt;
use std::str::FromStr;

/// An agent address: `scheme://authority`, e.g. `grpc://127.0.0.1:9092`, `quic://[::1]:9093`,
/// `mock://agent-0`. The scheme picks the transport; the authority is the transport's business.
///
/// ```
/// use streamhouse::transport::Endpoint;
///
/// let e: Endpoint = "grpc://127.0.0.1:9092".parse().unwrap();
/// assert_eq!(e.scheme(), "grpc");
/// assert_eq!(e.authority(), "127.0.0.1:9092");
/// assert_eq!(e.to_string(), "grpc://127.0.0.1:9092");
/// assert!("127.0.0.1:9092".parse::<Endpoint>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    url: Box<str>,
    scheme_len: usize,
}

/// Why a string is not an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// No `scheme://` prefix.
    #[error("endpoint {0:?} has no scheme (expected e.g. grpc://host:port)")]
    MissingScheme(String),
    /// The scheme has characters other than lowercase letters, digits, `+`, `-`, `.`.
    #[error("endpoint {0:?} has an invalid scheme")]
    InvalidScheme(String),
    /// Nothing after `://`, or a path, query or whitespace after the authority.
    #[error("endpoint {0:?} needs exactly an authority after the scheme")]
    InvalidAuthority(String),
}

impl Endpoint {
    /// Parses `scheme://authority`.
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
        let (scheme, authority) = url
            .split_once("://")
            .ok_or_else(|| EndpointError::MissingScheme(url.to_owned()))?;
        let scheme_ok = !scheme.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_lowercase())
            && scheme
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        if !scheme_ok {
            return Err(EndpointError::InvalidScheme(url.to_owned()));
        }
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if authority.is_empty()
            || authority.contains(['/', '?', '#'])
            || authority.chars().any(char::is_whitespace)
        {
            return Err(EndpointError::InvalidAuthority(url.to_owned()));
        }
        Ok(Endpoint {
            url: format!("{scheme}://{authority}").into(),
            scheme_len: scheme.len(),
        })
    }

    /// `mock://agent-{id}`, the endpoint of a mock agent.
    #[cfg(feature = "mock")]
    pub(crate) fn mock(id: u32) -> Endpoint {
        Endpoint {
            url: format!("mock://agent-{id}").into(),
            scheme_len: "mock".len(),
        }
    }

    /// The scheme, naming the transport (`grpc`, `grpcs`, `quic`, `mock`, …).
    pub fn scheme(&self) -> &str {
        &self.url[..self.scheme_len]
    }

    /// Everything after `://`: usually `host:port`.
    pub fn authority(&self) -> &str {
        &self.url[self.scheme_len + 3..]
    }

    /// The host part of the authority, without the port or IPv6 brackets: the name a TLS
    /// certificate is checked against.
    ///
    /// ```
    /// use streamhouse::transport::Endpoint;
    /// let e: Endpoint = "quic://[::1]:9093".parse().unwrap();
    /// assert_eq!(e.host(), "::1");
    /// let e: Endpoint = "grpcs://agent.example:443".parse().unwrap();
    /// assert_eq!(e.host(), "agent.example");
    /// ```
    pub fn host(&self) -> &str {
        let authority = self.authority();
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority,
        };
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The whole URL.
    pub fn as_str(&self) -> &str {
        &self.url
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Endpoint, EndpointError> {
        Endpoint::parse(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({})", self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let e = Endpoint::parse("quic://[::1]:9093/").unwrap();
        assert_eq!((e.scheme(), e.authority()), ("quic", "[::1]:9093"));
        for bad in [
            "",
            "grpc://",
            "://x",
            "GRPC://x",
            "grpc://a/b",
            "grpc://a b",
            "1x://a",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?}");
        }
    }
}
