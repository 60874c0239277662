//! TLS settings shared by the transports: PEM bytes, so the core needs no TLS library. Each
//! transport turns them into its own configuration (tonic's for gRPC); with the `rustls`
//! feature, [`rustls`] builds rustls configurations from them (QUIC, and the gRPC transport's
//! TLS probe).

use std::io;
use std::path::Path;

/// What a client trusts and, for mutual TLS, presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM of the CA(s) — or the agent's self-signed certificate — to trust.
    pub ca_pem: Vec<u8>,
    /// Name to verify in the agent's certificate; default: the endpoint's host.
    pub server_name: Option<String>,
    /// PEM certificate and key presented to the agent (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Trusts the CA(s) in a PEM file.
    pub fn from_ca_file(path: &Path) -> io::Result<ClientTls> {
        Ok(ClientTls {
            ca_pem: read(path)?,
            server_name: None,
            identity: None,
        })
    }

    /// Also presents this certificate and key (PEM files) to the agent.
    pub fn with_identity_files(mut self, cert: &Path, key: &Path) -> io::Result<ClientTls> {
        self.identity = Some((read(cert)?, read(key)?));
        Ok(self)
    }
}

/// An agent's certificate and key and, for mutual TLS, the CA its clients' certificates must
/// chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert_pem: Vec<u8>,
    /// PEM private key.
    pub key_pem: Vec<u8>,
    /// When set, clients must present a certificate from this CA.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl ServerTls {
    /// Certificate and key from PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> io::Result<ServerTls> {
        Ok(ServerTls {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            client_ca_pem: None,
        })
    }

    /// Requires client certificates from the CA in this PEM file.
    pub fn with_client_ca_file(mut self, ca: &Path) -> io::Result<ServerTls> {
        self.client_ca_pem = Some(read(ca)?);
        Ok(self)
    }
}

fn read(path: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display())))
}

/// rustls configurations from the PEM settings: ring provider, TLS 1.3 only, no 0-RTT.
#[cfg(feature = "rustls")]
pub mod rustls {
    use super::{ClientTls, ServerTls};
    use rustls::RootCertStore;
    use rustls::crypto::CryptoProvider;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(::rustls::crypto::ring::default_provider())
    }

    fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad certificate PEM: {e}"))?;
        if certs.is_empty() {
            return Err("no certificate in PEM".into());
        }
        Ok(certs)
    }

    fn key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
        PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("bad private key PEM: {e}"))
    }

    fn roots(pem: &[u8]) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        for cert in certs(pem)? {
            roots.add(cert).map_err(|e| e.to_string())?;
        }
        Ok(roots)
    }

    /// A client configuration that trusts `tls.ca_pem`, presents `tls.identity`, and offers
    /// `alpn`.
    pub fn client_config(tls: &ClientTls, alpn: &[u8]) -> Result<::rustls::ClientConfig, String> {
        let builder = ::rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&::rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots(&tls.ca_pem)?);
        let mut config = match &tls.identity {
            Some((cert, key_pem)) => builder
                .with_client_auth_cert(certs(cert)?, key(key_pem)?)
                .map_err(|e| e.to_string())?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        // 0-RTT data can be replayed by an attacker: a produce request could be applied twice.
        config.enable_early_data = false;
        Ok(config)
    }

    /// A server configuration with `tls`'s certificate, requiring client certificates from
    /// `tls.client_ca_pem` when set, and accepting `alpn` only.
    pub fn server_config(tls: &ServerTls, alpn: &[u8]) -> Result<::rustls::ServerConfig, String> {
        let builder = ::rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&::rustls::version::TLS13])
            .map_err(|e| e.to_string())?;
        let builder = match &tls.client_ca_pem {
            Some(ca) => {
                let verifier = ::rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca)?),
                    provider(),
                )
                .build()
                .map_err(|e| e.to_string())?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs(&tls.cert_pem)?, key(&tls.key_pem)?)
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![alpn.to_vec()];
        config.max_early_data_size = 0;
        Ok(config)
    }
}
