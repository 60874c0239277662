//! [`Request`] and [`Response`]: the protocol messages a connection carries.

use super::{Metadata, Peer};
use std::sync::Arc;
use streamhouse_proto::v1::{
    AdminRequest, AdminResponse, ErrorCode, FetchRequest, FetchResponse, MetadataRequest,
    MetadataResponse, PartitionResult, ProduceRequest, ProduceResponse,
};
use tokio::time::Instant;

/// The protocol message of a request.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RequestMessage {
    /// Append batches.
    Produce(ProduceRequest),
    /// Describe topics.
    Metadata(MetadataRequest),
    /// Read batches back.
    Fetch(FetchRequest),
    /// Create or delete a topic.
    Admin(AdminRequest),
}

/// A request to an agent: the message, the instant after which nobody waits for the answer,
/// and metadata. Layers use the deadline (the retry policy stops retrying before it);
/// transports may forward it (gRPC's `grpc-timeout`). Every transport carries the metadata
/// (credentials, trace context, a user's own headers); the peer is filled in by a server
/// adaptor on the agent's side and never sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// What is asked.
    pub message: RequestMessage,
    /// When the caller gives up, if ever.
    pub deadline: Option<Instant>,
    /// Key/value pairs carried with the message.
    pub metadata: Metadata,
    /// Who sent it, on the agent's side; `None` on the client's.
    pub peer: Option<Arc<Peer>>,
    /// The principal an authenticating layer on the agent's side (such as
    /// `streamhouse_auth::guard`) established for it, for the agent's own decisions (may it
    /// create the topic it names?). Never sent; `None` without authentication.
    pub principal: Option<Arc<str>>,
}

impl Request {
    /// A request without a deadline or metadata.
    pub fn new(message: RequestMessage) -> Request {
        Request {
            message,
            deadline: None,
            metadata: Metadata::new(),
            peer: None,
            principal: None,
        }
    }

    /// A request as a server adaptor hands it to the agent: with the metadata that arrived and
    /// the connection's peer.
    pub fn received(message: RequestMessage, metadata: Metadata, peer: Arc<Peer>) -> Request {
        Request {
            message,
            deadline: None,
            metadata,
            peer: Some(peer),
            principal: None,
        }
    }

    /// The same request with a deadline.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Request {
        self.deadline = Some(deadline);
        self
    }
}

impl From<ProduceRequest> for Request {
    fn from(r: ProduceRequest) -> Request {
        Request::new(RequestMessage::Produce(r))
    }
}

impl From<MetadataRequest> for Request {
    fn from(r: MetadataRequest) -> Request {
        Request::new(RequestMessage::Metadata(r))
    }
}

impl From<AdminRequest> for Request {
    fn from(r: AdminRequest) -> Request {
        Request::new(RequestMessage::Admin(r))
    }
}

impl From<FetchRequest> for Request {
    fn from(r: FetchRequest) -> Request {
        Request::new(RequestMessage::Fetch(r))
    }
}

/// An agent's answer; the variant matches the request's.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Response {
    /// Answer to [`RequestMessage::Produce`].
    Produce(ProduceResponse),
    /// Answer to [`RequestMessage::Metadata`].
    Metadata(MetadataResponse),
    /// Answer to [`RequestMessage::Fetch`].
    Fetch(FetchResponse),
    /// Answer to [`RequestMessage::Admin`].
    Admin(AdminResponse),
}

impl Response {
    /// The answer refusing every part of `message` with `code`: each batch of a produce
    /// request (offsets and times unknown, -1), a fetch, an administrative request, or a
    /// Metadata request as a whole (its request-level `error_code`). What an authenticating
    /// layer answers for a request it will not pass on, and what fault injection answers.
    pub fn refusing(message: &RequestMessage, code: ErrorCode, text: &str) -> Response {
        let code = code as i32;
        match message {
            RequestMessage::Produce(produce) => Response::Produce(ProduceResponse {
                results: produce
                    .batches
                    .iter()
                    .map(|b| PartitionResult {
                        topic: b.topic.clone(),
                        partition: b.partition,
                        error_code: code,
                        error_message: text.to_owned(),
                        base_offset: -1,
                        log_append_time_ms: -1,
                        log_start_offset: -1,
                        leader: None,
                    })
                    .collect(),
                ..ProduceResponse::default()
            }),
            RequestMessage::Fetch(fetch) => Response::Fetch(FetchResponse {
                topic: fetch.topic.clone(),
                partition: fetch.partition,
                error_code: code,
                error_message: text.to_owned(),
                ..FetchResponse::default()
            }),
            RequestMessage::Admin(_) => Response::Admin(AdminResponse {
                error_code: code,
                error_message: text.to_owned(),
                ..AdminResponse::default()
            }),
            RequestMessage::Metadata(_) => Response::Metadata(MetadataResponse {
                error_code: code,
                error_message: text.to_owned(),
                ..MetadataResponse::default()
            }),
        }
    }
}
