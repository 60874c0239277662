//! The transport conformance suite: what every [`Transport`] must do, as runnable checks.
//!
//! "Pluggable" is proven here, not claimed: the mock, gRPC and QUIC transports run this battery
//! in CI, and a transport written by a library author runs it the same way (see
//! `examples/custom_transport.rs`, a toy TCP transport that passes it). A transport is driven
//! through a [`Harness`] that can start and stop a server of it in front of any agent service;
//! the suite supplies the agent (the mock agent, with its switches to stall) and checks:
//!
//! | check | the transport must |
//! |---|---|
//! | `round_trip` | carry produce, metadata and fetch and their answers intact |
//! | `metadata` | carry a request's metadata to the agent's side intact, with the peer set by the server side |
//! | `large_batch` | carry a request near its maximum message size |
//! | `oversized_frame` | refuse a request over its maximum with `FrameTooLarge`, and keep the connection usable |
//! | `concurrent_requests` | carry 64 concurrent requests on one connection, each answered once |
//! | `request_timeout` | fail a request whose deadline passes with a retriable `Timeout`, on time |
//! | `connection_drop` | fail a request in flight when the server goes away with a retriable error, not hang |
//! | `restart_reconnect` | reach the server again after it restarts at the same endpoint |
//! | `tls_mismatch` | refuse a server its TLS settings do not trust (skipped for transports without TLS) |
//!
//! Every check runs under a time limit, so a transport that loses an answer fails with a
//! message instead of hanging the test.
//!
//! ```no_run
//! # async fn example(harness: &mut impl streamhouse::conformance::Harness) {
//! let report = streamhouse::conformance::run(harness).await;
//! report.assert_passed(); // panics listing every failed check
//! # }
//! ```

mod checks;

use crate::transport::{AgentService, Endpoint, Transport};
use std::fmt;
use std::sync::Arc;

/// What the suite needs to drive one transport.
#[async_trait::async_trait]
pub trait Harness: Send {
    /// The transport under test, set up to trust the servers [`start`](Self::start) runs.
    fn transport(&self) -> Arc<dyn Transport>;

    /// A transport that must *not* be able to talk to the server (for TLS: one that trusts
    /// another CA), or `None` for a transport without TLS.
    fn untrusted_transport(&self) -> Option<Arc<dyn Transport>>;

    /// Largest message the transport carries in either direction.
    fn max_message_size(&self) -> usize;

    /// Starts serving `agent`. After [`stop`](Self::stop), starts again at the same endpoint.
    async fn start(&mut self, agent: AgentService) -> Endpoint;

    /// Stops serving and drops every open connection.
    async fn stop(&mut self);
}

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The transport did what it must.
    Passed,
    /// It did not; the message says what happened.
    Failed(String),
    /// Not applicable to this transport.
    Skipped(String),
}

/// The outcome of every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Check name and outcome, in the order run.
    pub checks: Vec<(&'static str, Outcome)>,
}

impl Report {
    /// The checks that failed, with their messages.
    pub fn failures(&self) -> Vec<(&'static str, &str)> {
        self.checks
            .iter()
            .filter_map(|(name, outcome)| match outcome {
                Outcome::Failed(why) => Some((*name, why.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Panics, listing every failed check, unless all passed or were skipped.
    pub fn assert_passed(&self) {
        let failures = self.failures();
        assert!(failures.is_empty(), "transport conformance failed:\n{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, outcome) in &self.checks {
            match outcome {
                Outcome::Passed => writeln!(f, "  ok      {name}")?,
                Outcome::Failed(why) => writeln!(f, "  FAILED  {name}: {why}")?,
                Outcome::Skipped(why) => writeln!(f, "  skipped {name}: {why}")?,
            }
        }
        Ok(())
    }
}

/// Runs every check against the harness's transport.
pub async fn run(harness: &mut (impl Harness + ?Sized)) -> Report {
    checks::run_all(harness).await
}
