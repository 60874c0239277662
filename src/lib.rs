//! StreamHouse Producer: a Kafka-class producer whose every part is swappable.
//!
//! This crate is the network-free core. The pieces here are the ones every transport and the
//! agent share:
//!
//! # Layout
//!
//! - [`batch`]: the record batch wire format — encoder, zero-copy decoder, limits, CRC32C.
//! - [`codec`]: the [`Codec`](codec::Codec) trait, codec ids and registry, and
//!   [`NoCompression`](codec::NoCompression). LZ4 and zstd live in `streamhouse-codecs`.
//! - [`partitioner`]: the [`Partitioner`](partitioner::Partitioner) trait with Kafka-compatible
//!   [`Murmur2`](partitioner::Murmur2), [`Sticky`](partitioner::Sticky) and
//!   [`RoundRobin`](partitioner::RoundRobin).
//! - [`history`]: the history checker fault tests use: lost, duplicated, reordered records.
//! - [`payload`]: seeded JSON-like sample events for benchmarks and tests.
//!
//! The protocol messages are in the `streamhouse-proto` crate, re-exported as [`proto`].

pub mod batch;
pub mod codec;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod discovery;
pub mod history;
pub mod layers;
#[cfg(feature = "mock")]
pub mod mock;
pub mod partitioner;
pub mod payload;
pub mod producer;
pub mod reader;
mod rng;
pub mod serve;
pub mod transport;

pub use streamhouse_proto as proto;

/// Compiles the README's example as a doctest, so it cannot drift from the code.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
