//! Turning `--bootstrap` URLs into a transport and a discovery.

use anyhow::{Context, bail};
use std::sync::Arc;
use streamhouse::discovery::Bootstrap;
use streamhouse::transport::{Endpoint, Transport};
use streamhouse_grpc::{GrpcConfig, GrpcTransport};

/// Parses a comma-separated seed list; every URL must use the same scheme.
pub(crate) fn seeds(list: &str) -> anyhow::Result<Vec<Endpoint>> {
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
    Ok(seeds)
}

/// The transport for the seeds' scheme.
pub(crate) fn transport(seeds: &[Endpoint]) -> anyhow::Result<Arc<dyn Transport>> {
    match seeds.first().map(Endpoint::scheme) {
        Some("grpc") => Ok(Arc::new(GrpcTransport::new(GrpcConfig::default()))),
        Some(other) => bail!("unsupported transport {other:?} (supported: grpc)"),
        None => bail!("no bootstrap endpoint"),
    }
}

/// Transport and discovery for a `--bootstrap` list.
pub(crate) fn connect(
    list: &str,
) -> anyhow::Result<(Arc<dyn Transport>, Bootstrap, Vec<Endpoint>)> {
    let seeds = seeds(list)?;
    let transport = transport(&seeds)?;
    let discovery = Bootstrap::new(transport.clone(), seeds.clone());
    Ok((transport, discovery, seeds))
}
