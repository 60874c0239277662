//! [`ProducerBuilder`]: required parts up front, options chained, checked at `build`.

use super::accumulator::{Accumulator, AccumulatorConfig};
use super::sender::Sender;
use super::{Acks, ConfigError, HandleGuard, Inner, Phase, Producer, ProducerConfig, State};
use crate::codec::{Codec, NoCompression};
use crate::discovery::Discovery;
use crate::layers::{BoxConnection, LayerFn};
use crate::partitioner::{Partitioner, Sticky};
use crate::rng::Rng;
use crate::transport::{Request, Response, Transport};
use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tower::util::BoxCloneService;
use tower::{BoxError, Layer, Service};

/// Builds a [`Producer`]. Created by [`Producer::builder`]; every option has a Kafka-like
/// default (see [`ProducerConfig`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use streamhouse::mock::MockAgent;
/// use streamhouse::producer::{Acks, Producer};
///
/// let agent = MockAgent::new().with_topic("events", 4);
/// let producer = Producer::builder(agent.transport(), agent.discovery())
///     .batch_size(128 * 1024)
///     .linger(Duration::from_millis(10))
///     .acks(Acks::Leader)
///     .build()
///     .unwrap();
/// # }
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct ProducerBuilder {
    transport: Arc<dyn Transport>,
    discovery: Arc<dyn Discovery>,
    config: ProducerConfig,
    codec: Arc<dyn Codec>,
    /// `None`: the default, a [`Sticky`] seeded from [`seed`](Self::seed) if one is given.
    partitioner: Option<Arc<dyn Partitioner>>,
    layers: Vec<LayerFn>,
    producer_id: Option<i64>,
    seed: Option<u64>,
    /// [`idempotence`](Self::idempotence) was called (not just the default).
    idempotence_set: bool,
}

impl ProducerBuilder {
    pub(super) fn new(
        transport: Arc<dyn Transport>,
        discovery: Arc<dyn Discovery>,
    ) -> ProducerBuilder {
        ProducerBuilder {
            transport,
            discovery,
            config: ProducerConfig::default(),
            codec: Arc::new(NoCompression),
            partitioner: None,
            layers: Vec::new(),
            producer_id: None,
            seed: None,
            idempotence_set: false,
        }
    }

    /// Replaces every option at once.
    pub fn config(mut self, config: ProducerConfig) -> ProducerBuilder {
        self.config = config;
        self
    }

    /// See [`ProducerConfig::batch_size`].
    pub fn batch_size(mut self, bytes: usize) -> ProducerBuilder {
        self.config.batch_size = bytes;
        self
    }

    /// See [`ProducerConfig::linger`].
    pub fn linger(mut self, linger: Duration) -> ProducerBuilder {
        self.config.linger = linger;
        self
    }

    /// See [`ProducerConfig::buffer_memory`].
    pub fn buffer_memory(mut self, bytes: usize) -> ProducerBuilder {
        self.config.buffer_memory = bytes;
        self
    }

    /// See [`ProducerConfig::max_block`].
    pub fn max_block(mut self, max_block: Duration) -> ProducerBuilder {
        self.config.max_block = max_block;
        self
    }

    /// See [`ProducerConfig::acks`].
    pub fn acks(mut self, acks: Acks) -> ProducerBuilder {
        self.config.acks = acks;
        self
    }

    /// See [`ProducerConfig::request_timeout`].
    pub fn request_timeout(mut self, timeout: Duration) -> ProducerBuilder {
        self.config.request_timeout = timeout;
        self
    }

    /// See [`ProducerConfig::delivery_timeout`].
    pub fn delivery_timeout(mut self, timeout: Duration) -> ProducerBuilder {
        self.config.delivery_timeout = timeout;
        self
    }

    /// See [`ProducerConfig::max_in_flight`].
    pub fn max_in_flight(mut self, requests: usize) -> ProducerBuilder {
        self.config.max_in_flight = requests;
        self
    }

    /// See [`ProducerConfig::retry_backoff`] and [`ProducerConfig::retry_backoff_max`].
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> ProducerBuilder {
        self.config.retry_backoff = initial;
        self.config.retry_backoff_max = max;
        self
    }

    /// See [`ProducerConfig::max_request_size`].
    pub fn max_request_size(mut self, bytes: usize) -> ProducerBuilder {
        self.config.max_request_size = bytes;
        self
    }

    /// See [`ProducerConfig::idempotence`].
    pub fn idempotence(mut self, on: bool) -> ProducerBuilder {
        self.config.idempotence = on;
        self.idempotence_set = true;
        self
    }

    /// See [`ProducerConfig::metadata_max_age`].
    pub fn metadata_max_age(mut self, max_age: Duration) -> ProducerBuilder {
        self.config.metadata_max_age = max_age;
        self
    }

    /// Compresses batches with `codec` (default: none).
    pub fn codec(mut self, codec: impl Codec) -> ProducerBuilder {
        self.codec = Arc::new(codec);
        self
    }

    /// Compresses batches with a shared codec.
    pub fn codec_arc(mut self, codec: Arc<dyn Codec>) -> ProducerBuilder {
        self.codec = codec;
        self
    }

    /// Chooses partitions with `partitioner` (default: [`Sticky`]).
    pub fn partitioner(mut self, partitioner: impl Partitioner) -> ProducerBuilder {
        self.partitioner = Some(Arc::new(partitioner));
        self
    }

    /// Wraps every agent connection in `layer`, inside the retry and timeout layers. Layers
    /// added first are outermost.
    pub fn layer<L>(mut self, layer: L) -> ProducerBuilder
    where
        L: Layer<BoxConnection> + Send + Sync + 'static,
        L::Service:
            Service<Request, Response = Response, Error = BoxError> + Clone + Send + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.layers.push(Arc::new(move |inner: BoxConnection| {
            BoxCloneService::new(layer.layer(inner))
        }));
        self
    }

    /// Uses this producer id instead of a random one (tests that need repeatable ids).
    /// Must be non-negative.
    pub fn producer_id(mut self, id: i64) -> ProducerBuilder {
        self.producer_id = Some(id.max(0));
        self
    }

    /// Seeds retry jitter, the producer id and the default partitioner's choices, for
    /// repeatable runs (a deterministic simulation replays a seed exactly).
    pub fn seed(mut self, seed: u64) -> ProducerBuilder {
        self.seed = Some(seed);
        self
    }

    /// Checks the options and starts the sender task on the current tokio runtime.
    pub fn build(mut self) -> Result<Producer, ConfigError> {
        if self.config.acks == Acks::None && self.config.idempotence {
            // An acks=none answer does not wait for the log, so the agent's sequence checks are
            // never heard: a gap would silently drop every later batch. Kafka's rule: off by
            // default with acks=0, an error when asked for.
            if self.idempotence_set {
                return Err(ConfigError::IdempotenceWithoutAcks);
            }
            self.config.idempotence = false;
        }
        self.config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let rng = match self.seed {
            Some(seed) => Rng::seeded(seed),
            None => Rng::from_entropy(),
        };
        let producer_id = self.config.idempotence.then(|| {
            self.producer_id
                // 63 random bits: a non-negative i64.
                .unwrap_or_else(|| (rng.next_u64() >> 1) as i64)
        });
        let partitioner = self.partitioner.unwrap_or_else(|| match self.seed {
            Some(seed) => Arc::new(Sticky::with_seed(seed ^ 0x5717_C4E1)),
            None => Arc::new(Sticky::new()),
        });
        let config = self.config;
        let acc = Accumulator::new(
            AccumulatorConfig {
                batch_size: config.batch_size,
                linger: config.linger,
                buffer_memory: config.buffer_memory,
                max_request_size: config.max_request_size,
                delivery_timeout: config.delivery_timeout,
                producer_id,
            },
            partitioner.clone(),
        );
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                acc,
                metadata: FxHashMap::default(),
                phase: Phase::Open,
            }),
            wake_sender: Notify::new(),
            memory_freed: Notify::new(),
            config,
            partitioner,
            discovery: self.discovery,
            counters: Default::default(),
            sender: Mutex::new(None),
        });
        let sender = Sender::new(inner.clone(), self.transport, self.codec, self.layers, rng);
        let handle = runtime.spawn(sender.run());
        *inner
            .sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle);
        Ok(Producer {
            _handle: Arc::new(HandleGuard {
                inner: inner.clone(),
            }),
            inner,
        })
    }
}
