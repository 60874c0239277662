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

/// How long the probe waits for the agent's first bytes after the handshake.
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Before a TLS channel opens: one TLS connection that reads before it writes, so the agent's
/// refusal of our certificate (or of our having none) arrives as its alert —
/// `TransportError::Tls` — and not as a broken pipe on the first request. In TLS 1.3 the agent
/// judges the client's certificate after the client considers the handshake done; an HTTP/2
/// client writes at once, and its write can fail before the alert is read. The probe waits for
/// the agent's first bytes (its HTTP/2 settings) or its alert, then closes.
pub(crate) async fn probe(
    tls: &ClientTls,
    endpoint: &Endpoint,
) -> Result<(), streamhouse::transport::TransportError> {
    use streamhouse::transport::TransportError;
    use tokio::io::AsyncReadExt;
    let refused = |why: String| TransportError::Tls(Some(why.into()));
    let config = streamhouse::transport::tls::rustls::client_config(tls, b"h2").map_err(refused)?;
    let name = tls
        .server_name
        .clone()
        .unwrap_or_else(|| endpoint.host().to_owned());
    let name = rustls::pki_types::ServerName::try_from(name)
        .map_err(|e| refused(format!("bad server name: {e}")))?;
    let tcp = tokio::net::TcpStream::connect(endpoint.authority())
        .await
        .map_err(|e| TransportError::Connect {
            endpoint: endpoint.to_string(),
            source: Some(Box::new(e)),
        })?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| refused(format!("TLS handshake with {endpoint} failed: {e}")))?;
    let mut first = [0u8; 1];
    match tokio::time::timeout(PROBE_WAIT, stream.read(&mut first)).await {
        // The agent spoke (or is slow to): it accepted our certificate.
        Ok(Ok(n)) if n > 0 => Ok(()),
        Err(_) => Ok(()),
        Ok(Ok(_)) => Err(refused(format!(
            "{endpoint} closed the connection after the handshake"
        ))),
        Ok(Err(e)) => Err(refused(format!("{endpoint} refused our certificate: {e}"))),
    }
}
