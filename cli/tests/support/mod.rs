//! Running `streamhouse` as a child process.
#![allow(dead_code, unreachable_pub)]

pub mod proxy;
pub mod services;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_streamhouse");

/// An agent child process; killed when dropped.
pub struct AgentProcess {
    child: Child,
    /// The gRPC port.
    pub port: u16,
    /// `scheme://address` of every listener, as the agent printed them.
    pub urls: Vec<String>,
}

impl AgentProcess {
    /// Starts `streamhouse agent` on `data`, on `port` (0: any), with extra arguments, and
    /// waits for it to print where it listens.
    pub fn start(data: &Path, port: u16, extra: &[&str]) -> AgentProcess {
        AgentProcess::start_with(Command::new(BIN), data, port, extra)
    }

    /// As [`start`](Self::start), with the open-file limit (soft and hard) set to `fds`.
    pub fn start_with_fd_limit(data: &Path, fds: u64, extra: &[&str]) -> AgentProcess {
        let mut command = Command::new("prlimit");
        command.arg(format!("--nofile={fds}:{fds}")).arg(BIN);
        AgentProcess::start_with(command, data, 0, extra)
    }

    /// As [`start`](Self::start), its standard error appended to `log` (for tests that read
    /// what the agent reported).
    #[allow(dead_code)]
    pub fn start_logged(data: &Path, port: u16, extra: &[&str], log: &Path) -> AgentProcess {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("agent log opens");
        AgentProcess::spawn(Command::new(BIN), data, port, extra, Stdio::from(file))
    }

    fn start_with(command: Command, data: &Path, port: u16, extra: &[&str]) -> AgentProcess {
        let stderr = match std::env::var_os("AGENT_STDERR") {
            // Debugging: the agents' logs, appended to this file.
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_or_else(|_| Stdio::null(), Stdio::from),
            None => Stdio::null(),
        };
        AgentProcess::spawn(command, data, port, extra, stderr)
    }

    fn spawn(
        mut command: Command,
        data: &Path,
        port: u16,
        extra: &[&str],
        stderr: Stdio,
    ) -> AgentProcess {
        let mut child = command
            .arg("agent")
            .arg("--data")
            .arg(data)
            .arg("--grpc")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("agent starts");
        let listeners = 1 + usize::from(extra.contains(&"--quic"));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut urls = Vec::new();
        for _ in 0..listeners {
            let mut line = String::new();
            stdout
                .read_line(&mut line)
                .expect("agent prints its addresses");
            let (scheme, addr) = line
                .trim()
                .split_once(" listening on ")
                .unwrap_or_else(|| panic!("unexpected line {line:?}"));
            urls.push(format!("{scheme}://{addr}"));
        }
        let port = urls[0]
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port");
        AgentProcess { child, port, urls }
    }

    /// The URL of the listener with `scheme`.
    pub fn url_of(&self, scheme: &str) -> &str {
        self.urls
            .iter()
            .find(|u| u.starts_with(&format!("{scheme}://")))
            .unwrap_or_else(|| panic!("no {scheme} listener"))
    }

    pub fn url(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (`STOP`, `CONT`, …) without waiting.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), pid.as_str()])
            .status();
    }

    /// SIGTERM, then wait for a clean exit; returns whether it exited successfully.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every record of partitions `0..partitions` of `topic`, read back from `endpoint`: the logs
/// the history checker compares with what was acknowledged.
pub async fn read_back(
    transport: &dyn streamhouse::transport::Transport,
    endpoint: &streamhouse::transport::Endpoint,
    topic: &str,
    partitions: u32,
) -> Vec<(u32, Vec<streamhouse::batch::Record>)> {
    let mut logs = Vec::new();
    for partition in 0..partitions {
        let connection = transport.connect(endpoint).await.unwrap();
        let records = streamhouse::reader::PartitionReader::new(connection, topic, partition, 0)
            .read_to_end()
            .await
            .unwrap();
        logs.push((partition, records));
    }
    logs
}

/// Runs `streamhouse ARGS` with `stdin` as input.
pub fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("command starts");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin)
        .expect("stdin written");
    child.wait_with_output().expect("command ends")
}
