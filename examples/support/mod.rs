//! What the load drivers share: the release server started on a fresh data directory, a tiny
//! local origin, and the server's resident memory and CPU time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The body every download fetches: tiny, so the server's own work dominates.
pub const BODY: &[u8] = b"transferd load driver\n";

#[path = "proc.rs"]
mod proc;
#[allow(unused_imports)]
pub use proc::{cpu_seconds, rss_kib};

/// Starts the release binary with `flags` on `data_dir` and returns it with the address it listens on.
pub async fn start_server(
    bin: &Path,
    data_dir: &Path,
    flags: &[&str],
) -> anyhow::Result<(Child, String)> {
    let log = std::fs::File::create(data_dir.join("server.log"))?;
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.join("data"))
        .args(flags)
        .env("TRANSFERD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {}; run `cargo build --release` first",
                bin.display()
            )
        })?;
    let addr = listening_addr(&mut child).await?;
    Ok((child, addr))
}

/// The address a server started with piped stdout says it listens on in its first line
/// (`listening on ADDR`, as transferd prints it).
pub async fn listening_addr(child: &mut Child) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("server stdout")?;
    let line = BufReader::new(stdout)
        .lines()
        .next_line()
        .await?
        .context("the server exited at start")?;
    let addr = line
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .to_string();
    Ok(addr)
}

/// A tiny HTTP/1.1 origin that answers every request with [`BODY`].
pub async fn start_origin() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(BODY))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
