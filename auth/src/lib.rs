//! Security for StreamHouse agents: who sent a request ([`Authenticator`]), what they may do
//! ([`Authorizer`]), and [`guard`], the layer that applies both in front of any agent service
//! — the reference agent's or the mock's.
//!
//! ```text
//! transport server adaptor ──Request{metadata, peer}──▶ guard ──▶ agent service
//!                                                         │ authenticate(peer, metadata) → Principal
//!                                                         │ allowed(principal, operation, topic)
//!                                                         └ refusals answered here: UNAUTHENTICATED / UNAUTHORIZED
//! ```
//!
//! Built so far: static bearer tokens stored as hashes ([`TokenFile`]), JSON Web Tokens
//! ([`Jwt`]: HS256, RS256, ES256; issuer, audience, expiry, not-before), client certificates
//! (mutual TLS, [`CertificateNames`]), either of them ([`FirstOf`]), and topic ACLs with
//! literal and prefix patterns, deny by default ([`Acls`], [`AclFile`]). The producer side
//! (credentials in the request metadata) lives in the core crate, as a layer.

mod acl;
mod audit;
mod guard;
mod jwt;
mod mtls;
mod principal;
mod producer_ids;
mod quota;
mod tokens;

pub use acl::{
    AclError, AclFile, Acls, Authorizer, Operation, Rule, TopicPattern, read as read_acls,
};
pub use audit::LINES_PER_SECOND;
pub use guard::{MAX_METADATA_TOPICS, Policy, guard, guard_with};
pub use jwt::{Jwt, JwtAlgorithm, JwtKeyError};
pub use mtls::{CertificateNames, FirstOf};
pub use principal::{AuthError, Authenticator, Principal};
pub use producer_ids::{FileProducerIds, ProducerIds};
pub use quota::{Admission, Quotas};
pub use tokens::{MAX_TOKEN_LEN, TokenFile, TokenFileError, bearer_token};
