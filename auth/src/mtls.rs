//! [`CertificateNames`]: the principal of a client that presented a TLS certificate (mutual
//! TLS, on gRPC+TLS and QUIC), and [`FirstOf`]: several authenticators, tried in order.
//!
//! The transport has already verified the chain against the agent's client CA before a request
//! arrives; this only names the client: its principal is the first DNS name of the leaf
//! certificate's subject alternative names (`payments.clients.example` → principal
//! `payments.clients.example`). A certificate without one is refused. A request that carries
//! a bearer token is the token's to decide: the certificate never stands in for a refused one.

use crate::{AuthError, Authenticator, Principal};
use rustls_pki_types::CertificateDer;
use std::sync::Arc;
use streamhouse::transport::{Metadata, Peer};

/// Names a client by the first DNS name in its verified certificate's subject alternative
/// names.
#[derive(Debug, Clone, Copy, Default)]
pub struct CertificateNames;

impl Authenticator for CertificateNames {
    fn authenticate(&self, peer: &Peer, metadata: &Metadata) -> Result<Principal, AuthError> {
        if metadata.get("authorization").is_some() {
            // The client chose a token; if the token was refused, the certificate does not
            // stand in for it (found by an outside review: a bad token fell back to the
            // certificate's principal).
            return Err(AuthError::Missing);
        }
        let leaf = peer.certificates.first().ok_or(AuthError::Missing)?;
        let der = CertificateDer::from(leaf.as_slice());
        let cert = webpki::EndEntityCert::try_from(&der)
            .map_err(|_| AuthError::Malformed("client certificate does not parse"))?;
        let name = cert.valid_dns_names().next().ok_or(AuthError::Malformed(
            "client certificate names no DNS subject alternative name",
        ))?;
        Ok(Principal::new(name))
    }
}

/// Several authenticators, tried in order: the first that names a principal wins. When none
/// does, the answer is the first failure other than [`AuthError::Missing`] (a bad token is
/// reported as bad, not as absent), or `Missing`.
///
/// ```
/// use std::sync::Arc;
/// use streamhouse_auth::{CertificateNames, FirstOf, TokenFile};
///
/// let tokens = TokenFile::parse(&TokenFile::line("s3cret", "payments")).unwrap();
/// // A bearer token when the request carries one, else the client certificate.
/// let either = FirstOf::new(vec![Arc::new(tokens), Arc::new(CertificateNames)]);
/// ```
pub struct FirstOf {
    authenticators: Vec<Arc<dyn Authenticator>>,
}

impl FirstOf {
    /// Tries `authenticators` in this order.
    pub fn new(authenticators: Vec<Arc<dyn Authenticator>>) -> FirstOf {
        FirstOf { authenticators }
    }
}

impl Authenticator for FirstOf {
    fn authenticate(&self, peer: &Peer, metadata: &Metadata) -> Result<Principal, AuthError> {
        let mut failure = AuthError::Missing;
        for authenticator in &self.authenticators {
            match authenticator.authenticate(peer, metadata) {
                Ok(principal) => return Ok(principal),
                Err(AuthError::Missing) => {}
                Err(e) if failure == AuthError::Missing => failure = e,
                Err(_) => {}
            }
        }
        Err(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TokenFile;

    fn peer_with(names: &[&str]) -> Peer {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        Peer::default().with_certificates(vec![cert.der().to_vec()])
    }

    #[test]
    fn the_certificate_names_the_principal_unless_a_token_was_presented() {
        let tokens = TokenFile::parse(&TokenFile::line("good", "from-token")).unwrap();
        let either = FirstOf::new(vec![Arc::new(tokens), Arc::new(CertificateNames)]);
        let peer = peer_with(&["payments.clients"]);
        let none = Metadata::new();
        assert_eq!(
            either.authenticate(&peer, &none).unwrap().name(),
            "payments.clients"
        );
        let bearer = |t: &str| {
            let mut m = Metadata::new();
            m.insert("authorization", format!("Bearer {t}")).unwrap();
            m
        };
        assert_eq!(
            either.authenticate(&peer, &bearer("good")).unwrap().name(),
            "from-token"
        );
        // Found by an outside review: a refused token fell back to the certificate.
        assert_eq!(
            either.authenticate(&peer, &bearer("bad")),
            Err(AuthError::Invalid)
        );
        assert!(matches!(
            CertificateNames.authenticate(&peer_with(&[]), &none),
            Err(AuthError::Malformed(_))
        ));
        assert_eq!(
            CertificateNames.authenticate(&Peer::default(), &none),
            Err(AuthError::Missing)
        );
    }
}
