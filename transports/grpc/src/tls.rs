//! TLS (feature `tls`): the shared PEM settings as tonic configurations (rustls, ring).

use streamhouse::transport::Endpoint;
use streamhouse::transport::tls::{ClientTls, ServerTls};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

pub(crate) fn client(tls: &ClientTls, endpoint: &Endpoint) -> ClientTlsConfig {
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
    let mut config =
        ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
    if let Some(ca) = &tls.client_ca_pem {
        config = config.client_ca_root(Certificate::from_pem(ca));
    }
    config
}
