//! TLS settings (feature `tls`): PEM certificates, rustls with the ring provider.

use streamhouse::transport::Endpoint;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Client TLS: which CA to trust, and optionally a client certificate for mTLS.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// PEM of the CA (or self-signed certificate) that signed the agent's certificate.
    pub ca_pem: Vec<u8>,
    /// Name to verify in the agent's certificate; default: the endpoint's host.
    pub domain: Option<String>,
    /// PEM certificate and key presented to the agent (mTLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    pub(crate) fn to_tonic(&self, endpoint: &Endpoint) -> ClientTlsConfig {
        let host = endpoint
            .authority()
            .rsplit_once(':')
            .map_or(endpoint.authority(), |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(self.domain.clone().unwrap_or_else(|| host.to_owned()));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

/// Server TLS: the agent's certificate and key, and optionally the CA whose client
/// certificates are required (mTLS).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert_pem: Vec<u8>,
    /// PEM private key.
    pub key_pem: Vec<u8>,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl ServerTls {
    pub(crate) fn to_tonic(&self) -> ServerTlsConfig {
        let mut config =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        if let Some(ca) = &self.client_ca_pem {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        config
    }
}
