//! Several replicas on one shared store (`--store postgres://...`): which replica runs which
//! download, and how each learns what the others did. Without a shared store none of this runs
//! and the engine is exactly the single-process one.
//!
//! # The rules
//! - Every replica keeps every download in memory, as today; the copies of downloads it does
//!   not hold follow the feed (`cluster/feed.rs`), so Get, List and both watches are served
//!   from any replica.
//! - A replica changes a download only while it holds its lease
//!   ([`OpState::lease`](super::download::OpState::lease)): to run it (claimed from the shared
//!   queue by [`Engine::claim_once`]) or to carry out one control call (`cluster/call.rs`; a call
//!   for a download another replica runs is forwarded to it).
//! - Every write under a lease is fenced by its epoch; a replica whose lease was taken over
//!   stops its transfer and writes nothing more ([`Engine::renew_leases`]).
//! - Each lease holder writes its own partial file name (`GUID@EPOCH.part`). A claim that
//!   takes over an expired lease moves the old file aside before copying its bytes, so a
//!   stalled holder that wakes up can write, truncate or commit only a file nobody uses.
//! - The lease is given back when its last holder here lets go
//!   ([`OpState::holds`](super::download::OpState::holds)).

mod call;
mod create;
mod feed;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use super::download::Op;
use super::download::TaskHandle;
use super::{Engine, Inner, host};
use crate::error::Error;
use crate::operation::{CostPolicy, Status, StatusReason};
use crate::paths;
use crate::store::StoreError;
use crate::store::shared::{ClaimFilter, Claimed, FencedWrite, Lease, Notice, SharedStore};
use tracing::Instrument;

pub(super) use call::{Call, Control};

/// How a replica takes part in a shared store.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This replica's name in leases and notices (`--node-id`); unique among the replicas.
    pub node: String,
    /// How long a lease lasts without renewal (`--lease-ttl`): how long a dead replica's
    /// downloads wait before another takes them over.
    pub lease_ttl: Duration,
}

/// A lease is renewed this many times per lease time, so one or two slow renewals never lose
/// it.
const RENEWALS_PER_TTL: u32 = 3;

/// A replica that could not renew its leases for this share of the lease time stops its
/// transfers itself: the leases may expire before it reaches the store again, and another
/// replica must be able to take over without two writing at once.
const SELF_FENCE_SHARE: f64 = 0.8;

/// The shared-store side of the engine.
pub(super) struct Cluster {
    pub(super) shared: Arc<dyn SharedStore>,
    pub(super) config: ClusterConfig,
    /// Wakes the claimer: a slot was freed, or a download became runnable somewhere.
    claim: Notify,
    /// Forwarded calls waiting for their reply, by id.
    calls: Mutex<HashMap<u64, oneshot::Sender<Option<serde_json::Value>>>>,
    next_call: AtomicU64,
    /// Until when this replica's leases are surely still its own (the last successful renewal
    /// plus most of the lease time).
    valid_until: Mutex<Instant>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.config.node)
            .field("lease_ttl", &self.config.lease_ttl)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    pub(super) fn new(shared: Arc<dyn SharedStore>, config: ClusterConfig) -> Cluster {
        Cluster {
            shared,
            claim: Notify::new(),
            calls: Mutex::default(),
            next_call: AtomicU64::new(1),
            valid_until: Mutex::new(Instant::now() + config.lease_ttl.mul_f64(SELF_FENCE_SHARE)),
            config,
        }
    }

    fn node(&self) -> &str {
        &self.config.node
    }

    fn ttl(&self) -> Duration {
        self.config.lease_ttl
    }
}

/// The cluster of `inner`; callers check first that there is one.
fn cluster(inner: &Inner) -> &Cluster {
    inner
        .cluster
        .as_ref()
        .expect("called only with a shared store")
}

impl Engine {
    /// Starts the replica's background work: the claimer, the feed listener, the renewal of
    /// leases and the progress notices.
    pub(super) fn start_cluster(&self) {
        let tasks = &self.inner.tasks;
        let engine = self.clone();
        tasks.spawn(async move { engine.claimer().await });
        let engine = self.clone();
        tasks.spawn(async move { engine.listen().await });
        let engine = self.clone();
        tasks.spawn(async move { engine.renewer().await });
        let engine = self.clone();
        tasks.spawn(async move { engine.announce_progress().await });
    }

    /// Tells the other replicas about a change this one made outside a lease (a new download,
    /// deleted ones, a group's behavior). Without a shared store there is nobody to tell.
    pub(super) async fn announce(&self, notice: impl FnOnce(String) -> Notice) {
        let Some(cluster) = &self.inner.cluster else {
            return;
        };
        let notice = notice(cluster.node().to_string());
        if let Err(e) = cluster.shared.notify(std::slice::from_ref(&notice)).await {
            // They learn it at their next read of the download, or when the feed reconnects.
            tracing::warn!(error = %e, "could not tell the other replicas about a change");
        }
    }

    /// The creation number of a new download, from the shared store; `None` with one
    /// transferd, which numbers its own.
    pub(super) async fn next_seq(&self) -> Result<Option<u64>, Error> {
        match &self.inner.cluster {
            None => Ok(None),
            Some(cluster) => Ok(Some(cluster.shared.next_seq().await?)),
        }
    }

    /// Asks the claimer to look at the shared queue now.
    pub(super) fn claim_soon(&self) {
        if let Some(cluster) = &self.inner.cluster {
            cluster.claim.notify_one();
        }
    }

    /// Claims downloads while slots are free: when woken, and every renewal period to pick up
    /// downloads whose holder died.
    async fn claimer(self) {
        let cluster = cluster(&self.inner);
        let period = cluster.ttl() / RENEWALS_PER_TTL;
        loop {
            tokio::select! {
                () = cluster.claim.notified() => {}
                () = tokio::time::sleep(period) => {}
                () = self.inner.shutdown.cancelled() => return,
            }
            loop {
                match self.claim_once().await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not claim downloads from the shared queue");
                        break;
                    }
                }
            }
        }
    }

    /// One claim from the shared queue; `Ok(true)` when every free slot was filled and more
    /// may be waiting.
    async fn claim_once(&self) -> Result<bool, Error> {
        let cluster = cluster(&self.inner);
        let (free, filter) = {
            let core = self.lock();
            let free = self
                .inner
                .config
                .max_active
                .saturating_sub(core.slots.active());
            let allowed: Vec<CostPolicy> = CostPolicy::ALL
                .into_iter()
                .filter(|&policy| core.host.blocks(policy).is_none())
                .collect();
            (
                free,
                ClaimFilter {
                    cost_policies: allowed,
                },
            )
        };
        if free == 0 || filter.cost_policies.is_empty() || self.inner.shutdown.is_cancelled() {
            return Ok(false);
        }
        let claimed = cluster
            .shared
            .claim_next(cluster.node(), free, &filter, cluster.ttl())
            .await?;
        let full = claimed.len() == free;
        for claim in claimed {
            self.start_claimed(claim);
        }
        Ok(full)
    }

    /// Runs a download this replica just claimed from the queue.
    fn start_claimed(&self, claimed: Claimed) {
        let Claimed {
            record,
            lease,
            took_over,
        } = claimed;
        let guid = record.spec.guid.clone();
        let shutdown = &self.inner.shutdown;
        let (op, stop, done) = {
            let mut core = self.lock();
            let op = match core.registry.get(&guid) {
                Some(op) => op,
                None => {
                    let op = Op::from_record(record.clone(), &self.inner.bus);
                    core.add(op.clone());
                    op
                }
            };
            let mut st = op.lock();
            if st.task.is_some() || st.lease.is_some() {
                // A transfer here that lost its lease is still letting go: run it later.
                drop(st);
                tracing::warn!(%guid, "claimed a download this replica is still letting go of; it waits for the next claim");
                let engine = self.clone();
                tokio::spawn(async move { engine.give_back(&guid, lease).await });
                return;
            }
            let status = record.status;
            st.adopt(record);
            st.bytes = st.checkpoint;
            // Its holder died (RUNNING) or another replica's conditions paused it: here it
            // waits for nothing but this slot.
            if status == Status::Running
                || host::is_automatic_pause(status)
                || status == Status::Idle
            {
                core.mirror(&op, &mut st, Status::Idle, StatusReason::WaitingForSlot);
            }
            let (stop, done) = (
                shutdown.child_token(),
                tokio_util::sync::CancellationToken::new(),
            );
            st.task = Some(TaskHandle {
                stop: stop.clone(),
                done: done.clone(),
            });
            if let Err(e) =
                core.transition(&op, &mut st, Status::Running, StatusReason::Unspecified)
            {
                tracing::error!(%guid, status = e.from.name(), "a claimed download could not start");
                st.task = None;
                drop(st);
                let engine = self.clone();
                tokio::spawn(async move { engine.give_back(&guid, lease).await });
                return;
            }
            // The claim already announced RUNNING; what follows is announced with the writes.
            st.lease = Some(lease);
            st.holds = 1;
            drop(st);
            (op, stop, done)
        };
        let engine = self.clone();
        let host = op.log_host();
        let span = tracing::info_span!(parent: None, "transfer", guid = %op.spec.guid, %host);
        self.inner.tasks.spawn(
            async move {
                engine.adopt_partial(&op, lease, took_over).await;
                engine.clone().transfer(op.clone(), stop, done).await;
                engine.remove_fenced_partial(&op, lease).await;
            }
            .instrument(span),
        );
    }

    /// Gives back a lease claimed by mistake.
    async fn give_back(&self, guid: &str, lease: Lease) {
        let cluster = cluster(&self.inner);
        if let Err(e) = cluster.shared.release(cluster.node(), guid, lease).await {
            tracing::warn!(%guid, error = %e, "could not give back a lease");
        }
    }

    /// Takes over the partial file of the previous lease holder under this lease's name. A
    /// holder that let go is gone from the file, which is renamed; one whose lease expired may
    /// still be alive, so its file is moved aside first (its own name then leads nowhere) and
    /// its bytes copied, so it can never write into the file used from now on.
    pub(super) async fn adopt_partial(&self, op: &Arc<Op>, lease: Lease, took_over: bool) {
        let dir = self.inner.config.download_dir.clone();
        let guid = op.spec.guid.clone();
        let adopted = tokio::task::spawn_blocking(move || {
            adopt_partial_file(&dir, &guid, lease.epoch, took_over)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = adopted {
            tracing::warn!(guid = %op.spec.guid, error = %e, "could not take over the partial file; the download continues from what is on disk");
        }
        op.lock().partial_epoch = Some(lease.epoch);
    }

    /// After a transfer that was fenced has stopped: removes what it may have written under
    /// its lease's name after the new holder moved that file aside (a retry reopens its file by
    /// name), so no stray partial file is left on the shared volume.
    async fn remove_fenced_partial(&self, op: &Op, lease: Lease) {
        if op.lock().fenced != Some(lease.epoch) {
            return;
        }
        let path = paths::partial_path_at(
            &self.inner.config.download_dir,
            &op.spec.guid,
            Some(lease.epoch),
        );
        let removed = tokio::task::spawn_blocking(move || paths::remove_partial(&path))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = removed {
            tracing::warn!(guid = %op.spec.guid, error = %e, "could not remove the partial file of a lease taken over");
        }
    }

    /// Where a download's partial file is on this replica.
    pub(super) fn partial_of(&self, op: &Op) -> PathBuf {
        let epoch = op.lock().partial_epoch;
        paths::partial_path_at(&self.inner.config.download_dir, &op.spec.guid, epoch)
    }

    /// One more holder of a lease this replica holds; `false` if it holds none.
    pub(super) fn hold(&self, op: &Op) -> bool {
        let mut st = op.lock();
        if st.lease.is_some() {
            st.holds += 1;
            true
        } else {
            false
        }
    }

    /// One holder fewer; the last one gives the lease back.
    pub(super) async fn unhold(&self, op: &Op) {
        let Some(cluster) = &self.inner.cluster else {
            return;
        };
        let lease = {
            let mut st = op.lock();
            st.holds = st.holds.saturating_sub(1);
            if st.holds > 0 || st.task.is_some() {
                return;
            }
            st.lease.take()
        };
        if let Some(lease) = lease {
            if let Err(e) = cluster
                .shared
                .release(cluster.node(), &op.spec.guid, lease)
                .await
            {
                tracing::warn!(guid = %op.spec.guid, error = %e, "could not give back a lease");
            }
            // Another replica (or this one) may run it now.
            self.claim_soon();
        }
    }

    /// Stores a download this replica holds, fenced by its lease, with the status changes made
    /// since the last write.
    pub(super) async fn persist_fenced(&self, op: &Op) -> Result<(), Error> {
        let cluster = cluster(&self.inner);
        let (record, lease, changes, bytes, restarts) = {
            let mut st = op.lock();
            let changes = std::mem::take(&mut st.unsent);
            (op.record_of(&st), st.lease, changes, st.bytes, st.restarts)
        };
        let Some(lease) = lease else {
            self.take_stored(op).await;
            return Err(StoreError::Fenced(op.spec.guid.clone()).into());
        };
        let write = FencedWrite {
            record: &record,
            lease,
            changes: &changes,
            bytes,
            restarts,
        };
        let saved = cluster.shared.save_fenced(cluster.node(), &write).await;
        if let Err(StoreError::Fenced(_)) = &saved {
            self.fenced(op, lease);
            self.take_stored(op).await;
        }
        Ok(saved?)
    }

    /// After a write refused because the lease was taken over: what this replica changed was
    /// never stored, and another replica holds the download now. Its copy takes what the store
    /// holds, before a change held back from watchers until stored (see
    /// `download::unshown`) is let go, so they are shown the stored state, never the change.
    /// If the store cannot be read, the copy stays as it is until the feed brings the holder's
    /// next change.
    async fn take_stored(&self, op: &Op) {
        if op.lock().lease.is_some() {
            return;
        }
        if let Err(e) = self.fetch(std::slice::from_ref(&op.spec.guid)).await {
            tracing::warn!(guid = %op.spec.guid, error = %e, "could not read a download whose lease was taken over");
        }
    }

    /// The lease was taken over: this replica stops the transfer and forgets the lease (and
    /// writes nothing more).
    pub(super) fn fenced(&self, op: &Op, lease: Lease) {
        let mut st = op.lock();
        if st.lease != Some(lease) {
            return;
        }
        tracing::warn!(guid = %op.spec.guid, epoch = lease.epoch, "the lease was taken over by another replica; this replica stops its transfer");
        st.lease = None;
        st.fenced = Some(lease.epoch);
        st.unsent.clear();
        if let Some(task) = &st.task {
            let _ = task.stop();
        }
    }

    /// Renews this replica's leases until shutdown. A lease that was taken over fences its
    /// download here; when the store cannot be reached for most of a lease time, every
    /// transfer here stops, since another replica may be about to take them over.
    async fn renewer(self) {
        let cluster = cluster(&self.inner);
        let period = cluster.ttl() / RENEWALS_PER_TTL;
        loop {
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = self.inner.shutdown.cancelled() => return,
            }
            self.renew_leases().await;
        }
    }

    /// One round of renewals (see [`Engine::renewer`]).
    pub(super) async fn renew_leases(&self) {
        let cluster = cluster(&self.inner);
        let held: Vec<(Arc<Op>, Lease)> = {
            let core = self.lock();
            core.registry
                .live()
                .filter_map(|op| op.lock().lease.map(|lease| (op.clone(), lease)))
                .collect()
        };
        let asked = Instant::now();
        if held.is_empty() {
            *cluster
                .valid_until
                .lock()
                .unwrap_or_else(|e| e.into_inner()) =
                asked + cluster.ttl().mul_f64(SELF_FENCE_SHARE);
            return;
        }
        let leases: Vec<_> = held
            .iter()
            .map(|(op, lease)| (op.spec.guid.clone(), *lease))
            .collect();
        match cluster
            .shared
            .renew(cluster.node(), &leases, cluster.ttl())
            .await
        {
            Ok(kept) => {
                *cluster
                    .valid_until
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) =
                    asked + cluster.ttl().mul_f64(SELF_FENCE_SHARE);
                let kept: std::collections::HashSet<_> = kept.into_iter().collect();
                for (op, lease) in &held {
                    if !kept.contains(&op.spec.guid) {
                        self.fenced(op, *lease);
                    }
                }
            }
            Err(e) => {
                let valid_until = *cluster
                    .valid_until
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                tracing::warn!(error = %e, "could not renew leases");
                if Instant::now() >= valid_until {
                    tracing::error!(
                        "the shared store has been out of reach for most of a lease time; every transfer here stops so another replica can take over"
                    );
                    for (op, lease) in &held {
                        self.fenced(op, *lease);
                    }
                }
            }
        }
    }

    /// Checks, just before a commit, that this replica still holds the download's lease and
    /// will for long enough to move the file into place.
    pub(super) async fn may_commit(&self, op: &Op) -> bool {
        let Some(cluster) = &self.inner.cluster else {
            return true;
        };
        let Some(lease) = op.lock().lease else {
            return false;
        };
        let leases = [(op.spec.guid.clone(), lease)];
        let asked = Instant::now();
        match cluster
            .shared
            .renew(cluster.node(), &leases, cluster.ttl())
            .await
        {
            Ok(kept) if kept.len() == 1 => {
                asked + cluster.ttl().mul_f64(SELF_FENCE_SHARE) > Instant::now()
            }
            Ok(_) => {
                self.fenced(op, lease);
                false
            }
            Err(e) => {
                tracing::warn!(guid = %op.spec.guid, error = %e, "could not confirm the lease before the commit");
                false
            }
        }
    }
}

/// Takes over `guid`'s newest partial file as the file of lease `epoch` (see
/// [`Engine::adopt_partial`]), and removes older ones.
fn adopt_partial_file(
    dir: &std::path::Path,
    guid: &String,
    epoch: i64,
    took_over: bool,
) -> std::io::Result<()> {
    let mine = paths::partial_path_at(dir, guid, Some(epoch));
    let mut older = paths::partial_epochs(dir, guid)?
        .into_iter()
        .filter(|&e| e < epoch);
    let Some(newest) = older.next() else {
        return Ok(());
    };
    let theirs = paths::partial_path_at(dir, guid, Some(newest));
    if !took_over || paths::partial_is_committed(&theirs) {
        // Let go of (or whole and committed, so no longer written): the file is ours.
        std::fs::rename(&theirs, &mine)?;
    } else {
        let aside = theirs.with_extension("fenced");
        std::fs::rename(&theirs, &aside)?;
        let mut from = std::fs::File::open(&aside)?;
        let mut to = std::fs::File::create(&mine)?;
        std::io::copy(&mut from, &mut to)?;
        to.sync_all()?;
        std::fs::remove_file(&aside)?;
    }
    for stale in older {
        paths::remove_partial(&paths::partial_path_at(dir, guid, Some(stale)))?;
    }
    Ok(())
}
