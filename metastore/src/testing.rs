//! For tests of code that uses a store: fresh databases on the PostgreSQL server that
//! `scripts/test` starts (its URL is in `STREAMHOUSE_TEST_POSTGRES`).
//!
//! A test that needs PostgreSQL never skips: without the server it fails, naming the command
//! that starts it.

use sqlx::Executor;
use sqlx::any::AnyConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable holding the test server's URL (`postgres://USER@HOST:PORT/DB`).
pub const POSTGRES_ENV: &str = "STREAMHOUSE_TEST_POSTGRES";

/// What to run when a service is missing.
pub const HOW_TO_START: &str = "run the tests through scripts/test (it starts PostgreSQL and an S3 server on loopback), \
     or start them with `eval \"$(scripts/services start)\"` first";

/// A variable `scripts/services` sets; panics (failing the test) when it is not set.
pub fn service_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("this test needs a service and {name} is not set: {HOW_TO_START}")
    })
}

/// The test server's URL; panics (failing the test) when it is not set.
pub fn postgres_url() -> String {
    service_env(POSTGRES_ENV)
}

/// The test S3 server's endpoint and bucket (credentials `test`/`test`, region `us-east-1`).
pub fn s3() -> (String, String) {
    (
        service_env("STREAMHOUSE_TEST_S3_ENDPOINT"),
        service_env("STREAMHOUSE_TEST_S3_BUCKET"),
    )
}

/// Creates an empty database on the test server and returns its URL: tests running at once
/// never see each other's topics.
pub async fn fresh_postgres() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    sqlx::any::install_default_drivers();
    let base = postgres_url();
    let name = format!(
        "sh_test_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    let mut admin = AnyConnectOptions::from_str(&base)
        .expect("the test server URL parses")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {base}: {e}; {HOW_TO_START}"));
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("CREATE DATABASE on the test server");
    let _ = admin.close().await;
    let (server, _) = base.rsplit_once('/').expect("the URL names a database");
    format!("{server}/{name}")
}
