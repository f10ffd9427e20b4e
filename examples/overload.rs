//! Load driver (not a test): does the server's memory stay bounded under 10k open watch streams
//! and under a flood of creates, and do the overload caps answer instead of absorbing?
//!
//! It starts the real `transferd` binary on fresh data directories next to a tiny local origin
//! and reports, as rows of a table:
//! - the server's RSS idle (one waiting download), with `--streams` open WatchDownload and
//!   WatchDownloads streams that are never read (spread over `--connections` connections, with
//!   the HTTP/2 default window, as stuck clients), and after they are closed; then how many more
//!   streams the server accepts before the `--max-streams` cap answers RESOURCE_EXHAUSTED;
//! - a flood of `--creates` CreateDownload calls, `--flood` at a time, against a server with the
//!   default caps and, side by side, against one whose caps are set out of reach: accepted and
//!   refused calls, accepted creates per second, and peak RSS.
//!
//! Build the server first, then run:
//! `cargo build --release && cargo run --release --example overload`

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use support::{rss_kib, start_origin, start_server};
use tonic::Code;
use transferd::client::Client;
use transferd::pb::backgroundtransfer::v1 as pb;

/// How often the driver samples the server's RSS during the flood.
const RSS_SAMPLE: Duration = Duration::from_millis(20);

/// How long the server gets to settle after streams open or close before RSS is read.
const SETTLE: Duration = Duration::from_secs(3);

/// The stream cap of the stream phase: above `--streams`, so the streams fit and the cap is
/// then found by opening more.
const STREAM_CAP_HEADROOM: usize = 2_000;

/// Caps "out of reach" for the uncapped side of the flood: tokio's largest semaphore.
const OUT_OF_REACH: &str = "16777216";

/// What one run measures.
#[derive(clap::Parser)]
#[command(
    about = "Overload: RSS with unread streams, and a flood of creates with and without the caps"
)]
struct Args {
    /// The transferd binary to run.
    #[arg(long, default_value = "target/release/transferd")]
    bin: PathBuf,
    /// Where each run gets a fresh directory.
    #[arg(long, default_value = "target/overload")]
    dir: PathBuf,
    /// Unread watch streams to open.
    #[arg(long, default_value = "10000")]
    streams: usize,
    /// Connections the streams are spread over.
    #[arg(long, default_value = "10")]
    connections: usize,
    /// CreateDownload calls in the flood.
    #[arg(long, default_value = "20000")]
    creates: usize,
    /// Calls of the flood in flight at once.
    #[arg(long, default_value = "4096")]
    flood: usize,
}

impl Args {
    /// The command line, checked.
    fn read() -> anyhow::Result<Args> {
        let args = <Args as clap::Parser>::parse();
        if args.connections == 0 || args.flood == 0 {
            bail!("--connections and --flood must be at least 1");
        }
        Ok(args)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::read()?;
    std::fs::create_dir_all(&args.dir)?;
    let origin = start_origin().await?;
    let uri = format!("http://{origin}/file");
    println!("| measure | server | value | ratio to idle |");
    println!("|---|---|---|---|");
    streams(&args, &uri).await?;
    let capped = flood(&args, &uri, "default caps", &[]).await?;
    let uncapped = flood(
        &args,
        &uri,
        "caps out of reach",
        &["--max-inflight-calls", OUT_OF_REACH],
    )
    .await?;
    println!(
        "| accepted creates/s, default caps vs out of reach | both | {:.0} vs {:.0} | {:.2} |",
        capped,
        uncapped,
        capped / uncapped
    );
    Ok(())
}

/// The stream phase: RSS with `--streams` unread streams, after closing them, and where the
/// cap answers.
async fn streams(args: &Args, uri: &str) -> anyhow::Result<()> {
    let cap = (args.streams + STREAM_CAP_HEADROOM).to_string();
    let run_dir = fresh_dir(&args.dir)?;
    let flags = ["--max-streams", &cap, "--max-streams-per-tenant", &cap];
    let (mut server, addr) = start_server(&args.bin, run_dir.path(), &flags).await?;
    let pid = server.id().context("server pid")?;
    let client = Client::connect(&addr).await?;
    // With the network reported down the download waits as PAUSED_NO_NETWORK, so its watch
    // streams stay open.
    client.set_network_conditions(Some(false), None).await?;
    let op = client.create(request(uri, 0)).await?;
    tokio::time::sleep(SETTLE).await;
    let idle = rss_kib(pid)?;
    println!(
        "| RSS, one waiting download | streams | {} MiB | 1.00 |",
        idle / 1024
    );

    let clients = watchers(&addr, args.connections).await?;
    let mut open = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        open.push(open_stream(&clients[i % clients.len()], &op.guid, i).await?);
    }
    tokio::time::sleep(SETTLE).await;
    let with = rss_kib(pid)?;
    println!(
        "| RSS, {} unread streams (half WatchDownload, half WatchDownloads) | streams | {} MiB | {:.2} |",
        args.streams,
        with / 1024,
        with as f64 / idle as f64
    );
    let mut more = 0;
    let refused = loop {
        match open_stream(&clients[0], &op.guid, more).await {
            Ok(stream) => open.push(stream),
            Err(status) if status.code() == Code::ResourceExhausted => break status,
            Err(status) => bail!("stream {more} beyond the first failed: {status:?}"),
        }
        more += 1;
    };
    println!(
        "| streams accepted beyond {} before RESOURCE_EXHAUSTED (cap {cap}) | streams | {more} | - |",
        args.streams
    );
    eprintln!("refused with: {}", refused.message());
    drop(open);
    tokio::time::sleep(SETTLE).await;
    let after = rss_kib(pid)?;
    println!(
        "| RSS after closing every stream | streams | {} MiB | {:.2} |",
        after / 1024,
        after as f64 / idle as f64
    );
    server.kill().await?;
    Ok(())
}

/// Opens stream `i`: even ones WatchDownload of `guid`, odd ones WatchDownloads.
async fn open_stream(
    client: &Client,
    guid: &str,
    i: usize,
) -> Result<Box<dyn Send>, tonic::Status> {
    Ok(if i % 2 == 0 {
        Box::new(client.watch(guid).await?)
    } else {
        Box::new(client.watch_all(None).await?)
    })
}

/// `count` clients, each on a connection of its own.
async fn watchers(addr: &str, count: usize) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        clients.push(Client::from_channel(channel));
    }
    Ok(clients)
}

/// The flood phase on a fresh server with `flags`: prints accepted, refused and peak RSS, and
/// returns accepted creates per second.
async fn flood(args: &Args, uri: &str, label: &str, flags: &[&str]) -> anyhow::Result<f64> {
    let run_dir = fresh_dir(&args.dir)?;
    let mut all = vec!["--max-active", "1"];
    all.extend_from_slice(flags);
    let (mut server, addr) = start_server(&args.bin, run_dir.path(), &all).await?;
    let pid = server.id().context("server pid")?;
    let client = Client::connect(&addr).await?;
    tokio::time::sleep(SETTLE).await;
    let idle = rss_kib(pid)?;
    let peak = Arc::new(AtomicU64::new(idle));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            while let Ok(rss) = rss_kib(pid) {
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(RSS_SAMPLE).await;
            }
        })
    };
    let next = Arc::new(AtomicU64::new(0));
    let (accepted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.flood {
        let (client, uri, next) = (client.clone(), uri.to_string(), next.clone());
        let (accepted, refused, total) = (accepted.clone(), refused.clone(), args.creates as u64);
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, tonic::Status>(());
                }
                match client.create(request(&uri, n as usize)).await {
                    Ok(_) => accepted.fetch_add(1, Ordering::Relaxed),
                    Err(status) if status.code() == Code::ResourceExhausted => {
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(status) => return Err(status),
                };
            }
        });
    }
    // A call that fails otherwise (a broken connection) ends its task; the rest go on.
    let mut failed = Vec::new();
    while let Some(task) = tasks.join_next().await {
        if let Err(status) = task? {
            failed.push(status);
        }
    }
    if let Some(exit) = server.try_wait()? {
        bail!("the server exited during the flood: {exit}");
    }
    let elapsed = start.elapsed().as_secs_f64();
    sampler.abort();
    let (accepted, refused) = (
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "| flood of {} creates, {} at a time: accepted / refused / failed | {label} | {accepted} / \
         {refused} / {} | - |",
        args.creates,
        args.flood,
        failed.len()
    );
    if let Some(first) = failed.first() {
        eprintln!(
            "{label}: {} calls failed, the first with {first:?}",
            failed.len()
        );
    }
    println!(
        "| peak RSS during the flood | {label} | {} MiB | {:.2} |",
        peak / 1024,
        peak as f64 / idle as f64
    );
    server.kill().await?;
    Ok(accepted as f64 / elapsed)
}

fn request(uri: &str, n: usize) -> pb::CreateDownloadRequest {
    pb::CreateDownloadRequest {
        requested_uri: uri.into(),
        result_file: format!("d{n}"),
        ..Default::default()
    }
}

/// A new run directory under `dir`, so no earlier run's files skew this one.
fn fresh_dir(dir: &std::path::Path) -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix("run-").tempdir_in(dir)?)
}
