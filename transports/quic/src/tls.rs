//! TLS for QUIC: PEM certificates, rustls with the ring provider, ALPN `streamhouse/1`.

use crate::QuicError;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use streamhouse::transport::tls::{ClientTls, ServerTls};

/// The ALPN protocol both sides must agree on.
pub const ALPN: &[u8] = b"streamhouse/1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, QuicError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| QuicError::Tls(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(QuicError::Tls("no certificate in PEM".into()));
    }
    Ok(certs)
}

fn key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, QuicError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| QuicError::Tls(format!("bad private key PEM: {e}")))
}

fn roots(pem: &[u8]) -> Result<RootCertStore, QuicError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(pem)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

pub(crate) fn client_config(tls: &ClientTls) -> Result<rustls::ClientConfig, QuicError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&tls.ca_pem)?);
    let mut config = match &tls.identity {
        Some((cert, key_pem)) => builder.with_client_auth_cert(certs(cert)?, key(key_pem)?)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    // 0-RTT data can be replayed by an attacker: a produce request could be applied twice.
    config.enable_early_data = false;
    Ok(config)
}

pub(crate) fn server_config(tls: &ServerTls) -> Result<rustls::ServerConfig, QuicError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match &tls.client_ca_pem {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| QuicError::Tls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs(&tls.cert_pem)?, key(&tls.key_pem)?)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// Where [`dev_certificate`] put its files.
#[derive(Debug, Clone)]
pub struct DevCertificate {
    /// `DIR/cert.pem`: give it to clients as their CA (`--ca`).
    pub cert: PathBuf,
    /// `DIR/key.pem`, readable by its owner only (0600).
    pub key: PathBuf,
}

/// A self-signed certificate for `localhost`, `127.0.0.1` and `::1` in `dir`, created if
/// missing: for development and tests only. Clients trust it explicitly (it is its own CA).
pub fn dev_certificate(dir: &Path) -> Result<DevCertificate, QuicError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if !(cert.exists() && key.exists()) {
        std::fs::create_dir_all(dir)?;
        let names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        let generated = rcgen::generate_simple_self_signed(names)
            .map_err(|e| QuicError::Tls(format!("cannot generate a certificate: {e}")))?;
        std::fs::write(&cert, generated.cert.pem())?;
        write_private(&key, generated.signing_key.serialize_pem().as_bytes())?;
    }
    Ok(DevCertificate { cert, key })
}

/// Writes a private key readable by its owner only (0600), replacing any older file: the
/// permissions are set when the file is created, so the key is never world-readable.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}
