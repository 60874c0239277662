//! Quickstart: send 10 records through the producer and print where each landed.
//!
//! Runs against the in-memory mock agent, so it needs no server:
//! `cargo run --example quickstart`. Swap the transport and discovery for a real agent's and
//! nothing else changes.

use std::time::Duration;
use streamhouse::mock::MockAgent;
use streamhouse::producer::{Acks, Producer, ProducerRecord};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // An agent with a 3-partition topic, and a producer pointed at it.
    let agent = MockAgent::new().with_topic("orders", 3);
    let producer = Producer::builder(agent.transport(), agent.discovery())
        .acks(Acks::Leader)
        .linger(Duration::from_millis(5))
        .build()?;

    // `send` only buffers the record; the returned future resolves when the agent acknowledges.
    let mut deliveries = Vec::new();
    for i in 0..10 {
        let key = format!("customer-{}", i % 4);
        let value = format!(r#"{{"order":{i},"amount":{}.99}}"#, 10 + i);
        let record = ProducerRecord::new("orders", value.as_bytes()).key(key.as_bytes());
        let delivery = producer.send(record).await?;
        deliveries.push((key, delivery));
    }
    for (key, delivery) in deliveries {
        let meta = delivery.await?;
        println!(
            "{key:<11} -> {}[{}] @ offset {}",
            meta.topic, meta.partition, meta.offset
        );
    }

    producer.close(Duration::from_secs(5)).await?;
    Ok(())
}
