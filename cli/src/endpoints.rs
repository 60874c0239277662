//! Client connection options shared by `produce`, `consume` and `topics`: seed URLs, the
//! certificates for `quic://` and `grpcs://`, and the bearer token for agents that
//! authenticate.

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::sync::Arc;
use streamhouse::discovery::Bootstrap;
use streamhouse::layers::{BearerToken, Credentials, RefreshingToken, WithCredentials};

/// How long a token read from --token-file is used before the file is read again (refreshed
/// at four fifths of it).
const TOKEN_FILE_REREAD: std::time::Duration = std::time::Duration::from_secs(75);
use streamhouse::transport::tls::ClientTls;
use streamhouse::transport::{Endpoint, SchemeTransport, Transport};
use streamhouse_grpc::{GrpcConfig, GrpcTransport};
use streamhouse_quic::{QuicConfig, QuicTransport};

#[derive(clap::Args)]
pub(crate) struct ClientArgs {
    /// Agents to ask for metadata, comma-separated URLs: grpc://HOST:PORT, grpcs://HOST:PORT
    /// or quic://HOST:PORT. The scheme picks the transport.
    #[arg(long, value_name = "URLS")]
    bootstrap: String,
    /// PEM file of the CA, or the agent's self-signed certificate, to trust for quic:// and
    /// grpcs:// (e.g. the cert.pem written by `streamhouse agent --dev-cert DIR`).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// PEM client certificate to present (mutual TLS); needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Bearer token to present to agents that authenticate (visible to other users of this
    /// machine in the process list: prefer --token-file).
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the bearer token (surrounding whitespace ignored), read again every minute
    /// so a rotated token is picked up.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

impl ClientArgs {
    /// Options for a seed list and an optional CA (the bench's external agent).
    pub(crate) fn new(bootstrap: String, ca: Option<PathBuf>) -> ClientArgs {
        ClientArgs {
            bootstrap,
            ca,
            cert: None,
            key: None,
            token: None,
            token_file: None,
        }
    }

    /// The same, presenting the token in `file`.
    pub(crate) fn with_token_file(mut self, file: Option<PathBuf>) -> ClientArgs {
        self.token_file = file;
        self
    }

    /// Transport (by scheme) and discovery for the seeds.
    pub(crate) async fn connect(&self) -> anyhow::Result<(Arc<dyn Transport>, Bootstrap)> {
        let seeds = seeds(&self.bootstrap)?;
        let transport = self.transport(&seeds)?;
        let transport: Arc<dyn Transport> = match self.credentials().await? {
            Some(token) => Arc::new(WithCredentials::new(transport, token)),
            None => Arc::new(transport),
        };
        let discovery = Bootstrap::new(transport.clone(), seeds);
        Ok((transport, discovery))
    }

    /// Whether a token is given (the agent authenticates).
    pub(crate) fn has_credentials(&self) -> bool {
        self.token.is_some() || self.token_file.is_some()
    }

    /// The first seed URL (where administrative requests go).
    pub(crate) fn first_seed(&self) -> anyhow::Result<Endpoint> {
        seeds(&self.bootstrap)?
            .into_iter()
            .next()
            .context("--bootstrap names no agent")
    }

    /// The bearer token of --token, or of --token-file read again every minute (a token a
    /// secret manager rotates in the file is picked up without a restart).
    async fn credentials(&self) -> anyhow::Result<Option<Arc<dyn Credentials>>> {
        let unusable = || {
            anyhow::anyhow!(
                "the token is empty or holds spaces or characters other than visible ASCII"
            )
        };
        if let Some(token) = &self.token {
            return Ok(Some(Arc::new(
                BearerToken::new(token).map_err(|_| unusable())?,
            )));
        }
        let Some(file) = self.token_file.clone() else {
            return Ok(None);
        };
        let read = move || {
            let file = file.clone();
            async move {
                let token = std::fs::read_to_string(&file)
                    .map_err(|e| format!("cannot read --token-file {}: {e}", file.display()))?;
                Ok((
                    token.trim().to_owned(),
                    std::time::SystemTime::now() + TOKEN_FILE_REREAD,
                ))
            }
        };
        let token = RefreshingToken::start(read)
            .await
            .map_err(|why| anyhow::anyhow!("{why}"))?;
        Ok(Some(Arc::new(token)))
    }

    fn transport(&self, seeds: &[Endpoint]) -> anyhow::Result<SchemeTransport> {
        let mut transport =
            SchemeTransport::new().with("grpc", GrpcTransport::new(GrpcConfig::default()));
        let scheme = seeds.first().map_or("grpc", Endpoint::scheme);
        let Some(ca) = &self.ca else {
            if matches!(scheme, "quic" | "grpcs") {
                bail!(
                    "{scheme}:// needs --ca FILE: the agent's certificate, or the CA that signed it"
                );
            }
            return Ok(transport);
        };
        let mut tls = ClientTls::from_ca_file(ca).context("cannot load --ca")?;
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls
                .with_identity_files(cert, key)
                .context("cannot load --cert/--key")?;
        }
        let mut grpcs = GrpcConfig::default();
        grpcs.client_tls = Some(tls.clone());
        let quic = QuicTransport::new(QuicConfig::default(), &tls)
            .context("cannot set up QUIC with these certificates")?;
        transport = transport
            .with("grpcs", GrpcTransport::new(grpcs))
            .with("quic", quic);
        Ok(transport)
    }
}

/// Parses a comma-separated seed list; every URL must use the same, supported scheme.
fn seeds(list: &str) -> anyhow::Result<Vec<Endpoint>> {
    let seeds = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<Endpoint>()
                .with_context(|| format!("bad --bootstrap URL {s:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let Some(first) = seeds.first() else {
        bail!("--bootstrap needs at least one URL, e.g. grpc://127.0.0.1:9092");
    };
    if let Some(other) = seeds.iter().find(|s| s.scheme() != first.scheme()) {
        bail!(
            "--bootstrap mixes {} and {}: use one transport",
            first.scheme(),
            other.scheme()
        );
    }
    if !matches!(first.scheme(), "grpc" | "grpcs" | "quic") {
        bail!(
            "unsupported transport {:?} (supported: grpc, grpcs, quic)",
            first.scheme()
        );
    }
    Ok(seeds)
}
