//! TLS settings shared by the transports: PEM bytes only, so the core needs no TLS library.
//! Each transport turns them into its own configuration (tonic's, or rustls for QUIC).

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
