//! Object storage named by URL, through the `object_store` crate: `file://DIR` (embedded),
//! `memory://` (tests), `s3://BUCKET[/PREFIX]` (feature `s3`; any S3-compatible service).
//!
//! Objects are written once with `PutMode::Create` (a key that exists is never overwritten)
//! and read with ranged GETs. On `file://` a written object is fsynced with its directory
//! before the write counts, so "durable" means the same as on a real object store.

use crate::{AgentError, S3Options};
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::path::PathBuf;
use std::sync::Arc;

/// An object store and where its objects live.
pub(crate) struct Objects {
    store: Arc<dyn ObjectStore>,
    /// `file://`: the directory, for fsyncs after writes.
    local_root: Option<PathBuf>,
    url: String,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

fn invalid(url: &str, reason: impl std::fmt::Display) -> AgentError {
    AgentError::Objects {
        url: url.to_owned(),
        reason: one_line(&reason.to_string()),
    }
}

/// An error as one line of at most 300 characters (S3 errors carry whole XML bodies).
pub(crate) fn one_line(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &flat[..at]),
        None => flat,
    }
}

impl Objects {
    /// The object store a URL names. Nothing is contacted yet (see [`probe`](Self::probe)).
    pub(crate) fn open(url: &str, s3: &S3Options) -> Result<Objects, AgentError> {
        let (store, local_root): (Arc<dyn ObjectStore>, _) = if url == "memory://" {
            (Arc::new(object_store::memory::InMemory::new()), None)
        } else if let Some(dir) = url.strip_prefix("file://") {
            if dir.is_empty() {
                return Err(invalid(url, "no directory after file://"));
            }
            std::fs::create_dir_all(dir)
                .map_err(|e| invalid(url, format_args!("cannot create {dir}: {e}")))?;
            let root = std::fs::canonicalize(dir).map_err(|e| invalid(url, e))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
                .map_err(|e| invalid(url, e))?;
            (Arc::new(store), Some(root))
        } else if let Some(rest) = url.strip_prefix("s3://") {
            (s3_store(url, rest, s3)?, None)
        } else {
            return Err(invalid(
                url,
                "expected file://DIR, memory:// or s3://BUCKET[/PREFIX]",
            ));
        };
        Ok(Objects {
            store,
            local_root,
            url: url.to_owned(),
        })
    }

    /// Writes, reads back and deletes a small object: an unreachable service, a missing bucket
    /// or a permission error shows at start, not at the first flush.
    pub(crate) async fn probe(&self, key: &str) -> Result<(), AgentError> {
        let path = ObjectPath::from(key);
        let fail = |what: &str, e: object_store::Error| {
            invalid(
                &self.url,
                format_args!("{what} of a probe object {key} failed: {e}"),
            )
        };
        let body = Bytes::from_static(b"streamhouse probe");
        self.store
            .put(&path, PutPayload::from_bytes(body.clone()))
            .await
            .map_err(|e| fail("write", e))?;
        let read = self
            .store
            .get_range(&path, 0..body.len() as u64)
            .await
            .map_err(|e| fail("read", e))?;
        if read != body {
            return Err(invalid(
                &self.url,
                "a probe object read back different bytes",
            ));
        }
        self.store
            .delete(&path)
            .await
            .map_err(|e| fail("delete", e))?;
        Ok(())
    }

    /// Writes a new object from `chunks`. A key that exists already is this agent's own
    /// earlier attempt whose answer was lost (keys are never reused): success.
    pub(crate) async fn put(
        &self,
        key: &str,
        chunks: Vec<Bytes>,
    ) -> Result<(), object_store::Error> {
        let path = ObjectPath::from(key);
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from_iter(chunks), options)
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        if let Some(root) = &self.local_root {
            let file = root.join(key);
            tokio::task::spawn_blocking(move || sync_file_and_dirs(&file))
                .await
                .map_err(|e| object_store::Error::Generic {
                    store: "file",
                    source: Box::new(e),
                })?
                .map_err(|e| object_store::Error::Generic {
                    store: "file",
                    source: Box::new(e),
                })?;
        }
        Ok(())
    }

    /// Deletes an object (one that is already gone counts as deleted).
    pub(crate) async fn delete(&self, key: &str) -> Result<(), object_store::Error> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// An object's size, if it can be learnt (`None` when it cannot be reached).
    pub(crate) async fn size(&self, key: &str) -> Option<u64> {
        self.store
            .head(&ObjectPath::from(key))
            .await
            .ok()
            .map(|meta| meta.size)
    }

    /// Bytes `range` of an object.
    pub(crate) async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, object_store::Error> {
        self.store.get_range(&ObjectPath::from(key), range).await
    }
}

/// fsyncs a file written by the local object store, and its directory and the one above (a
/// new key may have created both).
fn sync_file_and_dirs(file: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(file)?.sync_all()?;
    let mut dir = file.parent();
    for _ in 0..2 {
        if let Some(d) = dir {
            std::fs::File::open(d)?.sync_all()?;
            dir = d.parent();
        }
    }
    Ok(())
}

#[cfg(feature = "s3")]
fn s3_store(url: &str, rest: &str, s3: &S3Options) -> Result<Arc<dyn ObjectStore>, AgentError> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(invalid(url, "no bucket after s3://"));
    }
    // Each request is bounded and retried little here: the flusher retries on its own, and
    // must learn of an outage in seconds, not after object_store's default three minutes.
    let retry = object_store::RetryConfig {
        max_retries: 2,
        retry_timeout: std::time::Duration::from_secs(10),
        ..object_store::RetryConfig::default()
    };
    let client = object_store::ClientOptions::new()
        .with_timeout(std::time::Duration::from_secs(10))
        .with_connect_timeout(std::time::Duration::from_secs(3));
    let mut builder = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry)
        .with_client_options(client);
    if let Some(endpoint) = &s3.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    } else if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
        builder = builder.with_allow_http(endpoint.starts_with("http://"));
    }
    let region = s3
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".to_owned());
    builder = builder.with_region(region);
    if let Some(key) = &s3.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &s3.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    if s3.unsigned_payload {
        builder = builder.with_unsigned_payload(true);
    }
    let store = builder.build().map_err(|e| invalid(url, e))?;
    Ok(if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
    })
}

#[cfg(not(feature = "s3"))]
fn s3_store(url: &str, _: &str, _: &S3Options) -> Result<Arc<dyn ObjectStore>, AgentError> {
    Err(invalid(
        url,
        "this build has no S3 support: build with `--features s3`",
    ))
}
