//! In-memory transport and agent: the way to unit-test code that produces records.
//!
//! [`MockAgent`] runs the real agent semantics of [`serve`](crate::serve) — validation, CRC,
//! idempotent sequences, offset assignment — over per-partition logs kept in memory, and lets a
//! test inspect those logs and make the agent fail or stall. [`MockTransport`] connects a
//! producer to one or more mock agents without sockets; the producer above it runs exactly the
//! code it runs over gRPC or QUIC.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use streamhouse::mock::MockAgent;
//! use streamhouse::producer::{Producer, ProducerRecord};
//!
//! let agent = MockAgent::new().with_topic("audit", 1);
//! let producer = Producer::builder(agent.transport(), agent.discovery()).build()?;
//! producer.send_and_wait(ProducerRecord::new("audit", b"user 7 logged in")).await?;
//!
//! let log = agent.records("audit", 0);
//! assert_eq!(log[0].value.as_deref(), Some(&b"user 7 logged in"[..]));
//! # Ok(()) }
//! ```
//!
//! Enabled by the default `mock` feature.

mod agent;
mod transport;

pub use agent::{MockAgent, MockStats};
pub use transport::MockTransport;
