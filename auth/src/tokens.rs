//! [`TokenFile`]: static bearer tokens, stored as SHA-256 hashes, each naming its principal.
//!
//! The file holds one token per line, `sha256:HEX PRINCIPAL`; blank lines and lines starting
//! with `#` are ignored. Only hashes are stored, so the file gives away no usable token. A
//! client sends the token as `authorization: Bearer TOKEN`; the agent hashes what arrives and
//! looks the hash up. Make a line with [`TokenFile::line`] (or `printf %s TOKEN | sha256sum`).
//!
//! ```
//! use streamhouse::transport::{Metadata, Peer};
//! use streamhouse_auth::{Authenticator, TokenFile};
//!
//! let file = TokenFile::parse(&TokenFile::line("s3cret-token", "payments")).unwrap();
//! let mut metadata = Metadata::new();
//! metadata.insert("authorization", "Bearer s3cret-token").unwrap();
//! assert_eq!(file.authenticate(&Peer::default(), &metadata).unwrap().name(), "payments");
//! ```

use crate::{AuthError, Authenticator, Principal};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};
use streamhouse::transport::{Metadata, Peer};

/// The longest bearer token accepted (a JWT with many claims fits; 64 KiB of garbage does not).
pub const MAX_TOKEN_LEN: usize = 8 << 10;

/// Why a token file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read token file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `sha256:HEX PRINCIPAL`.
    #[error("token file line {line}: {why}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: &'static str,
    },
}

type Hash = [u8; 32];

/// Static bearer tokens and their principals, from a file of hashes.
#[derive(Debug)]
pub struct TokenFile {
    path: Option<PathBuf>,
    tokens: RwLock<HashMap<Hash, Principal>>,
}

impl TokenFile {
    /// Reads the token file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<TokenFile, TokenFileError> {
        let path = path.as_ref().to_path_buf();
        let tokens = read(&path)?;
        Ok(TokenFile {
            path: Some(path),
            tokens: RwLock::new(tokens),
        })
    }

    /// Tokens from the text of a token file.
    pub fn parse(text: &str) -> Result<TokenFile, TokenFileError> {
        Ok(TokenFile {
            path: None,
            tokens: RwLock::new(parse(text)?),
        })
    }

    /// Reads the file again (after a token was added or revoked). On an error the tokens held
    /// so far stay in force.
    pub fn reload(&self) -> Result<usize, TokenFileError> {
        let Some(path) = &self.path else {
            return Ok(self.len());
        };
        let tokens = read(path)?;
        let count = tokens.len();
        *self.tokens.write().unwrap_or_else(PoisonError::into_inner) = tokens;
        Ok(count)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether the file holds no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The line of a token file that lets `token` in as `principal`.
    pub fn line(token: &str, principal: &str) -> String {
        format!("sha256:{} {principal}\n", hex::encode(hash(token)))
    }
}

impl Authenticator for TokenFile {
    fn authenticate(&self, _: &Peer, metadata: &Metadata) -> Result<Principal, AuthError> {
        let token = bearer_token(metadata)?;
        self.tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&hash(token))
            .cloned()
            .ok_or(AuthError::Invalid)
    }
}

/// The token of a request's `authorization: Bearer TOKEN` metadata, checked for form and size.
pub fn bearer_token(metadata: &Metadata) -> Result<&str, AuthError> {
    let mut values = metadata.iter().filter(|(k, _)| *k == "authorization");
    let (_, value) = values.next().ok_or(AuthError::Missing)?;
    if values.next().is_some() {
        // Which one would count is a guess; two credentials are refused (found by an outside
        // review: the first won, whatever the second said).
        return Err(AuthError::Malformed("more than one authorization header"));
    }
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(AuthError::Malformed("expected `Bearer TOKEN`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed("expected the Bearer scheme"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::TooLarge {
            len: token.len(),
            limit: MAX_TOKEN_LEN,
        });
    }
    if token.is_empty() || token.contains(' ') {
        return Err(AuthError::Malformed("empty token or token with spaces"));
    }
    Ok(token)
}

fn hash(token: &str) -> Hash {
    Sha256::digest(token.as_bytes()).into()
}

fn read(path: &Path) -> Result<HashMap<Hash, Principal>, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text)
}

fn parse(text: &str) -> Result<HashMap<Hash, Principal>, TokenFileError> {
    let mut tokens = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |why| TokenFileError::Syntax { line: i + 1, why };
        let (hashed, principal) = line
            .split_once(char::is_whitespace)
            .ok_or(syntax("expected `sha256:HEX PRINCIPAL`"))?;
        let principal = principal.trim();
        if principal.is_empty() || principal.contains(char::is_whitespace) {
            return Err(syntax("the principal is one word"));
        }
        let hex_digest = hashed
            .strip_prefix("sha256:")
            .ok_or(syntax("the hash starts with `sha256:`"))?;
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hex_digest, &mut digest)
            .map_err(|_| syntax("the hash is 64 hex digits"))?;
        if tokens.insert(digest, Principal::new(principal)).is_some() {
            return Err(syntax("the same token twice"));
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: &str) -> Metadata {
        let mut m = Metadata::new();
        m.insert("authorization", value).unwrap();
        m
    }

    #[test]
    fn tokens_are_found_by_hash_and_bad_ones_refused_by_kind() {
        let text = format!(
            "# team tokens\n\n{}{}",
            TokenFile::line("alpha", "payments"),
            TokenFile::line("beta", "search")
        );
        assert!(!text.contains("alpha"), "only hashes are stored");
        let file = TokenFile::parse(&text).unwrap();
        let peer = Peer::default();
        let who = |v: &str| file.authenticate(&peer, &with_auth(v));
        assert_eq!(who("Bearer alpha").unwrap().name(), "payments");
        assert_eq!(who("bearer beta").unwrap().name(), "search");
        assert_eq!(who("Bearer gamma"), Err(AuthError::Invalid));
        assert_eq!(who("Bearer alph"), Err(AuthError::Invalid));
        assert!(matches!(who("Basic alpha"), Err(AuthError::Malformed(_))));
        assert!(matches!(who("alpha"), Err(AuthError::Malformed(_))));
        assert!(matches!(who("Bearer "), Err(AuthError::Malformed(_))));
        assert!(matches!(
            who(&format!("Bearer {}", "a".repeat(64 << 10))),
            Err(AuthError::TooLarge { .. })
        ));
        assert_eq!(
            file.authenticate(&peer, &Metadata::new()),
            Err(AuthError::Missing)
        );
        let mut two = with_auth("Bearer alpha");
        two.insert("authorization", "Bearer beta").unwrap();
        assert!(matches!(
            file.authenticate(&peer, &two),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn a_revoked_token_stops_working_after_a_reload_and_a_bad_file_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, TokenFile::line("alpha", "payments")).unwrap();
        let file = TokenFile::load(&path).unwrap();
        let auth = with_auth("Bearer alpha");
        assert!(file.authenticate(&Peer::default(), &auth).is_ok());
        std::fs::write(&path, "sha256:nothex payments\n").unwrap();
        assert!(file.reload().is_err());
        assert!(file.authenticate(&Peer::default(), &auth).is_ok());
        std::fs::write(&path, TokenFile::line("beta", "search")).unwrap();
        assert_eq!(file.reload().unwrap(), 1);
        assert_eq!(
            file.authenticate(&Peer::default(), &auth),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn syntax_errors_name_their_line() {
        for (text, line) in [
            ("sha256:00 who\n", 1),
            ("\nmd5:abcd who\n", 2),
            ("# c\nsha256:", 2),
            (
                &format!(
                    "{}sha256:{} two words",
                    TokenFile::line("a", "p"),
                    "0".repeat(64)
                ) as &str,
                2,
            ),
        ] {
            assert!(
                matches!(TokenFile::parse(text), Err(TokenFileError::Syntax { line: l, .. }) if l == line),
                "{text:?}"
            );
        }
        let twice = TokenFile::line("a", "p").repeat(2);
        assert!(TokenFile::parse(&twice).is_err());
    }
}
