//! The feed between replicas: what this replica tells the others (byte progress of what it
//! runs; status changes travel with the writes, see `SharedStore::save_fenced`), and how it
//! applies what they tell it to its copies of their downloads, so its watchers see every
//! status change in order and Get and List answer as the holder would.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::{Engine, cluster};
use crate::auth::Caller;
use crate::engine::download::Op;
use crate::error::Error;
use crate::operation::{Guid, Status};
use crate::store::shared::Notice;
use crate::store::{Record, StoreError};

/// How often byte progress of running downloads is sent to the other replicas: their watchers
/// see bytes move at this pace (status changes are not delayed by it).
const PROGRESS_PERIOD: Duration = Duration::from_millis(250);

/// How long the listener waits before connecting again after losing the feed.
const RELISTEN_DELAY: Duration = Duration::from_secs(1);

impl Engine {
    /// The download with this guid if `caller` may see it; one this replica has not heard of
    /// yet (created on another replica a moment ago) is read from the store.
    pub(in crate::engine) async fn op_or_fetch(
        &self,
        caller: &Caller,
        guid: &str,
    ) -> Result<Arc<Op>, Error> {
        match self.op(caller, guid) {
            Err(Error::NotFound { .. }) if self.inner.cluster.is_some() => {
                self.fetch(&[guid.to_string()]).await?;
                self.op(caller, guid)
            }
            found => found,
        }
    }

    /// With replicas, a download this replica does not hold as the store has it now, so a read
    /// right after another replica's change sees it (the copy follows the feed, a moment
    /// behind). Bytes of a download running elsewhere come from the copy when it is in the
    /// same status, as they move faster than checkpoints. `None` without a shared store, or
    /// for a download held here, whose own state is the newest.
    pub(in crate::engine) async fn fresh_view(
        &self,
        op: &Arc<Op>,
    ) -> Result<Option<crate::engine::DownloadView>, Error> {
        let Some(cluster) = &self.inner.cluster else {
            return Ok(None);
        };
        if op.lock().lease.is_some() {
            return Ok(None);
        }
        let Some(record) = cluster
            .shared
            .get(std::slice::from_ref(&op.spec.guid))
            .await?
            .pop()
        else {
            return Err(Error::NotFound {
                guid: op.spec.guid.clone(),
            });
        };
        Ok(Some(self.view_with(op, record)))
    }

    /// A download as `record` (just read from the store) has it, with the copy's bytes when
    /// the copy is in the same status, as they move faster than checkpoints. A download held
    /// here is shown as held: its own state is the newest.
    fn view_with(&self, op: &Arc<Op>, record: Record) -> crate::engine::DownloadView {
        let mut view = self.view(op);
        if op.lock().lease.is_some() {
            return view;
        }
        let status = record.status;
        let copy = view.progress.progress;
        view.progress.progress = crate::operation::Progress {
            bytes_received: match status {
                Status::Completed => record.total_bytes.max(record.checkpoint_bytes),
                s if s == copy.status => copy.bytes_received.max(record.checkpoint_bytes),
                _ => record.checkpoint_bytes,
            },
            total_bytes_to_receive: record.total_bytes,
            status,
        };
        if status != copy.status {
            view.reason = reason_of(status, view.reason);
            view.progress.has_response_changed = false;
            view.progress.has_restarted = false;
        }
        view.settings = record.settings;
        view.web_error_status = record.web_error_status;
        view.error = record.error;
        view.attempts = record.attempts;
        view
    }

    /// A page of ListDownloads from the database, each download as [`Engine::fresh_view`]
    /// shows it; its token is the last download's creation number, as on one node.
    pub(in crate::engine) async fn list_shared(
        &self,
        scope: &crate::engine::Scope,
        group: Option<&str>,
        request: crate::engine::registry::PageRequest,
    ) -> Result<crate::engine::Page, Error> {
        let cluster = cluster(&self.inner);
        let tenant = scope.tenant().map(|t| t.name());
        let (mut records, issued) = cluster
            .shared
            .page(tenant, group, request.after, request.size + 1)
            .await?;
        if request.after > issued {
            return Err(crate::engine::registry::not_issued(
                &request.after.to_string(),
            ));
        }
        let more = records.len() > request.size;
        records.truncate(request.size);
        let next_page_token = match (more, records.last()) {
            (true, Some(last)) => last.spec.seq.to_string(),
            _ => String::new(),
        };
        let mut downloads = Vec::with_capacity(records.len());
        for record in records {
            let known = self.lock().registry.get(&record.spec.guid);
            let op = match known {
                Some(op) => op,
                None => match self.apply_record(record.clone()) {
                    Some(op) => op,
                    None => continue,
                },
            };
            downloads.push(self.view_with(&op, record));
        }
        Ok(crate::engine::Page {
            downloads,
            next_page_token,
        })
    }

    /// Reads downloads from the store and applies them to this replica's copies.
    pub(super) async fn fetch(&self, guids: &[Guid]) -> Result<(), StoreError> {
        let records = cluster(&self.inner).shared.get(guids).await?;
        for record in records {
            self.apply_record(record);
        }
        Ok(())
    }

    /// Makes this replica's copy of a download another replica changed what the store holds.
    /// A download this replica holds is left alone: its own state is the newest.
    fn apply_record(&self, record: Record) -> Option<Arc<Op>> {
        let mut core = self.lock();
        let Some(op) = core.registry.get(&record.spec.guid) else {
            let op = Op::from_record(record, &self.inner.bus);
            core.add(op.clone());
            return Some(op);
        };
        let mut st = op.lock();
        if st.lease.is_some() {
            return None;
        }
        let (status, reason) = (record.status, reason_of(record.status, st.reason));
        st.adopt(record);
        if status != Status::Running {
            st.bytes = if status == Status::Completed {
                st.total.max(st.checkpoint)
            } else {
                st.checkpoint
            };
        }
        core.mirror(&op, &mut st, status, reason);
        op.publish(&st);
        drop(st);
        Some(op)
    }

    /// Listens to the feed until shutdown, reconnecting (and reading every download again,
    /// for what it missed) when the connection is lost.
    pub(super) async fn listen(self) {
        let cluster = cluster(&self.inner);
        let mut first = true;
        while !self.inner.shutdown.is_cancelled() {
            let mut feed = match cluster.shared.listen().await {
                Ok(feed) => feed,
                Err(e) => {
                    tracing::warn!(error = %e, "could not listen to the other replicas; trying again");
                    tokio::time::sleep(RELISTEN_DELAY).await;
                    continue;
                }
            };
            if !first {
                self.resync().await;
            }
            first = false;
            loop {
                let notice = tokio::select! {
                    notice = feed.recv() => notice,
                    () = self.inner.shutdown.cancelled() => return,
                };
                match notice {
                    Some(Ok(notice)) => self.apply(notice).await,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "lost the feed from the other replicas; listening again");
                        break;
                    }
                    None => break,
                }
            }
            tokio::time::sleep(RELISTEN_DELAY).await;
        }
    }

    /// Reads every stored download again after the feed was lost.
    async fn resync(&self) {
        let store = &self.inner.store;
        let mut after = 0;
        loop {
            match store.load_page(after, crate::store::LOAD_PAGE_SIZE).await {
                Ok(page) => {
                    let Some(last) = page.last() else { break };
                    after = last.spec.seq;
                    for record in page {
                        self.apply_record(record);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the downloads again after losing the feed");
                    break;
                }
            }
        }
        self.claim_soon();
    }

    /// Applies one notice from the feed.
    async fn apply(&self, notice: Notice) {
        let cluster = cluster(&self.inner);
        let me = cluster.node();
        match notice {
            Notice::Saved { node, .. }
            | Notice::Progress { node, .. }
            | Notice::Changed { node, .. }
            | Notice::Released { node, .. }
            | Notice::Deleted { node, .. }
            | Notice::Groups { node }
                if node == me => {}
            Notice::Saved {
                guid,
                changes,
                bytes,
                restarts,
                epoch,
                ..
            } => {
                self.apply_saved(guid, changes, bytes, restarts, epoch)
                    .await
            }
            Notice::Progress {
                guid,
                status,
                bytes,
                total,
                ..
            } => {
                let op = self.lock().registry.get(&guid);
                if let Some(op) = op {
                    let mut st = op.lock();
                    if st.lease.is_none() && st.status().code() == status {
                        st.bytes = bytes;
                        st.total = total;
                        op.publish(&st);
                    }
                }
            }
            Notice::Changed { guid, .. } => {
                if let Err(e) = self.fetch(&[guid]).await {
                    tracing::warn!(error = %e, "could not read a download another replica changed");
                }
                self.claim_soon();
            }
            Notice::Released { .. } => self.claim_soon(),
            Notice::Deleted { guids, .. } => {
                let mut core = self.lock();
                for guid in &guids {
                    core.registry.remove(guid);
                }
            }
            Notice::Groups { .. } => match self.inner.store.load_groups().await {
                Ok(groups) => {
                    let mut core = self.lock();
                    for group in groups {
                        core.slots
                            .set_behavior(&group.tenant, &group.name, group.behavior);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not read the transfer groups again"),
            },
            Notice::Call { id, from, to, call } if to == me => {
                let engine = self.clone();
                tokio::spawn(async move { engine.serve_call(id, from, call).await });
            }
            Notice::Reply { id, to, error } if to == me => self.replied(id, error),
            Notice::Call { .. } | Notice::Reply { .. } => {}
        }
    }

    /// Applies a write another replica made: the stored state, then each status change in
    /// order, so watchers here see every one.
    async fn apply_saved(
        &self,
        guid: Guid,
        changes: Vec<crate::store::shared::StatusChange>,
        bytes: u64,
        restarts: u64,
        epoch: i64,
    ) {
        let records = match cluster(&self.inner)
            .shared
            .get(std::slice::from_ref(&guid))
            .await
        {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(%guid, error = %e, "could not read a download another replica wrote");
                return;
            }
        };
        let Some(record) = records.into_iter().next() else {
            return;
        };
        let op = {
            let mut core = self.lock();
            let Some(op) = core.registry.get(&guid) else {
                drop(core);
                self.apply_record(record);
                self.claim_soon();
                return;
            };
            let mut st = op.lock();
            if let Some(lease) = st.lease {
                // Another replica wrote a download this one holds: the lease was taken over.
                drop(st);
                drop(core);
                self.fenced(&op, lease);
                return;
            }
            st.adopt(record);
            st.restarts = st.restarts.max(restarts);
            // Where the holder's partial file is, for ReadResult with follow here.
            st.partial_epoch = Some(epoch);
            for change in changes {
                if let Some((status, reason)) = change.decode() {
                    core.mirror(&op, &mut st, status, reason);
                }
            }
            st.bytes = bytes;
            op.publish(&st);
            drop(st);
            op
        };
        let status = op.lock().status();
        if status == Status::Idle || crate::engine::host::is_automatic_pause(status) {
            self.claim_soon();
        }
    }

    /// Sends the byte progress of the downloads this replica runs to the others, coalesced to
    /// one notice per download per [`PROGRESS_PERIOD`].
    pub(super) async fn announce_progress(self) {
        let cluster = cluster(&self.inner);
        let mut events = self.inner.bus.subscribe();
        let mut pending: HashMap<Arc<str>, Notice> = HashMap::new();
        let mut tick = tokio::time::interval(PROGRESS_PERIOD);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => {
                        let progress = event.snapshot.progress;
                        if progress.status != Status::Running || !self.holds(&event.guid) {
                            continue;
                        }
                        pending.insert(event.guid.clone(), Notice::Progress {
                            guid: event.guid.to_string(),
                            node: cluster.node().into(),
                            status: progress.status.code(),
                            bytes: progress.bytes_received,
                            total: progress.total_bytes_to_receive,
                        });
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    if pending.is_empty() {
                        continue;
                    }
                    let notices: Vec<Notice> = pending.drain().map(|(_, n)| n).collect();
                    if let Err(e) = cluster.shared.notify(&notices).await {
                        tracing::debug!(error = %e, "could not send byte progress to the other replicas");
                    }
                }
                () = self.inner.shutdown.cancelled() => return,
            }
        }
    }

    /// Whether this replica holds the lease on `guid`.
    fn holds(&self, guid: &str) -> bool {
        let op = self.lock().registry.get(guid);
        op.is_some_and(|op| op.lock().lease.is_some())
    }
}

/// The reason a copy shows for a status another replica stored.
fn reason_of(
    status: Status,
    current: crate::operation::StatusReason,
) -> crate::operation::StatusReason {
    use crate::operation::StatusReason;
    match status {
        Status::PausedByApplication => StatusReason::PausedByClient,
        Status::PausedRecoverableWebErrorStatus => StatusReason::RecoverableWebError,
        Status::Idle => StatusReason::WaitingForSlot,
        Status::PausedNoNetwork | Status::PausedCostedNetwork | Status::PausedSystemPolicy => {
            current
        }
        _ => StatusReason::Unspecified,
    }
}
