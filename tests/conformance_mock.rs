//! The conformance suite against the mock transport — and against a deliberately broken one,
//! which must fail it with a clear message (proof the suite can fail).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use streamhouse::conformance::{self, Harness};
use streamhouse::mock::MockTransport;
use streamhouse::transport::{
    AgentService, BoxFuture, Connection, Endpoint, Request, Transport, TransportError,
};
use tower::ServiceExt;
use tower::util::BoxCloneService;

struct MockHarness {
    transport: MockTransport,
    wrap: fn(MockTransport) -> Arc<dyn Transport>,
    endpoint: Endpoint,
}

impl MockHarness {
    fn new(wrap: fn(MockTransport) -> Arc<dyn Transport>) -> MockHarness {
        MockHarness {
            transport: MockTransport::new(),
            wrap,
            endpoint: "mock://conformance".parse().unwrap(),
        }
    }
}

#[async_trait::async_trait]
impl Harness for MockHarness {
    fn transport(&self) -> Arc<dyn Transport> {
        (self.wrap)(self.transport.clone())
    }
    fn untrusted_transport(&self) -> Option<Arc<dyn Transport>> {
        None
    }
    fn max_message_size(&self) -> usize {
        streamhouse::transport::frame::MAX_FRAME
    }
    async fn start(&mut self, agent: AgentService) -> Endpoint {
        self.transport.serve(self.endpoint.clone(), agent);
        self.endpoint.clone()
    }
    async fn stop(&mut self) {
        self.transport.remove_agent(&self.endpoint);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_transport_conforms() {
    let report = conformance::run(&mut MockHarness::new(|t| Arc::new(t))).await;
    println!("{report}");
    report.assert_passed();
}

/// Loses every 10th answer: the request is applied and never answered.
struct DropsEveryTenth {
    inner: MockTransport,
    count: Arc<AtomicUsize>,
}

impl Transport for DropsEveryTenth {
    fn connect(
        &self,
        endpoint: &Endpoint,
    ) -> BoxFuture<'static, Result<Connection, TransportError>> {
        let connect = self.inner.connect(endpoint);
        let count = self.count.clone();
        Box::pin(async move {
            let inner = connect.await?;
            Ok(BoxCloneService::new(tower::service_fn(
                move |request: Request| {
                    let inner = inner.clone();
                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        let response = inner.oneshot(request).await;
                        if n.is_multiple_of(10) {
                            std::future::pending::<()>().await;
                        }
                        response
                    }
                },
            )))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_that_loses_answers_fails_with_a_clear_message() {
    let mut harness = MockHarness::new(|t| {
        Arc::new(DropsEveryTenth {
            inner: t,
            count: Arc::new(AtomicUsize::new(0)),
        })
    });
    let report = conformance::run(&mut harness).await;
    println!("{report}");
    let failures = report.failures();
    assert!(!failures.is_empty(), "the suite must catch lost answers");
    assert!(
        failures
            .iter()
            .any(|(name, why)| *name == "concurrent_requests" && why.contains("no answer")),
        "{report}"
    );
    let panic = std::panic::catch_unwind(|| report.assert_passed()).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("FAILED  concurrent_requests"), "{message}");
}
