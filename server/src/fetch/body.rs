//! Streaming a response body into the partial file: opening it at the resume offset, buffered
//! writes, progress ticks, the bandwidth limit, the stall and low-speed rules, and the periodic
//! fsync that lets the engine checkpoint what is durably on disk.
//!
//! The stall and low-speed rules judge the origin, so they count only time in which the origin
//! could have sent: time spent waiting on transferd's own bandwidth limit (see [`super::throttle`])
//! is left out of both. A download limited below `--min-speed` therefore never fails for it,
//! while an origin that stops sending is still caught once the limit would let bytes through.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::direct::WriteMode;
use super::spans::Span;
use super::throttle::Lane;
use super::writer::PartialWriter;
use super::{Failure, Observer};
use crate::operation::{ErrorReason, TransferError};
use crate::sha256::Hasher;

/// Size of the write buffers between the socket and the partial file. Large writes keep the
/// disk and the blocking pool efficient; a connection holds at most two (one being written
/// while the next fills, see `writer.rs`).
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
    /// The segment being written reached its end, which may have moved closer since the
    /// request (its tail was split off to another connection).
    Reached,
    Stopped,
    Failed(Failure),
}

/// How a body that was written in full, or stopped, ended.
#[derive(Debug)]
pub(super) enum Streamed {
    /// The whole entity is in the partial file, flushed and fsynced; or, for a segment, all of
    /// its part (up to its end, which may lie short of the entity's).
    Complete(u64),
    /// A 206 ended where its range said, short of the known entity length: the file holds
    /// this many bytes (durably, unless [`Expect::sync_at_end`] said not to sync), and the
    /// rest is still to be asked for.
    RangeEnded(u64),
    /// `stop` fired; what arrived is durable.
    Stopped,
}

/// What a body must be, and the limits it is held to.
#[derive(Clone, Copy, Debug)]
pub(super) struct Expect<'a> {
    /// Where it is written from.
    pub offset: u64,
    /// Where it ends in the file, if the response said (Content-Length of a 200, Content-Range
    /// of a 206).
    pub end: Option<u64>,
    /// The entity length, 0 if unknown.
    pub total: u64,
    /// Most bytes the file may have.
    pub max_bytes: u64,
    /// The window the speed is averaged over, and the longest silence allowed.
    pub window: Duration,
    /// Lowest average speed over a window, bytes/s; 0 for none.
    pub min_speed: u64,
    /// How the partial file is written: whole blocks directly, or all through the page cache.
    pub write: WriteMode,
    /// The segment this body fills, when the download is fetched over several connections:
    /// every write claims its bytes there first, and the body ends at the segment's end.
    pub span: Option<&'a Span>,
    /// Whether a range that ends where it said, short of the entity, is made durable and
    /// reported so. A segment's connection asks for its span 4 MiB at a time, and checkpoints
    /// only every [`CHECKPOINT_INTERVAL`] and at its span's end: with this false, such a range
    /// is only written, and its bytes become durable with the next fsync of the file.
    pub sync_at_end: bool,
}

/// The rules that judge the origin: the low-speed rule (bytes received in each window,
/// measured when the window is over) and the stall rule (no silence as long as a window).
struct Speed {
    window: Duration,
    min_speed: u64,
    since: tokio::time::Instant,
    at_start: u64,
    /// Time in this window spent waiting on our own bandwidth limit, not on the origin.
    excused: Duration,
    /// Since when the origin has been asked for bytes without sending any.
    silent_since: tokio::time::Instant,
    /// Where the body has got to.
    received: u64,
}

impl Speed {
    fn new(expect: &Expect<'_>) -> Speed {
        Speed {
            window: expect.window,
            min_speed: expect.min_speed,
            since: tokio::time::Instant::now(),
            at_start: expect.offset,
            excused: Duration::ZERO,
            silent_since: tokio::time::Instant::now(),
            received: expect.offset,
        }
    }

    /// Leaves `waited` (time the bandwidth limit held reads back) out of the current window
    /// and out of the current silence.
    fn excuse(&mut self, waited: Duration) {
        self.excused += waited;
        self.silent_since += waited;
    }

    /// The origin just sent bytes: the body has got to `received`.
    fn heard(&mut self, received: u64) {
        self.silent_since = tokio::time::Instant::now();
        self.received = received;
    }

    /// When the current silence becomes a stall.
    fn stalls_at(&self) -> tokio::time::Instant {
        self.silent_since + self.window
    }

    /// The failure of a body whose origin sent nothing for a whole window while it was asked
    /// to. The fetcher times bodies itself rather than through the HTTP client's read timeout,
    /// which would also count the time the bandwidth limit holds reads back.
    fn stalled(&self) -> Failure {
        let received = self.received;
        Failure::transient(TransferError {
            message: format!(
                "receiving the body failed after {received} bytes (timed out: the server sent \
                 nothing for {:.1}s; see --stall-timeout)",
                self.window.as_secs_f64()
            ),
            http_status: None,
            reason: ErrorReason::Network,
        })
    }

    /// A failure if the window that just ended brought too few bytes; starts the next window.
    fn check(&mut self, now: tokio::time::Instant) -> Option<Failure> {
        let received = self.received;
        let elapsed = now.saturating_duration_since(self.since);
        if self.min_speed == 0 || elapsed < self.window {
            return None;
        }
        let got = received - self.at_start;
        let judged = elapsed.saturating_sub(std::mem::take(&mut self.excused));
        let needed = u128::from(self.min_speed) * judged.as_millis() / 1000;
        self.since = now;
        self.at_start = received;
        (u128::from(got) < needed).then(|| {
            Failure::transient(TransferError {
                message: format!(
                    "the server sent only {got} bytes in {:.1}s, slower than --min-speed {} bytes/s",
                    elapsed.as_secs_f64(),
                    self.min_speed
                ),
                http_status: None,
                reason: ErrorReason::Network,
            })
        })
    }
}

/// Opens the partial file for writing, keeping everything in it: a segment writes its own
/// part (at its offset) while others write theirs.
pub(super) async fn open_segment(path: &Path) -> Result<Partial, Failure> {
    open_segment_file(path).await.map(Partial::Open)
}

/// Makes everything written to the partial file at `path` durable (`fdatasync`): the ranges a
/// segment's connection wrote without syncing.
pub(super) async fn sync_segment(path: &Path) -> Result<(), Failure> {
    let file = open_segment_file(path).await?;
    tokio::task::spawn_blocking(move || file.sync_data())
        .await
        .map_err(std::io::Error::other)
        .and_then(|synced| synced)
        .map_err(|e| Failure::disk("syncing the partial file failed", &e))
}

/// The partial file at `path`, opened to write a segment into.
async fn open_segment_file(path: &Path) -> Result<std::fs::File, Failure> {
    let path = path.to_path_buf();
    let open = move || crate::paths::open_partial(&path);
    tokio::task::spawn_blocking(open)
        .await
        .map_err(std::io::Error::other)
        .and_then(|opened| opened)
        .map_err(|e| Failure::disk(OPEN_FAILED, &e))
}

/// Where a body's bytes go: the partial file, open already, or opened by the writer in its
/// first trip to a blocking thread, together with the first bytes and their fsync. A small
/// download then opens, writes and syncs its file in one trip instead of two.
pub(super) enum Partial {
    Open(std::fs::File),
    /// Opened for writing from `offset`, dropping anything past it (see [`open_at`]).
    ToOpen {
        path: PathBuf,
        offset: u64,
    },
}

/// Opens the partial file for writing from `offset`, dropping anything past it. With
/// `hash_prefix`, also returns the SHA-256 state of its first `offset` bytes, read once (the
/// fallback of a resume without a usable saved state). With `defer` and no prefix to hash, the
/// file is left for the writer to open with its first bytes.
pub(super) async fn open_partial(
    path: &Path,
    offset: u64,
    hash_prefix: bool,
    defer: bool,
) -> Result<(Partial, Option<Hasher>), Failure> {
    let path = path.to_path_buf();
    if defer && !hash_prefix {
        return Ok((Partial::ToOpen { path, offset }, None));
    }
    let open = move || {
        let mut file = open_at(&path, offset)?;
        let prefix = if hash_prefix {
            let mut hasher = Hasher::new();
            file.seek(SeekFrom::Start(0))?;
            hasher.update_from(&mut file, offset)?;
            Some(hasher)
        } else {
            None
        };
        Ok::<_, std::io::Error>((Partial::Open(file), prefix))
    };
    tokio::task::spawn_blocking(open)
        .await
        .map_err(std::io::Error::other)
        .and_then(|opened| opened)
        .map_err(|e| Failure::disk(OPEN_FAILED, &e))
}

/// What a failure to open the partial file says.
pub(super) const OPEN_FAILED: &str = "opening the partial file failed";

/// Opens the partial file at `path` for writing from `offset` (resolved beneath the download
/// directory, never through a symlink out of it) and drops anything past it: unverified bytes,
/// or a restart's old data. Blocks.
pub(super) fn open_at(path: &Path, offset: u64) -> std::io::Result<std::fs::File> {
    let file = crate::paths::open_partial(path)?;
    let len = file.metadata()?.len();
    if len != offset {
        file.set_len(offset)?;
    }
    // Only a truncation to zero is made durable at once; a new, empty file (every small
    // download) has nothing to drop, and its fsync would cost a journal commit each.
    if offset == 0 && len > 0 {
        file.sync_all()?;
    }
    Ok(file)
}

/// Writes the body into `file` (positioned at `expect.offset`) until it ends, fails, or `stop`
/// fires; whatever arrived is flushed, fsynced and reported durable before returning. A body
/// longer than it said, or than `max_bytes`, is cut off there. Reads wait for `lane`, the
/// download's share of the bandwidth limits. With a `hasher` (the state of the file's first
/// `expect.offset` bytes), every byte written is hashed in order, and each durable report
/// carries the state of exactly the bytes it reports.
pub(super) async fn stream_body<O: Observer>(
    mut response: reqwest::Response,
    file: Partial,
    hasher: &mut Option<Hasher>,
    expect: Expect<'_>,
    lane: &Lane,
    observer: &O,
    stop: &CancellationToken,
) -> Result<Streamed, Failure> {
    let expected = expect
        .end
        .unwrap_or(expect.total)
        .saturating_sub(expect.offset);
    let mut out = PartialWriter::new(file, expect.offset, expected, hasher.take(), expect.write);
    let streamed = stream_into(&mut response, &mut out, expect, lane, observer, stop).await;
    *hasher = out.into_hasher();
    streamed
}

/// [`stream_body`]'s loop, writing (and hashing) through `out`.
async fn stream_into<O: Observer>(
    response: &mut reqwest::Response,
    out: &mut PartialWriter,
    expect: Expect<'_>,
    lane: &Lane,
    observer: &O,
    stop: &CancellationToken,
) -> Result<Streamed, Failure> {
    let mut received = expect.offset;
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = tokio::time::Instant::now();
    let mut speed = Speed::new(&expect);
    let end = loop {
        let read = next_read(response, lane, &mut ticker, &mut speed, observer, stop);
        let chunk = match read.await {
            Ok(chunk) => chunk,
            Err(end) => break end,
        };
        match chunk {
            Ok(Some(mut bytes)) => {
                lane.took(bytes.len() as u64);
                let (overrun, reached) = fit(&mut bytes, received, &expect);
                if let Err(e) = out.write(&bytes).await {
                    let what = out.failed_at("writing the partial file failed");
                    break End::Failed(Failure::disk(what, &e));
                }
                received += bytes.len() as u64;
                observer.progress(received);
                if reached {
                    break End::Reached;
                }
                if overrun > 0 {
                    break End::Failed(overrun_failure(&expect, received));
                }
                speed.heard(received);
                if let Some(failure) = speed.check(tokio::time::Instant::now()) {
                    break End::Failed(failure);
                }
                if last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
                    if let Err(e) = out.sync().await {
                        let what = out.failed_at("syncing the partial file failed");
                        break End::Failed(Failure::disk(what, &e));
                    }
                    observer.durable(received, out.hasher()).await;
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
    // A write that failed ends the attempt with its own error (a full disk says so): the
    // file lacks bytes that arrived, so nothing more is made durable or reported.
    if out.failed() {
        if let End::Failed(failure) = end {
            return Err(failure);
        }
    }
    if matches!(end, End::Done) && !expect.sync_at_end {
        if let Ok(Streamed::RangeEnded(at)) = finished(&expect, received) {
            // Written, not synced: the connection asks for its next range at once.
            if let Err(e) = out.flush().await {
                let what = out.failed_at("writing the partial file failed");
                return Err(Failure::disk(what, &e));
            }
            observer.progress(received);
            return Ok(Streamed::RangeEnded(at));
        }
    }
    // Whatever else ended the attempt, keep what arrived: flush, fsync, checkpoint.
    if let Err(e) = out.sync().await {
        let what = out.failed_at("syncing the partial file failed");
        return Err(Failure::disk(what, &e));
    }
    observer.progress(received);
    debug_assert!(out.hasher().is_none_or(|h| h.len() == received));
    observer.durable(received, out.hasher()).await;
    match end {
        End::Stopped => Ok(Streamed::Stopped),
        End::Failed(e) => Err(e),
        End::Done => finished(&expect, received),
        End::Reached => Ok(Streamed::Complete(received)),
    }
}

/// Cuts `bytes`, arriving after `received`, to what may be written: never a byte past the
/// announced end or the size limit (returns how many bytes overran them), and never past where
/// the span of a segmented download's connection now ends (returns whether it got there).
fn fit(bytes: &mut bytes::Bytes, received: u64, expect: &Expect<'_>) -> (u64, bool) {
    let limit = expect.end.unwrap_or(u64::MAX).min(expect.max_bytes);
    let overrun = (received + bytes.len() as u64).saturating_sub(limit);
    if overrun > 0 {
        bytes.truncate(bytes.len() - overrun as usize);
    }
    let reached = expect.span.is_some_and(|span| {
        let allowed = span.claim(received, bytes.len() as u64);
        let cut = allowed < bytes.len() as u64;
        bytes.truncate(allowed as usize);
        cut
    });
    (overrun, reached)
}

/// The next read of the body, once the bandwidth limit allows it, publishing progress on every
/// tick meanwhile; or why the body ends: `stop` fired, the origin stalled or is too slow.
/// Waiting for the limit leaves unread bytes in the socket, so TCP flow control slows the
/// origin down to the limit; that time is excused from the origin's judgement.
async fn next_read<O: Observer>(
    response: &mut reqwest::Response,
    lane: &Lane,
    ticker: &mut tokio::time::Interval,
    speed: &mut Speed,
    observer: &O,
    stop: &CancellationToken,
) -> Result<reqwest::Result<Option<bytes::Bytes>>, End> {
    loop {
        if let Some(wait) = lane.wait() {
            let began = tokio::time::Instant::now();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = ticker.tick() => observer.tick(),
                () = stop.cancelled() => return Err(End::Stopped),
            }
            speed.excuse(began.elapsed());
            continue;
        }
        tokio::select! {
            chunk = response.chunk() => return Ok(chunk),
            () = tokio::time::sleep_until(speed.stalls_at()) => {
                return Err(End::Failed(speed.stalled()));
            }
            _ = ticker.tick() => {
                observer.tick();
                if let Some(failure) = speed.check(tokio::time::Instant::now()) {
                    return Err(End::Failed(failure));
                }
            }
            () = stop.cancelled() => return Err(End::Stopped),
        }
    }
}

/// The failure of a body that ran past its end or past `max_bytes`.
fn overrun_failure(expect: &Expect<'_>, received: u64) -> Failure {
    if expect.end.is_none_or(|end| end > expect.max_bytes) {
        return Failure::too_large(
            format!("the body grew past {received} bytes"),
            expect.max_bytes,
        );
    }
    Failure::transient(TransferError {
        message: format!(
            "the server sent more than the {received} bytes it announced; the excess was dropped"
        ),
        http_status: None,
        reason: ErrorReason::Network,
    })
}

/// What a body that ended at `received` means: complete only at exactly the known entity
/// length (or, when that is unknown, where the body ends); a range that ended short of it is
/// continued; anything else was cut short.
fn finished(expect: &Expect<'_>, received: u64) -> Result<Streamed, Failure> {
    let total = expect.total;
    if total == 0 || received == total {
        return Ok(Streamed::Complete(received));
    }
    if expect.end == Some(received) && received < total {
        return Ok(Streamed::RangeEnded(received));
    }
    Err(Failure::transient(TransferError {
        message: format!("the server closed the body after {received} of {total} bytes"),
        http_status: None,
        reason: ErrorReason::Network,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect(end: Option<u64>, total: u64) -> Expect<'static> {
        Expect {
            offset: 0,
            end,
            total,
            max_bytes: u64::MAX,
            window: Duration::from_secs(1),
            min_speed: 100,
            span: None,
            sync_at_end: true,
            write: WriteMode::Direct,
        }
    }

    #[test]
    fn only_the_known_length_completes_a_body() {
        assert!(matches!(
            finished(&expect(Some(1000), 1000), 1000),
            Ok(Streamed::Complete(1000))
        ));
        assert!(matches!(
            finished(&expect(None, 0), 77),
            Ok(Streamed::Complete(77))
        ));
        // A range that ended where it said, short of the entity: continue it.
        assert!(matches!(
            finished(&expect(Some(600), 1000), 600),
            Ok(Streamed::RangeEnded(600))
        ));
        // Cut short of its own end: a failed attempt.
        let cut = finished(&expect(Some(1000), 1000), 400).unwrap_err();
        assert!(cut.transient);
        assert_eq!(
            cut.error.message,
            "the server closed the body after 400 of 1000 bytes"
        );
    }

    #[test]
    fn time_held_back_by_the_bandwidth_limit_is_not_judged() {
        let mut speed = Speed::new(&expect(None, 0));
        speed.excuse(Duration::from_millis(950));
        let end = speed.since + Duration::from_secs(1);
        // 5 bytes in the 50 ms the origin was asked for any: 100 B/s, fast enough.
        assert!(got(&mut speed, 5, end).is_none());
        // The excuse covered that window only.
        let next = end + Duration::from_secs(1);
        assert!(got(&mut speed, 10, next).is_some());
    }

    #[test]
    fn the_speed_rule_judges_whole_windows() {
        let mut speed = Speed::new(&expect(None, 0));
        let at = |ms| speed.since + Duration::from_millis(ms);
        let (t900, t1000, t2000) = (at(900), at(1000), at(2000));
        assert!(
            got(&mut speed, 0, t900).is_none(),
            "the window is not over yet"
        );
        assert!(
            got(&mut speed, 100, t1000).is_none(),
            "100 bytes in 1 s is 100 B/s"
        );
        let slow = got(&mut speed, 199, t2000).expect("99 bytes in the next second");
        assert!(slow.transient);
        assert!(
            slow.error.message.contains("only 99 bytes in 1.0s"),
            "{}",
            slow.error.message
        );
        let mut off = Speed::new(&Expect {
            min_speed: 0,
            ..expect(None, 0)
        });
        let later = off.since + Duration::from_secs(10);
        assert!(got(&mut off, 0, later).is_none());
    }

    /// The body has got to `received`; the speed rule's verdict at `now`.
    fn got(speed: &mut Speed, received: u64, now: tokio::time::Instant) -> Option<Failure> {
        speed.heard(received);
        speed.check(now)
    }
}
