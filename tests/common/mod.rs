//! Shared harness for the end-to-end tests: starts the real `transferd` binary on an ephemeral
//! port, connects a real gRPC client, and offers small helpers to wait for states by reading
//! the server (never by sleeping) and to hash result files.
#![allow(dead_code)]

pub mod netns;
pub mod origin;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use transferd::pb::backgroundtransfer::v1 as pb;

pub use pb::BackgroundTransferStatus as S;
pub use pb::background_transfer_service_client::BackgroundTransferServiceClient;

/// The gRPC client the tests use.
pub type Client = BackgroundTransferServiceClient<Channel>;

/// Upper bound for any single wait in a test. Generous because CI machines are shared and
/// slow; a healthy run takes a fraction of it.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running `transferd` process, killed when dropped.
pub struct Server {
    child: Option<Child>,
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    /// Its `--data-dir`.
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts `transferd --listen 127.0.0.1:0 --data-dir DATA_DIR EXTRA...` and waits until it
    /// announces its address.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let command = Command::new(env!("CARGO_BIN_EXE_transferd"));
        Server::start_with(command, "127.0.0.1:0", data_dir, extra).await
    }

    /// Starts `transferd` inside a test network namespace, listening on its veth address.
    pub async fn start_in(ns: &netns::Netns, data_dir: &Path, extra: &[&str]) -> Server {
        let command = ns.command(env!("CARGO_BIN_EXE_transferd"));
        Server::start_with(command, &format!("{}:0", ns.inner), data_dir, extra).await
    }

    async fn start_with(
        mut command: Command,
        listen: &str,
        data_dir: &Path,
        extra: &[&str],
    ) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("server.log"))
            .unwrap();
        let mut child = command
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("TRANSFERD_LOG", "transferd=debug,info")
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("transferd binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no `listening on` line; log:\n{}", read_log(data_dir)))
            .unwrap()
            .unwrap_or_else(|| panic!("transferd exited at start; log:\n{}", read_log(data_dir)));
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Server {
            child: Some(child),
            addr,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// A new client connected to this server.
    pub async fn client(&self) -> Client {
        BackgroundTransferServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("client connects")
    }

    /// The default download directory.
    pub fn download_dir(&self) -> PathBuf {
        self.data_dir.join("downloads")
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        read_log(&self.data_dir)
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        let pid = child.id().expect("still running");
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(DEADLINE, child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap();
        exit.code()
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub async fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().await.unwrap();
    }
}

fn read_log(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default()
}

/// A CreateDownload request with defaults.
pub fn create_request(uri: &str, result_file: &str) -> pb::CreateDownloadRequest {
    pb::CreateDownloadRequest {
        requested_uri: uri.to_string(),
        result_file: result_file.to_string(),
        ..Default::default()
    }
}

/// Creates a download and returns the operation.
pub async fn create(client: &mut Client, uri: &str, result_file: &str) -> pb::DownloadOperation {
    client
        .create_download(create_request(uri, result_file))
        .await
        .expect("CreateDownload succeeds")
        .into_inner()
}

/// The operation's current state.
pub async fn get(client: &mut Client, guid: &str) -> pb::DownloadOperation {
    client
        .get_download(pb::GetDownloadRequest { guid: guid.into() })
        .await
        .expect("GetDownload succeeds")
        .into_inner()
}

/// The status of an operation as the enum.
pub fn status_of(op: &pb::DownloadOperation) -> S {
    op.progress
        .as_ref()
        .expect("progress is always set")
        .status()
}

/// Polls GetDownload until `pred` holds, panicking with the last state after [`DEADLINE`].
pub async fn wait_until(
    client: &mut Client,
    guid: &str,
    what: &str,
    pred: impl Fn(&pb::DownloadOperation) -> bool,
) -> pb::DownloadOperation {
    let start = tokio::time::Instant::now();
    loop {
        let op = get(client, guid).await;
        if pred(&op) {
            return op;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}; last state: {op:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until the operation has `status`.
pub async fn wait_status(client: &mut Client, guid: &str, status: S) -> pb::DownloadOperation {
    wait_until(client, guid, &format!("{status:?}"), |op| {
        status_of(op) == status
    })
    .await
}

/// Reads a WatchDownload stream to its end (it ends after a terminal status).
pub async fn watch_to_end(client: &mut Client, guid: &str) -> Vec<pb::BackgroundDownloadProgress> {
    let mut stream = client
        .watch_download(pb::WatchDownloadRequest { guid: guid.into() })
        .await
        .expect("WatchDownload starts")
        .into_inner();
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout(DEADLINE, stream.message()).await {
            Ok(Ok(Some(m))) => messages.push(m),
            Ok(Ok(None)) => return messages,
            Ok(Err(e)) => panic!("stream failed: {e}; got {messages:?}"),
            Err(_) => panic!("stream did not end; got {messages:?}"),
        }
    }
}

/// SHA-256 of bytes, as hex.
pub fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// SHA-256 of a file, as hex.
pub fn sha256_file(path: &Path) -> String {
    sha256(&std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

/// Names of the files under `dir`, recursively, relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Pauses a download and returns the operation.
pub async fn pause(client: &mut Client, guid: &str) -> pb::DownloadOperation {
    client
        .pause_download(pb::PauseDownloadRequest { guid: guid.into() })
        .await
        .expect("PauseDownload succeeds")
        .into_inner()
}

/// Resumes a download and returns the operation.
pub async fn resume(client: &mut Client, guid: &str) -> pb::DownloadOperation {
    client
        .resume_download(pb::ResumeDownloadRequest { guid: guid.into() })
        .await
        .expect("ResumeDownload succeeds")
        .into_inner()
}

/// Cancels a download and returns the operation.
pub async fn cancel(client: &mut Client, guid: &str) -> pb::DownloadOperation {
    client
        .cancel_download(pb::CancelDownloadRequest { guid: guid.into() })
        .await
        .expect("CancelDownload succeeds")
        .into_inner()
}

/// The guids of every download, in ListDownloads order, following every page.
pub async fn list_guids(client: &mut Client) -> Vec<String> {
    let mut guids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_downloads(pb::ListDownloadsRequest {
                transfer_group: None,
                page_size: 100,
                page_token,
            })
            .await
            .expect("ListDownloads succeeds")
            .into_inner();
        guids.extend(page.downloads.into_iter().map(|d| d.guid));
        if page.next_page_token.is_empty() {
            return guids;
        }
        page_token = page.next_page_token;
    }
}

/// Polls until the download has received exactly `bytes` (e.g. where the origin holds the body).
pub async fn wait_bytes(client: &mut Client, guid: &str, bytes: u64) -> pb::DownloadOperation {
    wait_until(client, guid, &format!("{bytes} bytes received"), |op| {
        op.progress.expect("progress is always set").bytes_received == bytes
    })
    .await
}
