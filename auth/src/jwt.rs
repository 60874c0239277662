//! [`Jwt`]: bearer tokens that are JSON Web Tokens, verified with a key the agent holds.
//!
//! One algorithm per agent (`HS256` with a shared secret, `RS256` or `ES256` with a public key
//! in PEM), fixed in advance: a token naming another algorithm is refused, so neither
//! `alg: none` nor an RS256 public key used as an HS256 secret gets in. The signature, `exp`
//! (required), `nbf`, and the issuer and audience when configured are checked; the principal
//! is the `sub` claim. A verified token is remembered (by its SHA-256) until its `exp`, and
//! every request still checks the expiry: a token that runs out while its connection stays
//! open stops working at that second.

use crate::tokens::{MAX_TOKEN_LEN, bearer_token};
use crate::{AuthError, Authenticator, Principal};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
use streamhouse::transport::{Metadata, Peer};

/// Most verified tokens remembered at once; past it the memory starts over.
const CACHE_ENTRIES: usize = 10_000;

/// The signature algorithms an agent can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret (the key file's bytes).
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256; the key file is the PEM public key.
    Rs256,
    /// ECDSA P-256 with SHA-256; the key file is the PEM public key.
    Es256,
}

impl std::str::FromStr for JwtAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<JwtAlgorithm, String> {
        match s {
            "HS256" => Ok(JwtAlgorithm::Hs256),
            "RS256" => Ok(JwtAlgorithm::Rs256),
            "ES256" => Ok(JwtAlgorithm::Es256),
            other => Err(format!(
                "unsupported JWT algorithm {other:?}: HS256, RS256 or ES256"
            )),
        }
    }
}

/// Why a JWT verifier could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtKeyError {
    /// The key file could not be read.
    #[error("cannot read JWT key {path}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key is not a key of the algorithm.
    #[error("JWT key is not a valid key for {algorithm:?}: {why}")]
    Key {
        /// The algorithm.
        algorithm: JwtAlgorithm,
        /// The parser's words.
        why: String,
    },
}

/// Verifies JWT bearer tokens; see the module documentation.
pub struct Jwt {
    key: DecodingKey,
    validation: Validation,
    cache: Mutex<HashMap<[u8; 32], (Principal, u64)>>,
    clock: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<u64>,
}

impl Jwt {
    /// A verifier for `algorithm` with the key in `key` (the secret's bytes for HS256, a PEM
    /// public key otherwise).
    pub fn new(algorithm: JwtAlgorithm, key: &[u8]) -> Result<Jwt, JwtKeyError> {
        let bad = |e: jsonwebtoken::errors::Error| JwtKeyError::Key {
            algorithm,
            why: e.to_string(),
        };
        let pem = String::from_utf8_lossy(key);
        let (key, alg) = match algorithm {
            JwtAlgorithm::Hs256 if pem.contains("-----BEGIN") => {
                // An HMAC secret that is a PEM key is someone's public key: anyone holding it
                // could sign tokens.
                return Err(JwtKeyError::Key {
                    algorithm,
                    why: "an HS256 secret must not be a PEM key (it may be public); use RS256 or ES256 with a public key".into(),
                });
            }
            JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 if pem.contains("PRIVATE KEY") => {
                return Err(JwtKeyError::Key {
                    algorithm,
                    why: "give the public key, not the private one".into(),
                });
            }
            JwtAlgorithm::Hs256 => {
                if key.len() < 32 {
                    return Err(JwtKeyError::Key {
                        algorithm,
                        why: "an HS256 secret needs at least 32 bytes".into(),
                    });
                }
                (DecodingKey::from_secret(key), Algorithm::HS256)
            }
            JwtAlgorithm::Rs256 => (
                DecodingKey::from_rsa_pem(key).map_err(bad)?,
                Algorithm::RS256,
            ),
            JwtAlgorithm::Es256 => (
                DecodingKey::from_ec_pem(key).map_err(bad)?,
                Algorithm::ES256,
            ),
        };
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Jwt {
            key,
            validation,
            cache: Mutex::new(HashMap::new()),
            clock: Box::new(now),
        })
    }

    /// The same, with the key read from `path`. One trailing line break is not part of the
    /// key (`echo "$SECRET" > key` writes one).
    pub fn from_file(algorithm: JwtAlgorithm, path: &Path) -> Result<Jwt, JwtKeyError> {
        let mut key = std::fs::read(path).map_err(|source| JwtKeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if key.ends_with(b"\n") {
            key.pop();
            if key.ends_with(b"\r") {
                key.pop();
            }
        }
        Jwt::new(algorithm, &key)
    }

    /// Requires the `iss` claim to be `issuer`.
    #[must_use]
    pub fn issuer(mut self, issuer: &str) -> Jwt {
        self.validation.set_issuer(&[issuer]);
        // A token without `iss` would not be checked at all: require it.
        self.validation
            .required_spec_claims
            .insert("iss".to_owned());
        self
    }

    /// Requires the `aud` claim to name `audience`.
    #[must_use]
    pub fn audience(mut self, audience: &str) -> Jwt {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self.validation
            .required_spec_claims
            .insert("aud".to_owned());
        self
    }

    /// Seconds of clock difference tolerated on `exp` and `nbf` (default 0).
    #[must_use]
    pub fn leeway(mut self, seconds: u64) -> Jwt {
        self.validation.leeway = seconds;
        self
    }

    /// Judges the expiry of remembered tokens by `clock` (seconds since the Unix epoch)
    /// instead of the system clock — for tests of a token that runs out mid-connection. A
    /// token seen for the first time is always checked against the system clock.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Jwt {
        self.clock = Box::new(clock);
        self
    }

    fn verify(&self, token: &str) -> Result<(Principal, u64), AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer => AuthError::Claim("wrong issuer"),
                ErrorKind::InvalidAudience => AuthError::Claim("wrong audience"),
                ErrorKind::MissingRequiredClaim(_) => AuthError::Claim("missing exp or sub"),
                ErrorKind::InvalidAlgorithm => AuthError::Malformed("unexpected JWT algorithm"),
                ErrorKind::InvalidToken
                | ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_) => AuthError::Malformed("not a JWT"),
                _ => AuthError::Invalid,
            },
        )?;
        match (data.claims.sub, data.claims.exp) {
            (Some(sub), Some(exp)) if valid_principal(&sub) => Ok((Principal::new(sub), exp)),
            (Some(_), Some(_)) => Err(AuthError::Claim(
                "sub is not a principal name (visible ASCII, no spaces, not `*`)",
            )),
            _ => Err(AuthError::Claim("missing exp or sub")),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Authenticator for Jwt {
    fn authenticate(&self, _: &Peer, metadata: &Metadata) -> Result<Principal, AuthError> {
        let token = bearer_token(metadata)?;
        debug_assert!(token.len() <= MAX_TOKEN_LEN);
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = (self.clock)();
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((principal, exp)) = cache.get(&digest) {
                return if now < exp + self.validation.leeway {
                    Ok(principal.clone())
                } else {
                    Err(AuthError::Expired)
                };
            }
        }
        let (principal, exp) = self.verify(token)?;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(digest, (principal.clone(), exp));
        Ok(principal)
    }
}

/// Whether a JWT subject can be a principal: what ACL rules and logs can name unambiguously.
fn valid_principal(sub: &str) -> bool {
    !sub.is_empty() && sub != "*" && sub.bytes().all(|b| b.is_ascii_graphic())
}
