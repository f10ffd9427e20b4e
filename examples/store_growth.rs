//! Load driver (not a test): does CreateDownload stay fast as the store grows, and does an
//! unread WatchDownloads stream cost the server memory that grows with the store?
//!
//! It starts the real `transferd` binary on a fresh data directory (a new directory per run, so
//! no earlier run's files or free-space state skew it) with `--max-active 1`, next to a tiny
//! local HTTP origin, and creates downloads that complete against that origin, so most stored
//! downloads are finished as on a long-lived server. It then reports:
//! - creates per second (one client, one create at a time) with `--window` creates measured at
//!   about 1k stored and again at `--stored`;
//! - the server's RSS before and after opening `--streams` WatchDownloads streams that are never
//!   read, over `--watch-at` stored downloads.
//!
//! Build the server first, then run, for example:
//! `cargo build --release && cargo run --release --example store_growth -- --stored 100000`

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use support::{rss_kib, start_origin, start_server};
use transferd::client::Client;
use transferd::pb::backgroundtransfer::v1 as pb;

/// Creates in flight while filling the store (the measured windows use one at a time).
const FILL_CONCURRENCY: usize = 16;

/// How often the driver polls while waiting for the server to settle.
const POLL: Duration = Duration::from_millis(50);

/// How long the server gets to settle after the streams open before RSS is read again.
const STREAM_SETTLE: Duration = Duration::from_secs(3);

/// HTTP/2 flow-control window of the watching client: the protocol default, so a stream the
/// application never reads also stops taking data at the transport, as a stuck client would.
const WATCHER_WINDOW: u32 = 65_535;

/// What one run measures.
struct Args {
    bin: PathBuf,
    dir: PathBuf,
    stored: usize,
    window: usize,
    watch_at: usize,
    streams: usize,
}

impl Args {
    fn parse() -> anyhow::Result<Args> {
        let mut args = Args {
            bin: PathBuf::from("target/release/transferd"),
            dir: PathBuf::from("target/store_growth"),
            stored: 100_000,
            window: 1000,
            watch_at: 10_000,
            streams: 200,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--bin" => args.bin = value.into(),
                "--dir" => args.dir = value.into(),
                "--stored" => args.stored = value.parse()?,
                "--window" => args.window = value.parse()?,
                "--watch-at" => args.watch_at = value.parse()?,
                "--streams" => args.streams = value.parse()?,
                _ => bail!(
                    "unknown flag {flag}; flags: --bin --dir --stored --window --watch-at --streams"
                ),
            }
        }
        if args.watch_at > args.stored || args.window > args.stored {
            bail!("--watch-at and --window must not exceed --stored");
        }
        Ok(args)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    std::fs::create_dir_all(&args.dir)?;
    let run_dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&args.dir)?;
    let origin = start_origin().await?;
    let (mut server, addr) =
        start_server(&args.bin, run_dir.path(), &["--max-active", "1"]).await?;
    let pid = server.id().context("server pid")?;
    let client = Client::connect(&addr).await?;
    let uri = format!("http://{origin}/file");
    let mut stored = 0;

    // Rows are printed as they are measured, so a long run shows its results as it goes.
    println!("| measure | at | value | ratio |");
    println!("|---|---|---|---|");
    fill(&client, &uri, &mut stored, args.window).await?;
    let at = stored;
    let small = measure_creates(&client, &uri, &mut stored, args.window).await?;
    println!("| creates/s | {at} stored | {small:.0} | 1.00 |");
    fill(&client, &uri, &mut stored, args.watch_at).await?;
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
    fill(&client, &uri, &mut stored, args.stored - args.window).await?;
    let at = stored;
    let large = measure_creates(&client, &uri, &mut stored, args.window).await?;
    println!(
        "| creates/s | {at} stored | {large:.0} | {:.2} |",
        large / small
    );
    server.kill().await?;
    Ok(())
}

/// Creates downloads until `target` are stored, then waits until every one has finished.
async fn fill(client: &Client, uri: &str, stored: &mut usize, target: usize) -> anyhow::Result<()> {
    while *stored < target {
        let batch = (target - *stored).min(FILL_CONCURRENCY);
        let mut creates = tokio::task::JoinSet::new();
        for i in 0..batch {
            let (client, request) = (client.clone(), request(uri, *stored + i));
            creates.spawn(async move { client.create(request).await });
        }
        while let Some(created) = creates.join_next().await {
            created??;
        }
        *stored += batch;
    }
    settle(client).await
}

/// Creates `count` downloads one at a time and returns creates per second.
async fn measure_creates(
    client: &Client,
    uri: &str,
    stored: &mut usize,
    count: usize,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    for i in 0..count {
        client.create(request(uri, *stored + i)).await?;
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    *stored += count;
    settle(client).await?;
    Ok(rate)
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
