//! The download peers: raw reqwest (this stack's ceiling: a GET streamed into a file and
//! fsynced, nothing else), curl and aria2c. Each returns the seconds it took; the external tools
//! do not fsync, so the caller times a `sync` after them separately.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, bail};
use tokio::process::Command;

/// Downloads `url` into `path` with reqwest, fsyncs the file, and returns (seconds until the
/// last byte was written, seconds until it was durable). The directory entry is left to the
/// caller, who fsyncs a directory once for all the files in it.
pub async fn reqwest_one(
    client: &reqwest::Client,
    url: &str,
    path: &Path,
) -> anyhow::Result<(f64, f64)> {
    let start = Instant::now();
    let mut response = client.get(url).send().await?.error_for_status()?;
    let mut file = std::fs::File::create(path)?;
    // Writes into the page cache take microseconds: blocking the worker for them is what a
    // straightforward program does, and cheaper than a thread hop per chunk.
    while let Some(chunk) = response.chunk().await? {
        file.write_all(&chunk)?;
    }
    let written = start.elapsed().as_secs_f64();
    tokio::task::spawn_blocking(move || file.sync_all()).await??;
    Ok((written, start.elapsed().as_secs_f64()))
}

/// Downloads each `(url, path)`, `parallel` at a time, fsyncing every file and then each
/// directory once; returns the seconds until all of it is durable.
pub async fn reqwest_many(
    client: &reqwest::Client,
    jobs: Vec<(String, PathBuf)>,
    parallel: usize,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut dirs: Vec<PathBuf> = jobs
        .iter()
        .filter_map(|(_, path)| path.parent().map(Path::to_path_buf))
        .collect();
    dirs.dedup();
    let mut running = tokio::task::JoinSet::new();
    for (url, path) in jobs {
        if running.len() == parallel {
            running.join_next().await.context("a download task")???;
        }
        let client = client.clone();
        running.spawn(async move { reqwest_one(&client, &url, &path).await });
    }
    while let Some(done) = running.join_next().await {
        done??;
    }
    for dir in dirs {
        tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all()).await??;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// A reqwest client as transferd's fetcher would use for plain HTTP: HTTP/1.1, no proxy.
pub fn reqwest_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().no_proxy().build()?)
}

/// `curl -sS --fail -o PATH URL`.
pub async fn curl_one(url: &str, path: &Path) -> anyhow::Result<f64> {
    let mut command = Command::new("curl");
    command.args(["-sS", "--fail", "-o"]).arg(path).arg(url);
    timed(command).await
}

/// `curl -Z --parallel-max N -K CONFIG`, the config naming every URL and output; `scratch` is a
/// directory for the config file.
pub async fn curl_many(
    jobs: &[(String, PathBuf)],
    parallel: usize,
    scratch: &Path,
) -> anyhow::Result<f64> {
    let config = scratch.join("curl.config");
    let mut text = String::new();
    for (url, path) in jobs {
        text += &format!("url = \"{url}\"\noutput = \"{}\"\n", path.display());
    }
    std::fs::write(&config, text)?;
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--fail", "-Z", "--parallel-max"])
        .arg(parallel.to_string())
        .arg("-K")
        .arg(&config);
    timed(command).await
}

/// `aria2c -x N -s N --min-split-size 1M -d DIR -o NAME URL`: one file over up to `connections`
/// connections (the smaller least piece lets even a smoke run's file be split).
pub async fn aria2c_one(url: &str, path: &Path, connections: usize) -> anyhow::Result<f64> {
    let (dir, name) = split(path)?;
    let n = connections.to_string();
    let mut command = Command::new("aria2c");
    command
        .args(["-q", "-x", &n, "-s", &n, "--min-split-size", "1M", "-d"])
        .arg(dir)
        .arg("-o")
        .arg(name)
        .arg(url);
    timed(command).await
}

/// `aria2c -j N -i LIST`, the list naming every URL and output; `scratch` is a directory for the
/// list file.
pub async fn aria2c_many(
    jobs: &[(String, PathBuf)],
    parallel: usize,
    scratch: &Path,
) -> anyhow::Result<f64> {
    let list = scratch.join("aria2c.list");
    let mut text = String::new();
    for (url, path) in jobs {
        let (dir, name) = split(path)?;
        text += &format!(
            "{url}\n  dir={}\n  out={}\n",
            dir.display(),
            Path::new(name).display()
        );
    }
    std::fs::write(&list, text)?;
    let mut command = Command::new("aria2c");
    command
        .args(["-q", "-j"])
        .arg(parallel.to_string())
        .arg("-i")
        .arg(&list);
    timed(command).await
}

/// `sync FILE...` (fsync of each) or, for a directory, `sync -f DIR` (syncfs of its filesystem,
/// one journal commit for everything written there).
pub async fn sync(path: &Path) -> anyhow::Result<f64> {
    let mut command = Command::new("sync");
    if path.is_dir() {
        command.arg("-f");
    }
    command.arg(path);
    timed(command).await
}

/// Runs `command` to completion and returns the seconds it took; fails with its stderr if it
/// did not succeed.
pub async fn timed(mut command: Command) -> anyhow::Result<f64> {
    let start = Instant::now();
    let output = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("cannot run {command:?}"))?;
    let seconds = start.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(seconds)
}

fn split(path: &Path) -> anyhow::Result<(&Path, &std::ffi::OsStr)> {
    Ok((
        path.parent().context("no parent directory")?,
        path.file_name().context("no file name")?,
    ))
}
