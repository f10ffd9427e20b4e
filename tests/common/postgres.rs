//! A fresh PostgreSQL database for each test that needs one. The server is the one named by
//! `TRANSFERD_TEST_POSTGRES` (a URL, as `.ci/run` exports it), or else the private instance
//! `.ci/postgres` starts on first use and leaves running for later runs (`.ci/postgres stop`
//! ends it). Each test gets its own database, so tests run in parallel without seeing each
//! other's downloads.

#![allow(dead_code)]

use super::cannot_set_up;

/// The URL of a new, empty database, or `None` (after [`cannot_set_up`], which fails under
/// CI) when no PostgreSQL can be reached or started here.
pub async fn fresh_database() -> Option<String> {
    let base = match server_url() {
        Ok(url) => url,
        Err(why) => {
            cannot_set_up(&format!("no PostgreSQL for this test: {why}"));
            return None;
        }
    };
    let (client, connection) = match tokio_postgres::connect(&base, tokio_postgres::NoTls).await {
        Ok(pair) => pair,
        Err(e) => {
            cannot_set_up(&format!("cannot connect to PostgreSQL at {base}: {e}"));
            return None;
        }
    };
    tokio::spawn(connection);
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    let mut url = url::Url::parse(&base).expect("a PostgreSQL URL");
    url.set_path(&format!("/{name}"));
    Some(url.to_string())
}

/// The PostgreSQL server's URL (its `postgres` database).
fn server_url() -> Result<String, String> {
    if let Ok(url) = std::env::var("TRANSFERD_TEST_POSTGRES") {
        return Ok(url);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres");
    let output = std::process::Command::new("bash")
        .arg(script)
        .arg("url")
        .output()
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}
