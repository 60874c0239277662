//! StreamHouse wire protocol: the protobuf envelope every transport carries.
//!
//! The `.proto` files in this crate's `streamhouse/v1/` folder define the messages of the agent
//! protocol: [`v1::ProduceRequest`]/[`v1::ProduceResponse`], [`v1::MetadataRequest`]/
//! [`v1::MetadataResponse`], [`v1::FetchRequest`]/[`v1::FetchResponse`] and the one
//! [`v1::ErrorCode`] enum they share. gRPC uses them as its RPC messages; QUIC sends the same
//! bytes in length-prefixed frames. A record batch travels inside them as one opaque `bytes`
//! field ([`bytes::Bytes`], never copied); its layout is described in this crate's `README.md`
//! and implemented by `streamhouse::batch`.
//!
//! Code is generated at build time by `protox` (pure Rust) and `prost`: no `protoc` is needed.
//!
//! # Feature flags
//!
//! - `grpc` (default): also generate the tonic client (`v1::agent_client::AgentClient`) and
//!   server (`v1::agent_server::AgentServer`) stubs. Without it the crate holds only the message
//!   types and does not depend on tonic.
//!
//! # Example
//!
//! ```
//! use prost::Message;
//! use streamhouse_proto::v1::{Acks, PartitionBatch, ProduceRequest};
//!
//! let request = ProduceRequest {
//!     acks: Acks::Leader as i32,
//!     timeout_ms: 30_000,
//!     batches: vec![PartitionBatch {
//!         topic: "orders".into(),
//!         partition: 3,
//!         batch: bytes::Bytes::from_static(b"...encoded batch..."),
//!     }],
//! };
//! let wire = request.encode_to_vec();
//! assert_eq!(ProduceRequest::decode(wire.as_slice()).unwrap(), request);
//! ```

pub use prost;

/// Version 1 of the protocol (protobuf package `streamhouse.v1`).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/streamhouse.v1.rs"));
}

mod error_code;
