//! The peer benchmark: transferd measured side by side with the tools people would otherwise use,
//! in one run, on one machine, so that ratios mean something even where absolute figures drift.
//!
//! `cargo bench --bench peers -- [--smoke] [--rounds N] [--out DIR] [--only WORKLOADS]
//! [--baseline BIN]`
//!
//! It installs nginx, curl and aria2 with apt-get when they are missing (as root), starts a local
//! nginx serving files from /dev/shm with `sendfile on` (and the same files behind `limit_rate`),
//! the release transferd that cargo built for this run, and a plain tonic hello server (this same
//! program, re-run with `--serve-hello`). Workloads, each in interleaved rounds (peer, transferd,
//! peer, transferd, ...) after one warm-up round, each run on a fresh output directory on the
//! disk, with `sync` between runs:
//! - `bulk`: one large file (1 GiB; smoke: 16 MiB), create → COMPLETED (fsynced) against raw
//!   reqwest (+ fsync), curl (+ sync) and aria2c -x8 -s8 (+ sync); each round also runs
//!   transferd with the file's `expected_sha256` (`transferd + sha256`), against plain transferd;
//! - `capped`: one file (1 GiB; smoke: 12 MiB, enough to be segmented) through nginx's
//!   `limit_rate` (16 MiB/s per connection), against aria2c -x16 -s16, with transferd allowed
//!   32 connections;
//! - `small`: 2,000 × 64 KiB (smoke: 100), 16 at a time, created over gRPC, all COMPLETED,
//!   against raw reqwest + fsync, curl -Z and aria2c -j16;
//! - `control`: 50 concurrent RPCs multiplexed on one HTTP/2 connection (as ghz -c 50 does):
//!   GetDownload, ListDownloads(page_size 10) and durable CreateDownload against the hello
//!   server's SayHello.
//!
//! `--baseline BIN` also runs another transferd build in the small-files workload, after
//! transferd in each pairing, as the row `transferd (baseline)`: a before/after in one run
//! (with the server CPU each used, `transferd CPU` against `transferd (baseline) CPU`), and in
//! the control workload, right after transferd for each RPC, as the rows `<RPC> (baseline)`, and
//! in the bulk and capped workloads, after transferd in each pairing, as the row
//! `transferd (baseline)` (and after transferd given the file's SHA-256, as the row
//! `transferd + sha256 (baseline)`). The servers log warnings only, unless `PEERS_TRANSFERD_LOG` names another filter.
//!
//! It prints a markdown table of medians and transferd/peer ratios and writes every sample as
//! JSON to `--out` (default: a new `target/peers/run-<unix time>`).
//!
//! # Layout
//! - `deps`: the Debian packages, installed when missing.
//! - `origin`: nginx on tmpfs.
//! - `server`: the transferd process on a fresh data directory, and the hello server process.
//! - `hello`: the hello server itself (tonic Greeter, written out by hand).
//! - `control`: the control-plane rounds.
//! - `clients`: raw reqwest, curl and aria2c.
//! - `load`: the control-plane load driver.
//! - `workloads`: the download workloads (bulk, small) and what every workload shares.
//! - `report`: samples, medians, the table and the JSON.

mod clients;
mod control;
mod deps;
mod h2load;
mod hello;
mod load;
mod origin;
#[path = "../../examples/support/proc.rs"]
mod proc;
mod report;
mod server;
mod workloads;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

/// How big each workload is.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sizes {
    /// Bytes of the bulk file.
    pub bulk_bytes: u64,
    /// Bytes of the file fetched through the origin's `limit_rate` location.
    pub capped_bytes: u64,
    /// Number of small files.
    pub small_count: usize,
    /// Bytes of each small file.
    pub small_bytes: usize,
    /// Downloads in flight at once in the small-files workload, for every tool.
    pub small_parallel: usize,
    /// How long each control-plane measurement runs.
    pub control_duration: Duration,
    /// Downloads stored before the control-plane measurements (GetDownload reads one of them).
    pub control_seed: usize,
    /// Concurrent RPCs on the one connection, as `ghz -c`.
    pub control_concurrency: usize,
    /// Calls of each h2load measurement (a count, so every answer can be checked; the full
    /// run's take a few seconds, like `control_duration`).
    pub h2load_calls: usize,
}

impl Sizes {
    /// The documented full run.
    fn full() -> Sizes {
        Sizes {
            bulk_bytes: 1 << 30,
            // Large enough that ramping up to dozens of connections is a small part of it.
            capped_bytes: 1 << 30,
            small_count: 2_000,
            small_bytes: 64 << 10,
            small_parallel: 16,
            control_duration: Duration::from_secs(5),
            control_seed: 1_000,
            control_concurrency: 50,
            h2load_calls: 250_000,
        }
    }

    /// Tiny sizes for CI: every code path runs, in seconds.
    fn smoke() -> Sizes {
        Sizes {
            bulk_bytes: 16 << 20,
            capped_bytes: 12 << 20,
            small_count: 100,
            control_duration: Duration::from_millis(500),
            control_seed: 100,
            h2load_calls: 5_000,
            ..Sizes::full()
        }
    }
}

/// The workloads, by name, in the order they run.
const WORKLOADS: [&str; 4] = ["bulk", "capped", "small", "control"];

/// What one run does.
#[derive(Debug)]
struct Args {
    smoke: bool,
    rounds: usize,
    out: PathBuf,
    only: Vec<String>,
    baseline: Option<PathBuf>,
}

impl Args {
    fn parse() -> anyhow::Result<Args> {
        let mut smoke = false;
        let mut rounds = None;
        let mut out = None;
        let mut only = WORKLOADS.map(String::from).to_vec();
        let mut baseline = None;
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--smoke" => smoke = true,
                // cargo bench passes --bench to every bench target.
                "--bench" => {}
                "--rounds" => rounds = Some(value(&mut it, &flag)?.parse()?),
                "--out" => out = Some(PathBuf::from(value(&mut it, &flag)?)),
                "--baseline" => baseline = Some(PathBuf::from(value(&mut it, &flag)?)),
                "--only" => {
                    only = value(&mut it, &flag)?
                        .split(',')
                        .map(String::from)
                        .collect();
                    if let Some(bad) = only.iter().find(|w| !WORKLOADS.contains(&w.as_str())) {
                        bail!(
                            "unknown workload {bad:?}; workloads: {}",
                            WORKLOADS.join(",")
                        );
                    }
                }
                _ => bail!(
                    "unknown flag {flag}; flags: --smoke --rounds N --out DIR --only LIST --baseline BIN"
                ),
            }
        }
        let rounds = rounds.unwrap_or(if smoke { 1 } else { 3 });
        if rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        let out = match out {
            Some(out) => out,
            None => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
                PathBuf::from(format!("target/peers/run-{now}"))
            }
        };
        Ok(Args {
            smoke,
            rounds,
            out,
            only,
            baseline,
        })
    }
}

fn value(it: &mut impl Iterator<Item = String>, flag: &str) -> anyhow::Result<String> {
    it.next().with_context(|| format!("{flag} needs a value"))
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    if std::env::args().nth(1).as_deref() == Some(hello::SERVE_FLAG) {
        return runtime.block_on(hello::serve());
    }
    let args = Args::parse()?;
    // reqwest is built without a default TLS provider (as in transferd); the raw peer only
    // speaks plain HTTP, but a client cannot be built without one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    deps::ensure()?;
    // A fresh output directory, never one emptied in place (the disk is mounted with discard).
    if args.out.exists() {
        bail!(
            "{} already exists; give a new --out directory",
            args.out.display()
        );
    }
    std::fs::create_dir_all(&args.out)?;
    let sizes = if args.smoke {
        Sizes::smoke()
    } else {
        Sizes::full()
    };
    let origin = origin::Origin::start(&sizes).await?;
    let mut ctx = workloads::Context::new(&args.out, args.rounds, sizes.clone(), origin)?;
    ctx.baseline = args.baseline;
    let mut report = report::Report::new(args.smoke, args.rounds, sizes);
    for workload in &args.only {
        eprintln!("== {workload}");
        match workload.as_str() {
            "bulk" => workloads::bulk(&ctx, &mut report).await?,
            "capped" => workloads::capped(&ctx, &mut report).await?,
            "small" => workloads::small(&ctx, &mut report).await?,
            _ => workloads::control(&ctx, &mut report).await?,
        }
    }
    print!("{}", report.table());
    let json = args.out.join("peers.json");
    std::fs::write(&json, report.json()?)?;
    eprintln!("samples written to {}", json.display());
    Ok(())
}
