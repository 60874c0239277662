//! `streamhouse topics list|describe|create|delete` against real agent processes: with the local
//! disk only, and with a metadata store, where topics outlive the data directory.

mod support;

use support::{AgentProcess, run};

fn topics(agent: &AgentProcess, args: &[&str]) -> (bool, String, String) {
    let url = agent.url();
    let mut all = vec!["topics"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--bootstrap", &url]);
    let out = run(&all, b"");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn topics_are_created_described_listed_and_deleted() {
    let data = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(data.path(), 0, &[]);
    let (ok, out, _) = topics(&agent, &["create", "orders", "--partitions", "3"]);
    assert!(
        ok && out.contains("created topic orders (3 partitions)"),
        "{out}"
    );
    let (ok, out, _) = topics(&agent, &["describe", "orders"]);
    assert!(
        ok && out.contains("orders (3 partitions)") && out.contains("partition 2"),
        "{out}"
    );
    let (ok, out, _) = topics(&agent, &[]);
    assert!(ok && out.contains("orders (3 partitions)"), "{out}");
    // Refusals are one line with the code, and a non-zero exit.
    let (ok, _, err) = topics(&agent, &["create", "orders", "--partitions", "1"]);
    assert!(!ok && err.contains("TOPIC_ALREADY_EXISTS"), "{err}");
    let (ok, _, err) = topics(&agent, &["create", "bad/name", "--partitions", "1"]);
    assert!(!ok && err.contains("INVALID_TOPIC"), "{err}");
    let (ok, _, _) = topics(&agent, &["create", "x", "--partitions", "0"]);
    assert!(!ok, "no topic without partitions");
    // Records go in; deleting takes them and the files away.
    let url = agent.url();
    let out = run(
        &["produce", "--bootstrap", &url, "--topic", "orders"],
        b"a\nb\n",
    );
    assert!(out.status.success(), "{out:?}");
    let (ok, out, _) = topics(&agent, &["delete", "orders"]);
    assert!(ok && out.contains("deleted topic orders"), "{out}");
    let (ok, out, _) = topics(&agent, &["list"]);
    assert!(ok && out.contains("no topics"), "{out}");
    let (ok, _, err) = topics(&agent, &["delete", "orders"]);
    assert!(!ok && err.contains("UNKNOWN_TOPIC"), "{err}");
    assert!(
        !data.path().join("orders-0").exists(),
        "partition files removed"
    );
    // Created again, it starts empty.
    let (ok, _, _) = topics(&agent, &["create", "orders", "--partitions", "1"]);
    assert!(ok);
    let out = run(&["consume", "--bootstrap", &url, "--topic", "orders"], b"");
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "{out:?}"
    );
    assert!(agent.terminate());
}

#[test]
fn topics_live_in_the_metadata_store() {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    let meta = format!("sqlite://{}/meta.db", base.path().display());
    let objects = format!("file://{}/objects", base.path().display());
    let args = ["--metadata", meta.as_str(), "--objects", objects.as_str()];
    let agent = AgentProcess::start(&data, 0, &args);
    assert!(topics(&agent, &["create", "kept", "--partitions", "2"]).0);
    assert!(topics(&agent, &["create", "dropped", "--partitions", "1"]).0);
    assert!(topics(&agent, &["delete", "dropped"]).0);
    assert!(agent.terminate());
    // A new machine: no data directory, no --topic; the store has the topics.
    std::fs::remove_dir_all(&data).unwrap();
    let agent = AgentProcess::start(&data, 0, &args);
    let (ok, out, _) = topics(&agent, &["list"]);
    assert!(ok && out.contains("kept (2 partitions)"), "{out}");
    assert!(!out.contains("dropped"), "{out}");
    assert!(agent.terminate());
}
