//! `streamhouse acl`: list, add and remove ACL rules, in an agent's `--acl-file` or in a
//! group's metadata store (`--acl-store` agents read those within seconds; a file is read
//! again on SIGHUP).

use anyhow::{Context, bail};
use std::path::PathBuf;
use streamhouse_auth::{Acls, Rule};

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    action: Action,
    /// The agent's --acl-file (created by `add` if missing).
    #[arg(long, value_name = "FILE", global = true, conflicts_with = "metadata")]
    file: Option<PathBuf>,
    /// The group's metadata store (`sqlite://PATH`, `postgres://…`).
    #[arg(long, value_name = "URL", global = true)]
    metadata: Option<String>,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Print every rule, one per line.
    List,
    /// Allow PRINCIPAL (or `*`) OPERATION[,OPERATION…] on TOPIC (a name, `prefix*` or `*`);
    /// operations: produce, fetch, describe, create, delete, admin, all.
    Add {
        /// PRINCIPAL OPERATIONS TOPIC
        #[arg(num_args = 3, value_names = ["PRINCIPAL", "OPERATIONS", "TOPIC"])]
        rule: Vec<String>,
    },
    /// Remove a rule given as for `add`.
    Remove {
        /// PRINCIPAL OPERATIONS TOPIC
        #[arg(num_args = 3, value_names = ["PRINCIPAL", "OPERATIONS", "TOPIC"])]
        rule: Vec<String>,
    },
}

fn rule(words: &[String]) -> anyhow::Result<Rule> {
    let text = format!("allow {}", words.join(" "));
    text.parse::<Rule>()
        .map_err(|why| anyhow::anyhow!("{why}: {text:?}"))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    match (&args.file, &args.metadata) {
        (Some(file), None) => on_file(file, args.action),
        (None, Some(url)) => on_store(url, args.action).await,
        _ => bail!(
            "say where the rules are: --file FILE (an agent's --acl-file) or --metadata URL (a group's store)"
        ),
    }
}

fn on_file(file: &PathBuf, action: Action) -> anyhow::Result<()> {
    if !matches!(action, Action::Add { .. }) && !file.exists() {
        bail!("no ACL file at {} (`acl add` creates one)", file.display());
    }
    // A link is followed: the file it names is the one changed.
    let file = &match std::fs::canonicalize(file) {
        Ok(real) => real,
        Err(_) => file.clone(),
    };
    let mut acls = streamhouse_auth::read_acls(file).context("cannot read the ACL file")?;
    let changed = match action {
        Action::List => {
            print!("{acls}");
            return Ok(());
        }
        Action::Add { rule: words } => {
            let rule = rule(&words)?;
            if acls.rules.contains(&rule) {
                false
            } else {
                acls.rules.push(rule);
                true
            }
        }
        Action::Remove { rule: words } => {
            let rule = rule(&words)?;
            let before = acls.rules.len();
            acls.rules.retain(|r| *r != rule);
            if acls.rules.len() == before {
                bail!("no such rule: {rule}");
            }
            true
        }
    };
    if changed {
        write_atomically(file, &acls)?;
        eprintln!(
            "{} updated; running agents read it again on SIGHUP",
            file.display()
        );
    } else {
        eprintln!("the rule is there already");
    }
    Ok(())
}

/// Writes the rules to a temporary file beside `file` and renames it over: an agent reading
/// the file never sees half of it.
fn write_atomically(file: &PathBuf, acls: &Acls) -> anyhow::Result<()> {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut temporary = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write beside {}", file.display()))?;
    std::io::Write::write_all(&mut temporary, acls.to_string().as_bytes())?;
    // The new file keeps the old one's mode and owner, so the agent that reads it still can
    // (found by an outside review: a 0644 file owned by the agent's user became root's 0600).
    if let Ok(old) = std::fs::metadata(file) {
        std::fs::set_permissions(temporary.path(), old.permissions())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let _ = std::os::unix::fs::chown(temporary.path(), Some(old.uid()), Some(old.gid()));
        }
    }
    temporary.as_file().sync_all()?;
    temporary
        .persist(file)
        .with_context(|| format!("cannot replace {}", file.display()))?;
    Ok(())
}

async fn on_store(url: &str, action: Action) -> anyhow::Result<()> {
    if let Some(path) = url.strip_prefix("sqlite://")
        && !std::path::Path::new(path.split('?').next().unwrap_or(path)).exists()
    {
        bail!("no metadata store at {url}");
    }
    let store = streamhouse_metastore::open(url)
        .await
        .with_context(|| format!("cannot open the metadata store {url}"))?;
    match action {
        Action::List => {
            for rule in store.acl_rules().await? {
                println!("{rule}");
            }
        }
        Action::Add { rule: words } => {
            let rule = rule(&words)?.to_string();
            if store.add_acl_rule(&rule).await? {
                eprintln!("added; agents with --acl-store apply it within seconds");
            } else {
                eprintln!("the rule is there already");
            }
        }
        Action::Remove { rule: words } => {
            let rule = rule(&words)?.to_string();
            if !store.remove_acl_rule(&rule).await? {
                bail!("no such rule: {rule}");
            }
            eprintln!("removed; agents with --acl-store stop applying it within seconds");
        }
    }
    Ok(())
}
