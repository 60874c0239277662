//! `streamhouse topics`.

use crate::endpoints;
use anyhow::Context;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    connection: endpoints::ClientArgs,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let (_, discovery) = args.connection.connect()?;
    let topics = discovery.all_topics().await.context("cannot list topics")?;
    if topics.is_empty() {
        println!("no topics");
    }
    for topic in topics {
        println!("{} ({} partitions)", topic.topic(), topic.partition_count());
        for (partition, leader) in topic.leaders().iter().enumerate() {
            println!(
                "  partition {partition}: leader agent {} at {}",
                leader.agent_id, leader.endpoint
            );
        }
    }
    Ok(())
}
