//! TLS (feature `tls`): the shared PEM settings as tonic configurations (rustls, ring).

use streamhouse::transport::Endpoint;
use streamhouse::transport::tls::{ClientTls, ServerTls};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Makes ring the process's rustls provider if none is yet. tonic builds its configurations
/// with the process default, which rustls picks by itself only when one provider is compiled
/// in; an application that also links aws-lc-rs (object_store's S3 client does) would panic
/// at the first handshake otherwise. Every configuration this project builds itself names
/// ring explicitly.
fn ring_by_default() {
    // An error means a provider is installed already: the application chose, it stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub(crate) fn client(tls: &ClientTls, endpoint: &Endpoint) -> ClientTlsConfig {
    ring_by_default();
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .domain_name(
            tls.server_name
                .clone()
                .unwrap_or_else(|| endpoint.host().to_owned()),
        );
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    config
}

pub(crate) fn server(tls: &ServerTls) -> ServerTlsConfig {
    ring_by_default();
    let mut config =
        ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
    if let Some(ca) = &tls.client_ca_pem {
        config = config.client_ca_root(Certificate::from_pem(ca));
    }
    config
}
