//! Producer options, their Kafka-like defaults, and their validation.

use super::ConfigError;
use crate::serve::DEDUP_WINDOW;
use std::time::Duration;
use streamhouse_proto::v1;

/// When a send counts as delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Acks {
    /// As soon as the agent received it; offsets are not reported (-1).
    None,
    /// Once the leader wrote it to its log (not yet fsynced).
    Leader,
    /// Once the leader fsynced it (group commit). The default.
    #[default]
    Durable,
}

impl Acks {
    pub(crate) fn to_wire(self) -> v1::Acks {
        match self {
            Acks::None => v1::Acks::None,
            Acks::Leader => v1::Acks::Leader,
            Acks::Durable => v1::Acks::Durable,
        }
    }
}

/// Every producer option. Names and defaults follow the Kafka producer's.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// A partition's open batch is sealed when it reaches this many bytes. Default 64 KiB.
    pub batch_size: usize,
    /// A batch is sealed at the latest this long after its first record. Default 5 ms.
    pub linger: Duration,
    /// Bytes of records held before `send` waits (open, sealed and in-flight batches).
    /// Default 32 MiB.
    pub buffer_memory: usize,
    /// How long `send` waits for buffer memory before failing. Default 60 s.
    pub max_block: Duration,
    /// Delivery guarantee. Default [`Acks::Durable`].
    pub acks: Acks,
    /// Longest wait for one request's answer. Default 30 s.
    pub request_timeout: Duration,
    /// Longest time from `send` to a record's outcome, retries included. Default 120 s.
    pub delivery_timeout: Duration,
    /// Most requests awaiting an answer per agent. Default 5.
    pub max_in_flight: usize,
    /// First retry backoff; doubles per attempt, with jitter. Default 100 ms.
    pub retry_backoff: Duration,
    /// Largest retry backoff. Default 1 s.
    pub retry_backoff_max: Duration,
    /// Largest produce request in bytes. Default 1 MiB.
    pub max_request_size: usize,
    /// Producer id, epoch and sequence numbers so that retries never duplicate or reorder.
    /// Default on, except with [`Acks::None`], which turns it off (an acks=none answer never
    /// reports the agent's sequence checks); asking for both with
    /// [`ProducerBuilder::idempotence`](super::ProducerBuilder::idempotence) is a
    /// [`ConfigError::IdempotenceWithoutAcks`](super::ConfigError::IdempotenceWithoutAcks).
    pub idempotence: bool,
    /// Topic metadata is asked again this often even without a "not leader" answer (Kafka's
    /// `metadata.max.age.ms`). Default 5 min.
    pub metadata_max_age: Duration,
}

impl Default for ProducerConfig {
    fn default() -> ProducerConfig {
        ProducerConfig {
            batch_size: 64 * 1024,
            linger: Duration::from_millis(5),
            buffer_memory: 32 * 1024 * 1024,
            max_block: Duration::from_secs(60),
            acks: Acks::Durable,
            request_timeout: Duration::from_secs(30),
            delivery_timeout: Duration::from_secs(120),
            max_in_flight: 5,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            max_request_size: 1024 * 1024,
            idempotence: true,
            metadata_max_age: Duration::from_secs(300),
        }
    }
}

impl ProducerConfig {
    /// Checks the options against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("batch_size", self.batch_size),
            ("buffer_memory", self.buffer_memory),
            ("max_in_flight", self.max_in_flight),
            ("max_request_size", self.max_request_size),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.request_timeout.is_zero() {
            return Err(ConfigError::Zero("request_timeout"));
        }
        if self.delivery_timeout < self.linger + self.request_timeout {
            return Err(ConfigError::DeliveryTimeoutTooShort {
                delivery: self.delivery_timeout,
                linger: self.linger,
                request: self.request_timeout,
            });
        }
        if self.batch_size > self.max_request_size {
            return Err(ConfigError::BatchLargerThanRequest {
                batch_size: self.batch_size,
                max_request_size: self.max_request_size,
            });
        }
        if self.buffer_memory < self.batch_size {
            return Err(ConfigError::BufferSmallerThanBatch {
                buffer_memory: self.buffer_memory,
                batch_size: self.batch_size,
            });
        }
        if self.idempotence && self.max_in_flight > DEDUP_WINDOW {
            return Err(ConfigError::TooManyInFlightForIdempotence(
                self.max_in_flight,
            ));
        }
        if self.retry_backoff > self.retry_backoff_max {
            return Err(ConfigError::BackoffOrder {
                min: self.retry_backoff,
                max: self.retry_backoff_max,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kafka_like_and_valid() {
        let c = ProducerConfig::default();
        assert_eq!(c.batch_size, 65_536);
        assert_eq!(c.acks, Acks::Durable);
        assert!(c.idempotence);
        c.validate().unwrap();
    }

    #[test]
    fn inconsistent_options_are_typed_errors() {
        let bad = |f: fn(&mut ProducerConfig)| {
            let mut c = ProducerConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(matches!(
            bad(|c| c.delivery_timeout = Duration::from_secs(30)),
            ConfigError::DeliveryTimeoutTooShort { .. }
        ));
        assert_eq!(
            bad(|c| c.max_in_flight = 6),
            ConfigError::TooManyInFlightForIdempotence(6)
        );
        assert_eq!(bad(|c| c.batch_size = 0), ConfigError::Zero("batch_size"));
        assert!(matches!(
            bad(|c| c.batch_size = 2 << 20),
            ConfigError::BatchLargerThanRequest { .. }
        ));
        assert!(matches!(
            bad(|c| c.buffer_memory = 1000),
            ConfigError::BufferSmallerThanBatch { .. }
        ));
        let mut ok = ProducerConfig {
            idempotence: false,
            max_in_flight: 20,
            ..ProducerConfig::default()
        };
        ok.validate().unwrap();
        ok.retry_backoff = Duration::from_secs(5);
        assert!(matches!(
            ok.validate(),
            Err(ConfigError::BackoffOrder { .. })
        ));
    }
}
