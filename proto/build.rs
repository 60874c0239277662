//! Generates the protocol types (prost) and, with the `grpc` feature, the tonic service stubs.
//!
//! The `.proto` files are parsed by `protox`, a pure-Rust protobuf compiler, so a build never
//! needs `protoc` on the machine.

use std::error::Error;

const PROTOS: &[&str] = &[
    "streamhouse/v1/errors.proto",
    "streamhouse/v1/produce.proto",
    "streamhouse/v1/metadata.proto",
    "streamhouse/v1/fetch.proto",
    "streamhouse/v1/agent.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let descriptors = protox::compile(PROTOS, ["."])?;
    tonic_prost_build::configure()
        // `bytes` fields become `bytes::Bytes`: a batch is shared, never copied, on retry.
        .bytes(".")
        .build_client(grpc)
        .build_server(grpc)
        // Channels are built by the gRPC transport crate, not by the generated `connect`.
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;
    Ok(())
}
