//! The transfer engine: the registry of downloads, the priority queue, the scheduler that keeps
//! at most `max_active` transfers running, the state machine of each download, and its transfer
//! task. It knows nothing of gRPC: the gRPC layer calls these methods and converts the results.
//!
//! Locking: the registry lock is taken before a download's state lock, never the other way;
//! both are std mutexes held only for short synchronous sections, never across an await.
//! Store writes of one download are serialised by its async `persist` lock and always write the
//! latest state, so an older write can never land after a newer one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::error::Error;
use crate::fetch::{self, Failure, Fetcher, Job, Observer, Outcome, ResponseStart};
use crate::operation::{
    CostPolicy, DownloadSpec, ErrorReason, Guid, Priority, Progress, ResponseInfo, Status,
    TransferError, Validators,
};
use crate::paths;
use crate::progress::{self, Bus, Hub, Message, Snapshot};
use crate::retry::RetryPolicy;
use crate::store::{Record, Store, StoreError};

/// Default page size of ListDownloads.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// Largest page ListDownloads returns, so one call cannot build an unbounded response.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Longest accepted requested URI, in bytes: what common servers and proxies accept.
const MAX_URI_LEN: usize = 8 * 1024;

/// Most extra request headers per download.
const MAX_REQUEST_HEADERS: usize = 64;

/// Longest transfer group name, in bytes.
const MAX_GROUP_LEN: usize = 256;

/// How long PauseDownload and CancelDownload wait for a running transfer to let go (drop its
/// request, flush and checkpoint, or remove its data) before answering anyway. Letting go takes
/// one fsync; the bound only matters on a disk that hangs.
const LET_GO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long shutdown waits for running transfers to checkpoint before giving up on them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the engine needs to run.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where result files go.
    pub download_dir: PathBuf,
    /// Most transfers running at once.
    pub max_active: usize,
    /// When failed attempts are retried.
    pub retry: RetryPolicy,
}

/// A new download as a client asks for it.
#[derive(Clone, Debug, Default)]
pub struct NewDownload {
    /// The URI.
    pub requested_uri: String,
    /// Relative result path; empty lets the server pick.
    pub result_file: String,
    /// Priority (WinRT number).
    pub priority: i32,
    /// Cost policy (WinRT number).
    pub cost_policy: i32,
    /// Transfer group.
    pub transfer_group: String,
    /// Extra request headers.
    pub request_headers: BTreeMap<String, String>,
    /// Expected SHA-256 in hex; empty for none.
    pub expected_sha256: String,
}

/// A download as the outside world sees it.
#[derive(Clone, Debug)]
pub struct DownloadView {
    /// What was asked for.
    pub spec: DownloadSpec,
    /// The latest published progress, with the flags it was published with.
    pub progress: Message,
    /// Why it failed, if it did.
    pub error: Option<TransferError>,
    /// HTTP requests made for it so far.
    pub attempts: u32,
}

/// One page of ListDownloads.
#[derive(Clone, Debug)]
pub struct Page {
    /// The downloads, in creation order.
    pub downloads: Vec<DownloadView>,
    /// Token of the next page; empty on the last.
    pub next_page_token: String,
}

/// The transfer engine. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: EngineConfig,
    store: Arc<dyn Store>,
    fetcher: Fetcher,
    bus: Bus,
    registry: Mutex<Registry>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

#[derive(Debug, Default)]
struct Registry {
    ops: HashMap<Guid, Arc<Op>>,
    /// Every download by creation sequence: ListDownloads order and its page tokens.
    by_seq: BTreeMap<u64, Arc<Op>>,
    /// IDLE downloads waiting for a slot, in run order: priority rank, then creation order.
    queue: BTreeSet<(u8, u64, Guid)>,
    /// Transfer tasks alive (including ones winding down after a pause).
    active: usize,
    next_seq: u64,
    /// Result files claimed by unfinished downloads.
    claimed: HashMap<String, Guid>,
}

#[derive(Debug)]
struct Op {
    spec: DownloadSpec,
    hub: Arc<Hub>,
    state: Mutex<OpState>,
    /// Serialises store writes of this download (see the module docs).
    persist: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct OpState {
    status: Status,
    /// Body bytes received (may be ahead of the checkpoint).
    bytes: u64,
    /// Bytes durably in the partial file.
    checkpoint: u64,
    total: u64,
    validators: Validators,
    response: Option<ResponseInfo>,
    error: Option<TransferError>,
    responses: u64,
    restarts: u64,
    /// HTTP attempts made over the download's life.
    attempts: u32,
    /// Set while a transfer task owns the partial file.
    task: Option<TaskHandle>,
}

/// The handles of a running transfer task.
#[derive(Debug)]
struct TaskHandle {
    /// Cancelling it stops the attempt (the HTTP request is dropped).
    stop: CancellationToken,
    /// Cancelled by the task once it has let go: data flushed, fsynced and checkpointed, or
    /// the partial file removed.
    done: CancellationToken,
}

impl TaskHandle {
    /// Asks the task to stop and returns what to wait on.
    fn stop(&self) -> CancellationToken {
        self.stop.cancel();
        self.done.clone()
    }
}

impl Op {
    /// A download in memory, in the state a stored record describes.
    fn from_record(record: Record, bus: &Bus) -> Arc<Op> {
        let Record {
            spec,
            status,
            checkpoint_bytes,
            total_bytes,
            validators,
            response,
            error,
            attempts,
        } = record;
        let progress = Progress {
            bytes_received: if status == Status::Completed {
                total_bytes.max(checkpoint_bytes)
            } else {
                checkpoint_bytes
            },
            total_bytes_to_receive: total_bytes,
            status,
        };
        Arc::new(Op {
            hub: Arc::new(Hub::new(
                &spec.guid,
                &spec.transfer_group,
                progress,
                bus.clone(),
            )),
            state: Mutex::new(OpState {
                status,
                bytes: progress.bytes_received,
                checkpoint: checkpoint_bytes,
                total: total_bytes,
                validators,
                response,
                error,
                responses: 0,
                restarts: 0,
                attempts,
                task: None,
            }),
            persist: tokio::sync::Mutex::new(()),
            spec,
        })
    }

    fn lock(&self) -> MutexGuard<'_, OpState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queue_key(&self) -> (u8, u64, Guid) {
        (
            self.spec.priority.rank(),
            self.spec.seq,
            self.spec.guid.clone(),
        )
    }

    fn record(&self) -> Record {
        let st = self.lock();
        Record {
            spec: self.spec.clone(),
            status: st.status,
            checkpoint_bytes: st.checkpoint,
            total_bytes: st.total,
            validators: st.validators.clone(),
            response: st.response.clone(),
            error: st.error.clone(),
            attempts: st.attempts,
        }
    }

    fn view(&self) -> DownloadView {
        let snapshot = self.hub.current();
        let (error, attempts) = {
            let st = self.lock();
            (st.error.clone(), st.attempts)
        };
        DownloadView {
            spec: self.spec.clone(),
            progress: progress::FlagCursor::first(&snapshot).1,
            error,
            attempts,
        }
    }

    /// Publishes the current state; call with the state lock held so publications stay in order.
    fn publish(&self, st: &OpState) {
        self.hub.publish(
            Progress {
                bytes_received: st.bytes,
                total_bytes_to_receive: st.total,
                status: st.status,
            },
            st.responses,
            st.restarts,
        );
    }
}

impl Engine {
    /// Opens the engine on a store: loads every download and queues the unfinished ones to
    /// continue from their checkpoints. Nothing runs until [`Engine::start`].
    pub fn open(
        config: EngineConfig,
        store: Arc<dyn Store>,
        fetcher: Fetcher,
        shutdown: CancellationToken,
    ) -> Result<Engine, Error> {
        let bus = Bus::default();
        let mut registry = Registry::default();
        for mut record in store.load()? {
            // A download that was running when the server stopped waits for a slot again.
            if record.status == Status::Running {
                record.status = Status::Idle;
            }
            let status = record.status;
            let op = Op::from_record(record, &bus);
            registry.insert(op, status);
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                config,
                store,
                fetcher,
                bus,
                registry: Mutex::new(registry),
                shutdown,
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// Starts transferring queued downloads.
    pub fn start(&self) {
        self.schedule();
    }

    /// Validates, durably stores and queues a new download.
    pub async fn create(&self, new: NewDownload) -> Result<DownloadView, Error> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let NewDownload {
            requested_uri,
            result_file,
            priority,
            cost_policy,
            transfer_group,
            request_headers,
            expected_sha256,
        } = new;
        let uri = validate_uri(&requested_uri)?;
        let expected_sha256 = validate_sha256(&expected_sha256)?;
        let priority = Priority::from_code(priority).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "priority {priority} is not a BackgroundTransferPriority (DEFAULT 0, HIGH 1, LOW 2)"
            ))
        })?;
        let cost_policy = CostPolicy::from_code(cost_policy).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "cost_policy {cost_policy} is not a BackgroundTransferCostPolicy (DEFAULT 0, UNRESTRICTED_ONLY 1, ALWAYS 2)"
            ))
        })?;
        if transfer_group.len() > MAX_GROUP_LEN || transfer_group.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(format!(
                "transfer_group must be at most {MAX_GROUP_LEN} bytes without control characters"
            )));
        }
        if request_headers.len() > MAX_REQUEST_HEADERS {
            return Err(Error::InvalidArgument(format!(
                "at most {MAX_REQUEST_HEADERS} request headers are allowed"
            )));
        }
        let mut headers = BTreeMap::new();
        for (name, value) in request_headers {
            fetch::check_user_header(&name, &value).map_err(Error::InvalidArgument)?;
            headers.insert(name.to_ascii_lowercase(), value);
        }
        let requested = if result_file.is_empty() {
            None
        } else {
            Some(paths::validate_result_file(&result_file)?)
        };
        let guid = uuid::Uuid::new_v4().to_string();

        // Claim the result file and a sequence number before the store write, so a concurrent
        // create cannot take the same file while this one is being stored.
        let (seq, result_file) = {
            let mut reg = self.inner.lock();
            let result_file = match requested {
                Some(path) => {
                    if let Some(holder) = reg.claimed.get(&path) {
                        return Err(Error::ResultFileInUse {
                            path,
                            guid: holder.clone(),
                        });
                    }
                    path
                }
                None => {
                    let name = paths::name_from_uri(&uri);
                    let taken = reg.claimed.contains_key(&name)
                        || self.inner.config.download_dir.join(&name).exists();
                    if taken {
                        paths::with_guid_suffix(&name, &guid)
                    } else {
                        name
                    }
                }
            };
            reg.claimed.insert(result_file.clone(), guid.clone());
            reg.next_seq += 1;
            (reg.next_seq, result_file)
        };
        let spec = DownloadSpec {
            guid: guid.clone(),
            seq,
            requested_uri: uri.to_string(),
            result_file,
            priority,
            cost_policy,
            transfer_group,
            request_headers: headers,
            expected_sha256,
        };
        let record = Record {
            spec,
            status: Status::Idle,
            checkpoint_bytes: 0,
            total_bytes: 0,
            validators: Validators::default(),
            response: None,
            error: None,
            attempts: 0,
        };
        let op = Op::from_record(record.clone(), &self.inner.bus);
        if let Err(e) = self.store(move |store| store.insert(&record)).await {
            self.inner.lock().claimed.remove(&op.spec.result_file);
            return Err(e.into());
        }
        self.inner.lock().insert(op.clone(), Status::Idle);
        op.hub.announce();
        tracing::info!(guid = %guid, uri = %op.spec.requested_uri, file = %op.spec.result_file, "download created");
        self.schedule();
        Ok(op.view())
    }

    /// One download.
    pub fn get(&self, guid: &str) -> Result<DownloadView, Error> {
        Ok(self.op(guid)?.view())
    }

    /// The latest HTTP response of a download.
    pub fn response_information(&self, guid: &str) -> Result<ResponseInfo, Error> {
        self.op(guid)?
            .lock()
            .response
            .clone()
            .ok_or_else(|| Error::NoResponseYet { guid: guid.into() })
    }

    /// A page of downloads in creation order.
    pub fn list(
        &self,
        group: Option<&str>,
        page_size: usize,
        page_token: &str,
    ) -> Result<Page, Error> {
        let after: u64 = if page_token.is_empty() {
            0
        } else {
            page_token.parse().map_err(|_| {
                Error::InvalidArgument(format!(
                    "page_token `{page_token}` is not a token returned by ListDownloads"
                ))
            })?
        };
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let reg = self.inner.lock();
        let mut matching = reg
            .by_seq
            .range(after + 1..)
            .map(|(_, op)| op)
            .filter(|op| group.is_none_or(|g| op.spec.transfer_group == g));
        let page: Vec<Arc<Op>> = matching.by_ref().take(size).cloned().collect();
        let more = matching.next().is_some();
        drop(reg);
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => last.spec.seq.to_string(),
            _ => String::new(),
        };
        Ok(Page {
            downloads: page.iter().map(|op| op.view()).collect(),
            next_page_token,
        })
    }

    /// Pauses a download: PAUSED_BY_APPLICATION, keeping its partial data.
    pub async fn pause(&self, guid: &str) -> Result<DownloadView, Error> {
        let op = self.op(guid)?;
        let changed = {
            let mut reg = self.inner.lock();
            let mut st = op.lock();
            match st.status {
                s if s.is_terminal() => return Err(illegal(guid, "pause", s)),
                Status::PausedByApplication => None,
                _ => {
                    reg.queue.remove(&op.queue_key());
                    st.status = Status::PausedByApplication;
                    op.publish(&st);
                    Some(st.task.as_ref().map(TaskHandle::stop))
                }
            }
        };
        let Some(running) = changed else {
            return Ok(op.view());
        };
        tracing::info!(guid, "paused");
        if let Some(done) = running {
            let _ = tokio::time::timeout(LET_GO_TIMEOUT, done.cancelled()).await;
        }
        self.persist(&op).await?;
        Ok(op.view())
    }

    /// Resumes a paused download: it is queued again and continues from its partial data.
    pub async fn resume(&self, guid: &str) -> Result<DownloadView, Error> {
        let op = self.op(guid)?;
        let changed = {
            let mut reg = self.inner.lock();
            let mut st = op.lock();
            match st.status {
                s if s.is_terminal() => return Err(illegal(guid, "resume", s)),
                Status::Idle | Status::Running => false,
                _ => {
                    st.status = Status::Idle;
                    reg.queue.insert(op.queue_key());
                    op.publish(&st);
                    true
                }
            }
        };
        if !changed {
            return Ok(op.view());
        }
        tracing::info!(guid, "resumed");
        self.persist(&op).await?;
        self.schedule();
        Ok(op.view())
    }

    /// Cancels a download: CANCELED, terminal; its partial data is removed.
    pub async fn cancel(&self, guid: &str) -> Result<DownloadView, Error> {
        let op = self.op(guid)?;
        let running = {
            let mut reg = self.inner.lock();
            let mut st = op.lock();
            if st.status.is_terminal() {
                return Err(illegal(guid, "cancel", st.status));
            }
            reg.queue.remove(&op.queue_key());
            reg.claimed.remove(&op.spec.result_file);
            st.status = Status::Canceled;
            op.publish(&st);
            st.task.as_ref().map(TaskHandle::stop)
        };
        tracing::info!(guid, "canceled");
        match running {
            // The task removes the partial file itself once it has let go of it.
            Some(done) => {
                let _ = tokio::time::timeout(LET_GO_TIMEOUT, done.cancelled()).await;
            }
            None => self.remove_partial(&op).await,
        }
        self.persist(&op).await?;
        Ok(op.view())
    }

    /// The progress publisher of a download, for WatchDownload.
    pub fn watch(
        &self,
        guid: &str,
    ) -> Result<impl futures_util::Stream<Item = Result<Message, progress::Lagged>> + use<>, Error>
    {
        let op = self.op(guid)?;
        Ok(progress::watch_one(
            op.hub.clone(),
            self.inner.shutdown.clone(),
        ))
    }

    /// Every download's progress (or one group's), for WatchDownloads.
    pub fn watch_all(
        &self,
        group: Option<String>,
    ) -> impl futures_util::Stream<Item = Result<(Arc<str>, Message), progress::Lagged>> + use<>
    {
        let events = self.inner.bus.subscribe();
        let current: Vec<(Arc<str>, Snapshot)> = {
            let reg = self.inner.lock();
            reg.by_seq
                .values()
                .filter(|op| group.as_deref().is_none_or(|g| op.spec.transfer_group == g))
                .map(|op| (Arc::from(op.spec.guid.as_str()), op.hub.current()))
                .collect()
        };
        progress::watch_all(events, current, group, self.inner.shutdown.clone())
    }

    /// Stops every transfer, checkpoints it and waits (up to [`SHUTDOWN_GRACE`]) for the tasks
    /// to finish. Call after the shutdown token fired.
    pub async fn drain(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "some transfers did not checkpoint in time; they resume from their previous checkpoint"
            );
        }
    }

    fn op(&self, guid: &str) -> Result<Arc<Op>, Error> {
        self.inner
            .lock()
            .ops
            .get(guid)
            .cloned()
            .ok_or_else(|| Error::NotFound { guid: guid.into() })
    }

    /// Starts queued downloads while slots are free.
    fn schedule(&self) {
        if self.inner.shutdown.is_cancelled() {
            return;
        }
        let mut reg = self.inner.lock();
        let mut blocked = Vec::new();
        while reg.active < self.inner.config.max_active {
            let Some(key) = reg.queue.pop_first() else {
                break;
            };
            let Some(op) = reg.ops.get(&key.2).cloned() else {
                continue;
            };
            let token = self.inner.shutdown.child_token();
            let done = CancellationToken::new();
            {
                let mut st = op.lock();
                if st.status != Status::Idle {
                    continue;
                }
                if st.task.is_some() {
                    // Its previous task is still letting go of the partial file; it schedules
                    // again when it has.
                    blocked.push(key);
                    continue;
                }
                st.status = Status::Running;
                st.task = Some(TaskHandle {
                    stop: token.clone(),
                    done: done.clone(),
                });
                op.publish(&st);
            }
            reg.active += 1;
            let engine = self.clone();
            let span = tracing::info_span!("transfer", guid = %op.spec.guid);
            self.inner
                .tasks
                .spawn(async move { engine.transfer(op, token, done).await }.instrument(span));
        }
        reg.queue.extend(blocked);
    }

    /// The life of one transfer slot: attempts until done, then the resulting state change.
    /// `done` is cancelled once the task has let go of the download.
    async fn transfer(self, op: Arc<Op>, stop: CancellationToken, done: CancellationToken) {
        if let Err(e) = self.persist(&op).await {
            tracing::warn!(error = %e, "could not record the start of the transfer");
        }
        let partial = paths::partial_path(&self.inner.config.download_dir, &op.spec.guid);
        let outcome = match self.run_attempts(&op, &partial, &stop).await {
            Outcome::Complete { bytes } if !stop.is_cancelled() => {
                match self.commit(&op, &partial).await {
                    Ok(()) => Outcome::Complete { bytes },
                    Err(e) => Outcome::Failed(e),
                }
            }
            other => other,
        };
        let remove_partial = {
            let mut reg = self.inner.lock();
            reg.active -= 1;
            let mut st = op.lock();
            st.task = None;
            let status_before = st.status;
            match outcome {
                Outcome::Complete { bytes } if status_before == Status::Running => {
                    st.status = Status::Completed;
                    st.bytes = bytes;
                    st.checkpoint = bytes;
                    st.total = bytes;
                    reg.claimed.remove(&op.spec.result_file);
                    tracing::info!(bytes, "completed");
                }
                Outcome::Failed(failure) if status_before == Status::Running => {
                    tracing::warn!(error = %failure.error.message, "failed");
                    st.status = Status::Error;
                    st.error = Some(failure.error);
                    reg.claimed.remove(&op.spec.result_file);
                }
                _ => {}
            }
            op.publish(&st);
            matches!(st.status, Status::Canceled | Status::Error)
        };
        if remove_partial {
            self.remove_partial(&op).await;
        }
        if let Err(e) = self.persist(&op).await {
            tracing::error!(error = %e, "could not record the end of the transfer");
        }
        done.cancel();
        self.schedule();
    }

    /// Runs attempts until one completes, one fails for good, the retry budget is spent, or
    /// `stop` fires. Every attempt resumes from the latest checkpoint.
    async fn run_attempts(
        &self,
        op: &Arc<Op>,
        partial: &std::path::Path,
        stop: &CancellationToken,
    ) -> Outcome {
        let policy = self.inner.config.retry;
        let mut failures = 0u32;
        loop {
            let (checkpoint, validators, total) = {
                let mut st = op.lock();
                st.attempts += 1;
                (st.checkpoint, st.validators.clone(), st.total)
            };
            let job = Job {
                spec: &op.spec,
                partial,
                checkpoint,
                validators: &validators,
                total,
            };
            let observer = Progressor {
                engine: self,
                op,
                progressed: AtomicBool::new(false),
                start: AtomicU64::new(0),
            };
            let outcome = self.inner.fetcher.run(job, &observer, stop).await;
            let Outcome::Failed(mut failure) = outcome else {
                return outcome;
            };
            if !failure.transient || stop.is_cancelled() {
                return Outcome::Failed(failure);
            }
            // A budget of failures in a row: an attempt that brought bytes starts a new count,
            // so a flaky link slowly finishing a large file is not given up on.
            failures = if observer.progressed.load(Ordering::Relaxed) {
                1
            } else {
                failures + 1
            };
            if !policy.allows_another(failures) {
                failure.error.message = format!(
                    "gave up after {failures} failed attempt{} in a row; the last: {}",
                    if failures == 1 { "" } else { "s" },
                    failure.error.message
                );
                return Outcome::Failed(failure);
            }
            let delay = policy.delay(failures, failure.retry_after);
            tracing::warn!(error = %failure.error.message, failures, ?delay, "attempt failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return Outcome::Stopped,
            }
        }
    }

    /// Checks the expected SHA-256, if any, then moves the complete partial file to its result
    /// path: fsync, rename, fsync the directory.
    async fn commit(&self, op: &Op, partial: &std::path::Path) -> Result<(), Failure> {
        let download_dir = self.inner.config.download_dir.clone();
        let target = download_dir.join(&op.spec.result_file);
        let partial = partial.to_path_buf();
        let expected = op.spec.expected_sha256.clone();
        let result_file = op.spec.result_file.clone();
        let disk = |what: &str, e: std::io::Error| Failure {
            error: TransferError {
                message: format!("{what}: {e}"),
                http_status: None,
                reason: ErrorReason::Disk,
            },
            transient: false,
            retry_after: None,
        };
        tokio::task::spawn_blocking(move || {
            if let Some(expected) = expected {
                // Hashing the whole file covers bytes from every attempt and restart alike.
                let actual = paths::sha256_file(&partial)
                    .map_err(|e| disk("could not read the finished file to verify it", e))?;
                if actual != expected {
                    return Err(Failure {
                        error: TransferError {
                            message: format!(
                                "the downloaded bytes have SHA-256 {actual}, not the expected {expected}; nothing was written to `{result_file}`"
                            ),
                            http_status: None,
                            reason: ErrorReason::Integrity,
                        },
                        transient: false,
                        retry_after: None,
                    });
                }
            }
            paths::commit(&download_dir, &partial, &target)
                .map_err(|e| disk("could not move the finished file into place", e))
        })
        .await
        .unwrap_or_else(|e| Err(disk("the commit task failed", std::io::Error::other(e))))
    }

    async fn remove_partial(&self, op: &Op) {
        let partial = paths::partial_path(&self.inner.config.download_dir, &op.spec.guid);
        match tokio::fs::remove_file(&partial).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, path = %partial.display(), "could not remove partial file")
            }
        }
    }

    /// Writes the download's latest state to the store.
    async fn persist(&self, op: &Arc<Op>) -> Result<(), Error> {
        let _serial = op.persist.lock().await;
        let record = op.record();
        Ok(self.store(move |store| store.save(&record)).await?)
    }

    /// Runs a store call on the blocking pool: SQLite commits fsync, which must not stall the
    /// async workers.
    async fn store(
        &self,
        call: impl FnOnce(&dyn Store) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || call(store.as_ref()))
            .await
            .unwrap_or_else(|e| Err(StoreError::Interrupted(e.to_string())))
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Registry {
    fn insert(&mut self, op: Arc<Op>, status: Status) {
        if status == Status::Idle {
            self.queue.insert(op.queue_key());
        }
        if !status.is_terminal() {
            self.claimed
                .insert(op.spec.result_file.clone(), op.spec.guid.clone());
        }
        self.next_seq = self.next_seq.max(op.spec.seq);
        self.by_seq.insert(op.spec.seq, op.clone());
        self.ops.insert(op.spec.guid.clone(), op);
    }
}

/// The engine's side of a running attempt.
struct Progressor<'a> {
    engine: &'a Engine,
    op: &'a Arc<Op>,
    /// Whether this attempt received any body bytes: it made progress, so the retry budget
    /// starts over.
    progressed: AtomicBool,
    /// Where this attempt's body started.
    start: AtomicU64,
}

impl Observer for Progressor<'_> {
    fn response(&self, start: ResponseStart) {
        let ResponseStart {
            info,
            validators,
            total,
            offset,
            restarted,
        } = start;
        let mut st = self.op.lock();
        st.responses += 1;
        if restarted {
            st.restarts += 1;
            tracing::info!(offset, "restarted from byte 0");
        }
        self.start.store(offset, Ordering::Relaxed);
        st.bytes = offset;
        st.total = total;
        st.validators = validators;
        st.response = Some(info);
        self.op.publish(&st);
    }

    fn error_response(&self, info: ResponseInfo) {
        let mut st = self.op.lock();
        st.responses += 1;
        st.response = Some(info);
        self.op.publish(&st);
    }

    fn progress(&self, bytes_received: u64) {
        if bytes_received > self.start.load(Ordering::Relaxed) {
            self.progressed.store(true, Ordering::Relaxed);
        }
        self.op.lock().bytes = bytes_received;
    }

    fn tick(&self) {
        let st = self.op.lock();
        self.op.publish(&st);
    }

    async fn durable(&self, bytes: u64) {
        self.op.lock().checkpoint = bytes;
        if let Err(e) = self.engine.persist(self.op).await {
            tracing::warn!(error = %e, "checkpoint not stored; the previous one stands");
        }
    }
}

fn illegal(guid: &str, action: &'static str, status: Status) -> Error {
    Error::IllegalTransition {
        guid: guid.into(),
        action,
        status,
    }
}

fn validate_sha256(hex: &str) -> Result<Option<String>, Error> {
    if hex.is_empty() {
        return Ok(None);
    }
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::InvalidArgument(format!(
            "expected_sha256 must be 64 hexadecimal digits, got `{}`",
            hex.chars().take(80).collect::<String>()
        )));
    }
    Ok(Some(hex.to_ascii_lowercase()))
}

fn validate_uri(uri: &str) -> Result<url::Url, Error> {
    let invalid = |reason: &str| Error::InvalidUri {
        uri: uri.chars().take(200).collect(),
        reason: reason.into(),
    };
    if uri.is_empty() {
        return Err(invalid(
            "it is empty; give an absolute http:// or https:// URI",
        ));
    }
    if uri.len() > MAX_URI_LEN {
        return Err(invalid(&format!("longer than {MAX_URI_LEN} bytes")));
    }
    let parsed = url::Url::parse(uri).map_err(|e| invalid(&format!("{e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(&format!(
            "scheme `{}` is not supported; use http or https",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    Ok(parsed)
}
