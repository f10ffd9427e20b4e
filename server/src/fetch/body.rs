//! Streaming a response body into the partial file: opening it at the resume offset, buffered
//! writes, progress ticks, and the periodic fsync that lets the engine checkpoint what is
//! durably on disk.

use std::io::SeekFrom;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};
use tokio_util::sync::CancellationToken;

use super::{Failure, Observer, Outcome};
use crate::operation::{ErrorReason, TransferError};

/// Size of the write buffer between the socket and the partial file. Large writes keep the
/// disk and the blocking pool efficient; memory per active download is bounded by it.
pub const WRITE_BUFFER_SIZE: usize = 1024 * 1024;

/// How often the fetcher fsyncs the partial file and lets the engine checkpoint the byte
/// count. A crash loses at most this much progress (the download resumes from the checkpoint),
/// and the store is written a few times a minute per download, never per read.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(3);

/// How often byte progress is published while data flows: a few messages a second, as BITS
/// (500 ms) and Android (2 s) do, not one per socket read.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Why the body loop ended, before the final flush decides the outcome.
enum End {
    Done,
    Stopped,
    Failed(Failure),
}

/// Opens the partial file for writing at `offset`, dropping anything past it.
pub(super) async fn open_partial(path: &Path, offset: u64) -> Result<tokio::fs::File, Failure> {
    let open = async {
        // Resolved beneath the download directory, never through a symlink out of it.
        let owned = path.to_path_buf();
        let file = tokio::task::spawn_blocking(move || crate::paths::open_partial(&owned))
            .await
            .map_err(std::io::Error::other)??;
        let mut file = tokio::fs::File::from_std(file);
        // Drop anything past the resume point: unverified bytes, or a restart's old data.
        file.set_len(offset).await?;
        file.seek(SeekFrom::Start(offset)).await?;
        if offset == 0 {
            file.sync_all().await?;
        }
        Ok::<_, std::io::Error>(file)
    };
    open.await
        .map_err(|e| Failure::disk("opening the partial file failed", &e))
}

/// Writes the body into `file` (positioned at `offset`) until it ends, fails, or `stop` fires;
/// whatever arrived is flushed, fsynced and reported durable before returning.
pub(super) async fn stream_body<O: Observer>(
    mut response: reqwest::Response,
    file: tokio::fs::File,
    offset: u64,
    total: u64,
    observer: &O,
    stop: &CancellationToken,
) -> Result<Outcome, Failure> {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_SIZE, file);
    let mut received = offset;
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = tokio::time::Instant::now();
    let end = loop {
        let chunk = tokio::select! {
            chunk = response.chunk() => chunk,
            _ = ticker.tick() => {
                observer.tick();
                continue;
            }
            () = stop.cancelled() => break End::Stopped,
        };
        match chunk {
            Ok(Some(bytes)) => {
                if let Err(e) = out.write_all(&bytes).await {
                    break End::Failed(Failure::disk("writing the partial file failed", &e));
                }
                received += bytes.len() as u64;
                observer.progress(received);
                if last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
                    if let Err(e) = sync(&mut out).await {
                        break End::Failed(Failure::disk("syncing the partial file failed", &e));
                    }
                    observer.durable(received).await;
                    last_checkpoint = tokio::time::Instant::now();
                }
            }
            Ok(None) => break End::Done,
            Err(e) => {
                break End::Failed(Failure::network(
                    &format!("receiving the body failed after {received} bytes"),
                    &e,
                ));
            }
        }
    };
    // Whatever ended the attempt, keep what arrived: flush, fsync, checkpoint.
    if let Err(e) = sync(&mut out).await {
        return Err(Failure::disk("syncing the partial file failed", &e));
    }
    observer.progress(received);
    observer.durable(received).await;
    match end {
        End::Stopped => Ok(Outcome::Stopped),
        End::Failed(e) => Err(e),
        End::Done if total > 0 && received != total => Err(Failure::transient(TransferError {
            message: format!("the server closed the body after {received} of {total} bytes"),
            http_status: None,
            reason: ErrorReason::Network,
        })),
        End::Done => Ok(Outcome::Complete { bytes: received }),
    }
}

async fn sync(out: &mut BufWriter<tokio::fs::File>) -> std::io::Result<()> {
    out.flush().await?;
    out.get_ref().sync_data().await
}
