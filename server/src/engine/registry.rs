//! The registry: every download by guid and by creation order (the order of ListDownloads and
//! its page tokens), the same per tenant, the index of live (unfinished) downloads that
//! conditions, reordering and creates walk, the result files claimed by unfinished downloads
//! (and the claim a create makes, quota first), and the lazy walk that feeds WatchDownloads its first snapshot. Every lookup a caller makes
//! goes through its scope: another tenant's download is not found.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};

use super::download::Op;
use super::tenants::{Scope, TenantIndex};
use super::{Core, DownloadView, Engine, Inner};
use crate::auth::{Caller, Tenant};
use crate::error::Error;
use crate::operation::{DownloadSpec, Guid, Status, StatusReason};
use crate::paths;
use crate::progress::{self, Snapshot};

/// Default page size of ListDownloads.
pub(super) const DEFAULT_PAGE_SIZE: usize = 100;

/// Largest page ListDownloads returns, so one call cannot build an unbounded response.
pub(super) const MAX_PAGE_SIZE: usize = 1000;

/// Every download the engine knows.
#[derive(Debug, Default)]
pub(super) struct Registry {
    ops: HashMap<Guid, Arc<Op>>,
    /// Every download by creation sequence: ListDownloads order and its page tokens.
    by_seq: BTreeMap<u64, Listed>,
    /// The unfinished downloads by creation sequence, kept in step by [`Core::add`] and
    /// [`Core::transition`]: what creates, condition changes and reordering walk, so their cost
    /// follows the live downloads and not every download ever stored.
    live: BTreeMap<u64, Arc<Op>>,
    /// Per tenant: its downloads in creation order and its count of unfinished ones.
    tenants: HashMap<Tenant, TenantIndex>,
    /// Result files claimed by unfinished downloads, by where they land (see
    /// [`DownloadSpec::resolved_path`]).
    claimed: HashMap<String, Guid>,
    /// The highest creation sequence handed out.
    last_seq: u64,
    /// Downloads added so far. Creates store concurrently, so creation order is not the order
    /// downloads are added in; a WatchDownloads snapshot is "every download added before the
    /// watcher subscribed", told apart by this count.
    added: u64,
}

/// A download in creation order, with the count of downloads added before it and it.
#[derive(Debug)]
struct Listed {
    op: Arc<Op>,
    added: u64,
}

/// Where a page of ListDownloads starts and how long it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PageRequest {
    /// Creation sequence of the last download of the previous page (0 for the first page).
    pub(super) after: u64,
    /// Downloads on the page.
    pub(super) size: usize,
}

impl PageRequest {
    /// Reads a page token and a requested size (0 for the default, capped at the maximum). A
    /// token is the creation sequence of a page's last download, written as the server writes
    /// it: decimal digits without sign or leading zeros.
    pub(super) fn parse(page_size: usize, page_token: &str) -> Result<PageRequest, Error> {
        let after = if page_token.is_empty() {
            0
        } else {
            let canonical =
                page_token.bytes().all(|b| b.is_ascii_digit()) && !page_token.starts_with('0');
            canonical
                .then(|| page_token.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| not_issued(page_token))?
        };
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        Ok(PageRequest { after, size })
    }
}

/// A page token the server did not hand out.
pub(super) fn not_issued(page_token: &str) -> Error {
    Error::InvalidArgument(format!(
        "page_token `{}` is not a token returned by ListDownloads; pass the next_page_token of the previous page, or none for the first page",
        crate::error::shorten(page_token)
    ))
}

impl Registry {
    /// The download with this guid.
    pub(super) fn get(&self, guid: &str) -> Option<Arc<Op>> {
        self.ops.get(guid).cloned()
    }

    /// The download with this guid if `caller` may see it, or NOT_FOUND: another tenant's
    /// download is answered exactly like a guid that never existed.
    pub(super) fn find(&self, guid: &str, caller: &Caller) -> Result<Arc<Op>, Error> {
        self.get(guid)
            .filter(|op| caller.sees(&op.spec.tenant))
            .ok_or_else(|| Error::NotFound { guid: guid.into() })
    }

    /// Every download, finished or not, in creation order.
    pub(super) fn all(&self) -> impl Iterator<Item = &Arc<Op>> {
        self.by_seq.values().map(|listed| &listed.op)
    }

    /// The unfinished downloads, in creation order.
    pub(super) fn live(&self) -> impl Iterator<Item = &Arc<Op>> {
        self.live.values()
    }

    /// The unfinished download that holds `resolved` (a path relative to the download
    /// directory), if any.
    pub(super) fn holder(&self, resolved: &str) -> Option<&Guid> {
        self.claimed.get(resolved)
    }

    /// Refuses a new download of `tenant` when it has `limit` unfinished ones already, those
    /// being created included.
    pub(super) fn check_quota(&self, tenant: &Tenant, limit: Option<u64>) -> Result<(), Error> {
        match self.tenants.get(tenant) {
            Some(index) => index.check_quota(tenant, limit),
            None => TenantIndex::default().check_quota(tenant, limit),
        }
    }

    /// Claims `resolved` for `guid` of `tenant` and hands out the next creation sequence; the
    /// create counts against its tenant's quota until [`Registry::settle`]. Called before the
    /// store write, so a concurrent create cannot take the same file, or the last place under
    /// the quota, meanwhile.
    /// With replicas, `seq` is the one the shared store handed out.
    pub(super) fn reserve(
        &mut self,
        resolved: String,
        guid: &Guid,
        tenant: &Tenant,
        seq: Option<u64>,
    ) -> u64 {
        self.claimed.insert(resolved, guid.clone());
        self.tenants.entry(tenant.clone()).or_default().pending += 1;
        self.last_seq = seq.unwrap_or(self.last_seq + 1).max(self.last_seq);
        seq.unwrap_or(self.last_seq)
    }

    /// A reserved create of `tenant` was added, or given up: it no longer counts as pending.
    pub(super) fn settle(&mut self, tenant: &Tenant) {
        if let Some(index) = self.tenants.get_mut(tenant) {
            index.pending = index.pending.saturating_sub(1);
            if index.is_empty() {
                self.tenants.remove(tenant);
            }
        }
    }

    /// Forgets a download as live: it reached a terminal status. Only [`Core::transition`]
    /// calls this, so the live index holds exactly the unfinished downloads.
    pub(super) fn retire(&mut self, spec: &DownloadSpec) {
        self.unlive(spec);
        self.release_claim(spec);
    }

    /// Takes a download out of the live index and its tenant's live count.
    fn unlive(&mut self, spec: &DownloadSpec) {
        if self.live.remove(&spec.seq).is_some()
            && let Some(index) = self.tenants.get_mut(&spec.tenant)
        {
            index.live = index.live.saturating_sub(1);
        }
    }

    /// Gives a result file back (its download finished, or was never stored).
    pub(super) fn release_claim(&mut self, spec: &DownloadSpec) {
        let resolved = spec.resolved_path();
        if self.claimed.get(&resolved) == Some(&spec.guid) {
            self.claimed.remove(&resolved);
        }
    }

    /// Moves a create's claim from its result file to the path `to` (see
    /// `Engine::store_new`).
    pub(super) fn rename_claim(&mut self, spec: &DownloadSpec, to: String) {
        self.release_claim(spec);
        self.claimed.insert(to, spec.guid.clone());
    }

    /// Forgets a finished download. Its creation sequence is not handed out again, so page
    /// tokens issued before stay valid.
    pub(super) fn remove(&mut self, guid: &str) -> Option<Arc<Op>> {
        let op = self.ops.remove(guid)?;
        crate::metrics::global().download_removed(op.lock().status());
        self.by_seq.remove(&op.spec.seq);
        self.unlive(&op.spec);
        self.release_claim(&op.spec);
        if let Some(index) = self.tenants.get_mut(&op.spec.tenant) {
            index.seqs.remove(&op.spec.seq);
            if index.is_empty() {
                self.tenants.remove(&op.spec.tenant);
            }
        }
        Some(op)
    }

    /// A page of the downloads in `scope` (of one group, or all) and whether more follow. A
    /// page that starts after the last download the scope ever held was never handed out. A
    /// tenant's page reads that tenant's downloads only.
    pub(super) fn page(
        &self,
        scope: &Scope,
        group: Option<&str>,
        page: PageRequest,
    ) -> Result<(Vec<Arc<Op>>, bool), Error> {
        if page.after > self.last_seq_in(scope) {
            return Err(not_issued(&page.after.to_string()));
        }
        let mut matching = self
            .in_scope(scope, page.after)
            .map(|listed| &listed.op)
            .filter(|op| group.is_none_or(|g| op.spec.transfer_group == g));
        let downloads: Vec<Arc<Op>> = matching.by_ref().take(page.size).cloned().collect();
        let more = matching.next().is_some();
        Ok((downloads, more))
    }

    /// The highest creation sequence the scope ever held (among what is loaded).
    fn last_seq_in(&self, scope: &Scope) -> u64 {
        match scope.tenant() {
            None => self.last_seq,
            Some(t) => self.tenants.get(t).map_or(0, |index| index.last_seq),
        }
    }

    /// The downloads in `scope` after creation sequence `after`, in creation order, read from
    /// the scope's own index.
    fn in_scope<'a>(
        &'a self,
        scope: &Scope,
        after: u64,
    ) -> Box<dyn Iterator<Item = &'a Listed> + 'a> {
        match scope.tenant() {
            None => Box::new(self.by_seq.range(after + 1..).map(|(_, listed)| listed)),
            Some(t) => match self.tenants.get(t) {
                None => Box::new(std::iter::empty()),
                Some(index) => Box::new(
                    index
                        .seqs
                        .range(after + 1..)
                        .filter_map(|seq| self.by_seq.get(seq)),
                ),
            },
        }
    }

    /// The unfinished downloads of a tenant's transfer group.
    pub(super) fn live_members(&self, tenant: &Tenant, group: &str) -> Vec<Arc<Op>> {
        self.live
            .values()
            .filter(|o| o.spec.tenant == *tenant && o.spec.transfer_group == group)
            .cloned()
            .collect()
    }

    /// Marks the downloads added so far: a snapshot walk started now covers exactly them.
    pub(super) fn mark(&self) -> u64 {
        self.added
    }

    /// Up to `limit` downloads in `scope` (of one group, or all) added by `mark`, in creation
    /// order after creation sequence `after`.
    fn walk_page(
        &self,
        scope: &Scope,
        group: Option<&str>,
        mark: u64,
        after: u64,
        limit: usize,
    ) -> Vec<(u64, Arc<Op>)> {
        self.in_scope(scope, after)
            .filter(|l| l.added <= mark && group.is_none_or(|g| l.op.spec.transfer_group == g))
            .take(limit)
            .map(|l| (l.op.spec.seq, l.op.clone()))
            .collect()
    }

    /// Whether the download with this guid was added by `mark`.
    fn added_by(&self, guid: &str, mark: u64) -> bool {
        self.ops
            .get(guid)
            .and_then(|op| self.by_seq.get(&op.spec.seq))
            .is_some_and(|l| l.added <= mark)
    }

    fn insert(&mut self, op: Arc<Op>, unfinished: bool) {
        let index = self.tenants.entry(op.spec.tenant.clone()).or_default();
        index.seqs.insert(op.spec.seq);
        index.last_seq = index.last_seq.max(op.spec.seq);
        if unfinished {
            index.live += 1;
            self.claimed
                .insert(op.spec.resolved_path(), op.spec.guid.clone());
            self.live.insert(op.spec.seq, op.clone());
        }
        self.last_seq = self.last_seq.max(op.spec.seq);
        self.added += 1;
        let listed = Listed {
            op: op.clone(),
            added: self.added,
        };
        self.by_seq.insert(op.spec.seq, listed);
        self.ops.insert(op.spec.guid.clone(), op);
    }
}

/// Downloads a WatchDownloads snapshot walks per step: enough to keep the stream busy, few
/// enough that an unread stream holds little and the engine lock is held briefly.
const WALK_PAGE_SIZE: usize = 256;

/// WatchDownloads' first snapshot, read from the registry a page at a time as the client reads:
/// every download in scope (of one group, or all) added before the watcher subscribed.
#[derive(Debug)]
pub(super) struct SnapshotWalk {
    /// Weak, so an open stream does not keep a stopped engine alive.
    engine: Weak<Inner>,
    scope: Scope,
    group: Option<String>,
    mark: u64,
}

impl SnapshotWalk {
    /// A walk of what `engine` holds now. Call after subscribing to the bus, so every download
    /// added later is announced to the watcher.
    pub(super) fn new(engine: &Arc<Inner>, scope: Scope, group: Option<String>) -> SnapshotWalk {
        let mark = super::lock_core(engine).registry.mark();
        SnapshotWalk {
            engine: Arc::downgrade(engine),
            scope,
            group,
            mark,
        }
    }
}

impl progress::Catalog for SnapshotWalk {
    fn next_page(&mut self, after: u64) -> Vec<(u64, Arc<str>, Snapshot)> {
        let Some(engine) = self.engine.upgrade() else {
            return Vec::new();
        };
        let page = super::lock_core(&engine).registry.walk_page(
            &self.scope,
            self.group.as_deref(),
            self.mark,
            after,
            WALK_PAGE_SIZE,
        );
        page.into_iter()
            .map(|(seq, op)| (seq, Arc::from(op.spec.guid.as_str()), op.hub.current()))
            .collect()
    }

    fn walked(&self, guid: &str) -> bool {
        self.engine
            .upgrade()
            .is_some_and(|e| super::lock_core(&e).registry.added_by(guid, self.mark))
    }
}

impl Core {
    /// Adds a loaded or newly stored download: it claims its result file until it finishes,
    /// and waits in the run queue if it is IDLE.
    pub(super) fn add(&mut self, op: Arc<Op>) {
        let (status, key) = {
            let st = op.lock();
            (st.status(), op.queue_key(&st))
        };
        if status == Status::Idle {
            self.queue.push(key);
        }
        self.registry.insert(op, !status.is_terminal());
        crate::metrics::global().download_added(status);
    }

    /// The download's view, telling "waiting for a slot" from "waiting for its group".
    pub(super) fn view(&self, op: &Op) -> DownloadView {
        let mut view = op.view();
        if view.reason == StatusReason::WaitingForSlot && self.slots.busy(&op.spec) {
            view.reason = StatusReason::WaitingForGroup;
        }
        view
    }
}

impl Engine {
    /// Checks the tenant's quota, then claims the result file (the one asked for, or one named
    /// after the URI) and a creation sequence number before the store write, so a concurrent
    /// create cannot take the same file, or the tenant's last place under its quota, while this
    /// one is being stored. A path that exists is refused unless `replace`, and one that leads
    /// out of the tenant's directory through a symlink always is. The path is the tenant's:
    /// claims are compared where files land.
    pub(super) fn claim_result_file(
        &self,
        caller: &Caller,
        guid: &Guid,
        uri: &url::Url,
        requested: Option<String>,
        replace: bool,
        seq: Option<u64>,
    ) -> Result<(u64, String), Error> {
        let download_dir = &self.inner.config.download_dir;
        let tenant = &caller.tenant;
        // The disk is looked at before the engine is locked, so creates do not queue behind
        // each other's system calls. What is there may change until the commit anyway, which
        // never replaces a file that appeared meanwhile.
        let name = requested
            .clone()
            .unwrap_or_else(|| paths::name_from_uri(uri));
        let on_disk = paths::result_exists(download_dir, tenant, &name);
        let mut core = self.lock();
        core.registry
            .check_quota(tenant, caller.max_live_downloads)?;
        let result_file = match requested {
            Some(path) => {
                if let Some(holder) = core.registry.holder(&paths::resolved(tenant, &path)) {
                    return Err(Error::ResultFileInUse {
                        guid: holder.clone(),
                        path,
                    });
                }
                match on_disk {
                    Err(reason) => return Err(Error::InvalidResultFile { path, reason }),
                    Ok(true) if !replace => return Err(Error::ResultFileExists { path }),
                    Ok(_) => path,
                }
            }
            None => {
                let taken = core
                    .registry
                    .holder(&paths::resolved(tenant, &name))
                    .is_some()
                    || on_disk != Ok(false);
                if taken {
                    paths::with_guid_suffix(&name, guid)
                } else {
                    name
                }
            }
        };
        let seq = core
            .registry
            .reserve(paths::resolved(tenant, &result_file), guid, tenant, seq);
        Ok((seq, result_file))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{core, op};
    use super::*;
    use crate::operation::Priority;

    fn live_guids(core: &Core) -> Vec<String> {
        core.registry.live().map(|o| o.spec.guid.clone()).collect()
    }

    #[test]
    fn the_live_index_holds_exactly_the_unfinished_downloads() {
        let statuses = [
            Status::Idle,
            Status::Completed,
            Status::PausedByApplication,
            Status::Canceled,
            Status::PausedNoNetwork,
            Status::Error,
        ];
        let ops: Vec<Arc<Op>> = (0..statuses.len())
            .map(|i| op(i as u64 + 1, "grp", Priority::Default, statuses[i]))
            .collect();
        let mut core = core(&[], &ops);
        assert_eq!(live_guids(&core), ["g1", "g3", "g5"]);
        assert_eq!(
            core.registry.live_members(&Tenant::default(), "grp").len(),
            3
        );
        let moves = [
            (0, Status::Running, StatusReason::Unspecified),
            (2, Status::Idle, StatusReason::WaitingForSlot),
            (0, Status::Completed, StatusReason::Unspecified),
            (4, Status::Canceled, StatusReason::Unspecified),
            (2, Status::PausedByApplication, StatusReason::PausedByClient),
        ];
        for (i, to, reason) in moves {
            let mut st = ops[i].lock();
            core.transition(&ops[i], &mut st, to, reason).unwrap();
            drop(st);
            let unfinished: Vec<String> = ops
                .iter()
                .filter(|o| !o.lock().status().is_terminal())
                .map(|o| o.spec.guid.clone())
                .collect();
            assert_eq!(
                live_guids(&core),
                unfinished,
                "after moving g{} to {to:?}",
                i + 1
            );
        }
        assert_eq!(live_guids(&core), ["g3"]);
        // A refused move changes nothing.
        let mut st = ops[1].lock();
        assert!(
            core.transition(&ops[1], &mut st, Status::Idle, StatusReason::WaitingForSlot)
                .is_err()
        );
        drop(st);
        assert_eq!(live_guids(&core), ["g3"]);
        assert_eq!(
            core.registry.live_members(&Tenant::default(), "grp").len(),
            1
        );
        assert!(
            core.registry
                .live_members(&Tenant::default(), "other")
                .is_empty()
        );
    }

    #[test]
    fn a_snapshot_walk_covers_what_was_added_before_its_mark_in_creation_order() {
        let mut core = core(&[], &[]);
        // Creation sequence 2 is stored first: creates store concurrently.
        core.add(op(2, "a", Priority::Default, Status::Idle));
        core.add(op(1, "b", Priority::Default, Status::Completed));
        let mark = core.registry.mark();
        core.add(op(3, "a", Priority::Default, Status::Idle));
        core.add(op(0, "a", Priority::Default, Status::Idle));
        let seqs = |page: Vec<(u64, Arc<Op>)>| page.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(
            seqs(core.registry.walk_page(&Scope::All, None, mark, 0, 10)),
            [1, 2]
        );
        assert_eq!(
            seqs(core.registry.walk_page(&Scope::All, None, mark, 0, 1)),
            [1]
        );
        assert_eq!(
            seqs(core.registry.walk_page(&Scope::All, None, mark, 1, 1)),
            [2]
        );
        assert!(
            core.registry
                .walk_page(&Scope::All, None, mark, 2, 1)
                .is_empty()
        );
        assert_eq!(
            seqs(core.registry.walk_page(&Scope::All, Some("a"), mark, 0, 10)),
            [2]
        );
        assert!(core.registry.added_by("g1", mark) && core.registry.added_by("g2", mark));
        assert!(!core.registry.added_by("g3", mark) && !core.registry.added_by("g0", mark));
        assert!(!core.registry.added_by("nope", mark));
    }

    #[test]
    fn page_tokens_and_sizes() {
        assert_eq!(
            PageRequest::parse(0, "").unwrap(),
            PageRequest {
                after: 0,
                size: DEFAULT_PAGE_SIZE
            }
        );
        assert_eq!(
            PageRequest::parse(5000, "17").unwrap(),
            PageRequest {
                after: 17,
                size: MAX_PAGE_SIZE
            }
        );
        for bad in ["abc", "+1", "-1", "01", " 1", "18446744073709551616"] {
            let err = PageRequest::parse(10, bad).unwrap_err();
            assert!(err.to_string().contains("not a token"), "{bad}: {err}");
        }
    }
}
