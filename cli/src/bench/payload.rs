//! Record payloads for the benchmark: realistic events by default, or random, zeros, a file.

use anyhow::{Context, bail};
use std::str::FromStr;
use streamhouse::payload::EventGenerator;

/// Which values to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PayloadKind {
    /// Seeded JSON-like events (compress like real event streams).
    Json,
    /// Random bytes (incompressible).
    Random,
    /// Zeros (compress to almost nothing).
    Zeros,
    /// Lines of a file, cycled (cut or padded to the value size).
    File(std::path::PathBuf),
}

impl FromStr for PayloadKind {
    type Err = String;

    fn from_str(s: &str) -> Result<PayloadKind, String> {
        match s {
            "json" => Ok(PayloadKind::Json),
            "random" => Ok(PayloadKind::Random),
            "zeros" => Ok(PayloadKind::Zeros),
            other => match other.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(PayloadKind::File(path.into())),
                _ => Err(format!("{s:?}: expected json, random, zeros or file:PATH")),
            },
        }
    }
}

impl std::fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayloadKind::Json => f.write_str("json"),
            PayloadKind::Random => f.write_str("random"),
            PayloadKind::Zeros => f.write_str("zeros"),
            PayloadKind::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

/// A pool of keys and values, generated before measuring and cycled while sending, so that
/// generating data is not what the benchmark times.
pub(crate) struct Payload {
    pub(crate) records: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Distinct records in the pool: enough that batches are not one record repeated.
const POOL: usize = 8192;

impl Payload {
    pub(crate) fn generate(kind: &PayloadKind, value_size: usize) -> anyhow::Result<Payload> {
        let mut events = EventGenerator::new(42);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let lines: Vec<Vec<u8>> = match kind {
            PayloadKind::File(path) => {
                let text = std::fs::read(path)
                    .with_context(|| format!("cannot read payload file {}", path.display()))?;
                let lines: Vec<Vec<u8>> = text
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect();
                if lines.is_empty() {
                    bail!("payload file {} has no lines", path.display());
                }
                lines
            }
            _ => Vec::new(),
        };
        let records = (0..POOL)
            .map(|i| {
                let (key, event) = events.next_event(value_size);
                let value = match kind {
                    PayloadKind::Json => event,
                    PayloadKind::Zeros => vec![0; value_size],
                    PayloadKind::Random => (0..value_size).map(|_| next() as u8).collect(),
                    PayloadKind::File(_) => {
                        let mut line = lines[i % lines.len()].clone();
                        line.resize(value_size, b' ');
                        line
                    }
                };
                (key, value)
            })
            .collect();
        Ok(Payload { records })
    }
}
