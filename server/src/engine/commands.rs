//! What clients ask of the engine: create a download, read and watch it, pause, resume or
//! cancel it, and edit it while it lives. Each command checks its input, changes state through
//! the one transition function, stores the result and lets conditions and the scheduler react.
//!
//! Every command runs as a [`Caller`]: it creates downloads in the caller's tenant (within the
//! tenant's quota), and finds only downloads the caller may see; another tenant's guid is
//! answered exactly like one that never existed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::cluster::{Call, Control};
use super::download::{Op, OpState, TaskHandle, client_owned_pause};
use super::registry::{PageRequest, SnapshotWalk};
use super::tenants::Scope;
use super::{DownloadView, Engine, Page, validate};
use crate::auth::Caller;
use crate::error::Error;
use crate::operation::{
    CostPolicy, DownloadSpec, Priority, ResponseInfo, Settings, Status, StatusReason, Validators,
};
use crate::progress::{self, Message};
use crate::redact;
use crate::store::shared::Notice;
use crate::store::{Record, StoreError};

/// How long PauseDownload and CancelDownload wait for a running transfer to let go (drop its
/// request, flush and checkpoint, or remove its data) before answering anyway. Letting go takes
/// one fsync; the bound only matters on a disk that hangs.
const LET_GO_TIMEOUT: Duration = Duration::from_secs(5);

/// A new download as a client asks for it.
#[derive(Clone, Debug, Default)]
pub struct NewDownload {
    /// The URI.
    pub requested_uri: String,
    /// Relative result path; empty lets the server pick.
    pub result_file: String,
    /// Queue priority.
    pub priority: Priority,
    /// Metered-network policy.
    pub cost_policy: CostPolicy,
    /// Transfer group.
    pub transfer_group: String,
    /// Extra request headers.
    pub request_headers: BTreeMap<String, String>,
    /// Names of headers whose values are secrets, beyond the built-in rule.
    pub sensitive_headers: Vec<String>,
    /// Expected SHA-256 in hex; empty for none.
    pub expected_sha256: String,
    /// HTTP statuses that pause instead of failing.
    pub recoverable_web_error_statuses: Vec<u32>,
    /// Largest file accepted, in bytes; 0 for the server's `--max-file-size` alone.
    pub max_bytes: u64,
    /// Whether the download may replace a file already at its result path.
    pub replace_existing: bool,
    /// Its own bandwidth limit in bytes/s; 0 for none.
    pub max_bytes_per_second: u64,
}

impl Engine {
    /// Validates, durably stores and queues a new download of the caller's tenant, within the
    /// tenant's quota of unfinished downloads.
    pub async fn create(&self, caller: &Caller, new: NewDownload) -> Result<DownloadView, Error> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let mut checked = validate::new_download(new, self.inner.fetcher.egress())?;
        // Time-ordered (UUIDv7: a millisecond timestamp, then 74 random bits), so the store's
        // guid index grows at its end instead of at random pages: with many creates in one
        // commit, a random key touched a page per create and the commit grew with the store.
        let guid = uuid::Uuid::now_v7().to_string();
        // Replicas take creation numbers from the shared store, so no two hand out the same.
        let seq = self.next_seq().await?;
        let named = checked.result_file.is_some();
        let (seq, result_file) = self.claim_result_file(
            caller,
            &guid,
            &checked.uri,
            checked.result_file.take(),
            checked.replace_existing,
            seq,
        )?;
        let mut record = new_record(guid.clone(), seq, caller, result_file, checked);
        let held = self.held_from_start(record.settings.cost_policy);
        if let Some((status, _)) = held {
            record.status = status;
        }
        let quota = caller.max_live_downloads;
        // The store write and what follows it run as their own task: a client that goes away
        // mid-call drops this future, and must not leave a stored download the engine does not
        // know, or a result file claimed by nobody.
        let engine = self.clone();
        let stored = tokio::spawn(async move {
            let stored = engine.store_new(&mut record, named, quota).await;
            let op = {
                let mut core = engine.lock();
                core.registry.settle(&record.spec.tenant);
                if let Err(e) = stored {
                    core.registry.release_claim(&record.spec);
                    return Err(e);
                }
                let op = Op::from_record(record, &engine.inner.bus);
                if let Some((_, reason)) = held {
                    op.lock().reason = reason;
                }
                core.add(op.clone());
                op
            };
            op.hub.announce();
            let guid = op.spec.guid.clone();
            engine.announce(|node| Notice::Changed { guid, node }).await;
            Ok(op)
        });
        let op = match stored.await {
            Ok(result) => result?,
            Err(e) => return Err(Error::Storage(StoreError::Unavailable(e.to_string()))),
        };
        log_created(&op, caller);
        // Conditions may hold it back at once (no network, costed, constrained).
        self.settings_changed(&op).await;
        Ok(self.view(&op))
    }

    /// One download.
    pub async fn get(&self, caller: &Caller, guid: &str) -> Result<DownloadView, Error> {
        // With replicas, one created on another a moment ago is read from the store, and one
        // this replica does not hold is answered from the store (see `fresh_view`).
        let op = self.op_or_fetch(caller, guid).await?;
        if let Some(view) = self.fresh_view(&op).await? {
            return Ok(view);
        }
        Ok(self.view(&op))
    }

    /// The latest HTTP response of a download.
    pub fn response_information(&self, caller: &Caller, guid: &str) -> Result<ResponseInfo, Error> {
        self.op(caller, guid)?
            .lock()
            .response
            .clone()
            .ok_or_else(|| Error::NoResponseYet { guid: guid.into() })
    }

    /// A page of the downloads in `scope` (see [`Scope::of`]), in creation order.
    pub async fn list(
        &self,
        scope: &Scope,
        group: Option<&str>,
        page_size: usize,
        page_token: &str,
    ) -> Result<Page, Error> {
        let request = PageRequest::parse(page_size, page_token)?;
        if self.inner.cluster.is_some() {
            // With replicas, the page comes from the database (see `cluster/feed.rs`).
            return self.list_shared(scope, group, request).await;
        }
        let core = self.lock();
        let (page, more) = core.registry.page(scope, group, request)?;
        let downloads = page.iter().map(|op| core.view(op)).collect();
        drop(core);
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
    /// transfer has let go (request dropped, data checkpointed). A pause that arrives while the
    /// finished file is being committed waits for the commit and is refused if it succeeded.
    pub async fn pause(&self, caller: &Caller, guid: &str) -> Result<DownloadView, Error> {
        let _held = match self.control(caller, guid, Call::Pause).await? {
            Control::Here(held) => held,
            Control::Done(view) => return Ok(*view),
        };
        let op = self.op(caller, guid)?;
        let changed = loop {
            let commit = {
                let mut core = self.lock();
                let mut st = op.lock();
                match (st.commit_in_progress(), st.status()) {
                    (Some(commit), _) => commit,
                    (None, Status::PausedByApplication) => break None,
                    (None, _) => {
                        let unshown = core
                            .transition_unshown(
                                &op,
                                &mut st,
                                Status::PausedByApplication,
                                StatusReason::PausedByClient,
                            )
                            .map_err(|e| illegal(guid, "pause", e.from))?;
                        let running = st.task.as_ref().map(TaskHandle::stop);
                        break Some((running, unshown));
                    }
                }
            };
            // The file is being committed: the pause applies to what the commit leaves (a
            // COMPLETED download refuses it).
            commit.cancelled().await;
        };
        let Some((running, unshown)) = changed else {
            return Ok(self.view(&op));
        };
        tracing::info!(%guid, host = %op.log_host(), by = %caller.name, "paused by a client");
        if let Some(done) = running {
            let _ = tokio::time::timeout(LET_GO_TIMEOUT, done.cancelled()).await;
        }
        self.persist(&op).await?;
        // Stored: watchers now see PAUSED_BY_APPLICATION, with the bytes the transfer
        // checkpointed as it let go.
        drop(unshown);
        Ok(self.view(&op))
    }

    /// Resumes a download paused by a client or by a recoverable web error: it is queued again
    /// (or held by conditions) and continues from its partial data.
    pub async fn resume(&self, caller: &Caller, guid: &str) -> Result<DownloadView, Error> {
        let _held = match self.control(caller, guid, Call::Resume).await? {
            Control::Here(held) => held,
            Control::Done(view) => return Ok(*view),
        };
        let op = self.op(caller, guid)?;
        let resumed_to = {
            let mut core = self.lock();
            let mut st = op.lock();
            let status = st.status();
            if status.is_terminal() {
                return Err(illegal(guid, "resume", status));
            }
            // Running, queued, or held by conditions that lift by themselves: nothing to do.
            if !client_owned_pause(status) {
                None
            } else {
                st.web_error_status = None;
                // Conditions that hold downloads back now take it straight to their pause: one
                // write and one status change, not IDLE and then paused a moment later.
                let (to, reason) = core
                    .held(st.settings.cost_policy)
                    .unwrap_or((Status::Idle, StatusReason::WaitingForSlot));
                let unshown = core
                    .transition_unshown(&op, &mut st, to, reason)
                    .map_err(|e| illegal(guid, "resume", e.from))?;
                Some((to, unshown))
            }
        };
        let Some((resumed_to, unshown)) = resumed_to else {
            return Ok(self.view(&op));
        };
        tracing::info!(
            %guid,
            host = %op.log_host(),
            by = %caller.name,
            status = resumed_to.name(),
            "resumed by a client"
        );
        self.persist(&op).await?;
        drop(unshown);
        self.settings_changed(&op).await;
        Ok(self.view(&op))
    }

    /// Cancels a download: CANCELED, terminal; its partial data is removed before it returns,
    /// and no file appears at its result path. A cancel that arrives while the finished file is
    /// being committed waits for the commit and is refused (COMPLETED) if it succeeded.
    pub async fn cancel(&self, caller: &Caller, guid: &str) -> Result<DownloadView, Error> {
        let _held = match self.control(caller, guid, Call::Cancel).await? {
            Control::Here(held) => held,
            Control::Done(view) => return Ok(*view),
        };
        let op = self.op(caller, guid)?;
        let (running, unshown) = loop {
            let commit = {
                let mut core = self.lock();
                let mut st = op.lock();
                if let Some(commit) = st.commit_in_progress() {
                    commit
                } else {
                    let unshown = core
                        .transition_unshown(
                            &op,
                            &mut st,
                            Status::Canceled,
                            StatusReason::Unspecified,
                        )
                        .map_err(|e| illegal(guid, "cancel", e.from))?;
                    let running = st.task.as_ref().map(TaskHandle::stop);
                    break (running, unshown);
                }
            };
            // The file is being committed: the cancel applies to what the commit leaves (a
            // COMPLETED download refuses it, so a committed file is never called canceled).
            commit.cancelled().await;
        };
        tracing::info!(%guid, host = %op.log_host(), by = %caller.name, "canceled by a client");
        match running {
            // The task removes the partial file itself once it has let go of it.
            Some(done) => {
                let _ = tokio::time::timeout(LET_GO_TIMEOUT, done.cancelled()).await;
            }
            None => self.remove_partial(&op).await,
        }
        self.persist(&op).await?;
        drop(unshown);
        Ok(self.view(&op))
    }

    /// Changes a download's cost policy; it pauses or continues at once as conditions say.
    pub async fn set_cost_policy(
        &self,
        caller: &Caller,
        guid: &str,
        cost_policy: CostPolicy,
    ) -> Result<DownloadView, Error> {
        let _held = match self
            .control(
                caller,
                guid,
                Call::SetCostPolicy {
                    policy: cost_policy.code(),
                },
            )
            .await?
        {
            Control::Here(held) => held,
            Control::Done(view) => return Ok(*view),
        };
        self.edit(caller, guid, "change the cost policy of", |_, st| {
            st.settings.cost_policy = cost_policy;
            Ok(())
        })
        .await
    }

    /// Changes a download's priority; a queued download moves in the queue at once.
    pub async fn set_priority(
        &self,
        caller: &Caller,
        guid: &str,
        priority: Priority,
    ) -> Result<DownloadView, Error> {
        let _held = match self
            .control(
                caller,
                guid,
                Call::SetPriority {
                    priority: priority.code(),
                },
            )
            .await?
        {
            Control::Here(held) => held,
            Control::Done(view) => return Ok(*view),
        };
        self.edit(caller, guid, "change the priority of", |_, st| {
            st.settings.priority = priority;
            Ok(())
        })
        .await
    }

    /// Sets a request header for the download's next requests, and marks it sensitive if asked
    /// (an existing mark stays either way).
    pub async fn set_request_header(
        &self,
        caller: &Caller,
        guid: &str,
        name: &str,
        value: &str,
        sensitive: bool,
    ) -> Result<DownloadView, Error> {
        // Checked before the download is looked up, as a malformed request is wrong anywhere.
        validate::set_header(&mut BTreeMap::new(), name, value)?;
        let marks: BTreeSet<String> = sensitive
            .then(|| name.to_ascii_lowercase())
            .into_iter()
            .collect();
        let _held = match self
            .control(
                caller,
                guid,
                Call::SetRequestHeader {
                    name: name.into(),
                    value: value.into(),
                    sensitive,
                },
            )
            .await?
        {
            Control::Here(held) => held,
            Control::Done(view) => return Ok(*view),
        };
        self.edit(caller, guid, "set a request header of", |_, st| {
            // Both checked before either changes, so a refusal leaves the download as it was.
            let settings = &mut st.settings;
            let mut marked = settings.sensitive_headers.clone();
            validate::mark_sensitive(&mut marked, marks)?;
            validate::set_header(&mut settings.request_headers, name, value)?;
            settings.sensitive_headers = marked;
            Ok(())
        })
        .await
    }

    /// Removes a request header; removing one that is not set is not an error.
    pub async fn remove_request_header(
        &self,
        caller: &Caller,
        guid: &str,
        name: &str,
    ) -> Result<DownloadView, Error> {
        let _held = match self
            .control(
                caller,
                guid,
                Call::RemoveRequestHeader { name: name.into() },
            )
            .await?
        {
            Control::Here(held) => held,
            Control::Done(view) => return Ok(*view),
        };
        let name = name.to_ascii_lowercase();
        self.edit(caller, guid, "remove a request header of", |_, st| {
            st.settings.request_headers.remove(&name);
            Ok(())
        })
        .await
    }

    /// Points a paused download at a new URI, setting `headers` and marking `sensitive` names in
    /// the same step. On another origin its sensitive headers are dropped first (see
    /// [`repoint`]). On resume it continues if the new resource has the same validators and
    /// length (If-Range and Content-Range decide), and restarts otherwise.
    pub async fn set_requested_uri(
        &self,
        caller: &Caller,
        guid: &str,
        uri: &str,
        headers: &BTreeMap<String, String>,
        sensitive: &[String],
    ) -> Result<DownloadView, Error> {
        let uri = validate::uri(uri, self.inner.fetcher.egress())?;
        let marks = validate::sensitive_names(sensitive)?;
        let mut checked = BTreeMap::new();
        for (name, value) in headers {
            validate::set_header(&mut checked, name, value)?;
        }
        let _held = match self
            .control(
                caller,
                guid,
                Call::SetRequestedUri {
                    uri: uri.to_string(),
                    headers: headers.clone(),
                    sensitive: sensitive.to_vec(),
                },
            )
            .await?
        {
            Control::Here(held) => held,
            Control::Done(view) => return Ok(*view),
        };
        self.edit(caller, guid, "change the URI of", |guid, st| {
            if !client_owned_pause(st.status()) {
                return Err(Error::NotPaused {
                    guid: guid.into(),
                    status: st.status(),
                });
            }
            // Changed on a copy, so a refused header (one too many) leaves the download as it was.
            let mut next = st.settings.clone();
            repoint(&mut next, &uri, &checked, marks)?;
            st.settings = next;
            Ok(())
        })
        .await
    }

    /// The progress publisher of a download, for WatchDownload.
    pub async fn watch(&self, caller: &Caller, guid: &str) -> Result<progress::WatchOne, Error> {
        let op = self.op_or_fetch(caller, guid).await?;
        Ok(progress::watch_one(
            op.hub.clone(),
            self.inner.closing.clone(),
        ))
    }

    /// The progress of every download in `scope` (see [`Scope::of`]; or of one group), for
    /// WatchDownloads.
    pub fn watch_all(
        &self,
        scope: Scope,
        group: Option<String>,
    ) -> impl futures_util::Stream<Item = Result<(Arc<str>, Message), progress::Lagged>> + use<>
    {
        let events = self.inner.bus.subscribe();
        let filter = progress::Filter {
            tenant: scope.tenant().cloned(),
            group: group.clone(),
        };
        let walk = SnapshotWalk::new(&self.inner, scope, group);
        progress::watch_all(events, walk, filter, self.inner.closing.clone())
    }

    /// Applies a live edit to a non-terminal download, keeping its queue position consistent,
    /// then stores it and lets conditions and the scheduler react.
    pub(super) async fn edit(
        &self,
        caller: &Caller,
        guid: &str,
        action: &'static str,
        change: impl FnOnce(&str, &mut OpState) -> Result<(), Error>,
    ) -> Result<DownloadView, Error> {
        let op = self.op(caller, guid)?;
        {
            let mut core = self.lock();
            let mut st = op.lock();
            if st.status().is_terminal() {
                return Err(illegal(guid, action, st.status()));
            }
            change(guid, &mut st)?;
            core.queue.reposition(op.queue_key(&st));
        }
        self.persist(&op).await?;
        self.settings_changed(&op).await;
        Ok(self.view(&op))
    }

    /// The download with this guid, if `caller` may see it.
    pub(super) fn op(&self, caller: &Caller, guid: &str) -> Result<Arc<Op>, Error> {
        self.lock().registry.find(guid, caller)
    }

    pub(super) fn view(&self, op: &Op) -> DownloadView {
        self.lock().view(op)
    }
}

/// A new download as it is first stored: IDLE, nothing received, at the end of its queue.
fn new_record(
    guid: String,
    seq: u64,
    caller: &Caller,
    result_file: String,
    checked: validate::CheckedDownload,
) -> Record {
    Record {
        spec: DownloadSpec {
            guid,
            seq,
            tenant: caller.tenant.clone(),
            result_file,
            transfer_group: checked.transfer_group,
            expected_sha256: checked.expected_sha256,
            recoverable_web_error_statuses: checked.recoverable_web_error_statuses,
            max_bytes: checked.max_bytes,
            replace_existing: checked.replace_existing,
        },
        settings: Settings {
            requested_uri: checked.uri.to_string(),
            request_headers: checked.request_headers,
            sensitive_headers: checked.sensitive_headers,
            priority: checked.priority,
            cost_policy: checked.cost_policy,
            max_bytes_per_second: checked.max_bytes_per_second,
        },
        status: Status::Idle,
        checkpoint_bytes: 0,
        segments: Vec::new(),
        total_bytes: 0,
        sha256_state: None,
        validators: Validators::default(),
        response: None,
        error: None,
        attempts: 0,
        web_error_status: None,
        queue_order: i64::try_from(seq).unwrap_or(i64::MAX),
        finished_at: None,
    }
}

/// Points `settings` at `uri`. When the origin (scheme, host, port) changes, every sensitive
/// header (the built-in rule and the download's marks, `marks` included) is dropped before
/// `headers` are set: a re-pointed download never carries a secret to a host it was not given
/// for, unless the same call gives it again.
fn repoint(
    settings: &mut Settings,
    uri: &url::Url,
    headers: &BTreeMap<String, String>,
    marks: BTreeSet<String>,
) -> Result<(), Error> {
    let same_origin =
        url::Url::parse(&settings.requested_uri).is_ok_and(|old| old.origin() == uri.origin());
    validate::mark_sensitive(&mut settings.sensitive_headers, marks)?;
    if !same_origin {
        let marked = &settings.sensitive_headers;
        settings
            .request_headers
            .retain(|name, _| !redact::is_sensitive(name, marked));
    }
    for (name, value) in headers {
        validate::set_header(&mut settings.request_headers, name, value)?;
    }
    settings.requested_uri = uri.to_string();
    Ok(())
}

pub(super) fn illegal(guid: &str, action: &'static str, status: Status) -> Error {
    Error::IllegalTransition {
        guid: guid.into(),
        action,
        status,
    }
}

/// The INFO line of a new download: who created it, where it comes from and goes to.
fn log_created(op: &Op, caller: &Caller) {
    tracing::info!(
        guid = %op.spec.guid,
        host = %op.log_host(),
        tenant = caller.tenant.name(),
        by = %caller.name,
        file = %op.spec.result_file,
        "download created"
    );
    let (status, reason) = {
        let st = op.lock();
        (st.status(), st.reason)
    };
    if status != Status::Idle {
        // Held from the start by the host's conditions: the line a later pause would log.
        tracing::info!(guid = %op.spec.guid, host = %op.log_host(), status = status.name(), "paused by {}", reason.cause());
    }
}
