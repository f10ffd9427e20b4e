//! The transfer task of one download: it runs attempts (retrying transient failures within the
//! retry budget; one stream, or segments over several connections when the fetcher may
//! segment or the download has stored segments), lets the engine checkpoint what is durably on
//! disk (one number, or a segment list whose sum is that number), verifies and commits the
//! finished file, and at the end decides how the download goes on: completed, failed, paused
//! on a recoverable web error, or back in the queue because the network or the disk gave out.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use super::download::{Op, OpState};
use super::host::{probe_target, routable};
use super::progressor::Progressor;
use super::{Core, Engine};
use crate::fetch::segments::Plan;
use crate::fetch::{Failure, Hashing, Job, Outcome};
use crate::operation::{DownloadSpec, ErrorReason, Status, StatusReason, TransferError};
use crate::paths::{self, CommitError};

/// How a transfer ends for its download, decided from the last attempt's outcome.
#[derive(Debug)]
enum Ending {
    /// The file is committed.
    Completed { bytes: u64 },
    /// The origin answered one of the download's recoverable statuses: pause until a client
    /// resumes it.
    RecoverableWebError(u16),
    /// No route to the origin: the network counts as down and the download waits for it.
    NetworkDown(Failure),
    /// The disk is full: the download waits for space.
    DiskFull(Failure),
    /// It failed for good.
    Failed(TransferError),
    /// It was stopped (paused, cancelled, conditions, shutdown): its status already says why.
    Stopped,
}

impl Ending {
    /// The ending a failed attempt (or commit) calls for.
    fn failed(failure: Failure, spec: &DownloadSpec) -> Ending {
        if let Some(code) = recoverable_status(spec, &failure) {
            Ending::RecoverableWebError(code)
        } else if failure.network_down {
            Ending::NetworkDown(failure)
        } else if failure.disk_full {
            Ending::DiskFull(failure)
        } else {
            Ending::Failed(failure.error)
        }
    }
}

/// Runs the work of a transfer, turning a panic in it into a failure: a bug met by one download
/// (in transferd or a library it uses) ends that download in ERROR and frees its slot, instead
/// of killing the task and leaving the download RUNNING forever.
async fn catch_panic(work: impl Future<Output = Ending>) -> Ending {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(ending) => ending,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            tracing::error!(panic = %what, "the transfer task panicked");
            Ending::Failed(TransferError {
                message: format!(
                    "the transfer stopped on an internal error (a bug; please report it): {what}"
                ),
                http_status: None,
                reason: ErrorReason::Network,
            })
        }
    }
}

/// The HTTP status of a failure, if the download's client listed it as recoverable.
fn recoverable_status(spec: &DownloadSpec, failure: &Failure) -> Option<u16> {
    failure
        .error
        .http_status
        .filter(|code| spec.recoverable_web_error_statuses.contains(code))
}

impl Engine {
    /// The life of one transfer slot: attempts until done, then the resulting state change.
    /// `done` is cancelled once the task has let go of the download.
    pub(super) async fn transfer(
        self,
        op: Arc<Op>,
        stop: CancellationToken,
        done: CancellationToken,
    ) {
        // No store write here: a stored RUNNING is read back as IDLE at the next start (see
        // `Engine::load`), so writing it would cost a commit on every start and change nothing
        // a restart sees. The first checkpoint, or the end of the transfer, stores the state.
        let partial = self.partial_of(&op);
        let (started, from) = (std::time::Instant::now(), op.lock().checkpoint);
        let ending = catch_panic(async {
            let outcome = match complete_on_disk(&op, &partial) {
                Some(bytes) => Outcome::Complete { bytes },
                None => self.run_attempts(&op, &partial, &stop).await,
            };
            match outcome {
                // A whole body that was stopped before its commit is not complete: it stays
                // where it is and the download goes on from its checkpoint.
                Outcome::Complete { .. } if stop.is_cancelled() => Ending::Stopped,
                Outcome::Complete { bytes } => self.finish(&op, &partial, &stop, bytes).await,
                Outcome::Failed(failure) => Ending::failed(failure, &op.spec),
                Outcome::Stopped => Ending::Stopped,
            }
        })
        .await;
        if let Ending::Completed { bytes } = ending {
            crate::metrics::global()
                .transfer_completed(bytes.saturating_sub(from), started.elapsed());
            // Logged before the status moves, so whoever sees COMPLETED finds this line.
            log_completed(bytes, from, started.elapsed());
        }
        let (remove_partial, conditions_moved, unshown) = {
            let mut core = self.lock();
            let mut st = op.lock();
            st.committing = false;
            core.let_go(&op, &mut st);
            let mut unshown = None;
            let conditions_moved = if st.status() == Status::Running {
                // A failure is shown once it is stored: a crash before the write would bring
                // the download back, and no watcher may have seen it end. (A COMPLETED status
                // is shown at once: its file is already in place, and a restart finds it
                // committed and completes it again; see `paths::commit`.)
                if matches!(ending, Ending::Failed(_) | Ending::RecoverableWebError(_)) {
                    unshown = Some(op.unshown(&mut st));
                }
                self.settle(&mut core, &op, &mut st, ending)
            } else {
                // Paused or cancelled meanwhile: the status already says what happened.
                op.publish(&st);
                false
            };
            (
                matches!(st.status(), Status::Canceled | Status::Error),
                conditions_moved,
                unshown,
            )
        };
        // The slot is free and the status final as watchers see it (a COMPLETED file and its
        // directory entry are already durable): the next download starts now, not after the
        // store write and the cleanup below.
        if !conditions_moved {
            self.schedule();
        }
        if remove_partial {
            self.remove_partial(&op).await;
        }
        // A COMPLETED status is shown already, and its file is durable: its record may wait a
        // moment to share a commit with the downloads ending around it.
        let persisted = if op.lock().status() == Status::Completed {
            self.persist_soon(&op).await
        } else {
            self.persist(&op).await
        };
        if let Err(e) = &persisted {
            tracing::error!(error = %e, "could not record the end of the transfer");
        }
        drop(unshown);
        // A committed file keeps its partial name until COMPLETED is stored, so a crash in
        // between is recognised at the next start (see `paths::commit`). After that the name
        // is a leftover, removed in the background.
        if persisted.is_ok() && op.lock().status() == Status::Completed {
            self.inner.remover.remove(self.partial_of(&op));
        }
        done.cancel();
        self.unhold(&op).await;
        if conditions_moved {
            self.conditions_changed().await;
        }
    }

    /// Moves a download whose transfer ended while it was RUNNING to what `ending` calls for.
    /// Returns whether host conditions changed (the network or the disk gave out), so every
    /// download must be reconciled.
    fn settle(&self, core: &mut Core, op: &Op, st: &mut OpState, ending: Ending) -> bool {
        let (to, reason) = match ending {
            Ending::Completed { bytes } => {
                st.bytes = bytes;
                st.checkpoint = bytes;
                st.segments.clear();
                st.total = bytes;
                (Status::Completed, StatusReason::Unspecified)
            }
            Ending::RecoverableWebError(code) => {
                tracing::info!(
                    code,
                    "paused by a recoverable web error status (HTTP {code})"
                );
                st.web_error_status = Some(code);
                (
                    Status::PausedRecoverableWebErrorStatus,
                    StatusReason::RecoverableWebError,
                )
            }
            Ending::NetworkDown(failure) => {
                tracing::warn!(error = %failure.error.message, "the network is down");
                core.host.network_down(&st.settings.requested_uri);
                // Reconciling afterwards pauses this and every other download.
                (Status::Idle, StatusReason::WaitingForSlot)
            }
            Ending::DiskFull(failure) => {
                tracing::warn!(error = %failure.error.message, "the disk is full");
                let free = paths::free_space(&self.inner.config.download_dir).unwrap_or(0);
                core.host.disk_full(free);
                (Status::Idle, StatusReason::WaitingForSlot)
            }
            Ending::Failed(error) => {
                tracing::warn!(reason = ?error.reason, "failed: {}", error.message);
                st.error = Some(error);
                (Status::Error, StatusReason::Unspecified)
            }
            Ending::Stopped => {
                // Stopped by shutdown while still RUNNING: it stays so, and is queued again at
                // the next start.
                op.publish(st);
                return false;
            }
        };
        let conditions_moved = to == Status::Idle;
        if let Err(e) = core.transition(op, st, to, reason) {
            tracing::error!(
                from = e.from.name(),
                to = to.name(),
                "a transfer ended in an illegal move"
            );
            op.publish(st);
        }
        conditions_moved
    }

    /// Runs attempts until one completes, one fails for good, the retry budget is spent, or
    /// `stop` fires. Every attempt resumes from the latest checkpoint.
    async fn run_attempts(
        &self,
        op: &Arc<Op>,
        partial: &Path,
        stop: &CancellationToken,
    ) -> Outcome {
        let policy = self.inner.config.retry;
        let mut failures = 0u32;
        // The furthest offset ever durable in this transfer: only getting past it is progress.
        // An attempt that restarts from zero and fails again before reaching it made none.
        let mut furthest = op.lock().checkpoint;
        loop {
            let outcome = self.attempt(op, partial, stop).await;
            let Outcome::Failed(mut failure) = outcome else {
                return outcome;
            };
            let progressed = {
                // Between attempts, progress shows what is on disk, where the next one resumes.
                let mut st = op.lock();
                st.bytes = st.checkpoint;
                op.publish(&st);
                let progressed = st.checkpoint > furthest;
                furthest = furthest.max(st.checkpoint);
                progressed
            };
            // Offline, a full disk and a recoverable status pause instead of spending retries.
            if !failure.transient
                || failure.network_down
                || failure.disk_full
                || recoverable_status(&op.spec, &failure).is_some()
                || stop.is_cancelled()
            {
                return Outcome::Failed(failure);
            }
            // A budget of failures in a row: an attempt that got further than any before starts
            // a new count, so a flaky link slowly finishing a large file is not given up on,
            // while one that keeps losing the same bytes is.
            failures = if progressed { 1 } else { failures + 1 };
            if !policy.allows_another(failures) {
                failure.error.message = format!(
                    "gave up after {failures} failed attempt{} in a row; the last: {}",
                    if failures == 1 { "" } else { "s" },
                    failure.error.message
                );
                return Outcome::Failed(failure);
            }
            let delay = policy.delay(failures, failure.retry_after);
            crate::metrics::global().retry(failure.error.reason);
            tracing::warn!(error = %failure.error.message, failures, ?delay, "attempt failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return Outcome::Stopped,
            }
        }
    }

    /// One HTTP attempt from the latest checkpoint. A connect failure counts as "network down"
    /// only when the host has no route to the origin.
    async fn attempt(&self, op: &Arc<Op>, partial: &Path, stop: &CancellationToken) -> Outcome {
        let (settings, checkpoint, validators, total, lane, hashing, segments) = {
            let mut st = op.lock();
            st.attempts += 1;
            crate::metrics::global().attempt();
            // Taken under the download's lock, as SetRateLimit changes the setting and the lane
            // under it: a change lands either in the setting read here or on the lane.
            let lane = (self.inner.throttle).lane(&op.spec.guid, st.settings.max_bytes_per_second);
            // Only a download that will be verified is hashed as it is written: hashing costs
            // the bulk path throughput (see the README), and nothing else reads the digest.
            let hashing = match op.spec.expected_sha256 {
                Some(_) => Hashing::On(st.sha256.clone()),
                None => Hashing::Off,
            };
            (
                st.settings.clone(),
                st.checkpoint,
                st.validators.clone(),
                st.total,
                lane,
                hashing,
                st.segments.clone(),
            )
        };
        let job = Job {
            settings: &settings,
            partial,
            checkpoint,
            validators: &validators,
            total,
            max_bytes: op
                .spec
                .max_bytes
                .map_or(self.inner.config.max_file_size, |own| {
                    own.min(self.inner.config.max_file_size)
                }),
            lane: &lane,
            hashing: &hashing,
            span: None,
        };
        let observer = Progressor { engine: self, op };
        let fetcher = &self.inner.fetcher;
        // Stored segments are resumed as segments even when segmenting was switched off
        // since: their checkpoint is no prefix a single stream could go on from.
        let mut outcome = if fetcher.segmenting() || !segments.is_empty() {
            let plan = Plan {
                segments: &segments,
                retry: self.inner.config.retry,
                recoverable: &op.spec.recoverable_web_error_statuses,
            };
            fetcher.run_segmented(job, plan, &observer, stop).await
        } else {
            fetcher.run(job, &observer, stop).await
        };
        if let Outcome::Failed(failure) = &mut outcome {
            if failure.network_down {
                // "Network down" means the host has no route to the origin: the same question
                // the monitor asks to notice its return. An unreachable host behind a working
                // route (ARP or a remote router said no) is the origin's problem, retried and
                // counted; otherwise detection and recovery would disagree and flap forever.
                // While an operator decides connectivity, marking it down would change nothing
                // and the download would be queued and fail again at once, so it counts too.
                let overridden = self.lock().host.conditions.connected_override.is_some();
                let target = probe_target(&settings.requested_uri);
                if overridden || routable(target.as_slice()).await {
                    failure.network_down = false;
                }
            }
        }
        outcome
    }

    /// Verifies a complete body, claims the commit and commits it. Exactly one of a commit and
    /// a client's pause or cancel wins: the claim is refused once the download has left
    /// RUNNING (the partial file then stays, or goes with a cancel), and once it is claimed,
    /// pause and cancel wait for its outcome (see `OpState::commit_in_progress`).
    async fn finish(
        &self,
        op: &Op,
        partial: &Path,
        stop: &CancellationToken,
        bytes: u64,
    ) -> Ending {
        if let Err(failure) = self.verify(op, partial, bytes).await {
            return Ending::failed(failure, &op.spec);
        }
        // With replicas, only the lease holder commits, and only while the lease is surely
        // its own; one that lost it stops, and the new holder commits.
        if !self.may_commit(op).await {
            return Ending::Stopped;
        }
        {
            let _core = self.lock();
            let mut st = op.lock();
            if st.status() != Status::Running || stop.is_cancelled() {
                return Ending::Stopped;
            }
            st.committing = true;
        }
        match self.commit(op).await {
            Ok(()) => Ending::Completed { bytes },
            Err(failure) => Ending::failed(failure, &op.spec),
        }
    }

    /// Checks the expected SHA-256 of the finished file of `bytes` bytes, if the client gave
    /// one. The digest comes from the state hashed as the bytes were written when that state
    /// covers exactly the file; otherwise the file is read and hashed here. A segmented
    /// download that hashes fills its file in order and hashes it as it fills (see
    /// `fetch/prefix.rs`), so it too arrives here with the state of the whole file; only one
    /// whose hashing could not keep up (its partial file unreadable) is read here.
    async fn verify(&self, op: &Op, partial: &Path, bytes: u64) -> Result<(), Failure> {
        let Some(expected) = op.spec.expected_sha256.clone() else {
            return Ok(());
        };
        let as_written = op.lock().sha256.clone().filter(|h| h.len() == bytes);
        let actual = match as_written {
            Some(hasher) => {
                let actual = hasher.hex();
                tracing::debug!(bytes, "sha-256 verified as written");
                actual
            }
            None => {
                let actual = sha256_of_file(partial).await?;
                tracing::debug!(bytes, "sha-256 verified by reading the file");
                actual
            }
        };
        if actual != expected {
            let result_file = &op.spec.result_file;
            return Err(Failure::fatal(TransferError {
                message: format!(
                    "the downloaded bytes have SHA-256 {actual}, not the expected {expected}; nothing was written to `{result_file}`"
                ),
                http_status: None,
                reason: ErrorReason::Integrity,
            }));
        }
        Ok(())
    }

    /// Moves the complete partial file to its result path: rename (never replacing a file
    /// that appeared there unless the download may), fsync the directory.
    async fn commit(&self, op: &Op) -> Result<(), Failure> {
        let download_dir = self.inner.config.download_dir.clone();
        let DownloadSpec {
            guid,
            tenant,
            result_file,
            replace_existing,
            ..
        } = op.spec.clone();
        let epoch = op.lock().partial_epoch;
        let disk = |what: &str, e: std::io::Error| Failure::disk(what, &e);
        // Logged in the transfer's span (the blocking thread has none): one line per file
        // moved into place, which the replica tests count.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _in = span.enter();
            match paths::commit(&download_dir, &tenant, &guid, &result_file, replace_existing, epoch) {
                Ok(true) => {
                    tracing::info!(epoch = ?epoch, "committed the file");
                    Ok(())
                }
                Ok(false) => {
                    tracing::info!(epoch = ?epoch, "the file was already in place, committed by an earlier holder");
                    Ok(())
                }
                Err(CommitError::Exists) => Err(Failure::fatal(TransferError {
                    message: format!(
                        "`{result_file}` appeared in the download directory before the download finished; it was not replaced and the downloaded bytes were discarded (create the download with replace_existing to replace a file)"
                    ),
                    http_status: None,
                    reason: ErrorReason::Disk,
                })),
                Err(CommitError::Io(e)) => Err(disk("could not move the finished file into place", e)),
            }
        })
        .await
        .unwrap_or_else(|e| Err(disk("the commit task failed", std::io::Error::other(e))))
    }

    /// Removes a download's partial file, if there is one.
    pub(super) async fn remove_partial(&self, op: &Op) {
        let partial = self.partial_of(op);
        let removed = tokio::task::spawn_blocking({
            let partial = partial.clone();
            move || paths::remove_partial(&partial)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = removed {
            tracing::warn!(guid = %op.spec.guid, error = %e, path = %partial.display(), "could not remove partial file");
        }
    }
}

/// The INFO line of a completed download: its size, and the time and rate of this transfer
/// (which received the bytes after `from`, where it resumed).
fn log_completed(bytes: u64, from: u64, took: std::time::Duration) {
    let received = bytes.saturating_sub(from);
    let seconds = took.as_secs_f64();
    // Below a millisecond the rate says nothing; it is left out rather than made up.
    let bytes_per_second = (seconds >= 0.001).then(|| (received as f64 / seconds) as u64);
    let rate = bytes_per_second.map_or_else(|| "-".into(), |r| format!("{r} B/s"));
    tracing::info!(
        bytes,
        received,
        seconds = format_args!("{seconds:.3}"),
        bytes_per_second = bytes_per_second.unwrap_or(0),
        "completed: {bytes} bytes, {received} received in {seconds:.3}s ({rate})"
    );
}

/// The byte count of a body that is already whole on disk: checkpointed up to the entity's
/// known length and still that long, as a pause or shutdown that won against the commit leaves
/// it. It goes straight to verify and commit instead of asking the origin again, which would
/// answer 416 and make the download start over. Only while the download still points where
/// that body came from: a re-pointed (or redirected) one asks, and If-Range decides.
fn complete_on_disk(op: &Op, partial: &Path) -> Option<u64> {
    // One `lstat`, made here rather than on a blocking thread: a trip there would cost more
    // than the call, and every download makes it.
    let found = paths::partial_file(partial)?;
    if found.committed {
        // Committed by an earlier life that stopped before recording COMPLETED: the bytes
        // were whole and verified then; the commit finds its own file in place.
        return Some(found.len);
    }
    let (checkpoint, total, same_uri) = {
        let st = op.lock();
        let same_uri = st
            .response
            .as_ref()
            .is_some_and(|r| r.actual_uri == st.settings.requested_uri);
        (st.checkpoint, st.total, same_uri)
    };
    let on_disk = found.len;
    (same_uri && total > 0 && checkpoint == total && on_disk == total).then_some(total)
}

/// The SHA-256 of the whole file at `partial`, read from disk.
async fn sha256_of_file(partial: &Path) -> Result<String, Failure> {
    let partial = partial.to_path_buf();
    tokio::task::spawn_blocking(move || paths::sha256_file(&partial))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|e| Failure::disk("could not read the finished file to verify it", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_transfer_ends_failed_not_stuck() {
        let ending = catch_panic(async {
            let limits: Vec<u64> = Vec::new();
            // A real panic: indexing past the end, as a bug would.
            Ending::Completed {
                bytes: limits[usize::from(limits.is_empty())],
            }
        })
        .await;
        let Ending::Failed(error) = ending else {
            panic!("expected a failure, got {ending:?}");
        };
        assert!(
            error
                .message
                .starts_with("the transfer stopped on an internal error")
                && error.message.contains("index out of bounds"),
            "{}",
            error.message
        );
        let ending = catch_panic(async { Ending::Completed { bytes: 3 } }).await;
        assert!(matches!(ending, Ending::Completed { bytes: 3 }));
    }
}
