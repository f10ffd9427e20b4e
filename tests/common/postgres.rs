//! A fresh PostgreSQL database per test, on the server `TRANSFERD_TEST_POSTGRES` names or else
//! on the private instance `.ci/postgres url` starts. Without one, [`fresh_database`] reports
//! it through [`super::cannot_set_up`] (a failure under CI) and returns `None`.

use tokio_postgres::NoTls;

/// The URL of a new, empty database no other test sees; `None` if there is no PostgreSQL.
pub async fn fresh_database() -> Option<String> {
    let admin = match std::env::var("TRANSFERD_TEST_POSTGRES") {
        Ok(url) => url,
        Err(_) => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres");
            match std::process::Command::new("bash")
                .args([script, "url"])
                .output()
            {
                Ok(out) if out.status.success() => {
                    String::from_utf8_lossy(&out.stdout).trim().to_string()
                }
                Ok(out) => {
                    let why = String::from_utf8_lossy(&out.stderr);
                    super::cannot_set_up(&format!("no PostgreSQL ({})", why.trim()));
                    return None;
                }
                Err(e) => {
                    super::cannot_set_up(&format!("cannot run .ci/postgres: {e}"));
                    return None;
                }
            }
        }
    };
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    connect(&admin)
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    let mut url = url::Url::parse(&admin).expect("a PostgreSQL URL");
    url.set_path(&name);
    Some(url.to_string())
}

/// A plain connection to the database at `url`, to look at what transferd stored.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(connection);
    client
}
