//! TLS for QUIC: PEM certificates, rustls with the ring provider, ALPN `streamhouse/1`.

use crate::QuicError;
use std::path::{Path, PathBuf};
use streamhouse::transport::tls::{ClientTls, ServerTls};

/// The ALPN protocol both sides must agree on.
pub const ALPN: &[u8] = b"streamhouse/1";

pub(crate) fn client_config(tls: &ClientTls) -> Result<rustls::ClientConfig, QuicError> {
    streamhouse::transport::tls::rustls::client_config(tls, ALPN).map_err(QuicError::Tls)
}

pub(crate) fn server_config(tls: &ServerTls) -> Result<rustls::ServerConfig, QuicError> {
    streamhouse::transport::tls::rustls::server_config(tls, ALPN).map_err(QuicError::Tls)
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
