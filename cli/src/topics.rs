//! `streamhouse topics`: list, describe, create and delete topics on an agent.
//!
//! ```text
//! streamhouse topics --bootstrap grpc://127.0.0.1:9092                 # list (as `list`)
//! streamhouse topics describe orders --bootstrap grpc://127.0.0.1:9092
//! streamhouse topics create orders --partitions 6 --bootstrap grpc://127.0.0.1:9092
//! streamhouse topics alter orders --retention-ms 86400000 --bootstrap grpc://127.0.0.1:9092
//! streamhouse topics delete orders --bootstrap grpc://127.0.0.1:9092
//! ```

use crate::endpoints;
use anyhow::{Context, bail};
use streamhouse::discovery::Discovery;
use streamhouse::transport::{Request, RequestMessage, Response};
use streamhouse_proto::v1::{
    AdminRequest, AdminResponse, AlterTopic, CreateTopic, DeleteTopic, ErrorCode,
    admin_request::Action,
};
use tower::ServiceExt;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    action: Option<Command>,
    #[command(flatten)]
    connection: Option<endpoints::ClientArgs>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List every topic with its partitions' leaders (the default).
    List {
        #[command(flatten)]
        connection: endpoints::ClientArgs,
    },
    /// Describe one topic: its partitions and their leaders.
    Describe {
        /// The topic.
        name: String,
        #[command(flatten)]
        connection: endpoints::ClientArgs,
    },
    /// Create a topic (in the agent's metadata store too, when it has one).
    Create {
        /// The topic.
        name: String,
        /// Its partition count.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000))]
        partitions: u32,
        #[command(flatten)]
        retention: Retention,
        #[command(flatten)]
        connection: endpoints::ClientArgs,
    },
    /// Change a topic's retention (agents with object storage).
    Alter {
        /// The topic.
        name: String,
        #[command(flatten)]
        retention: Retention,
        #[command(flatten)]
        connection: endpoints::ClientArgs,
    },
    /// Delete a topic and every record in it.
    Delete {
        /// The topic.
        name: String,
        #[command(flatten)]
        connection: endpoints::ClientArgs,
    },
}

/// Retention of a topic, on agents with object storage (omitted or 0: no bound).
#[derive(clap::Args)]
struct Retention {
    /// Remove records older than this many milliseconds.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(i64).range(0..))]
    retention_ms: Option<i64>,
    /// Remove the oldest records while a partition holds more than this many bytes.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(i64).range(0..))]
    retention_bytes: Option<i64>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        None => match &args.connection {
            Some(connection) => list(connection, None).await,
            None => bail!(
                "--bootstrap URLS is needed (or a subcommand: list, describe, create, delete)"
            ),
        },
        Some(Command::List { connection }) => list(&connection, None).await,
        Some(Command::Describe { name, connection }) => list(&connection, Some(&name)).await,
        Some(Command::Create {
            name,
            partitions,
            retention,
            connection,
        }) => {
            let action = Action::CreateTopic(CreateTopic {
                name: name.clone(),
                partitions,
                retention_ms: retention.retention_ms.unwrap_or(0),
                retention_bytes: retention.retention_bytes.unwrap_or(0),
            });
            admin(&connection, action).await?;
            println!("created topic {name} ({partitions} partitions)");
            Ok(())
        }
        Some(Command::Alter {
            name,
            retention,
            connection,
        }) => {
            let action = Action::AlterTopic(AlterTopic {
                name: name.clone(),
                retention_ms: retention.retention_ms.unwrap_or(0),
                retention_bytes: retention.retention_bytes.unwrap_or(0),
            });
            admin(&connection, action).await?;
            println!("altered topic {name}");
            Ok(())
        }
        Some(Command::Delete { name, connection }) => {
            admin(
                &connection,
                Action::DeleteTopic(DeleteTopic { name: name.clone() }),
            )
            .await?;
            println!("deleted topic {name}");
            Ok(())
        }
    }
}

/// Prints every topic, or one.
async fn list(connection: &endpoints::ClientArgs, only: Option<&str>) -> anyhow::Result<()> {
    let (_, discovery) = connection.connect().await?;
    let topics = match only {
        Some(name) => vec![
            discovery
                .topic(name)
                .await
                .with_context(|| format!("cannot describe topic {name:?}"))?
                .as_ref()
                .clone(),
        ],
        None => discovery.all_topics().await.context("cannot list topics")?,
    };
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

/// Sends one administrative request to the first seed agent.
async fn admin(
    connection: &endpoints::ClientArgs,
    action: Action,
) -> anyhow::Result<AdminResponse> {
    let (transport, _) = connection.connect().await?;
    let seed = connection.first_seed()?;
    let client = transport
        .connect(&seed)
        .await
        .with_context(|| format!("cannot connect to {seed}"))?;
    let request = Request::new(RequestMessage::Admin(AdminRequest {
        action: Some(action),
    }))
    .with_deadline(tokio::time::Instant::now() + std::time::Duration::from_secs(30));
    let answer = client
        .oneshot(request)
        .await
        .with_context(|| format!("{seed} did not answer"))?;
    let Response::Admin(answer) = answer else {
        bail!("{seed} answered with the wrong message type");
    };
    let code = ErrorCode::from_wire(answer.error_code);
    if code != ErrorCode::None {
        bail!("{}: {}", code.as_str_name(), answer.error_message);
    }
    Ok(answer)
}
