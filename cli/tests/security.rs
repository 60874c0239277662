//! The agent's security from the command line: the start refusals (exact messages), `/metrics`
//! serving only `GET /metrics` behind its token, and a token-and-ACL round trip through
//! `produce` and `consume`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use support::BIN;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `streamhouse agent ARGS` and returns it with the lines it printed first.
fn agent(args: &[&str], lines: usize) -> (Agent, Vec<String>) {
    let mut child = Command::new(BIN)
        .arg("agent")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut printed = Vec::new();
    for _ in 0..lines {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        printed.push(line.trim().to_owned());
    }
    (Agent(child), printed)
}

/// The error line of an agent that refuses to start (one still running after 10 s started,
/// and fails the test).
fn refusal(args: &[&str]) -> String {
    let mut child = Command::new(BIN)
        .arg("agent")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} started instead of refusing");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(!status.success(), "{args:?} exited successfully");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr.trim().to_owned()
}

#[test]
fn insecure_settings_are_refused_at_start_with_the_fix_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, "").unwrap();
    let file = file.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--grpc", "0.0.0.0:0", "--advertise", "grpc://h:1"],
            "error: refusing to serve gRPC on non-loopback 0.0.0.0:0 without TLS and authentication: add --grpc-tls and --token-file/--acl-file (or --client-ca), or --insecure",
        ),
        (
            vec![
                "--grpc",
                "0.0.0.0:0",
                "--advertise",
                "grpc://h:1",
                "--token-file",
                file,
                "--acl-file",
                file,
            ],
            "error: refusing to serve gRPC on non-loopback 0.0.0.0:0 without TLS: add --grpc-tls, or --insecure",
        ),
        (
            vec!["--grpc", "0.0.0.0:0"],
            "error: 0.0.0.0:0 is not an address clients can use: give --advertise URL (e.g. grpc://agent-1.internal:0)",
        ),
        (
            vec![
                "--grpc",
                "127.0.0.1:0",
                "--client-ca",
                file,
                "--acl-file",
                file,
            ],
            "error: --client-ca needs a server certificate (--tls-cert/--tls-key or --dev-cert); without one it would be ignored and clients served without TLS",
        ),
        (
            vec!["--grpc", "127.0.0.1:0", "--metrics", "0.0.0.0:0"],
            "error: refusing to serve /metrics on non-loopback 0.0.0.0:0 without --metrics-token-file (its names carry topic names), or --insecure",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["--data", data];
        all.extend(args.iter());
        assert_eq!(refusal(&all), expected, "{args:?}");
    }
}

fn http(addr: &str, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn metrics_answer_only_get_metrics_and_only_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("metrics.token");
    std::fs::write(&token, "scrape-me\n").unwrap();
    let data = dir.path().join("data");
    let (_agent, lines) = agent(
        &[
            "--data",
            data.to_str().unwrap(),
            "--grpc",
            "127.0.0.1:0",
            "--topic",
            "t:1",
            "--metrics",
            "127.0.0.1:0",
            "--metrics-token-file",
            token.to_str().unwrap(),
        ],
        2,
    );
    let addr = lines[1]
        .strip_prefix("metrics listening on ")
        .unwrap_or_else(|| panic!("{lines:?}"));
    let get = |path: &str, auth: &str| {
        http(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"),
        )
    };
    let ok = get("/metrics", "Authorization: Bearer scrape-me\r\n");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("text/plain"), "{ok}");
    for (what, answer, status) in [
        ("no token", get("/metrics", ""), "401"),
        (
            "wrong token",
            get("/metrics", "Authorization: Bearer nope\r\n"),
            "401",
        ),
        (
            "another path",
            get("/", "Authorization: Bearer scrape-me\r\n"),
            "404",
        ),
        (
            "a path below",
            get("/metrics/x", "Authorization: Bearer scrape-me\r\n"),
            "404",
        ),
        (
            "another method",
            http(
                addr,
                "POST /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer scrape-me\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            ),
            "405",
        ),
    ] {
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {answer}"
        );
        assert!(!answer.contains("streamhouse_"), "{what}: no metric leaks");
    }
}

#[test]
fn a_token_and_an_acl_let_one_principal_produce_and_another_consume() {
    use support::{AgentProcess, run};
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!(
            "sha256:{} payments\nsha256:{} search\n",
            hash("pay-7f3a"),
            hash("srch-91bc")
        ),
    )
    .unwrap();
    let acls = dir.path().join("acls");
    std::fs::write(
        &acls,
        "allow payments produce,describe orders*\nallow search fetch,describe orders*\n",
    )
    .unwrap();
    let token_file = dir.path().join("payments.token");
    std::fs::write(&token_file, "pay-7f3a\n").unwrap();
    let agent = AgentProcess::start(
        &dir.path().join("data"),
        0,
        &[
            "--topic",
            "orders:2",
            "--token-file",
            tokens.to_str().unwrap(),
            "--acl-file",
            acls.to_str().unwrap(),
        ],
    );
    let url = agent.url();
    let input: String = (1..=100).map(|i| format!("{i}\n")).collect();
    let produced = run(
        &[
            "produce",
            "--bootstrap",
            &url,
            "--topic",
            "orders",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        input.as_bytes(),
    );
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let consumed = run(
        &[
            "consume",
            "--bootstrap",
            &url,
            "--topic",
            "orders",
            "--token",
            "srch-91bc",
        ],
        b"",
    );
    assert!(
        consumed.status.success(),
        "{}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    assert_eq!(
        String::from_utf8(consumed.stdout).unwrap().lines().count(),
        100
    );
    // The producer's token cannot read; a wrong token cannot write.
    let refused = run(
        &[
            "consume",
            "--bootstrap",
            &url,
            "--topic",
            "orders",
            "--token",
            "pay-7f3a",
        ],
        b"",
    );
    assert!(!refused.status.success());
    let refused = run(
        &[
            "produce",
            "--bootstrap",
            &url,
            "--topic",
            "orders",
            "--token",
            "wrong",
        ],
        b"1\n",
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.to_lowercase().contains("authenticated"),
        "{stderr}"
    );
}

#[test]
fn a_revoked_token_stops_working_after_sighup_and_a_broken_file_keeps_the_old_one() {
    use support::{AgentProcess, run};
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let both = format!("sha256:{} a\nsha256:{} b\n", hash("tok-a"), hash("tok-b"));
    std::fs::write(&tokens, &both).unwrap();
    let acls = dir.path().join("acls");
    std::fs::write(&acls, "allow * produce,describe t\n").unwrap();
    let agent = AgentProcess::start(
        &dir.path().join("data"),
        0,
        &[
            "--topic",
            "t:1",
            "--token-file",
            tokens.to_str().unwrap(),
            "--acl-file",
            acls.to_str().unwrap(),
        ],
    );
    let url = agent.url();
    let produce = |token: &str| {
        run(
            &[
                "produce",
                "--bootstrap",
                &url,
                "--topic",
                "t",
                "--token",
                token,
            ],
            b"x\n",
        )
        .status
        .success()
    };
    assert!(produce("tok-a") && produce("tok-b"));
    // A file that does not parse: the tokens in force stay.
    std::fs::write(&tokens, "sha256:nothex a\n").unwrap();
    agent.signal("HUP");
    // Revoke tok-a: once the agent has read the file again, it is refused.
    std::fs::write(&tokens, format!("sha256:{} b\n", hash("tok-b"))).unwrap();
    agent.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while produce("tok-a") {
        assert!(
            std::time::Instant::now() < deadline,
            "tok-a still accepted 10 s after SIGHUP"
        );
    }
    assert!(
        produce("tok-b"),
        "the agent survived both reloads and serves tok-b"
    );
}

fn hash(token: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn acl_rules_are_managed_in_a_file_and_in_a_group_store_whose_agents_apply_them() {
    use support::{AgentProcess, run};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acls");
    let file_arg = file.to_str().unwrap();
    let acl = |args: &[&str]| run(&[&["acl"][..], args].concat(), b"");
    let added = acl(&[
        "add",
        "--file",
        file_arg,
        "payments",
        "produce,describe",
        "orders*",
    ]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    assert!(
        !acl(&["add", "--file", file_arg, "payments", "write", "orders"])
            .status
            .success()
    );
    let listed = acl(&["list", "--file", file_arg]);
    assert_eq!(
        String::from_utf8(listed.stdout).unwrap(),
        "allow payments produce,describe orders*\n"
    );
    assert!(
        acl(&[
            "remove",
            "--file",
            file_arg,
            "payments",
            "produce,describe",
            "orders*"
        ])
        .status
        .success()
    );
    assert!(
        !acl(&[
            "remove",
            "--file",
            file_arg,
            "payments",
            "produce,describe",
            "orders*"
        ])
        .status
        .success()
    );
    assert_eq!(acl(&["list", "--file", file_arg]).stdout, b"");

    // Found by an outside review: a link was replaced by a file, the mode became 0600, and a
    // mistyped path listed as an empty rule set.
    use std::os::unix::fs::PermissionsExt;
    let real = dir.path().join("real-acls");
    std::fs::write(&real, "").unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = dir.path().join("link-acls");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert!(
        acl(&["add", "--file", link.to_str().unwrap(), "b", "fetch", "y"])
            .status
            .success()
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(&real).unwrap(), "allow b fetch y\n");
    assert_eq!(
        std::fs::metadata(&real).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let missing = dir.path().join("no-such-file");
    assert!(
        !acl(&["list", "--file", missing.to_str().unwrap()])
            .status
            .success()
    );

    // A group agent authorizing by the store's rules.
    let meta = format!("sqlite://{}", dir.path().join("meta.db").display());
    let objects = format!("file://{}", dir.path().join("objects").display());
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("sha256:{} payments\n", hash("pay"))).unwrap();
    let agent = AgentProcess::start(
        &dir.path().join("data"),
        0,
        &[
            "--topic",
            "orders:1",
            "--metadata",
            &meta,
            "--objects",
            &objects,
            "--token-file",
            tokens.to_str().unwrap(),
            "--acl-store",
        ],
    );
    let url = agent.url();
    let produce = || {
        run(
            &[
                "produce",
                "--bootstrap",
                &url,
                "--topic",
                "orders",
                "--token",
                "pay",
            ],
            b"x\n",
        )
        .status
        .success()
    };
    assert!(!produce(), "no rule yet: denied");
    assert!(
        acl(&[
            "add",
            "--metadata",
            &meta,
            "payments",
            "produce,describe",
            "orders"
        ])
        .status
        .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !produce() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store's rule never applied"
        );
    }
    let listed = acl(&["list", "--metadata", &meta]);
    assert_eq!(
        String::from_utf8(listed.stdout).unwrap(),
        "allow payments produce,describe orders\n"
    );
    assert!(
        acl(&[
            "remove",
            "--metadata",
            &meta,
            "payments",
            "produce,describe",
            "orders"
        ])
        .status
        .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while produce() {
        assert!(
            std::time::Instant::now() < deadline,
            "the removed rule still applies"
        );
    }
}
