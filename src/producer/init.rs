//! [`init_producer_id`]: ask an agent for a producer id (Kafka's `InitProducerId`).
//!
//! A producer picks a random id of its own by default. An agent that authenticates may bind
//! ids to principals, and then appends idempotent batches only under an id it handed to the
//! sender's principal; ask it for one and give it to
//! [`ProducerBuilder::producer_id`](crate::producer::ProducerBuilder::producer_id).
//!
//! ```no_run
//! # async fn demo(transport: std::sync::Arc<dyn streamhouse::transport::Transport>,
//! #     discovery: streamhouse::discovery::StaticDiscovery,
//! #     agent: streamhouse::transport::Endpoint) -> Result<(), Box<dyn std::error::Error>> {
//! use streamhouse::producer::{Producer, init_producer_id};
//!
//! let id = init_producer_id(&*transport, &agent).await?;
//! let producer = Producer::builder(transport, discovery).producer_id(id).build()?;
//! # Ok(()) }
//! ```

use crate::transport::{Endpoint, Request, RequestMessage, Response, Transport, TransportError};
use streamhouse_proto::v1::{AdminRequest, ErrorCode, InitProducerId, admin_request::Action};
use tower::ServiceExt;

/// Why no producer id was handed out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitProducerIdError {
    /// The request did not get an answer.
    #[error("cannot reach the agent for a producer id")]
    Transport(#[from] TransportError),
    /// The agent refused (e.g. `UNAUTHENTICATED`).
    #[error("the agent refused a producer id: {code:?}: {message}")]
    Refused {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The agent answered with something else.
    #[error("unexpected answer to InitProducerId")]
    Protocol,
}

/// Asks the agent at `endpoint` for a producer id, over `transport` (which carries the
/// caller's credentials: the id is bound to the principal they name).
pub async fn init_producer_id(
    transport: &dyn Transport,
    endpoint: &Endpoint,
) -> Result<i64, InitProducerIdError> {
    let connection = transport.connect(endpoint).await?;
    let request = Request::new(RequestMessage::Admin(AdminRequest {
        action: Some(Action::InitProducerId(InitProducerId {})),
    }));
    match connection.oneshot(request).await? {
        Response::Admin(answer) => match ErrorCode::from_wire(answer.error_code) {
            ErrorCode::None if answer.producer_id >= 0 => Ok(answer.producer_id),
            ErrorCode::None => Err(InitProducerIdError::Protocol),
            code => Err(InitProducerIdError::Refused {
                code,
                message: answer.error_message,
            }),
        },
        _ => Err(InitProducerIdError::Protocol),
    }
}
