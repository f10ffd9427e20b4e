//! Load driver (not a test): does CreateDownload stay fast as the store grows, and does an
//! unread WatchDownloads stream cost the server memory that grows with the store?
//!
//! It starts the real `transferd` binary on a fresh data directory (a new directory per run, so
//! no earlier run's files or free-space state skew it; it is kept afterwards, since removing
//! 100k files is minutes of disk work that would slow whatever runs next) with `--max-active`
//! (default 16), next to a tiny local HTTP origin, and fills the store by creating downloads,
//! `--fill-concurrency` in flight, that complete against that origin (it waits for them every
//! 2,000 creates, and before anything is measured): stored downloads are finished, as on a
//! long-lived server, and nothing runs while a window starts. It reports:
//! - creates per second, one client connection, with `--window` creates measured at about 1k
//!   stored and again at `--stored`, twice each: one create at a time, and `--concurrency`
//!   (default 50) creates in flight on that one connection, as `ghz -c 50` sends them, which is
//!   where group commit (concurrent creates sharing one commit) shows; and with each, the
//!   server's CPU time per create and the download it started (from /proc), which other load
//!   on the machine moves far less than it moves the rate;
//! - the server's RSS before and after opening `--streams` WatchDownloads streams that are never
//!   read, over `--watch-at` stored downloads.
//!
//! Build the server first, then run, for example:
//! `cargo build --release && cargo run --release --example store_growth -- --stored 100000`
//! (`--bin` picks another server build, for a before/after run of the same driver).

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use support::{cpu_seconds, rss_kib, start_origin, start_server};
use transferd::client::Client;
use transferd::pb::backgroundtransfer::v1 as pb;

/// Creates per fill step; each step waits until its downloads have finished. Creating all of
/// a fill at once would leave tens of thousands queued, and every create reconciles the live
/// (unfinished) downloads with the host's conditions, so the fill would slow with the queue,
/// and the store would not look like a long-lived server's, where most downloads are finished.
const FILL_STEP: usize = 2000;

/// How often the driver polls while waiting for the server to settle.
const POLL: Duration = Duration::from_millis(50);

/// How long the server gets to settle after the streams open before RSS is read again.
const STREAM_SETTLE: Duration = Duration::from_secs(3);

/// HTTP/2 flow-control window of the watching client: the protocol default, so a stream the
/// application never reads also stops taking data at the transport, as a stuck client would.
const WATCHER_WINDOW: u32 = 65_535;

/// What one run measures.
#[derive(clap::Parser)]
#[command(about = "Store growth: CreateDownload at 1k and at --stored downloads stored")]
struct Args {
    /// The transferd binary to run.
    #[arg(long, default_value = "target/release/transferd")]
    bin: PathBuf,
    /// Where each run gets a fresh directory.
    #[arg(long, default_value = "target/store_growth")]
    dir: PathBuf,
    /// Downloads stored at the second measurement.
    #[arg(long, default_value = "100000")]
    stored: usize,
    /// Creates per measured window.
    #[arg(long, default_value = "1000")]
    window: usize,
    /// Downloads stored when the unread streams open.
    #[arg(long, default_value = "10000")]
    watch_at: usize,
    /// Unread WatchDownloads streams to open.
    #[arg(long, default_value = "200")]
    streams: usize,
    /// Creates in flight in the concurrent window (as ghz -c 50).
    #[arg(long, default_value = "50")]
    concurrency: usize,
    /// Creates in flight while filling: enough that 100k takes minutes, not an hour.
    #[arg(long, default_value = "64")]
    fill_concurrency: usize,
    /// The server's --max-active; fills wait for every download to finish, so what is stored is what a long-lived server holds.
    #[arg(long, default_value = "16")]
    max_active: String,
}

impl Args {
    /// The command line, checked.
    fn read() -> anyhow::Result<Args> {
        let args = <Args as clap::Parser>::parse();
        if args.watch_at > args.stored || 2 * args.window > args.stored {
            bail!("--watch-at and twice --window must not exceed --stored");
        }
        if args.concurrency == 0 || args.fill_concurrency == 0 {
            bail!("--concurrency and --fill-concurrency must be at least 1");
        }
        Ok(args)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::read()?;
    std::fs::create_dir_all(&args.dir)?;
    // Kept after the run: removing 100k result files takes minutes of disk work (ext4 with
    // discard), which would slow whatever runs next. The path is printed at the end.
    let run_dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&args.dir)?
        .keep();
    let origin = start_origin().await?;
    let (mut server, addr) =
        start_server(&args.bin, &run_dir, &["--max-active", &args.max_active]).await?;
    let pid = server.id().context("server pid")?;
    let client = Client::connect(&addr).await?;
    let uri = format!("http://{origin}/file");
    let mut stored = 0;

    // Rows are printed as they are measured, so a long run shows its results as it goes.
    println!("| measure | at | value | ratio |");
    println!("|---|---|---|---|");
    let fill_to = |target| (target, args.fill_concurrency);
    fill(&client, &uri, &mut stored, fill_to(args.window)).await?;
    let small = measure_both(&client, &uri, &mut stored, &args, pid, None).await?;
    fill(&client, &uri, &mut stored, fill_to(args.watch_at)).await?;
    let rss_before = rss_kib(pid)?;
    println!(
        "| server RSS | {stored} stored, no streams | {} MiB | 1.00 |",
        rss_before / 1024
    );
    let streams = open_unread_streams(&addr, args.streams).await?;
    tokio::time::sleep(STREAM_SETTLE).await;
    let rss_after = rss_kib(pid)?;
    println!(
        "| server RSS | {stored} stored, {} unread WatchDownloads | {} MiB | {:.2} |",
        args.streams,
        rss_after / 1024,
        rss_after as f64 / rss_before as f64
    );
    drop(streams);
    let target = args.stored - 2 * args.window;
    fill(&client, &uri, &mut stored, fill_to(target)).await?;
    measure_both(&client, &uri, &mut stored, &args, pid, Some(small)).await?;
    server.kill().await?;
    eprintln!("run directory kept: {}", run_dir.display());
    Ok(())
}

/// Creates downloads, `in_flight` at a time, until `target` are stored, waiting for every one
/// to finish after each [`FILL_STEP`].
async fn fill(
    client: &Client,
    uri: &str,
    stored: &mut usize,
    (target, in_flight): (usize, usize),
) -> anyhow::Result<()> {
    while *stored < target {
        let count = (target - *stored).min(FILL_STEP);
        create_concurrently(client, uri, *stored, count, in_flight).await?;
        *stored += count;
        settle(client).await?;
    }
    Ok(())
}

/// Measures `--window` creates one at a time, then `--window` with `--concurrency` in flight,
/// prints both rates and the server's CPU time per create (with their ratio to `base`, the same
/// measures at a smaller store) and returns them.
async fn measure_both(
    client: &Client,
    uri: &str,
    stored: &mut usize,
    args: &Args,
    pid: u32,
    base: Option<[f64; 4]>,
) -> anyhow::Result<[f64; 4]> {
    let mut measured = [0.0; 4];
    for (i, in_flight) in [1, args.concurrency].into_iter().enumerate() {
        let at = *stored;
        let cpu_before = cpu_seconds(pid)?;
        let start = Instant::now();
        create_concurrently(client, uri, at, args.window, in_flight).await?;
        let rate = args.window as f64 / start.elapsed().as_secs_f64();
        *stored += args.window;
        settle(client).await?;
        // The server's CPU time for the window's creates and the downloads they started: unlike
        // the rate, it barely moves when other processes share the cores.
        let cpu_us = (cpu_seconds(pid)? - cpu_before) * 1e6 / args.window as f64;
        measured[i] = rate;
        measured[2 + i] = cpu_us;
        let ratio = |i: usize, value: f64| base.map_or(1.0, |base| value / base[i]);
        println!(
            "| creates/s, {in_flight} in flight | {at} stored | {rate:.0} | {:.2} |",
            ratio(i, rate)
        );
        println!(
            "| server CPU per create and its download, {in_flight} in flight | {at} stored | {cpu_us:.0} µs | {:.2} |",
            ratio(2 + i, cpu_us)
        );
    }
    Ok(measured)
}

/// Creates downloads numbered `first..first + count`, keeping `in_flight` calls open on the
/// client's one connection, as `ghz -c N` does.
async fn create_concurrently(
    client: &Client,
    uri: &str,
    first: usize,
    count: usize,
    in_flight: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(first));
    let end = first + count;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..in_flight.min(count) {
        let (client, uri, next) = (client.clone(), uri.to_string(), Arc::clone(&next));
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    return anyhow::Ok(());
                }
                client.create(request(&uri, n)).await?;
            }
        });
    }
    while let Some(worker) = workers.join_next().await {
        worker??;
    }
    Ok(())
}

/// Waits until no download is running or queued.
async fn settle(client: &Client) -> anyhow::Result<()> {
    loop {
        let status = client.system_status().await?;
        if status.active_downloads == 0 && status.queued_downloads == 0 {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

fn request(uri: &str, n: usize) -> pb::CreateDownloadRequest {
    pb::CreateDownloadRequest {
        requested_uri: uri.into(),
        result_file: format!("d{n}"),
        ..Default::default()
    }
}

/// Opens WatchDownloads streams on a connection of their own and never reads them.
async fn open_unread_streams(
    addr: &str,
    count: usize,
) -> anyhow::Result<Vec<tonic::Streaming<pb::DownloadProgressEvent>>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .initial_stream_window_size(WATCHER_WINDOW)
        .initial_connection_window_size(WATCHER_WINDOW)
        .connect()
        .await?;
    let client = Client::from_channel(channel);
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        streams.push(client.watch_all(None).await?);
    }
    Ok(streams)
}
