//! Waiting without sleeping: polling a download until it reaches a state, and reading progress
//! streams with a deadline on every message. A wait that runs out panics with the last state
//! and the end of the server's log, which tells what the engine saw.

use std::fmt::Debug;
use std::time::Duration;

use tonic::Streaming;

use super::{DEADLINE, Harness, S, pb, status_of};

/// Pause between two polls of the server: short, so waits end promptly, yet cheap for the
/// server.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Lines of the server's log a timed-out wait prints: enough for the last few transitions.
const LOG_TAIL_LINES: usize = 200;

impl Harness {
    /// Polls GetDownload until `pred` holds; panics after [`DEADLINE`] with the last state.
    pub async fn wait_until(
        &self,
        guid: &str,
        what: &str,
        pred: impl Fn(&pb::DownloadOperation) -> bool,
    ) -> pb::DownloadOperation {
        self.poll(what, || self.get(guid), pred).await
    }

    /// Polls GetSystemStatus until `pred` holds, e.g. until transfer tasks that are winding
    /// down after a pause have ended (they count as active until then).
    pub async fn wait_system_status(
        &self,
        what: &str,
        pred: impl Fn(&pb::SystemStatus) -> bool,
    ) -> pb::SystemStatus {
        self.poll(what, || self.system_status(), pred).await
    }

    /// Calls `fetch` until what it returns satisfies `pred`; panics after [`DEADLINE`] with the
    /// last value and the end of the server's log.
    async fn poll<T: Debug, F: Future<Output = T>>(
        &self,
        what: &str,
        fetch: impl Fn() -> F,
        pred: impl Fn(&T) -> bool,
    ) -> T {
        let start = tokio::time::Instant::now();
        loop {
            let value = fetch().await;
            if pred(&value) {
                return value;
            }
            if start.elapsed() > DEADLINE {
                let log = self.server.log();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
                panic!("timed out waiting for {what}; last state: {value:?}\nserver log:\n{tail}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Polls the server's log until it has a line containing `needle`, for a step that nothing
    /// else shows yet (e.g. a change still being stored).
    pub async fn wait_log(&self, needle: &str) {
        let what = format!("a log line with {needle:?}");
        self.poll(
            &what,
            || async { self.server.log() },
            |log| log.contains(needle),
        )
        .await;
    }

    /// Polls until the download has `status`.
    pub async fn wait_status(&self, guid: &str, status: S) -> pb::DownloadOperation {
        let what = format!("{status:?}");
        self.wait_until(guid, &what, |op| status_of(op) == status)
            .await
    }

    /// Polls until the download has `status` for `reason`.
    pub async fn wait_status_reason(
        &self,
        guid: &str,
        status: S,
        reason: pb::StatusReason,
    ) -> pb::DownloadOperation {
        let what = format!("{status:?} for {reason:?}");
        self.wait_until(guid, &what, |op| {
            status_of(op) == status && op.status_reason() == reason
        })
        .await
    }

    /// Polls until the download has received exactly `bytes` (e.g. where the origin holds the
    /// body).
    pub async fn wait_bytes(&self, guid: &str, bytes: u64) -> pb::DownloadOperation {
        let what = format!("{bytes} bytes received");
        self.wait_until(guid, &what, |op| {
            op.progress.expect("progress is always set").bytes_received == bytes
        })
        .await
    }

    /// Polls until the download is COMPLETED or ERROR, so a test can tell which.
    pub async fn wait_finished(&self, guid: &str) -> pb::DownloadOperation {
        self.wait_until(guid, "a final status", |op| {
            matches!(status_of(op), S::Completed | S::Error)
        })
        .await
    }

    /// Reads a WatchDownload stream of the download to its end (it ends after a terminal
    /// status).
    pub async fn watch_to_end(&self, guid: &str) -> Vec<pb::BackgroundDownloadProgress> {
        read_to_end(self.watch(guid).await).await
    }
}

/// The next message of `stream`; panics if it fails, ends, or sends nothing for [`DEADLINE`].
pub async fn next_message<T>(stream: &mut Streaming<T>) -> T {
    match tokio::time::timeout(DEADLINE, stream.message()).await {
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => panic!("the stream ended"),
        Ok(Err(e)) => panic!("the stream failed: {e:?}"),
        Err(_) => panic!("the stream sent nothing for {DEADLINE:?}"),
    }
}

/// Every message of `stream` until it ends cleanly; panics if it fails or stalls for
/// [`DEADLINE`].
pub async fn read_to_end<T: Debug>(mut stream: Streaming<T>) -> Vec<T> {
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout(DEADLINE, stream.message()).await {
            Ok(Ok(Some(m))) => messages.push(m),
            Ok(Ok(None)) => return messages,
            Ok(Err(e)) => panic!("stream failed: {e:?}; got {messages:?}"),
            Err(_) => panic!("stream did not end; got {messages:?}"),
        }
    }
}

/// Messages of `stream` up to and including the first for which `done` returns true (which may
/// keep state across messages); panics if the stream fails, ends or stalls first.
pub async fn read_until<T: Debug>(
    stream: &mut Streaming<T>,
    what: &str,
    mut done: impl FnMut(&T) -> bool,
) -> Vec<T> {
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout(DEADLINE, stream.message()).await {
            Ok(Ok(Some(m))) => {
                let finished = done(&m);
                messages.push(m);
                if finished {
                    return messages;
                }
            }
            Ok(Ok(None)) => panic!("stream ended before {what}; got {messages:?}"),
            Ok(Err(e)) => panic!("stream failed before {what}: {e:?}; got {messages:?}"),
            Err(_) => panic!("timed out waiting for {what}; got {messages:?}"),
        }
    }
}

/// How many messages say the download restarted.
pub fn restarts(messages: &[pb::BackgroundDownloadProgress]) -> usize {
    messages.iter().filter(|m| m.has_restarted).count()
}

/// How many messages say a new HTTP response arrived.
pub fn responses_changed(messages: &[pb::BackgroundDownloadProgress]) -> usize {
    messages.iter().filter(|m| m.has_response_changed).count()
}
