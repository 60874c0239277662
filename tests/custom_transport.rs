//! The toy transport of `examples/custom_transport.rs` passes the conformance suite.

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/custom_transport.rs"]
mod example;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_transport_conforms() {
    let report = example::run_suite().await;
    println!("{report}");
    report.assert_passed();
}
