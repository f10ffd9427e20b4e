//! Shared harness for the end-to-end tests. [`Harness::start`] makes a temporary data directory,
//! starts the real `transferd` binary on an ephemeral port, starts the test origin and connects
//! a [`Client`] (the library's own), so a test begins in one line. The harness's helpers drive
//! the server through that client and panic with a clear message when a call fails, wait for
//! states by reading the server (never by sleeping), read progress streams, and check result
//! files by hash.
//!
//! # Layout
//! - this module: [`Harness`], the shared deadline, hashing and file checks;
//! - [`server`]: the `transferd` process;
//! - [`calls`]: one helper per call the tests make, including the system service;
//! - [`wait`]: waiting for a download's state, and reading progress streams;
//! - [`disk`]: small tmpfs mounts for the disk tests;
//! - [`netns`]: network namespaces for the connectivity tests;
//! - [`tokens`]: token files and clients that send a bearer token;
//! - [`rpcs`]: every RPC of both services in one call, and the state they could change;
//! - [`pki`]: a CA and certificates for the TLS tests;
//! - [`sockets`]: options of the server's accepted sockets;
//! - [`origin`]: the HTTP origin the downloads fetch from.
#![allow(dead_code)]

pub mod calls;
pub mod disk;
pub mod netns;
pub mod origin;
pub mod pki;
pub mod postgres;
pub mod rpcs;
pub mod server;
pub mod sockets;
pub mod tokens;
pub mod wait;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tempfile::TempDir;
use transferd::client::TlsOptions;

// Each test binary uses a subset of these, like the rest of the harness.
#[allow(unused_imports)]
pub use calls::{create_request, status_of};
#[allow(unused_imports)]
pub use pb::BackgroundTransferStatus as S;
#[allow(unused_imports)]
pub use server::{Server, run_transferd};
#[allow(unused_imports)]
pub use tokens::Token;
#[allow(unused_imports)]
pub use transferd::client::Client;
#[allow(unused_imports)]
pub use transferd::pb::backgroundtransfer::v1 as pb;
#[allow(unused_imports)]
pub use wait::{next_message, read_to_end, read_until, responses_changed, restarts};

use origin::Origin;

/// Reports that a test cannot set up its real environment (a network namespace, a tmpfs
/// mount): under CI (`CI` set, as `.ci/run` runs) that is a failure, so a machine that lost
/// root or iproute2 cannot turn these tests into silent passes; elsewhere (a developer's
/// machine without root) the test says SKIPPED on stderr and returns.
pub fn cannot_set_up(what: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what}; CI must run this test for real (run as root with iproute2 installed)"
    );
    eprintln!("SKIPPED: {what}");
}

/// Upper bound for any single wait in a test. Generous because CI machines are shared and
/// slow; a healthy run takes a fraction of it.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A transferd under test, the origin it downloads from, and a client connected to it.
///
/// Fields drop in order: the server is killed before the temporary directory goes.
pub struct Harness {
    /// The `transferd` process.
    pub server: Server,
    /// The HTTP origin.
    pub origin: Origin,
    /// A client connected to [`Harness::server`]; [`Harness::restart`] reconnects it.
    pub client: Client,
    /// The data directory the harness made, if it made one; removed on drop.
    _dir: Option<TempDir>,
}

impl Harness {
    /// Starts `transferd FLAGS...` on a fresh temporary data directory, and an origin on
    /// `127.0.0.1`.
    pub async fn start(flags: &[&str]) -> Harness {
        let dir = tempfile::tempdir().expect("create a temporary data directory");
        let server = Server::start(dir.path(), flags).await;
        Harness::assemble(server, Origin::start().await, Some(dir)).await
    }

    /// [`Harness::start`], with extra environment variables for the server (e.g. `HTTP_PROXY`).
    pub async fn start_env(flags: &[&str], env: &[(&str, &str)]) -> Harness {
        let dir = tempfile::tempdir().expect("create a temporary data directory");
        let server = Server::start_env(dir.path(), flags, env).await;
        Harness::assemble(server, Origin::start().await, Some(dir)).await
    }

    /// [`Harness::start`] with the server's log filter `filter`.
    pub async fn start_logging(flags: &[&str], filter: &str) -> Harness {
        let dir = tempfile::tempdir().expect("create a temporary data directory");
        let server = Server::start_logging(dir.path(), flags, filter).await;
        Harness::assemble(server, Origin::start().await, Some(dir)).await
    }

    /// Starts `transferd FLAGS...` on `data_dir`, which the test owns (e.g. next to a mount it
    /// made, which must outlive the server).
    pub async fn start_at(data_dir: &Path, flags: &[&str]) -> Harness {
        let server = Server::start(data_dir, flags).await;
        Harness::assemble(server, Origin::start().await, None).await
    }

    /// Starts `transferd FLAGS...` inside the network namespace `ns` on a fresh temporary data
    /// directory, with `origin` (which the test placed where the namespace can reach it).
    pub async fn start_in(ns: &netns::Netns, origin: Origin, flags: &[&str]) -> Harness {
        let dir = tempfile::tempdir().expect("create a temporary data directory");
        let server = Server::start_in(ns, dir.path(), flags).await;
        Harness::assemble(server, origin, Some(dir)).await
    }

    /// Starts `transferd FLAGS...` like [`Harness::start`], with [`Harness::client`] connected
    /// over TLS with `tls`; the flags must make the server serve TLS.
    pub async fn start_tls(tls: &TlsOptions, flags: &[&str]) -> Harness {
        let dir = tempfile::tempdir().expect("create a temporary data directory");
        let server = Server::start(dir.path(), flags).await;
        let client = server.client_tls(tls).await;
        Harness {
            server,
            origin: Origin::start().await,
            client,
            _dir: Some(dir),
        }
    }

    async fn assemble(server: Server, origin: Origin, dir: Option<TempDir>) -> Harness {
        let client = server.client().await;
        Harness {
            server,
            origin,
            client,
            _dir: dir,
        }
    }

    /// Starts a new `transferd FLAGS...` (on `127.0.0.1`, with the same log filter) on the same
    /// data directory, after
    /// the test stopped the old one with [`Server::terminate`] or [`Server::kill`], and
    /// reconnects [`Harness::client`] to it. The origin keeps running.
    pub async fn restart(&mut self, flags: &[&str]) {
        assert!(
            !self.server.is_running(),
            "stop the server (terminate or kill) before restarting it"
        );
        let (data_dir, filter) = (&self.server.data_dir, &self.server.log_filter);
        self.server = Server::start_logging(data_dir, flags, filter).await;
        self.client = self.server.client().await;
    }

    /// The server's download directory.
    pub fn download_dir(&self) -> PathBuf {
        self.server.download_dir()
    }

    /// Asserts that the result file `file` (relative to the download directory) holds exactly
    /// `expected`, compared by SHA-256.
    pub fn assert_file(&self, file: &str, expected: &[u8]) {
        assert_holds(&self.download_dir().join(file), expected);
    }

    /// The status stored for `guid`, read from the database file (what a restart would find).
    pub fn stored_status(&self, guid: &str) -> i32 {
        let conn = rusqlite::Connection::open(self.server.data_dir.join("transferd.db")).unwrap();
        conn.query_row(
            "SELECT status FROM downloads WHERE guid = ?1",
            [guid],
            |r| r.get(0),
        )
        .unwrap()
    }
}

/// Asserts that the file at `path` holds exactly `expected`, compared by SHA-256.
pub fn assert_holds(path: &Path, expected: &[u8]) {
    assert_eq!(
        sha256_file(path),
        sha256(expected),
        "{} does not hold the expected bytes",
        path.display()
    );
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

/// The files under `dir` (as [`files_under`] names them) once they are `want`, or as they are
/// after [`DEADLINE`]. A completed download's partial name goes in the background after its
/// COMPLETED is stored, so a test that saw COMPLETED waits for it here.
pub async fn files_settled(dir: &Path, want: &[String]) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let files = files_under(dir);
        if files == want || tokio::time::Instant::now() >= deadline {
            return files;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
