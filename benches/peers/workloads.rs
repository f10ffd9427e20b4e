//! The download workloads, each in interleaved rounds: a peer, then transferd, then the next
//! peer, then transferd again, so drift on a shared machine hits both sides alike. Round 0 is a
//! warm-up whose samples are dropped. Every run writes into a fresh directory (the disk is
//! mounted with discard, so nothing is emptied and reused in place), checks what arrived, removes
//! it and runs `sync`, so one run's writeback does not land in the next one's time.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use transferd::client::Client;
use transferd::pb::backgroundtransfer::v1 as pb;

use crate::clients;
pub use crate::control::control;
use crate::origin::{BULK, CAPPED, Origin};
use crate::report::Report;
use crate::server::Server;
use crate::{Sizes, clients::reqwest_client};

/// Connections aria2c opens for the uncapped bulk file, as in the first measurement.
const ARIA2C_BULK: usize = 8;

/// Connections aria2c opens against the capped origin: its maximum, the peer the segmented
/// downloads of issue 10 are to beat.
const ARIA2C_CAPPED: usize = 16;

/// Connections transferd may open against the capped origin (`--max-connections-per-download`
/// and `--max-connections-per-host`): twice aria2c's hard maximum of 16, since beating aria2c
/// behind a per-connection cap takes more connections than it can open; adaptive growth
/// decides how many are really used.
const TRANSFERD_CAPPED_CONNECTIONS: &str = "32";

/// What every workload needs.
pub struct Context {
    /// Where fresh run directories are made.
    work: PathBuf,
    /// Measured rounds (the warm-up comes on top).
    pub rounds: usize,
    /// How big each workload is.
    pub sizes: Sizes,
    /// The nginx origin.
    pub origin: Origin,
    /// Another transferd build to run in every workload (`--baseline`).
    pub baseline: Option<PathBuf>,
    next_dir: Cell<usize>,
    /// Run directories of many small files, removed when their workload ends (see
    /// [`Context::set_aside`]).
    set_aside: RefCell<Vec<PathBuf>>,
}

impl Context {
    /// A context whose run directories go under `out/work`.
    pub fn new(out: &Path, rounds: usize, sizes: Sizes, origin: Origin) -> anyhow::Result<Context> {
        let work = out.join("work");
        std::fs::create_dir_all(&work)?;
        Ok(Context {
            work,
            rounds,
            sizes,
            origin,
            baseline: None,
            next_dir: Cell::new(0),
            set_aside: RefCell::new(Vec::new()),
        })
    }

    /// A new, empty directory named after `label`.
    pub fn fresh(&self, label: &str) -> anyhow::Result<PathBuf> {
        let n = self.next_dir.replace(self.next_dir.get() + 1);
        let dir = self.work.join(format!("{n:04}-{label}"));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    /// Keeps a finished run's directory of many files until [`Context::remove_set_aside`]:
    /// ext4 allocates new inodes slowly right after thousands were freed (it skips recently
    /// deleted ones), so removing one run's files would slow the next run, whoever it is.
    pub fn set_aside(&self, dir: PathBuf) {
        self.set_aside.borrow_mut().push(dir);
    }

    /// Removes every directory set aside, then syncs.
    pub async fn remove_set_aside(&self) -> anyhow::Result<()> {
        let dirs = std::mem::take(&mut *self.set_aside.borrow_mut());
        for dir in dirs {
            done(dir).await?;
        }
        Ok(())
    }

    /// Round numbers with whether their samples count (round 0 is the warm-up).
    pub fn rounds(&self) -> impl Iterator<Item = bool> {
        (0..=self.rounds).map(|round| round > 0)
    }

    /// The transferd builds of one pairing after a peer: this one (`None`) and the
    /// `--baseline` build, if any, in an order that alternates from one pairing to the next.
    /// Whichever runs right after a peer runs slower (in bulk, 0.85x to 0.88x with the same
    /// two builds either way round), so a fixed order would show a difference that is not
    /// there.
    pub fn builds(&self, pairing: &mut usize) -> Vec<Option<&Path>> {
        let mut builds = vec![None];
        if let Some(bin) = &self.baseline {
            builds.push(Some(bin.as_path()));
            if *pairing % 2 == 1 {
                builds.reverse();
            }
        }
        *pairing += 1;
        builds
    }
}

/// Removes a finished run's directory and syncs, so the next run starts on a quiet disk.
pub async fn done(dir: PathBuf) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await??;
    sync_all().await
}

/// `sync`: everything written so far reaches the disk before the next run starts.
pub async fn sync_all() -> anyhow::Result<()> {
    clients::timed(tokio::process::Command::new("sync")).await?;
    Ok(())
}

/// Fails unless `path` holds exactly `bytes` bytes.
fn check_size(path: &Path, bytes: u64) -> anyhow::Result<()> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{} is missing", path.display()))?
        .len();
    if len != bytes {
        bail!("{} has {len} bytes, expected {bytes}", path.display());
    }
    Ok(())
}

/// A peer of the single-file workloads.
#[derive(Clone, Copy)]
enum Single {
    Reqwest,
    Curl,
    /// aria2c over this many connections (`-x N -s N`).
    Aria2c(usize),
}

impl Single {
    /// The row label, flags included.
    fn label(self) -> String {
        match self {
            Single::Reqwest => "reqwest".into(),
            Single::Curl => "curl".into(),
            Single::Aria2c(n) => format!("aria2c -x{n} -s{n}"),
        }
    }

    /// Downloads `url` to `path`: (seconds written, seconds durable).
    async fn run(
        self,
        client: &reqwest::Client,
        url: &str,
        path: &Path,
    ) -> anyhow::Result<(f64, f64)> {
        let written = match self {
            Single::Reqwest => return clients::reqwest_one(client, url, path).await,
            Single::Curl => clients::curl_one(url, path).await?,
            Single::Aria2c(n) => clients::aria2c_one(url, path, n).await?,
        };
        Ok((written, written + clients::sync(path).await?))
    }

    /// How the peer makes its file durable.
    fn durable(self) -> &'static str {
        match self {
            Single::Reqwest => "fsync",
            _ => "sync",
        }
    }
}

/// One large file from the uncapped origin: MB/s until it is complete (and, where named so,
/// durable).
pub async fn bulk(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let peers = [Single::Reqwest, Single::Curl, Single::Aria2c(ARIA2C_BULK)];
    let (url, bytes) = (ctx.origin.url(BULK), ctx.sizes.bulk_bytes);
    let sha256 = Some(ctx.origin.bulk_sha256.as_str());
    // transferd's defaults: segmenting is on, and must find that one stream already takes
    // everything a local origin gives.
    let ours = Ours { flags: &[], sha256 };
    single_file(ctx, report, "bulk", &url, bytes, &peers, ours).await
}

/// One file from the origin's `limit_rate` location: transferd's segments against aria2c's
/// 16 connections. (A single connection is not run: it gets the cap, 16 MiB/s, and would take
/// a minute per round on the full-size file.)
pub async fn capped(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let peers = [Single::Aria2c(ARIA2C_CAPPED)];
    let (url, bytes) = (ctx.origin.capped_url(CAPPED), ctx.sizes.capped_bytes);
    let n = TRANSFERD_CAPPED_CONNECTIONS;
    let flags = [
        "--max-connections-per-download",
        n,
        "--max-connections-per-host",
        n,
    ];
    let ours = Ours {
        flags: &flags,
        sha256: None,
    };
    single_file(ctx, report, "capped", &url, bytes, &peers, ours).await
}

/// Each round: every peer, each followed by transferd, on the file at `url` of `bytes` bytes;
/// with `sha256`, the round ends with transferd given it as `expected_sha256`, which shows
/// what hashing as it writes costs.
async fn single_file(
    ctx: &Context,
    report: &mut Report,
    workload: &str,
    url: &str,
    bytes: u64,
    peers: &[Single],
    ours: Ours<'_>,
) -> anyhow::Result<()> {
    let mb = bytes as f64 / 1e6;
    let client = reqwest_client()?;
    let mut pairing = 0;
    for keep in ctx.rounds() {
        let mut samples = Vec::new();
        for &peer in peers {
            let label = peer.label();
            let dir = ctx.fresh(&format!("{workload}-{}", label.replace(' ', "")))?;
            let path = dir.join("file");
            let (written, durable) = peer.run(&client, url, &path).await?;
            check_size(&path, bytes)?;
            done(dir).await?;
            samples.push((label.clone(), written));
            samples.push((format!("{label} + {}", peer.durable()), durable));
            for bin in ctx.builds(&mut pairing) {
                let seconds =
                    transferd_single(bin, ctx, workload, url, bytes, None, ours.flags).await?;
                let name = if bin.is_some() { BASELINE } else { "transferd" };
                samples.push((name.into(), seconds));
            }
        }
        if let Some(sha) = ours.sha256 {
            for bin in ctx.builds(&mut pairing) {
                let seconds =
                    transferd_single(bin, ctx, workload, url, bytes, Some(sha), ours.flags).await?;
                let name = if bin.is_some() {
                    HASHED_BASELINE
                } else {
                    HASHED
                };
                samples.push((name.into(), seconds));
            }
        }
        for (name, seconds) in samples.into_iter().filter(|_| keep) {
            report.record(workload, &name, "MB/s", mb / seconds);
        }
    }
    report.compare(workload, HASHED, "transferd");
    if ctx.baseline.is_some() {
        report.compare(workload, "transferd", BASELINE);
        if ours.sha256.is_some() {
            report.compare(workload, HASHED, HASHED_BASELINE);
        }
    }
    for &peer in peers {
        let label = peer.label();
        if matches!(peer, Single::Aria2c(_)) {
            // Only durable, to keep the table short: curl already shows what skipping the
            // sync is worth. aria2c's own times are in the JSON.
            report.compare(
                workload,
                "transferd",
                &format!("{label} + {}", peer.durable()),
            );
        } else {
            report.compare(workload, "transferd", &label);
            report.compare(
                workload,
                "transferd",
                &format!("{label} + {}", peer.durable()),
            );
        }
    }
    Ok(())
}

/// How transferd runs in a single-file workload.
#[derive(Clone, Copy)]
struct Ours<'a> {
    /// Its flags.
    flags: &'a [&'a str],
    /// With the file's SHA-256, each round ends with a run given it as `expected_sha256`.
    sha256: Option<&'a str>,
}

/// The row of transferd given the file's `expected_sha256`.
const HASHED: &str = "transferd + sha256";

/// The row of the `--baseline` build given the file's `expected_sha256`.
const HASHED_BASELINE: &str = "transferd + sha256 (baseline)";

/// transferd (the build at `bin`, if given) with `flags` on a fresh data directory: seconds
/// from CreateDownload to COMPLETED (which transferd publishes only once the file and its
/// directory entry are durable, and, with `sha256`, verified).
async fn transferd_single(
    bin: Option<&Path>,
    ctx: &Context,
    workload: &str,
    url: &str,
    bytes: u64,
    sha256: Option<&str>,
    flags: &[&str],
) -> anyhow::Result<f64> {
    let dir = ctx.fresh(&format!("{workload}-transferd"))?;
    let server = match bin {
        Some(bin) => Server::transferd_from(bin, &dir, flags).await?,
        None => Server::transferd(&dir, flags).await?,
    };
    let client = server.client().await?;
    let start = Instant::now();
    let created = client
        .create(pb::CreateDownloadRequest {
            expected_sha256: sha256.unwrap_or_default().into(),
            ..request(url, "file")
        })
        .await?;
    let mut progress = client.watch(&created.guid).await?;
    loop {
        let message = progress
            .message()
            .await?
            .context("WatchDownload ended early")?;
        if finished(&created.guid, message.status())? {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    server.stop().await?;
    check_size(&dir.join("downloads").join("file"), bytes)?;
    done(dir).await?;
    Ok(seconds)
}

/// A CreateDownload of `url` into `result_file`.
pub fn request(url: &str, result_file: &str) -> pb::CreateDownloadRequest {
    pb::CreateDownloadRequest {
        requested_uri: url.into(),
        result_file: result_file.into(),
        ..Default::default()
    }
}

/// True when `status` is COMPLETED; an error for any other terminal status.
fn finished(guid: &str, status: pb::BackgroundTransferStatus) -> anyhow::Result<bool> {
    use pb::BackgroundTransferStatus as S;
    match status {
        S::Completed => Ok(true),
        S::Error | S::Canceled => bail!("download {guid} ended {status:?}"),
        _ => Ok(false),
    }
}

/// Many small files, `small_parallel` at a time: seconds until all are complete (and, where
/// named so, durable).
pub async fn small(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    const W: &str = "small";
    let parallel = ctx.sizes.small_parallel;
    let client = reqwest_client()?;
    let mut pairing = 0;
    for keep in ctx.rounds() {
        let mut samples = Vec::new();
        for peer in ["reqwest", "curl -Z", "aria2c -j16"] {
            let dir = ctx.fresh(&format!("small-{}", peer.replace(' ', "")))?;
            let files = dir.join("files");
            std::fs::create_dir(&files)?;
            let jobs = small_jobs(ctx, &files);
            match peer {
                "reqwest" => {
                    let seconds = clients::reqwest_many(&client, jobs.clone(), parallel).await?;
                    samples.push(("reqwest + fsync".to_string(), seconds));
                }
                _ => {
                    let written = if peer == "curl -Z" {
                        clients::curl_many(&jobs, parallel, &dir).await?
                    } else {
                        clients::aria2c_many(&jobs, parallel, &dir).await?
                    };
                    let synced = written + clients::sync(&files).await?;
                    samples.push((peer.to_string(), written));
                    samples.push((format!("{peer} + syncfs"), synced));
                }
            }
            for (_, path) in &jobs {
                check_size(path, ctx.sizes.small_bytes as u64)?;
            }
            ctx.set_aside(dir);
            sync_all().await?;
            for bin in ctx.builds(&mut pairing) {
                let (created, completed, cpu) = transferd_small(ctx, bin).await?;
                let name = if bin.is_some() { BASELINE } else { "transferd" };
                samples.push((name.into(), completed));
                samples.push((format!("{name} creates"), created));
                samples.push((format!("{name} CPU"), cpu));
            }
        }
        for (name, seconds) in samples.into_iter().filter(|_| keep) {
            report.record(W, &name, "s", seconds);
        }
    }
    ctx.remove_set_aside().await?;
    for peer in [
        "reqwest + fsync",
        "curl -Z",
        "curl -Z + syncfs",
        "aria2c -j16 + syncfs",
        BASELINE,
    ] {
        report.compare(W, "transferd", peer);
    }
    for peer in ["reqwest + fsync", "aria2c -j16 + syncfs"] {
        report.compare(W, BASELINE, peer);
    }
    report.compare(W, "transferd CPU", &format!("{BASELINE} CPU"));
    Ok(())
}

/// The row of the `--baseline` build.
const BASELINE: &str = "transferd (baseline)";

/// Every small file's URL and where a peer writes it.
fn small_jobs(ctx: &Context, dir: &Path) -> Vec<(String, PathBuf)> {
    (0..ctx.sizes.small_count)
        .map(|i| (ctx.origin.small_url(i), dir.join(format!("{i}.bin"))))
        .collect()
}

/// transferd on a fresh data directory with `--max-active` at the workload's parallelism: the
/// files are created over gRPC, [`SMALL_CREATES_IN_FLIGHT`] creates in flight on one
/// connection, while a WatchDownloads stream counts COMPLETED. `bin` is another build to run instead of this one.
/// Returns (seconds until every create was answered, seconds until every download was
/// COMPLETED, the server's CPU seconds from its start to then).
async fn transferd_small(ctx: &Context, bin: Option<&Path>) -> anyhow::Result<(f64, f64, f64)> {
    let dir = ctx.fresh("small-transferd")?;
    let parallel = ctx.sizes.small_parallel;
    let flags = ["--max-active", &parallel.to_string()];
    let server = match bin {
        Some(bin) => Server::transferd_from(bin, &dir, &flags).await?,
        None => Server::transferd(&dir, &flags).await?,
    };
    let client = server.client().await?;
    let mut events = client.watch_all(None).await?;
    let urls: Vec<String> = (0..ctx.sizes.small_count)
        .map(|i| ctx.origin.small_url(i))
        .collect();
    let start = Instant::now();
    let creates = tokio::spawn(create_all(client.clone(), urls, SMALL_CREATES_IN_FLIGHT));
    let mut completed = HashSet::new();
    while completed.len() < ctx.sizes.small_count {
        let event = events.message().await?.context("WatchDownloads ended")?;
        let status = event
            .progress
            .context("an event without progress")?
            .status();
        if finished(&event.guid, status)? {
            completed.insert(event.guid);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let created = creates.await??.duration_since(start).as_secs_f64();
    let cpu = server.cpu_seconds()?;
    server.stop().await?;
    for i in 0..ctx.sizes.small_count {
        let path = dir.join("downloads").join(format!("{i}.bin"));
        check_size(&path, ctx.sizes.small_bytes as u64)?;
    }
    ctx.set_aside(dir);
    sync_all().await?;
    Ok((created, seconds, cpu))
}

/// Creates in flight in the small-files workload. The peers are handed the whole list at once
/// (curl -Z reads every URL from its config, aria2c -i its input file) and fetch 16 at a time;
/// transferd's client likewise hands over the list as fast as the server takes it, while
/// `--max-active` runs 16 at a time. Each create is still acknowledged only once it is
/// committed; concurrent creates share a commit (group commit).
const SMALL_CREATES_IN_FLIGHT: usize = 256;

/// Creates a download of each URL (result file `<index>.bin`), `parallel` calls in flight;
/// returns when the last was answered.
async fn create_all(client: Client, urls: Vec<String>, parallel: usize) -> anyhow::Result<Instant> {
    let mut running = tokio::task::JoinSet::new();
    for (i, url) in urls.into_iter().enumerate() {
        if running.len() == parallel {
            running.join_next().await.context("a create task")???;
        }
        let client = client.clone();
        running.spawn(async move { client.create(request(&url, &format!("{i}.bin"))).await });
    }
    while let Some(created) = running.join_next().await {
        created??;
    }
    Ok(Instant::now())
}
