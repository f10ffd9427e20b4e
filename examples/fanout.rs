//! Load driver (not a test): how fast do many watchers of one download see each status change,
//! and what do they cost the server's memory?
//!
//! It starts the real `transferd` binary on a fresh data directory next to a tiny local origin,
//! reports the network down so one download waits as PAUSED_NO_NETWORK (its watch streams stay
//! open), and then, once with `--baseline` watchers (the peer) and once with `--watchers`:
//! opens that many WatchDownload streams over `--connections` connections, each read by a task
//! of its own that notes when it sees each status it waits for, and drives `--changes` status
//! changes by alternating PauseDownload (PAUSED_BY_APPLICATION) and ResumeDownload (back to
//! PAUSED_NO_NETWORK). A change's delay, per watcher, runs from the moment the control call was
//! sent (so it includes the call itself) to the moment that watcher read the new status; the
//! next change is sent once every watcher has seen the last. It prints p50/p99/max of the
//! delays over all watchers and changes, the control call's own p50, and the server's RSS.
//!
//! Then it runs the same `--watchers` phase against the peer (`fanout/peer.rs`): a plain tonic
//! server that streams one status from a `watch` channel and nothing else, started as a
//! process of its own, and prints transferd's ratios to it.
//!
//! Build the server first, then run:
//! `cargo build --release && cargo run --release --example fanout -- --dir /tmp/fanout-runs`

#[path = "fanout/peer.rs"]
mod peer;
mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use pb::BackgroundTransferStatus as S;
use support::{rss_kib, start_origin, start_server};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use transferd::client::Client;
use transferd::pb::backgroundtransfer::v1 as pb;

/// How long the server gets to settle after streams open or close before RSS is read.
const SETTLE: Duration = Duration::from_secs(3);

/// How long every watcher gets to see one change before the run is declared broken.
const CHANGE_DEADLINE: Duration = Duration::from_secs(60);

/// Pause between changes, so one change's persist and delivery tail never overlap the next.
const CHANGE_GAP: Duration = Duration::from_millis(50);

/// Streams opened at once while the watchers connect: enough to open 10k in seconds, few enough
/// to stay inside the client channel's request buffer.
const OPEN_CONCURRENCY: usize = 256;

/// What one run measures.
#[derive(clap::Parser)]
#[command(about = "Fan-out: how soon thousands of watchers of one download see each status change")]
struct Args {
    /// The transferd binary to run.
    #[arg(long, default_value = "target/release/transferd")]
    bin: PathBuf,
    /// Where each run gets a fresh directory.
    #[arg(long, default_value = "target/fanout")]
    dir: PathBuf,
    /// Watchers of the one download.
    #[arg(long, default_value = "10000")]
    watchers: usize,
    /// Watchers of the baseline run.
    #[arg(long, default_value = "10")]
    baseline: usize,
    /// Connections the watchers are spread over.
    #[arg(long, default_value = "10")]
    connections: usize,
    /// Status changes to time (even: pauses and resumes alternate).
    #[arg(long, default_value = "20")]
    changes: usize,
}

impl Args {
    /// The command line, checked.
    fn read() -> anyhow::Result<Args> {
        let args = <Args as clap::Parser>::parse();
        if args.connections == 0 || args.watchers == 0 || args.baseline == 0 || args.changes == 0 {
            bail!("--watchers, --baseline, --connections and --changes must be at least 1");
        }
        // Each phase must leave the download as it found it (PAUSED_NO_NETWORK).
        if args.changes % 2 != 0 {
            bail!("--changes must be even: pauses and resumes alternate");
        }
        Ok(args)
    }
}

/// What one phase measured.
struct Phase {
    /// Every watcher's delay for every change, sorted.
    delays: Vec<Duration>,
    /// The control calls' round trips, sorted.
    calls: Vec<Duration>,
    /// Each change's slowest delay (its last watcher's), in the order of the changes: whether
    /// a high p99 comes from every change or from a few slow ones, and which.
    last: Vec<Duration>,
    /// Server RSS with the watchers open, in KiB.
    rss: u64,
    /// Server CPU time (user + system) spent while the changes were driven and delivered.
    cpu: Duration,
    /// This driver's own CPU time over the same span (its watchers decode every message).
    client_cpu: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some(peer::SERVE_FLAG) {
        return peer::serve().await;
    }
    let args = Args::read()?;
    std::fs::create_dir_all(&args.dir)?;
    let run_dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&args.dir)?;
    let origin = start_origin().await?;
    let (mut server, addr) = start_server(&args.bin, run_dir.path(), &[]).await?;
    let pid = server.id().context("server pid")?;
    let control = Client::connect(&addr).await?;
    control.set_network_conditions(Some(false), None).await?;
    let op = control
        .create(pb::CreateDownloadRequest {
            requested_uri: format!("http://{origin}/file"),
            result_file: "fanout".into(),
            ..Default::default()
        })
        .await?;
    tokio::time::sleep(SETTLE).await;
    let idle = rss_kib(pid)?;

    let clients = connections(&addr, args.connections).await?;
    let base = phase(&args, &control, &clients, &op.guid, args.baseline, pid).await?;
    let many = phase(&args, &control, &clients, &op.guid, args.watchers, pid).await?;
    if let Some(exit) = server.try_wait()? {
        bail!("the server exited during the run: {exit}");
    }
    server.kill().await?;
    drop(clients);

    let (mut peer, peer_addr) = start_peer().await?;
    let peer_pid = peer.id().context("peer pid")?;
    let peer_control = Client::connect(&peer_addr).await?;
    let peer_clients = connections(&peer_addr, args.connections).await?;
    let plain = phase(
        &args,
        &peer_control,
        &peer_clients,
        peer::GUID,
        args.watchers,
        peer_pid,
    )
    .await?;
    peer.kill().await?;

    println!(
        "| watchers | changes | delay p50 | delay p99 | delay max | control call p50 | CPU per change, server / driver | server RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| none (one waiting download) | - | - | - | - | - | - | {} MiB |",
        idle / 1024
    );
    let rows = [
        (args.baseline.to_string(), &base),
        (args.watchers.to_string(), &many),
        (format!("{}, plain tonic peer", args.watchers), &plain),
    ];
    for (n, p) in &rows {
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} / {} | {} MiB |",
            args.changes,
            ms(pct(&p.delays, 0.50)),
            ms(pct(&p.delays, 0.99)),
            ms(*p.delays.last().context("no delays")?),
            ms(pct(&p.calls, 0.50)),
            ms(p.cpu / args.changes as u32),
            ms(p.client_cpu / args.changes as u32),
            p.rss / 1024
        );
    }
    let ratio = |q| pct(&many.delays, q).as_secs_f64() / pct(&base.delays, q).as_secs_f64();
    println!(
        "| ratio {} / {} | - | {:.1} | {:.1} | - | {:.1} | - | {:.2} |",
        args.watchers,
        args.baseline,
        ratio(0.50),
        ratio(0.99),
        pct(&many.calls, 0.5).as_secs_f64() / pct(&base.calls, 0.5).as_secs_f64(),
        many.rss as f64 / idle as f64
    );
    let to_peer = |q| pct(&many.delays, q).as_secs_f64() / pct(&plain.delays, q).as_secs_f64();
    println!(
        "| ratio transferd / peer, {} watchers | - | {:.2} | {:.2} | - | {:.2} | {:.2} / {:.2} | {:.2} |",
        args.watchers,
        to_peer(0.50),
        to_peer(0.99),
        pct(&many.calls, 0.5).as_secs_f64() / pct(&plain.calls, 0.5).as_secs_f64(),
        many.cpu.as_secs_f64() / plain.cpu.as_secs_f64(),
        many.client_cpu.as_secs_f64() / plain.client_cpu.as_secs_f64(),
        many.rss as f64 / plain.rss as f64
    );
    println!();
    for (n, p) in &rows {
        let last: Vec<String> = p.last.iter().map(|d| ms(*d)).collect();
        println!(
            "last watcher of each change in order, {n} watchers: {}",
            last.join(", ")
        );
    }
    Ok(())
}

/// Starts the peer as a process of its own (this program with [`peer::SERVE_FLAG`]), so its CPU
/// time and memory are measured apart from the driver's, and returns it with its address.
async fn start_peer() -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg(peer::SERVE_FLAG)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the peer")?;
    let addr = support::listening_addr(&mut child).await?;
    Ok((child, addr))
}

/// `count` clients, each on a connection of its own.
async fn connections(addr: &str, count: usize) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        clients.push(Client::from_channel(channel));
    }
    Ok(clients)
}

/// The status change `k` leads to: pauses on even changes, resumes on odd ones.
fn target(k: usize) -> S {
    if k % 2 == 0 {
        S::PausedByApplication
    } else {
        S::PausedNoNetwork
    }
}

/// Opens `count` watchers of `guid` spread over `clients`, drives the changes, and measures.
async fn phase(
    args: &Args,
    control: &Client,
    clients: &[Client],
    guid: &str,
    count: usize,
    pid: u32,
) -> anyhow::Result<Phase> {
    let seen: Arc<Vec<AtomicUsize>> = Arc::new((0..args.changes).map(|_| 0.into()).collect());
    let all_seen = Arc::new(Notify::new());
    let streams: Vec<_> = futures_util::stream::iter(0..count)
        .map(|i| clients[i % clients.len()].watch(guid))
        .buffered(OPEN_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let mut readers = tokio::task::JoinSet::new();
    for stream in streams {
        let (seen, all_seen, changes) = (seen.clone(), all_seen.clone(), args.changes);
        readers.spawn(read(stream, changes, count, seen, all_seen));
    }
    tokio::time::sleep(SETTLE).await;
    let rss = rss_kib(pid)?;

    let cpu_before = support::cpu_seconds(pid)?;
    let client_before = support::cpu_seconds(std::process::id())?;
    let mut sent = Vec::with_capacity(args.changes);
    let mut calls = Vec::with_capacity(args.changes);
    for k in 0..args.changes {
        let notified = all_seen.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let start = Instant::now();
        let answer = if target(k) == S::PausedByApplication {
            control.pause(guid).await?
        } else {
            control.resume(guid).await?
        };
        calls.push(start.elapsed());
        sent.push(start);
        let status = answer.progress.map(|p| p.status());
        if status != Some(target(k)) {
            bail!("change {k} answered {status:?}, not {:?}", target(k));
        }
        while seen[k].load(Ordering::Acquire) < count {
            tokio::time::timeout(CHANGE_DEADLINE, notified.as_mut())
                .await
                .with_context(|| {
                    format!(
                        "only {} of {count} watchers saw change {k}",
                        seen[k].load(Ordering::Acquire)
                    )
                })?;
            notified.set(all_seen.notified());
            notified.as_mut().enable();
        }
        tokio::time::sleep(CHANGE_GAP).await;
    }
    let cpu = Duration::from_secs_f64(support::cpu_seconds(pid)? - cpu_before);
    let client_cpu =
        Duration::from_secs_f64(support::cpu_seconds(std::process::id())? - client_before);
    let mut delays = Vec::with_capacity(count * args.changes);
    let mut last = vec![Duration::ZERO; args.changes];
    let mut streams = Vec::with_capacity(count);
    while let Some(reader) = readers.join_next().await {
        let (times, stream) = reader??;
        streams.push(stream);
        for ((t, s), last) in times.iter().zip(&sent).zip(&mut last) {
            delays.push(*t - *s);
            *last = (*last).max(*t - *s);
        }
    }
    delays.sort();
    calls.sort();
    drop(streams);
    // Give the server time to let go of the streams.
    tokio::time::sleep(SETTLE).await;
    Ok(Phase {
        delays,
        calls,
        last,
        rss,
        cpu,
        client_cpu,
    })
}

/// Reads one watch stream until it has seen `changes` status changes, noting when it saw each
/// and counting itself in `seen`; the last of `count` watchers to see a change wakes the driver.
/// Returns the stream still open: a watcher that hung up as soon as it saw the last change
/// would have the server tearing down thousands of streams while it still delivers that change
/// to the others, which made the last change of every run the slowest by 40 to 60 ms.
async fn read(
    mut stream: tonic::Streaming<pb::BackgroundDownloadProgress>,
    changes: usize,
    count: usize,
    seen: Arc<Vec<AtomicUsize>>,
    all_seen: Arc<Notify>,
) -> anyhow::Result<(
    Vec<Instant>,
    tonic::Streaming<pb::BackgroundDownloadProgress>,
)> {
    let mut times = Vec::with_capacity(changes);
    while times.len() < changes {
        let message = stream
            .message()
            .await?
            .context("the watch stream ended early")?;
        let k = times.len();
        if message.status() == target(k) {
            times.push(Instant::now());
            if seen[k].fetch_add(1, Ordering::AcqRel) + 1 == count {
                all_seen.notify_one();
            }
        }
    }
    Ok((times, stream))
}

/// The `q` quantile of sorted `values`.
fn pct(values: &[Duration], q: f64) -> Duration {
    let i = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    values[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
