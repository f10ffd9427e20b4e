//! The real `transferd` binary as a child process on an ephemeral port.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use transferd::client::{Client, TlsOptions};

use super::{DEADLINE, netns};

/// The server's log filter (`TRANSFERD_LOG`) unless a test asks for another.
pub const LOG_FILTER: &str = "transferd=debug,info";

/// A running `transferd` process, killed when dropped.
pub struct Server {
    child: Option<Child>,
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    /// Its `--data-dir`.
    pub data_dir: PathBuf,
    /// Its `TRANSFERD_LOG` filter, kept for a restart.
    pub log_filter: String,
}

impl Server {
    /// Starts `transferd --listen 127.0.0.1:0 --data-dir DATA_DIR EXTRA...` and waits until it
    /// announces its address.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_logging(data_dir, extra, LOG_FILTER).await
    }

    /// [`Server::start`] with the log filter `filter` (e.g. `trace`, to prove what never
    /// reaches the log).
    pub async fn start_logging(data_dir: &Path, extra: &[&str], filter: &str) -> Server {
        let command = Command::new(env!("CARGO_BIN_EXE_transferd"));
        Server::start_with(command, "127.0.0.1:0", data_dir, extra, filter).await
    }

    /// [`Server::start`] with extra environment variables (e.g. `HTTP_PROXY`).
    pub async fn start_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_transferd"));
        command.envs(env.iter().copied());
        Server::start_with(command, "127.0.0.1:0", data_dir, extra, LOG_FILTER).await
    }

    /// Starts `transferd` inside a test network namespace, listening on its veth address.
    /// That address is not loopback, so the server runs with `--allow-unauthenticated` (the
    /// namespace is the test's own; nothing else can reach it).
    pub async fn start_in(ns: &netns::Netns, data_dir: &Path, extra: &[&str]) -> Server {
        let command = ns.command(env!("CARGO_BIN_EXE_transferd"));
        let mut extra = extra.to_vec();
        extra.push("--allow-unauthenticated");
        let listen = format!("{}:0", ns.inner);
        Server::start_with(command, &listen, data_dir, &extra, LOG_FILTER).await
    }

    /// Starts `transferd --listen LISTEN --data-dir DATA_DIR EXTRA...` (for the listen-address
    /// rules); [`Server::addr`] is then the loopback address of the announced port, so the
    /// test's calls stay on loopback.
    pub async fn start_listening(listen: &str, data_dir: &Path, extra: &[&str]) -> Server {
        let command = Command::new(env!("CARGO_BIN_EXE_transferd"));
        let mut server = Server::start_with(command, listen, data_dir, extra, LOG_FILTER).await;
        if server.addr.ip().is_unspecified() {
            server.addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        server
    }

    async fn start_with(
        mut command: Command,
        listen: &str,
        data_dir: &Path,
        extra: &[&str],
        log_filter: &str,
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
            .env("TRANSFERD_LOG", log_filter)
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
            log_filter: log_filter.to_string(),
        }
    }

    /// A new client on a connection of its own to this server.
    pub async fn client(&self) -> Client {
        Client::connect(&self.addr.to_string())
            .await
            .unwrap_or_else(|e| panic!("client connects to {}: {e}", self.addr))
    }

    /// A new client on a TLS connection of its own to this server, for a server started with
    /// TLS flags.
    pub async fn client_tls(&self, tls: &TlsOptions) -> Client {
        Client::connect_tls(&self.addr.to_string(), tls)
            .await
            .unwrap_or_else(|e| panic!("TLS client connects to {}: {e:?}", self.addr))
    }

    /// A raw gRPC channel to this server, for services and calls the typed client does not
    /// make (health, reflection, hand-made request bodies).
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("channel connects to {}: {e}", self.addr))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("the server is running")
    }

    /// The default download directory.
    pub fn download_dir(&self) -> PathBuf {
        self.data_dir.join("downloads")
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        read_log(&self.data_dir)
    }

    /// Whether the process was neither terminated nor killed by the test.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take().expect("the server is running");
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
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("the server is running");
        child.kill().await.unwrap();
    }
}

fn read_log(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default()
}

/// Runs `transferd ARGS...` to completion (for flags and stores it must refuse).
pub fn run_transferd<I, A>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = A>,
    A: AsRef<std::ffi::OsStr>,
{
    std::process::Command::new(env!("CARGO_BIN_EXE_transferd"))
        .args(args)
        .output()
        .expect("transferd binary runs")
}
