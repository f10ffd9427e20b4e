//! The transfer engine: it keeps every download, runs at most `max_active` of them at once, and
//! moves each through its statuses as clients, hosts and origins make it. It knows nothing of
//! gRPC: the gRPC layer converts requests into the calls in [`commands`] and converts back what
//! they return.
//!
//! # Rooms
//! - [`commands`]: what clients and operators ask: create, pause, resume, cancel, the live edits,
//!   reads and watches.
//! - `validate`: request limits and the checks of a new download's fields.
//! - `download`: one download's state and the ONE function that changes a status; its
//!   `unshown` keeps a client's change, or a transfer's failure, from watchers until stored.
//! - `registry`: downloads by guid and by creation order (also per tenant), result-file claims
//!   and paging.
//! - `queue`: the run queue, a type that keeps its order and its index in step.
//! - `scheduler`: transfer slots, priorities and serialized groups (per tenant).
//! - `groups`: transfer groups' behavior, and MakeCurrentInGroup.
//! - `tenants`: which downloads a caller's request covers, and per-tenant counts and quotas.
//! - `transfer`: the task that transfers one download: attempts, retries, checkpoints, commit.
//! - `rate`: a download's own bandwidth limit, changed live (SetRateLimit).
//! - `retention`: forgetting finished downloads: DeleteDownload and `--retain-finished`.
//! - `host`: host conditions (network, cost, constrained mode, disk) and their monitor.
//!
//! # Locking
//! One engine-wide lock guards [`Core`] (registry, queue, slots, host conditions); each download
//! has its own state lock. The engine lock is taken before a download's lock, never the other
//! way round; the fetcher's throttle lock comes last, and nothing is locked under it. Both are std mutexes held only for short synchronous sections, never across an
//! await. Store writes of one download are serialised by its async `persist` lock and always
//! write the latest state, so an older write can never land after a newer one.
//!
//! A transfer claims the commit of its finished file under both locks, and only while RUNNING;
//! until the rename's outcome is its status, no other status change happens (the transition
//! function refuses it), and pause and cancel wait for that outcome.

mod cluster;
pub mod commands;
mod download;
mod groups;
mod host;
mod progressor;
mod queue;
mod rate;
mod registry;
mod remover;
pub mod results;
mod retention;
mod scheduler;
#[cfg(test)]
mod tenant_tests;
mod tenants;
mod transfer;
mod validate;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::Error;
use crate::fetch::Fetcher;
use crate::fetch::throttle::Throttle;
use crate::operation::{CostPolicy, DownloadSpec, Settings, Status, StatusReason, TransferError};
use crate::progress::{self, Bus, Message};
use crate::retry::RetryPolicy;
use crate::store::{self, Store};

pub use cluster::ClusterConfig;
pub use commands::NewDownload;
pub use host::Conditions;
pub use retention::Deleted;
pub(crate) use tenants::Scope;

use download::Op;
use host::Host;
use queue::RunQueue;
use registry::Registry;
use scheduler::Slots;

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
    /// Below this many free bytes on the download volume, downloads pause.
    pub min_free_disk_bytes: u64,
    /// What DEFAULT cost policy means (ALWAYS or UNRESTRICTED_ONLY).
    pub default_cost_policy: CostPolicy,
    /// Largest file any download may have.
    pub max_file_size: u64,
    /// How long finished downloads are kept; `None` keeps them forever.
    pub retain_finished: Option<Duration>,
    /// Most body bytes per second of all transfers together (`--max-download-rate`); `None`
    /// for no limit.
    pub max_download_rate: Option<u64>,
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
    /// The bandwidth limits every running attempt reads under.
    throttle: Throttle,
    bus: Bus,
    core: Mutex<Core>,
    shutdown: CancellationToken,
    /// The shutdown as progress streams check it, once per item.
    closing: progress::Closing,
    tasks: TaskTracker,
    /// With a store shared by several replicas: leases, claims and the feed.
    cluster: Option<cluster::Cluster>,
    /// Removes completed downloads' partial names.
    remover: remover::Remover,
}

/// Everything the engine-wide lock guards.
#[derive(Debug)]
struct Core {
    /// Every download, its result-file claim and its place in ListDownloads.
    registry: Registry,
    /// IDLE downloads waiting for a slot, in run order.
    queue: RunQueue,
    /// Transfer tasks alive, per group, and which groups run one at a time.
    slots: Slots,
    /// Network, policy and disk conditions.
    host: Host,
    /// Whether replicas share the store: host conditions then apply only to the downloads this
    /// replica holds.
    clustered: bool,
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
        Engine::open_with(config, store, None, fetcher, shutdown).await
    }

    /// Opens the engine as one replica of several sharing `shared` (see `engine/cluster.rs`):
    /// downloads are claimed from the shared queue, and what other replicas run is followed,
    /// not run.
    pub async fn open_shared(
        config: EngineConfig,
        shared: Arc<dyn store::shared::SharedStore>,
        cluster: ClusterConfig,
        fetcher: Fetcher,
        shutdown: CancellationToken,
    ) -> Result<Engine, Error> {
        // What this replica held in an earlier life (same --node-id) is taken over at once.
        let expired = shared.expire_leases_of(&cluster.node).await?;
        if expired > 0 {
            tracing::info!(count = expired, node = %cluster.node, "ended the leases of this replica's earlier life");
        }
        let store: Arc<dyn Store> = shared.clone();
        let cluster = cluster::Cluster::new(shared, cluster);
        Engine::open_with(config, store, Some(cluster), fetcher, shutdown).await
    }

    async fn open_with(
        config: EngineConfig,
        store: Arc<dyn Store>,
        cluster: Option<cluster::Cluster>,
        fetcher: Fetcher,
        shutdown: CancellationToken,
    ) -> Result<Engine, Error> {
        let bus = Bus::default();
        let mut core = Core {
            registry: Registry::default(),
            queue: RunQueue::default(),
            slots: Slots::new(store.load_groups().await?),
            host: Host::new(Conditions::new(
                config.min_free_disk_bytes,
                config.default_cost_policy,
            )),
            clustered: cluster.is_some(),
        };
        if let Some(retain) = config.retain_finished {
            let pruned = retention::prune_store(&*store, retain).await?;
            if !pruned.is_empty() {
                tracing::info!(count = pruned.len(), "pruned finished downloads");
            }
        }
        let mut after_seq = 0;
        let mut check = store::LoadCheck::default();
        loop {
            let page = store.load_page(after_seq, store::LOAD_PAGE_SIZE).await?;
            let Some(last) = page.last() else { break };
            after_seq = last.spec.seq;
            for mut record in page {
                check.admit(&record)?;
                // A download that was running, or paused by conditions, when the server stopped
                // waits for a slot again; conditions are measured afresh. This is how a stored
                // record is read back, not a status change: nothing has run yet.
                // With a shared store, another replica may be running it: it stays as stored.
                if cluster.is_none()
                    && (record.status == Status::Running || host::is_automatic_pause(record.status))
                {
                    record.status = Status::Idle;
                }
                core.add(Op::from_record(record, &bus));
            }
        }
        sweep_partials(&config.download_dir, &core, cluster.is_some());
        let remover = remover::Remover::start();
        Ok(Engine {
            inner: Arc::new(Inner {
                throttle: Throttle::new(config.max_download_rate),
                config,
                store,
                fetcher,
                bus,
                core: Mutex::new(core),
                closing: progress::Closing::new(&shutdown),
                shutdown,
                tasks: TaskTracker::new(),
                cluster,
                remover,
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
        if let Some(retain) = self.inner.config.retain_finished {
            let engine = self.clone();
            self.inner
                .tasks
                .spawn(async move { engine.prune_periodically(retain).await });
        }
        if self.inner.cluster.is_some() {
            self.start_cluster();
        }
        self.schedule();
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

    /// The engine-wide lock (see the module docs for the lock order).
    fn lock(&self) -> MutexGuard<'_, Core> {
        lock_core(&self.inner)
    }

    /// Writes the download's latest state to the store.
    async fn persist(&self, op: &Arc<Op>) -> Result<(), Error> {
        self.persist_as(op, false).await
    }

    /// [`Engine::persist`], for a change shown already that nobody waits to see stored: the
    /// store may hold it back briefly to share a commit (see [`Store::save_soon`]).
    async fn persist_soon(&self, op: &Arc<Op>) -> Result<(), Error> {
        self.persist_as(op, true).await
    }

    async fn persist_as(&self, op: &Arc<Op>, soon: bool) -> Result<(), Error> {
        let _serial = op.persist.lock().await;
        if self.inner.cluster.is_some() {
            return self.persist_fenced(op).await;
        }
        let record = op.record();
        let store = &self.inner.store;
        Ok(if soon {
            store.save_soon(&record)
        } else {
            store.save(&record)
        }
        .await?)
    }
}

/// Removes partial files left by finished or forgotten downloads. With replicas, a download
/// created after this replica read the store may already be running elsewhere: only the
/// partial files of downloads known to be finished go.
fn sweep_partials(download_dir: &std::path::Path, core: &Core, shared: bool) {
    let live: std::collections::HashSet<&str> = core
        .registry
        .live()
        .map(|op| op.spec.guid.as_str())
        .collect();
    let finished: std::collections::HashSet<&str> = core
        .registry
        .all()
        .filter(|op| op.lock().status().is_terminal())
        .map(|op| op.spec.guid.as_str())
        .collect();
    let keep = |guid: &str| match shared {
        false => live.contains(guid),
        true => !finished.contains(guid),
    };
    match crate::paths::sweep_partials(download_dir, keep) {
        Ok(0) => {}
        Ok(count) => tracing::info!(count, "removed partial files of finished downloads"),
        Err(e) => tracing::warn!(error = %e, "could not sweep the partial files"),
    }
}

/// The engine-wide lock of `inner` (see the module docs for the lock order).
fn lock_core(inner: &Inner) -> MutexGuard<'_, Core> {
    inner.core.lock().unwrap_or_else(|e| e.into_inner())
}

/// Downloads and engine state built in memory for the engine's unit tests.
#[cfg(test)]
mod fixtures {
    use std::sync::Arc;

    use super::download::Op;
    use super::*;
    use crate::operation::{Behavior, Priority};
    use crate::progress::Bus;

    /// A download created `seq`-th, in `group`, with `priority`, stored in `status`.
    pub(super) fn op(seq: u64, group: &str, priority: Priority, status: Status) -> Arc<Op> {
        let mut record = crate::store::conformance::record(&format!("g{seq}"), seq);
        record.spec.result_file = format!("f{seq}");
        record.spec.transfer_group = group.into();
        record.settings.priority = priority;
        record.status = status;
        Op::from_record(record, &Bus::default())
    }

    /// Engine state holding `ops`, with these group behaviors and nothing running.
    pub(super) fn core(groups: &[(&str, Behavior)], ops: &[Arc<Op>]) -> Core {
        let mut core = Core {
            registry: Registry::default(),
            queue: RunQueue::default(),
            slots: Slots::new(groups.iter().map(|(g, b)| crate::store::StoredGroup {
                tenant: crate::auth::Tenant::default(),
                name: g.to_string(),
                behavior: *b,
            })),
            host: Host::new(Conditions::new(0, CostPolicy::Always)),
            clustered: false,
        };
        for op in ops {
            core.add(op.clone());
        }
        core
    }
}
