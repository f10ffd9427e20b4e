//! The origin every tool downloads from: nginx from Debian serving files from tmpfs
//! (/dev/shm) with `sendfile on`, on a free loopback port, with its own configuration in a
//! temporary directory (the system's nginx configuration is never read or touched). The same
//! files are served again under `/capped/` with `limit_rate`, for runs against an origin that
//! caps each connection.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::Sizes;

/// Where the files live: tmpfs, so reading them costs the origin no disk time.
const SHM: &str = "/dev/shm";

/// Per-connection rate of the `/capped/` location.
pub const CAP: &str = "16m";

/// How long nginx gets to accept connections after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the start polls for nginx accepting connections.
const START_POLL: Duration = Duration::from_millis(20);

/// Bytes generated at a time when writing the files.
const CHUNK: usize = 1 << 20;

/// The name of the bulk file.
pub const BULK: &str = "bulk.bin";

/// The name of the file fetched through the `limit_rate` location.
pub const CAPPED: &str = "capped.bin";

/// A running nginx and the files it serves; both go away on drop.
pub struct Origin {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// SHA-256 of the bulk file, in hex, for the run that gives transferd `expected_sha256`.
    pub bulk_sha256: String,
    _nginx: Child,
    _files: TempDir,
    _config: TempDir,
}

impl Origin {
    /// Writes the files of `sizes` to tmpfs and starts nginx on them.
    pub async fn start(sizes: &Sizes) -> anyhow::Result<Origin> {
        let files = tempfile::Builder::new()
            .prefix("transferd-peers-")
            .tempdir_in(SHM)
            .with_context(|| format!("cannot create a directory in {SHM} (tmpfs)"))?;
        let bulk_sha256 = write_random(&files.path().join(BULK), sizes.bulk_bytes)?;
        write_random(&files.path().join(CAPPED), sizes.capped_bytes)?;
        std::fs::create_dir(files.path().join("small"))?;
        for i in 0..sizes.small_count {
            write_random(&files.path().join(small_path(i)), sizes.small_bytes as u64)?;
        }
        let config = tempfile::Builder::new()
            .prefix("transferd-peers-nginx-")
            .tempdir()?;
        let port = free_port()?;
        let conf = config.path().join("nginx.conf");
        std::fs::write(&conf, nginx_conf(config.path(), files.path(), port))?;
        let nginx = crate::deps::find("nginx").context("nginx is not installed")?;
        let mut child = Command::new(nginx)
            .arg("-p")
            .arg(config.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(config.path().join("error.log"))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start nginx")?;
        wait_ready(&mut child, port, config.path()).await?;
        Ok(Origin {
            base: format!("http://127.0.0.1:{port}"),
            bulk_sha256,
            _nginx: child,
            _files: files,
            _config: config,
        })
    }

    /// The URL of the file `name`, uncapped.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    /// The URL of the file `name` through the `limit_rate` location.
    pub fn capped_url(&self, name: &str) -> String {
        format!("{}/capped/{name}", self.base)
    }

    /// The URL of small file `i`.
    pub fn small_url(&self, i: usize) -> String {
        format!("{}/{}", self.base, small_path(i))
    }
}

/// The path of small file `i`, relative to the served root.
fn small_path(i: usize) -> String {
    format!("small/{i}.bin")
}

/// Random bytes, so nothing along the way can profit from repetition; returns their SHA-256.
fn write_random(path: &Path, bytes: u64) -> anyhow::Result<String> {
    use sha2::Digest as _;
    let mut sha = sha2::Sha256::new();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut chunk = vec![0; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        fastrand::fill(&mut chunk[..n]);
        file.write_all(&chunk[..n])?;
        sha.update(&chunk[..n]);
        left -= n as u64;
    }
    file.flush()?;
    Ok(format!("{:x}", sha.finalize()))
}

/// A port nothing listens on now. Another process could take it before nginx binds; nginx
/// then fails to start and says so.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One nginx process (`master_process off`: a SIGKILL on drop stops everything, and two cores
/// leave nothing for more workers), no access log, and every temporary path inside `prefix`.
fn nginx_conf(prefix: &Path, root: &Path, port: u16) -> String {
    let (prefix, root) = (prefix.display(), root.display());
    let mut conf = String::new();
    let _ = writeln!(conf, "daemon off;\nmaster_process off;");
    let _ = writeln!(conf, "pid {prefix}/nginx.pid;");
    let _ = writeln!(conf, "error_log {prefix}/error.log warn;");
    let _ = writeln!(conf, "events {{ worker_connections 4096; }}");
    let _ = writeln!(conf, "http {{");
    let _ = writeln!(conf, "  access_log off;\n  sendfile on;\n  tcp_nopush on;");
    let _ = writeln!(conf, "  keepalive_requests 1000000;");
    let _ = writeln!(conf, "  default_type application/octet-stream;");
    for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = writeln!(conf, "  {temp}_temp_path {prefix}/{temp};");
    }
    let _ = writeln!(
        conf,
        "  server {{\n    listen 127.0.0.1:{port};\n    root {root};"
    );
    let _ = writeln!(
        conf,
        "    location /capped/ {{ alias {root}/; limit_rate {CAP}; }}"
    );
    let _ = writeln!(conf, "  }}\n}}");
    conf
}

/// Waits until nginx accepts connections on `port`, or fails with its error log.
async fn wait_ready(child: &mut Child, port: u16, prefix: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let log = |prefix: &Path| {
        let path: PathBuf = prefix.join("error.log");
        std::fs::read_to_string(path).unwrap_or_default()
    };
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("nginx exited with {status}:\n{}", log(prefix));
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "nginx did not listen on port {port} within {START_TIMEOUT:?}:\n{}",
                log(prefix)
            );
        }
        tokio::time::sleep(START_POLL).await;
    }
}
