//! Private PostgreSQL and S3 servers for tests that stop them (outages): a shared server
//! cannot be stopped under the other tests. PostgreSQL listens on a Unix socket only (no
//! port); moto binds port 0. Both use the binaries `scripts/services` installed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use streamhouse_metastore::testing::service_env as env;

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs a PostgreSQL binary as the cluster's owner (PostgreSQL refuses root).
fn pg(bin: &Path, args: &[&str]) -> std::process::Output {
    let mut command = if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    command.args(args).output().expect("PostgreSQL binary runs")
}

/// A PostgreSQL cluster of this test's own, on a Unix socket in its directory.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = PathBuf::from(env("STREAMHOUSE_TEST_PG_BIN"));
        let dir = tempfile::tempdir().unwrap();
        if as_root() {
            let status = Command::new("chown")
                .args(["postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
            let status = Command::new("chmod")
                .arg("755")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let data = dir.path().join("data");
        let out = pg(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        );
        assert!(out.status.success(), "initdb: {out:?}");
        let pg = PrivatePostgres { dir, bin };
        pg.resume();
        pg
    }

    /// `postgres://…` naming the cluster's socket.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@localhost/postgres?host={}&port=5432",
            self.dir.path().display()
        )
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) {
        let data = self.dir.path().join("data");
        let out = pg(
            &self.bin.join("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
        assert!(out.status.success(), "pg_ctl stop: {out:?}");
    }

    /// Starts it (again), on the same socket.
    pub fn resume(&self) {
        let data = self.dir.path().join("data");
        let options = format!(
            "-c listen_addresses='' -k {} -p 5432",
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        let out = pg(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        assert!(out.status.success(), "pg_ctl start: {out:?}");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = pg(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

/// A moto S3 server of this test's own, on a port the kernel picked, with one bucket.
pub struct PrivateS3 {
    child: Child,
    pub endpoint: String,
}

impl PrivateS3 {
    pub fn start(bucket: &str) -> PrivateS3 {
        let moto = env("STREAMHOUSE_TEST_MOTO");
        let mut child = Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moto_server starts");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let endpoint = loop {
            let mut line = String::new();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "moto_server exited"
            );
            if let Some(at) = line.find("http://127.0.0.1:") {
                break line[at..].trim().to_owned();
            }
        };
        // Keep draining its log, or it blocks once the pipe is full.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while stderr.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        let python = Path::new(&moto).with_file_name("python");
        let status = Command::new(python)
            .arg("-c")
            .arg(format!(
                "import boto3; boto3.client('s3', endpoint_url='{endpoint}', \
                 region_name='us-east-1', aws_access_key_id='test', \
                 aws_secret_access_key='test').create_bucket(Bucket='{bucket}')"
            ))
            .status()
            .unwrap();
        assert!(status.success(), "bucket created");
        PrivateS3 { child, endpoint }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Freezes the server (SIGSTOP): connections hang, nothing is answered, nothing is lost.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets it run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
