//! Topic administration (`AdminRequest`): create and delete topics, in the metadata store too
//! when the agent has one. One administrative change at a time.

use crate::Shared;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use streamhouse::serve::{Rejection, validate_topic_name};
use streamhouse_proto::v1::{AdminRequest, AdminResponse, ErrorCode, admin_request::Action};

/// Most partitions a topic can be created with.
const MAX_PARTITIONS: u32 = 10_000;

impl Shared {
    pub(crate) async fn admin(self: Arc<Self>, request: AdminRequest) -> AdminResponse {
        let _one_at_a_time = self.admin_lock.lock().await;
        let result = match request.action {
            _ if self.stopping.load(Ordering::Acquire) => Err(Rejection::new(
                ErrorCode::Unavailable,
                "agent is shutting down",
            )),
            Some(Action::CreateTopic(create)) => self
                .clone()
                .create_topic(create.name, create.partitions)
                .await
                .map(Some),
            Some(Action::DeleteTopic(delete)) => {
                self.delete_topic(&delete.name).await.map(|()| None)
            }
            None => Err(Rejection::new(ErrorCode::InvalidRequest, "no admin action")),
        };
        match result {
            Ok(topic) => AdminResponse {
                error_code: ErrorCode::None as i32,
                error_message: String::new(),
                topic,
            },
            Err(r) => {
                metrics::counter!("streamhouse_errors_total", "code" => r.code.as_str_name())
                    .increment(1);
                AdminResponse {
                    error_code: r.code as i32,
                    error_message: r.message,
                    topic: None,
                }
            }
        }
    }

    async fn create_topic(
        self: Arc<Self>,
        name: String,
        partitions: u32,
    ) -> Result<streamhouse_proto::v1::TopicMetadata, Rejection> {
        validate_topic_name(&name)?;
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
        }
        let shared = self.clone();
        let created = tokio::task::spawn_blocking(move || {
            let max = shared.config.max_topics;
            shared.topics.ensure_within(&name, partitions, max)
        })
        .await
        .unwrap_or_else(|_| Err(Rejection::new(ErrorCode::Internal, "topic creation failed")))?;
        let (topic, _) = created;
        Ok(self.describe(&topic.name, Ok(topic.clone())))
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
