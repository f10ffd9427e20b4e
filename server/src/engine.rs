//! The transfer engine: the registry of downloads, the priority queue, the scheduler that keeps
//! at most `max_active` transfers running (and one per serialized group), the state machine of
//! each download, its transfer task, and the automatic pauses that follow host conditions. It
//! knows nothing of gRPC: the gRPC layer calls these methods and converts the results.
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

use crate::conditions::{self, Conditions};
use crate::error::Error;
use crate::fetch::{self, Failure, Fetcher, Job, Observer, Outcome, ResponseStart};
use crate::operation::{
    Behavior, CostPolicy, DownloadSpec, ErrorReason, Guid, Priority, Progress, ResponseInfo,
    Settings, Status, StatusReason, TransferError, Validators,
};
use crate::paths;
use crate::progress::{self, Bus, Hub, Message, Snapshot};
use crate::retry::RetryPolicy;
use crate::store::{self, Record, Store};

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

/// How often free disk space is measured and, while the network is down, routes to the
/// origins are probed: conditions are noticed within a second, at the cost of one statvfs and a
/// few route lookups.
const MONITOR_INTERVAL: Duration = Duration::from_secs(1);

/// After a write failed with a full disk, downloads stay paused until free space exceeds what
/// was free then by this much, so they do not bounce against a disk that is still full.
const DISK_FULL_HEADROOM: u64 = 4 * 1024 * 1024;

/// What the engine needs to run.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where result files go.
    pub download_dir: PathBuf,
    /// Most transfers running at once.
    pub max_active: usize,
    /// When failed attempts are retried.
    pub retry: RetryPolicy,
    /// Below this many free bytes on the download volume, downloads pause.
    pub min_free_disk_bytes: u64,
    /// What DEFAULT cost policy means (ALWAYS or UNRESTRICTED_ONLY).
    pub default_cost_policy: CostPolicy,
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
    /// HTTP statuses that pause instead of failing.
    pub recoverable_web_error_statuses: Vec<u32>,
}

/// A download as the outside world sees it.
#[derive(Clone, Debug)]
pub struct DownloadView {
    /// What was asked for, fixed.
    pub spec: DownloadSpec,
    /// What was asked for, editable.
    pub settings: Settings,
    /// Why it is in its status.
    pub reason: StatusReason,
    /// The recoverable HTTP status that paused it.
    pub web_error_status: Option<u16>,
    /// The latest published progress, with the flags it was published with.
    pub progress: Message,
    /// Why it failed, if it did.
    pub error: Option<TransferError>,
    /// HTTP requests made for it so far.
    pub attempts: u32,
}

/// The host as the engine sees it, for GetSystemStatus.
#[derive(Clone, Copy, Debug)]
pub struct SystemView {
    /// Network, policy and disk conditions.
    pub conditions: Conditions,
    /// Whether disk space counts as low (below the minimum, or still full after a write failed).
    pub low_disk_space: bool,
    /// Downloads transferring.
    pub active: usize,
    /// Downloads waiting for a slot.
    pub queued: usize,
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

/// Queue position: priority rank, then queue order (creation order unless moved), then
/// creation sequence to break ties.
type QueueKey = (u8, i64, u64, Guid);

#[derive(Debug)]
struct Registry {
    ops: HashMap<Guid, Arc<Op>>,
    /// Every download by creation sequence: ListDownloads order and its page tokens.
    by_seq: BTreeMap<u64, Arc<Op>>,
    /// IDLE downloads waiting for a slot, in run order.
    queue: BTreeSet<QueueKey>,
    /// Transfer tasks alive (including ones winding down after a pause).
    active: usize,
    /// Transfer tasks alive per transfer group, for serialized groups.
    active_in_group: HashMap<String, usize>,
    /// Transfer groups that do not run in parallel.
    groups: HashMap<String, Behavior>,
    next_seq: u64,
    /// Result files claimed by unfinished downloads.
    claimed: HashMap<String, Guid>,
    /// Network, policy and disk conditions.
    conditions: Conditions,
    /// Free space when a write last failed with a full disk; cleared once space returns.
    disk_full_at: Option<u64>,
    /// Origins (host, port) that were unreachable when the network was detected down; a route
    /// to any of them means it is back.
    probe_targets: Vec<(String, u16)>,
}

#[derive(Debug)]
struct Op {
    /// What is fixed for life; what can change lives in [`OpState::settings`].
    spec: DownloadSpec,
    hub: Arc<Hub>,
    state: Mutex<OpState>,
    /// Serialises store writes of this download (see the module docs).
    persist: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct OpState {
    settings: Settings,
    status: Status,
    reason: StatusReason,
    /// The recoverable HTTP status that paused it.
    web_error_status: Option<u16>,
    /// Position within its priority; see [`QueueKey`].
    queue_order: i64,
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
            settings,
            status,
            checkpoint_bytes,
            total_bytes,
            validators,
            response,
            error,
            attempts,
            web_error_status,
            queue_order,
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
        let reason = match status {
            Status::PausedByApplication => StatusReason::PausedByClient,
            Status::PausedRecoverableWebErrorStatus => StatusReason::RecoverableWebError,
            Status::Idle => StatusReason::WaitingForSlot,
            _ => StatusReason::Unspecified,
        };
        Arc::new(Op {
            hub: Arc::new(Hub::new(
                &spec.guid,
                &spec.transfer_group,
                progress,
                bus.clone(),
            )),
            state: Mutex::new(OpState {
                settings,
                status,
                reason,
                web_error_status,
                queue_order,
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

    fn queue_key(&self, st: &OpState) -> QueueKey {
        (
            st.settings.priority.rank(),
            st.queue_order,
            self.spec.seq,
            self.spec.guid.clone(),
        )
    }

    fn record(&self) -> Record {
        let st = self.lock();
        Record {
            spec: self.spec.clone(),
            settings: st.settings.clone(),
            status: st.status,
            checkpoint_bytes: st.checkpoint,
            total_bytes: st.total,
            validators: st.validators.clone(),
            response: st.response.clone(),
            error: st.error.clone(),
            attempts: st.attempts,
            web_error_status: st.web_error_status,
            queue_order: st.queue_order,
        }
    }

    fn view(&self) -> DownloadView {
        let snapshot = self.hub.current();
        let st = self.lock();
        DownloadView {
            spec: self.spec.clone(),
            settings: st.settings.clone(),
            reason: st.reason,
            web_error_status: st.web_error_status,
            progress: progress::FlagCursor::first(&snapshot).1,
            error: st.error.clone(),
            attempts: st.attempts,
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
    pub async fn open(
        config: EngineConfig,
        store: Arc<dyn Store>,
        fetcher: Fetcher,
        shutdown: CancellationToken,
    ) -> Result<Engine, Error> {
        let bus = Bus::default();
        let mut registry = Registry {
            ops: HashMap::new(),
            by_seq: BTreeMap::new(),
            queue: BTreeSet::new(),
            active: 0,
            active_in_group: HashMap::new(),
            groups: store.load_groups().await?.into_iter().collect(),
            next_seq: 0,
            claimed: HashMap::new(),
            conditions: Conditions::new(config.min_free_disk_bytes, config.default_cost_policy),
            disk_full_at: None,
            probe_targets: Vec::new(),
        };
        let mut after_seq = 0;
        loop {
            let page = store.load_page(after_seq, store::LOAD_PAGE_SIZE).await?;
            let Some(last) = page.last() else { break };
            after_seq = last.spec.seq;
            for mut record in page {
                // A download that was running, or paused by conditions, when the server stopped
                // waits for a slot again; conditions are measured afresh.
                if record.status == Status::Running || conditions::is_automatic_pause(record.status)
                {
                    record.status = Status::Idle;
                }
                let op = Op::from_record(record, &bus);
                registry.insert(op);
            }
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

    /// Measures the host, starts the monitor of disk space and network, and starts transferring
    /// queued downloads.
    pub fn start(&self) {
        self.measure_disk();
        self.reconcile();
        let engine = self.clone();
        self.inner
            .tasks
            .spawn(async move { engine.monitor().await });
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
            recoverable_web_error_statuses,
        } = new;
        let uri = validate_uri(&requested_uri)?;
        let expected_sha256 = validate_sha256(&expected_sha256)?;
        let priority = validate_priority(priority)?;
        let cost_policy = validate_cost_policy(cost_policy)?;
        validate_group(&transfer_group)?;
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
        let mut recoverable = Vec::new();
        for code in recoverable_web_error_statuses {
            match u16::try_from(code) {
                Ok(c) if (400..=599).contains(&c) => recoverable.push(c),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "recoverable_web_error_statuses may hold only HTTP error statuses (400 to 599), not {code}"
                    )));
                }
            }
        }
        recoverable.sort_unstable();
        recoverable.dedup();
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
        let record = Record {
            spec: DownloadSpec {
                guid: guid.clone(),
                seq,
                result_file,
                transfer_group,
                expected_sha256,
                recoverable_web_error_statuses: recoverable,
            },
            settings: Settings {
                requested_uri: uri.to_string(),
                request_headers: headers,
                priority,
                cost_policy,
            },
            status: Status::Idle,
            checkpoint_bytes: 0,
            total_bytes: 0,
            validators: Validators::default(),
            response: None,
            error: None,
            attempts: 0,
            web_error_status: None,
            queue_order: i64::try_from(seq).unwrap_or(i64::MAX),
        };
        let op = Op::from_record(record.clone(), &self.inner.bus);
        if let Err(e) = self.inner.store.insert(&record).await {
            self.inner.lock().claimed.remove(&op.spec.result_file);
            return Err(e.into());
        }
        self.inner.lock().insert(op.clone());
        op.hub.announce();
        tracing::info!(guid = %guid, file = %op.spec.result_file, "download created");
        // Conditions may hold it back at once (no network, costed, constrained).
        self.conditions_changed().await;
        Ok(self.view(&op))
    }

    /// One download.
    pub fn get(&self, guid: &str) -> Result<DownloadView, Error> {
        let op = self.op(guid)?;
        Ok(self.view(&op))
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
        let downloads = page.iter().map(|op| reg.view(op)).collect();
        drop(reg);
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => last.spec.seq.to_string(),
            _ => String::new(),
        };
        Ok(Page {
            downloads,
            next_page_token,
        })
    }

    /// Pauses a download: PAUSED_BY_APPLICATION, keeping its partial data. Returns once the
    /// transfer has let go (request dropped, data checkpointed).
    pub async fn pause(&self, guid: &str) -> Result<DownloadView, Error> {
        let op = self.op(guid)?;
        let changed = {
            let mut reg = self.inner.lock();
            let mut st = op.lock();
            match st.status {
                s if s.is_terminal() => return Err(illegal(guid, "pause", s)),
                Status::PausedByApplication => None,
                _ => {
                    reg.queue.remove(&op.queue_key(&st));
                    st.status = Status::PausedByApplication;
                    st.reason = StatusReason::PausedByClient;
                    op.publish(&st);
                    Some(st.task.as_ref().map(TaskHandle::stop))
                }
            }
        };
        let Some(running) = changed else {
            return Ok(self.view(&op));
        };
        tracing::info!(guid, "paused");
        if let Some(done) = running {
            let _ = tokio::time::timeout(LET_GO_TIMEOUT, done.cancelled()).await;
        }
        self.persist(&op).await?;
        Ok(self.view(&op))
    }

    /// Resumes a download paused by a client or by a recoverable web error: it is queued again
    /// (or held by conditions) and continues from its partial data.
    pub async fn resume(&self, guid: &str) -> Result<DownloadView, Error> {
        let op = self.op(guid)?;
        let changed = {
            let mut reg = self.inner.lock();
            let mut st = op.lock();
            match st.status {
                s if s.is_terminal() => return Err(illegal(guid, "resume", s)),
                Status::PausedByApplication | Status::PausedRecoverableWebErrorStatus => {
                    st.status = Status::Idle;
                    st.reason = StatusReason::WaitingForSlot;
                    st.web_error_status = None;
                    reg.queue.insert(op.queue_key(&st));
                    op.publish(&st);
                    true
                }
                // Running, queued, or held by conditions that lift by themselves.
                _ => false,
            }
        };
        if !changed {
            return Ok(self.view(&op));
        }
        tracing::info!(guid, "resumed");
        self.persist(&op).await?;
        self.conditions_changed().await;
        Ok(self.view(&op))
    }

    /// Cancels a download: CANCELED, terminal; its partial data is removed before it returns.
    pub async fn cancel(&self, guid: &str) -> Result<DownloadView, Error> {
        let op = self.op(guid)?;
        let running = {
            let mut reg = self.inner.lock();
            let mut st = op.lock();
            if st.status.is_terminal() {
                return Err(illegal(guid, "cancel", st.status));
            }
            reg.queue.remove(&op.queue_key(&st));
            reg.claimed.remove(&op.spec.result_file);
            st.status = Status::Canceled;
            st.reason = StatusReason::Unspecified;
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
        Ok(self.view(&op))
    }

    /// Changes a download's cost policy; it pauses or continues at once as conditions say.
    pub async fn set_cost_policy(
        &self,
        guid: &str,
        cost_policy: i32,
    ) -> Result<DownloadView, Error> {
        let cost_policy = validate_cost_policy(cost_policy)?;
        self.edit(guid, "change the cost policy of", |_, st| {
            st.settings.cost_policy = cost_policy;
            Ok(())
        })
        .await
    }

    /// Changes a download's priority; a queued download moves in the queue at once.
    pub async fn set_priority(&self, guid: &str, priority: i32) -> Result<DownloadView, Error> {
        let priority = validate_priority(priority)?;
        self.edit(guid, "change the priority of", |_, st| {
            st.settings.priority = priority;
            Ok(())
        })
        .await
    }

    /// Sets a request header for the download's next requests.
    pub async fn set_request_header(
        &self,
        guid: &str,
        name: &str,
        value: &str,
    ) -> Result<DownloadView, Error> {
        fetch::check_user_header(name, value).map_err(Error::InvalidArgument)?;
        let name = name.to_ascii_lowercase();
        self.edit(guid, "set a request header of", |_, st| {
            let headers = &mut st.settings.request_headers;
            if !headers.contains_key(&name) && headers.len() >= MAX_REQUEST_HEADERS {
                return Err(Error::InvalidArgument(format!(
                    "at most {MAX_REQUEST_HEADERS} request headers are allowed"
                )));
            }
            headers.insert(name.clone(), value.to_string());
            Ok(())
        })
        .await
    }

    /// Removes a request header; removing one that is not set is not an error.
    pub async fn remove_request_header(
        &self,
        guid: &str,
        name: &str,
    ) -> Result<DownloadView, Error> {
        let name = name.to_ascii_lowercase();
        self.edit(guid, "remove a request header of", |_, st| {
            st.settings.request_headers.remove(&name);
            Ok(())
        })
        .await
    }

    /// Points a paused download at a new URI. On resume it continues if the new resource has the
    /// same validators and length (If-Range and Content-Range decide), and restarts otherwise.
    pub async fn set_requested_uri(&self, guid: &str, uri: &str) -> Result<DownloadView, Error> {
        let uri = validate_uri(uri)?;
        self.edit(guid, "change the URI of", |guid, st| {
            if !matches!(
                st.status,
                Status::PausedByApplication | Status::PausedRecoverableWebErrorStatus
            ) {
                return Err(Error::NotPaused {
                    guid: guid.into(),
                    status: st.status,
                });
            }
            st.settings.requested_uri = uri.to_string();
            Ok(())
        })
        .await
    }

    /// Sets how a transfer group runs its downloads.
    pub async fn set_group_behavior(&self, group: &str, behavior: i32) -> Result<Behavior, Error> {
        if group.is_empty() {
            return Err(Error::InvalidArgument(
                "transfer_group is empty; name the group whose behavior to set".into(),
            ));
        }
        validate_group(group)?;
        let behavior = Behavior::from_code(behavior).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "behavior {behavior} is not a BackgroundTransferBehavior (PARALLEL 0, SERIALIZED 1)"
            ))
        })?;
        self.inner.store.save_group(group, behavior).await?;
        {
            let mut reg = self.inner.lock();
            match behavior {
                Behavior::Parallel => reg.groups.remove(group),
                Behavior::Serialized => reg.groups.insert(group.to_string(), behavior),
            };
        }
        tracing::info!(group, ?behavior, "transfer group behavior set");
        self.schedule();
        Ok(behavior)
    }

    /// Moves a download, and the downloads of its group queued after it, to the front of its
    /// group. Other groups keep their places: the group's own queue slots are reassigned.
    pub async fn make_current_in_group(&self, guid: &str) -> Result<DownloadView, Error> {
        let op = self.op(guid)?;
        let group = op.spec.transfer_group.clone();
        if group.is_empty() {
            return Err(Error::NoGroup { guid: guid.into() });
        }
        let moved = {
            let mut reg = self.inner.lock();
            let status = op.lock().status;
            if status.is_terminal() {
                return Err(illegal(guid, "reorder", status));
            }
            let mut members: Vec<Arc<Op>> = reg
                .by_seq
                .values()
                .filter(|o| o.spec.transfer_group == group && !o.lock().status.is_terminal())
                .cloned()
                .collect();
            members.sort_by_key(|o| {
                let st = o.lock();
                (st.queue_order, o.spec.seq)
            });
            let slots: Vec<i64> = members.iter().map(|o| o.lock().queue_order).collect();
            let at = members
                .iter()
                .position(|o| o.spec.guid == op.spec.guid)
                .expect("a live download is a member of its own group");
            members.rotate_left(at);
            for (member, slot) in members.iter().zip(slots) {
                let mut st = member.lock();
                let queued = reg.queue.remove(&member.queue_key(&st));
                st.queue_order = slot;
                if queued {
                    reg.queue.insert(member.queue_key(&st));
                }
            }
            members
        };
        for member in &moved {
            self.persist(member).await?;
        }
        self.schedule();
        Ok(self.view(&op))
    }

    /// Overrides network conditions (`Some`) or hands them back to detection (`None`).
    pub async fn set_network_conditions(
        &self,
        connected: Option<bool>,
        costed: Option<bool>,
    ) -> SystemView {
        {
            let mut reg = self.inner.lock();
            reg.conditions.connected_override = connected;
            reg.conditions.costed_override = costed;
        }
        tracing::info!(?connected, ?costed, "network conditions set by operator");
        self.conditions_changed().await;
        self.system()
    }

    /// Enters or leaves constrained mode.
    pub async fn set_constrained(&self, constrained: bool) -> SystemView {
        self.inner.lock().conditions.constrained = constrained;
        tracing::info!(constrained, "system policy set by operator");
        self.conditions_changed().await;
        self.system()
    }

    /// The host as the engine sees it, with free space measured now.
    pub fn system(&self) -> SystemView {
        self.measure_disk();
        let reg = self.inner.lock();
        let queued = reg.queue.len();
        SystemView {
            conditions: reg.conditions,
            low_disk_space: reg.low_disk_space(),
            active: reg.active,
            queued,
        }
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

    fn view(&self, op: &Op) -> DownloadView {
        self.inner.lock().view(op)
    }

    /// Applies a live edit to a non-terminal download, keeping its queue position consistent,
    /// then stores it and lets conditions and the scheduler react.
    async fn edit(
        &self,
        guid: &str,
        action: &'static str,
        change: impl FnOnce(&str, &mut OpState) -> Result<(), Error>,
    ) -> Result<DownloadView, Error> {
        let op = self.op(guid)?;
        {
            let mut reg = self.inner.lock();
            let mut st = op.lock();
            if st.status.is_terminal() {
                return Err(illegal(guid, action, st.status));
            }
            let queued = reg.queue.remove(&op.queue_key(&st));
            let result = change(guid, &mut st);
            if queued {
                reg.queue.insert(op.queue_key(&st));
            }
            result?;
        }
        self.persist(&op).await?;
        self.conditions_changed().await;
        Ok(self.view(&op))
    }

    /// Puts every download in the state the current conditions call for: downloads that may not
    /// run pause (a running one drops its request and keeps its data), and downloads paused by
    /// conditions that no longer hold are queued again. Returns the downloads that changed.
    fn reconcile(&self) -> Vec<Arc<Op>> {
        let mut reg = self.inner.lock();
        let conditions = reg.conditions;
        let low_disk = reg.low_disk_space();
        let ops: Vec<Arc<Op>> = reg.by_seq.values().cloned().collect();
        let mut changed = Vec::new();
        for op in ops {
            let mut st = op.lock();
            let movable = st.status == Status::Idle
                || st.status == Status::Running
                || conditions::is_automatic_pause(st.status);
            if !movable {
                continue;
            }
            let mut blocks = conditions.blocks(st.settings.cost_policy);
            if blocks.is_none() && low_disk {
                blocks = Some((Status::PausedSystemPolicy, StatusReason::LowDiskSpace));
            }
            match blocks {
                Some((status, reason)) if st.status != status || st.reason != reason => {
                    reg.queue.remove(&op.queue_key(&st));
                    if let Some(task) = &st.task {
                        let _ = task.stop();
                    }
                    tracing::info!(guid = %op.spec.guid, status = status.name(), ?reason, "paused by conditions");
                    st.status = status;
                    st.reason = reason;
                    op.publish(&st);
                    changed.push(op.clone());
                }
                None if conditions::is_automatic_pause(st.status) => {
                    tracing::info!(guid = %op.spec.guid, "conditions lifted; queued again");
                    st.status = Status::Idle;
                    st.reason = StatusReason::WaitingForSlot;
                    reg.queue.insert(op.queue_key(&st));
                    op.publish(&st);
                    changed.push(op.clone());
                }
                _ => {}
            }
        }
        changed
    }

    /// Reconciles with the conditions, stores what changed, and schedules.
    async fn conditions_changed(&self) {
        for op in self.reconcile() {
            if let Err(e) = self.persist(&op).await {
                tracing::warn!(error = %e, "could not store a change of conditions");
            }
        }
        self.schedule();
    }

    /// Measures free space on the download volume.
    fn measure_disk(&self) {
        let free = paths::free_space(&self.inner.config.download_dir);
        let mut reg = self.inner.lock();
        match free {
            Ok(free) => {
                reg.conditions.free_disk_bytes = free;
                if reg
                    .disk_full_at
                    .is_some_and(|at| free > at + DISK_FULL_HEADROOM)
                {
                    reg.disk_full_at = None;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot measure free disk space"),
        }
    }

    /// Watches the host: free disk space, and while the network is detected down, routes to
    /// the origins that were unreachable.
    async fn monitor(self) {
        let mut tick = tokio::time::interval(MONITOR_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.inner.shutdown.cancelled() => return,
            }
            let (low_before, targets) = {
                let reg = self.inner.lock();
                let targets = if reg.conditions.detected_connected {
                    Vec::new()
                } else {
                    reg.probe_targets.clone()
                };
                (reg.low_disk_space(), targets)
            };
            self.measure_disk();
            let mut changed = self.inner.lock().low_disk_space() != low_before;
            if !targets.is_empty() && routable(&targets).await {
                tracing::info!("a route to the origins is back; the network counts as connected");
                let mut reg = self.inner.lock();
                reg.conditions.detected_connected = true;
                reg.probe_targets.clear();
                changed = true;
            }
            if changed {
                self.conditions_changed().await;
            }
        }
    }

    /// Starts queued downloads while slots are free, one at a time per serialized group.
    fn schedule(&self) {
        if self.inner.shutdown.is_cancelled() {
            return;
        }
        let mut reg = self.inner.lock();
        let mut held = Vec::new();
        while reg.active < self.inner.config.max_active {
            let Some(key) = reg.queue.pop_first() else {
                break;
            };
            let Some(op) = reg.ops.get(&key.3).cloned() else {
                continue;
            };
            let group = &op.spec.transfer_group;
            if reg.groups.get(group) == Some(&Behavior::Serialized)
                && reg.active_in_group.get(group).copied().unwrap_or(0) > 0
            {
                held.push(key);
                continue;
            }
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
                    held.push(key);
                    continue;
                }
                st.status = Status::Running;
                st.reason = StatusReason::Unspecified;
                st.task = Some(TaskHandle {
                    stop: token.clone(),
                    done: done.clone(),
                });
                op.publish(&st);
            }
            reg.active += 1;
            *reg.active_in_group.entry(group.clone()).or_default() += 1;
            let engine = self.clone();
            // A root span: schedule often runs inside the span of the transfer that just ended,
            // and a child of it would nest every later transfer in the one before.
            let span = tracing::info_span!(parent: None, "transfer", guid = %op.spec.guid);
            self.inner
                .tasks
                .spawn(async move { engine.transfer(op, token, done).await }.instrument(span));
        }
        reg.queue.extend(held);
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
        let (remove_partial, conditions_moved) = {
            let mut reg = self.inner.lock();
            reg.active -= 1;
            if let Some(n) = reg.active_in_group.get_mut(&op.spec.transfer_group) {
                *n -= 1;
                if *n == 0 {
                    reg.active_in_group.remove(&op.spec.transfer_group);
                }
            }
            let mut st = op.lock();
            st.task = None;
            // Unless it completed, only what reached the disk counts: a failed write may have
            // left received bytes in memory that the next attempt asks for again.
            st.bytes = st.checkpoint;
            let status_before = st.status;
            let mut conditions_moved = false;
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
                    let web_status = failure
                        .error
                        .http_status
                        .filter(|code| op.spec.recoverable_web_error_statuses.contains(code));
                    if let Some(code) = web_status {
                        tracing::info!(code, "paused on a recoverable web error status");
                        st.status = Status::PausedRecoverableWebErrorStatus;
                        st.reason = StatusReason::RecoverableWebError;
                        st.web_error_status = Some(code);
                    } else if failure.network_down {
                        tracing::warn!(error = %failure.error.message, "the network is down");
                        reg.conditions.detected_connected = false;
                        if let Some(target) = probe_target(&st.settings.requested_uri) {
                            if !reg.probe_targets.contains(&target) {
                                reg.probe_targets.push(target);
                            }
                        }
                        // Reconciling below pauses this and every other download.
                        st.status = Status::Idle;
                        reg.queue.insert(op.queue_key(&st));
                        conditions_moved = true;
                    } else if failure.disk_full {
                        tracing::warn!(error = %failure.error.message, "the disk is full");
                        reg.disk_full_at =
                            Some(reg.conditions.free_disk_bytes.min(
                                paths::free_space(&self.inner.config.download_dir).unwrap_or(0),
                            ));
                        st.status = Status::Idle;
                        reg.queue.insert(op.queue_key(&st));
                        conditions_moved = true;
                    } else {
                        tracing::warn!(error = %failure.error.message, "failed");
                        st.status = Status::Error;
                        st.reason = StatusReason::Unspecified;
                        st.error = Some(failure.error);
                        reg.claimed.remove(&op.spec.result_file);
                    }
                }
                _ => {}
            }
            op.publish(&st);
            (
                matches!(st.status, Status::Canceled | Status::Error),
                conditions_moved,
            )
        };
        if remove_partial {
            self.remove_partial(&op).await;
        }
        if let Err(e) = self.persist(&op).await {
            tracing::error!(error = %e, "could not record the end of the transfer");
        }
        done.cancel();
        if conditions_moved {
            self.conditions_changed().await;
        } else {
            self.schedule();
        }
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
            let (settings, checkpoint, validators, total) = {
                let mut st = op.lock();
                st.attempts += 1;
                (
                    st.settings.clone(),
                    st.checkpoint,
                    st.validators.clone(),
                    st.total,
                )
            };
            let job = Job {
                settings: &settings,
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
            if failure.network_down {
                // "Network down" means the host has no route to the origin: the same question
                // the monitor asks to notice its return. An unreachable host behind a working
                // route (ARP or a remote router said no) is the origin's problem, retried and
                // counted; otherwise detection and recovery would disagree and flap forever.
                // While an operator decides connectivity, marking it down would change nothing
                // and the download would be queued and fail again at once, so it counts too.
                let overridden = self.inner.lock().conditions.connected_override.is_some();
                let target = probe_target(&settings.requested_uri);
                if overridden || routable(target.as_slice()).await {
                    failure.network_down = false;
                }
            }
            {
                // Between attempts, progress shows what is on disk, where the next one resumes.
                let mut st = op.lock();
                st.bytes = st.checkpoint;
                op.publish(&st);
            }
            let recoverable = failure
                .error
                .http_status
                .is_some_and(|code| op.spec.recoverable_web_error_statuses.contains(&code));
            // Offline, a full disk and a recoverable status pause instead of spending retries.
            if !failure.transient
                || failure.network_down
                || failure.disk_full
                || recoverable
                || stop.is_cancelled()
            {
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
        let disk = |what: &str, e: std::io::Error| Failure::disk(what, &e);
        tokio::task::spawn_blocking(move || {
            if let Some(expected) = expected {
                // Hashing the whole file covers bytes from every attempt and restart alike.
                let actual = paths::sha256_file(&partial)
                    .map_err(|e| disk("could not read the finished file to verify it", e))?;
                if actual != expected {
                    return Err(Failure::fatal(TransferError {
                        message: format!(
                            "the downloaded bytes have SHA-256 {actual}, not the expected {expected}; nothing was written to `{result_file}`"
                        ),
                        http_status: None,
                        reason: ErrorReason::Integrity,
                    }));
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
        Ok(self.inner.store.save(&record).await?)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Registry {
    fn insert(&mut self, op: Arc<Op>) {
        {
            let st = op.lock();
            if st.status == Status::Idle {
                self.queue.insert(op.queue_key(&st));
            }
            if !st.status.is_terminal() {
                self.claimed
                    .insert(op.spec.result_file.clone(), op.spec.guid.clone());
            }
        }
        self.next_seq = self.next_seq.max(op.spec.seq);
        self.by_seq.insert(op.spec.seq, op.clone());
        self.ops.insert(op.spec.guid.clone(), op);
    }

    fn low_disk_space(&self) -> bool {
        self.conditions.low_disk_space() || self.disk_full_at.is_some()
    }

    /// The download's view, telling "waiting for a slot" from "waiting for its group".
    fn view(&self, op: &Op) -> DownloadView {
        let mut view = op.view();
        let group = &op.spec.transfer_group;
        if view.reason == StatusReason::WaitingForSlot
            && self.groups.get(group) == Some(&Behavior::Serialized)
            && self.active_in_group.get(group).copied().unwrap_or(0) > 0
        {
            view.reason = StatusReason::WaitingForGroup;
        }
        view
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

fn validate_priority(priority: i32) -> Result<Priority, Error> {
    Priority::from_code(priority).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "priority {priority} is not a BackgroundTransferPriority (DEFAULT 0, HIGH 1, LOW 2)"
        ))
    })
}

fn validate_cost_policy(cost_policy: i32) -> Result<CostPolicy, Error> {
    CostPolicy::from_code(cost_policy).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "cost_policy {cost_policy} is not a BackgroundTransferCostPolicy (DEFAULT 0, UNRESTRICTED_ONLY 1, ALWAYS 2)"
        ))
    })
}

fn validate_group(group: &str) -> Result<(), Error> {
    if group.len() > MAX_GROUP_LEN || group.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "transfer_group must be at most {MAX_GROUP_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

/// The (host, port) whose route tells whether the network is back.
fn probe_target(uri: &str) -> Option<(String, u16)> {
    let url = url::Url::parse(uri).ok()?;
    Some((url.host_str()?.to_string(), url.port_or_known_default()?))
}

/// Whether the host has a route to any of `targets`. A UDP `connect()` performs the route
/// lookup without sending a packet, so probing costs nothing on the wire.
async fn routable(targets: &[(String, u16)]) -> bool {
    for (host, port) in targets {
        let Ok(addrs) = tokio::net::lookup_host((host.as_str(), *port)).await else {
            continue;
        };
        for addr in addrs {
            let local: std::net::SocketAddr = if addr.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            if let Ok(socket) = tokio::net::UdpSocket::bind(local).await {
                if socket.connect(addr).await.is_ok() {
                    return true;
                }
            }
        }
    }
    false
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
