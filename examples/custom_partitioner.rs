//! A user partitioner: records of VIP customers go to partition 0, the rest hash as Kafka does.
//! `cargo run --example custom_partitioner`
use std::num::NonZeroU32;
use streamhouse::mock::MockAgent;
use streamhouse::partitioner::{Partitioner, kafka_partition};
use streamhouse::producer::{Producer, ProducerRecord};

struct VipFirst;

impl Partitioner for VipFirst {
    fn partition(&self, _topic: &str, key: Option<&[u8]>, partitions: NonZeroU32) -> u32 {
        match key {
            Some(key) if key.starts_with(b"vip-") => 0,
            Some(key) => {
                1 + kafka_partition(
                    key,
                    NonZeroU32::new(partitions.get() - 1).unwrap_or(partitions),
                ) % partitions.get()
            }
            None => 0,
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let agent = MockAgent::new().with_topic("payments", 4);
    let producer = Producer::builder(agent.transport(), agent.discovery())
        .partitioner(VipFirst)
        .build()?;
    for key in ["vip-ada", "bob", "vip-linus", "carol"] {
        let meta = producer
            .send_and_wait(ProducerRecord::new("payments", b"{}").key(key.as_bytes()))
            .await?;
        println!("{key:<10} -> partition {}", meta.partition);
    }
    Ok(())
}
