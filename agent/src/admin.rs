//! Topic administration (`AdminRequest`): create and delete topics, in the metadata store too
//! when the agent has one. One administrative change at a time.

use crate::Shared;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use streamhouse::serve::{Rejection, validate_topic_name};
use streamhouse_proto::v1::{AdminRequest, AdminResponse, ErrorCode, admin_request::Action};

/// Most partitions a topic can be created with (each holds about three file descriptors).
const MAX_PARTITIONS: u32 = 1_000;

impl Shared {
    pub(crate) async fn admin(self: Arc<Self>, request: AdminRequest) -> AdminResponse {
        let _one_at_a_time = self.admin_lock.lock().await;
        let result = match request.action {
            _ if self.stopping.load(Ordering::Acquire) => Err(Rejection::new(
                ErrorCode::Unavailable,
                "agent is shutting down",
            )),
            Some(Action::CreateTopic(create)) => {
                let retention = (create.retention_ms, create.retention_bytes);
                self.clone()
                    .create_topic(create.name, create.partitions, retention)
                    .await
                    .map(Some)
            }
            Some(Action::AlterTopic(alter)) => self
                .alter_topic(&alter.name, (alter.retention_ms, alter.retention_bytes))
                .await
                .map(Some),
            Some(Action::DeleteTopic(delete)) => {
                self.delete_topic(&delete.name).await.map(|()| None)
            }
            Some(Action::InitProducerId(_)) => {
                // Not bound to anyone here (the guard binds ids when it runs in front).
                return AdminResponse {
                    producer_id: streamhouse::serve::new_producer_id(),
                    ..AdminResponse::default()
                };
            }
            None => Err(Rejection::new(ErrorCode::InvalidRequest, "no admin action")),
        };
        match result {
            Ok(topic) => AdminResponse {
                topic,
                ..AdminResponse::default()
            },
            Err(r) => {
                metrics::counter!("streamhouse_errors_total", "code" => r.code.as_str_name())
                    .increment(1);
                AdminResponse {
                    error_code: r.code as i32,
                    error_message: r.message,
                    ..AdminResponse::default()
                }
            }
        }
    }

    async fn create_topic(
        self: Arc<Self>,
        name: String,
        partitions: u32,
        retention: (i64, i64),
    ) -> Result<streamhouse_proto::v1::TopicMetadata, Rejection> {
        validate_topic_name(&name)?;
        let retention = self.retention(retention)?;
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(Rejection::new(
                ErrorCode::InvalidRequest,
                format!("a topic has 1 to {MAX_PARTITIONS} partitions, not {partitions}"),
            ));
        }
        if self.topics.get(&name).is_some() {
            return Err(Rejection::new(
                ErrorCode::TopicAlreadyExists,
                format!("topic {name:?} exists"),
            ));
        }
        if self.topics.count() >= self.config.max_topics {
            return Err(Rejection::new(
                ErrorCode::LimitExceeded,
                format!(
                    "the agent holds {} topics, its limit (--max-topics)",
                    self.config.max_topics
                ),
            ));
        }
        if let Some(remote) = &self.remote {
            remote.create_topic(&name, partitions).await?;
            if let Some((ms, bytes)) = retention {
                remote.set_retention(&name, ms, bytes).await?;
            }
        }
        let shared = self.clone();
        let wanted = name.clone();
        let created = tokio::task::spawn_blocking(move || {
            let max = shared.config.max_topics;
            shared.topics.ensure_within(&wanted, partitions, max)
        })
        .await
        .unwrap_or_else(|_| Err(Rejection::new(ErrorCode::Internal, "topic creation failed")));
        match created {
            Ok((topic, _)) => Ok(self.describe(&topic.name, Ok(topic.clone()))),
            Err(rejection) => {
                self.undo_create(&name, partitions).await;
                Err(rejection)
            }
        }
    }

    /// A create that failed part-way (a partition could not be opened): nothing of it may
    /// stay behind, neither in the store (the agent would fail at its next start) nor on disk.
    async fn undo_create(self: &Arc<Self>, name: &str, partitions: u32) {
        if let Some(remote) = &self.remote
            && let Err(r) = remote.delete_topic(name).await
        {
            tracing::error!(topic = name, error = %r.message, "a failed create left the topic in the metadata store");
        }
        let dir = self.config.data_dir.clone();
        let name = name.to_owned();
        let _ = tokio::task::spawn_blocking(move || {
            for partition in 0..partitions {
                let path = dir.join(format!("{name}-{partition}"));
                if path.is_dir()
                    && let Err(e) = std::fs::remove_dir_all(&path)
                {
                    tracing::error!(path = %path.display(), error = %e, "a failed create left a partition directory");
                }
            }
        })
        .await;
    }

    /// Retention as asked (0: no bound), refused on an agent without object storage (it
    /// removes nothing) and for negative values. `None` when neither bound is set.
    #[allow(clippy::type_complexity)]
    fn retention(
        &self,
        (ms, bytes): (i64, i64),
    ) -> Result<Option<(Option<i64>, Option<i64>)>, Rejection> {
        if ms < 0 || bytes < 0 {
            return Err(Rejection::new(
                ErrorCode::InvalidRequest,
                "retention cannot be negative (0: no bound)",
            ));
        }
        if ms == 0 && bytes == 0 {
            return Ok(None);
        }
        if self.remote.is_none() {
            return Err(Rejection::new(
                ErrorCode::InvalidRequest,
                "retention needs an agent with object storage (--metadata, --objects); this \
                 one keeps every record on its disk",
            ));
        }
        let bound = |v: i64| (v > 0).then_some(v);
        Ok(Some((bound(ms), bound(bytes))))
    }

    async fn alter_topic(
        self: &Arc<Self>,
        name: &str,
        retention: (i64, i64),
    ) -> Result<streamhouse_proto::v1::TopicMetadata, Rejection> {
        let Some(topic) = self.topics.get(name) else {
            return Err(Rejection::new(
                ErrorCode::UnknownTopic,
                format!("no topic {name:?}"),
            ));
        };
        let (ms, bytes) = self.retention(retention)?.unwrap_or((None, None));
        match &self.remote {
            Some(remote) => remote.set_retention(name, ms, bytes).await?,
            None => {
                return Err(Rejection::new(
                    ErrorCode::InvalidRequest,
                    "retention needs an agent with object storage (--metadata, --objects)",
                ));
            }
        }
        Ok(self.describe(name, Ok(topic)))
    }

    async fn delete_topic(self: &Arc<Self>, name: &str) -> Result<(), Rejection> {
        if self.topics.get(name).is_none() {
            return Err(Rejection::new(
                ErrorCode::UnknownTopic,
                format!("no topic {name:?}"),
            ));
        }
        if let Some(remote) = &self.remote {
            remote.delete_topic(name).await?;
        }
        let (shared, name) = (self.clone(), name.to_owned());
        tokio::task::spawn_blocking(move || shared.topics.remove(&name))
            .await
            .map_err(|_| Rejection::new(ErrorCode::Internal, "topic deletion failed"))?
            .unwrap_or(Ok(()))
            .map_err(|e| {
                Rejection::new(
                    ErrorCode::Internal,
                    format!("the topic is gone but its files were not all removed: {e}"),
                )
            })
    }
}
