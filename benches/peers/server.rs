//! The gRPC servers under load, each its own process so neither shares a runtime with the load
//! driver: the release transferd that cargo built for this run, on a fresh data directory, and
//! the plain tonic hello server (this program re-run with `--serve-hello`). Both announce
//! `listening on ADDR` on stdout once they are ready.

use std::path::Path;
use std::process::Stdio;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use transferd::client::Client;

/// The transferd binary cargo built for this run, in the bench profile (release).
const TRANSFERD: &str = env!("CARGO_BIN_EXE_transferd");

/// A running server; it is killed on drop.
pub struct Server {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: Child,
}

impl Server {
    /// Starts transferd with `flags`, its data and download directories under `dir`, which must
    /// be fresh. Its log goes to `dir/server.log`.
    pub async fn transferd(dir: &Path, flags: &[&str]) -> anyhow::Result<Server> {
        Server::transferd_from(Path::new(TRANSFERD), dir, flags).await
    }

    /// [`Server::transferd`] with the binary at `bin` (another build, for a before/after run).
    pub async fn transferd_from(bin: &Path, dir: &Path, flags: &[&str]) -> anyhow::Result<Server> {
        let mut command = Command::new(bin);
        command
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--download-dir")
            .arg(dir.join("downloads"))
            .args(flags)
            // Warnings only, unless PEERS_TRANSFERD_LOG asks for more (to see what a run did).
            .env(
                "TRANSFERD_LOG",
                std::env::var("PEERS_TRANSFERD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stderr(std::fs::File::create(dir.join("server.log"))?);
        // Settings from the caller's environment would change what is measured.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TRANSFERD_") && name != "TRANSFERD_LOG" {
                command.env_remove(name);
            }
        }
        Server::start(command, "transferd").await
    }

    /// Starts the hello server.
    pub async fn hello() -> anyhow::Result<Server> {
        let mut command = Command::new(std::env::current_exe()?);
        command.arg(crate::hello::SERVE_FLAG);
        Server::start(command, "the hello server").await
    }

    async fn start(mut command: Command, name: &str) -> anyhow::Result<Server> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let line = BufReader::new(stdout)
            .lines()
            .next_line()
            .await?
            .with_context(|| format!("{name} exited at start"))?;
        let addr = line
            .strip_prefix("listening on ")
            .with_context(|| format!("{name} printed {line:?}, not 'listening on ADDR'"))?
            .to_string();
        Ok(Server { addr, child })
    }

    /// CPU time (user and system) the server has used so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        crate::proc::cpu_seconds(self.child.id().context("the server has exited")?)
    }

    /// Kills the server and waits until it is gone, so it takes no CPU from the next run.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        Ok(self.child.kill().await?)
    }

    /// A transferd client over one new connection.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.addr).await?)
    }
}
