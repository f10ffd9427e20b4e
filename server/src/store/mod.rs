//! Durable storage of downloads behind the small async [`Store`] trait. [`SqliteStore`] is the
//! embedded default: one SQLite file in WAL mode that operators can open with the `sqlite3`
//! CLI. [`PostgresStore`] is the store several replicas share; what sharing adds (leases,
//! claims, fenced writes, the feed between replicas) is the [`shared::SharedStore`] trait.
//!
//! The store is written on state changes and periodic checkpoints, never per network read.
//!
//! # Layout
//! - `mod.rs`: the [`Store`] trait, the [`Record`] it stores and the backend-neutral
//!   [`StoreError`].
//! - `sqlite.rs`: the SQLite backend, the only place that knows `rusqlite`. Its schema and
//!   versioned migrations live in `sqlite/schema.rs`; `sqlite/row.rs` maps a [`Record`] to the
//!   columns both backends keep under the same names.
//! - `postgres.rs`: the PostgreSQL backend, the only place that knows `tokio-postgres`;
//!   `postgres/schema.rs` its migrations, `postgres/shared.rs` its [`shared::SharedStore`].
//! - `shared.rs`: what a store shared by replicas adds, backend-neutral.
//! - `trust.rs`: the backend-neutral checks a loaded download must pass before it is served.
//! - `conformance.rs` (tests only): the one suite every backend must pass.

#[cfg(test)]
pub(crate) mod conformance;
mod postgres;
pub mod shared;
mod sqlite;
mod trust;

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use crate::auth::Tenant;
use crate::operation::{
    Behavior, DownloadSpec, Guid, ResponseInfo, Segment, Settings, Status, TransferError,
    Validators,
};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use trust::LoadCheck;

/// How many downloads one [`Store::load_page`] call reads at start: enough that loading takes
/// few round trips, few enough that no single query or page holds a large store in memory at
/// once.
pub const LOAD_PAGE_SIZE: usize = 1000;

/// Why the store failed. Backend-neutral: each backend classifies its own errors into these, so
/// callers (and the gRPC status table) never see a driver error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or could not carry out the call; nothing changed.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// Stored data cannot be read: a damaged database or a row this version cannot interpret.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store was written by a newer transferd.
    #[error(
        "the store has schema version {found}, newer than this transferd understands ({supported}); run the newer transferd or restore a backup"
    )]
    NewerSchema {
        /// The version found in the store.
        found: i64,
        /// The newest version this build reads.
        supported: i64,
    },
    /// The call contradicts what is stored (a download inserted twice, or saved but never inserted).
    #[error("{0}")]
    Conflict(String),
    /// A write under a lease that another replica has since taken over (see [`shared`]):
    /// nothing changed.
    #[error("the lease on download {0} was taken over by another replica")]
    Fenced(String),
}

/// Everything stored about one download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// What was asked for, fixed for life.
    pub spec: DownloadSpec,
    /// What was asked for, editable live.
    pub settings: Settings,
    /// Status at the last save. RUNNING is stored as such; on load it is queued again.
    pub status: Status,
    /// Bytes of the partial file known to be durably on disk (fsynced before this was saved).
    /// For a segmented download, the sum of its segments' durable bytes.
    pub checkpoint_bytes: u64,
    /// The segments of a download fetched over several connections, in entity order, each
    /// with its own durable bytes; empty for a single-stream download, whose checkpoint is
    /// one prefix of the file.
    pub segments: Vec<Segment>,
    /// Entity length, or 0 while unknown.
    pub total_bytes: u64,
    /// The SHA-256 state of the first `checkpoint_bytes` bytes, as `sha256::Hasher::encode`
    /// writes it, when the download hashes as it writes (it has an `expected_sha256`). Saved
    /// in the same write as the checkpoint, so the two always describe the same bytes; the
    /// store keeps it as opaque bytes and never judges it (the engine decodes it, and falls
    /// back to reading the file when it is missing or unusable).
    pub sha256_state: Option<Vec<u8>>,
    /// Validators that guard a resume.
    pub validators: Validators,
    /// The latest HTTP response.
    pub response: Option<ResponseInfo>,
    /// Why it failed, when status is ERROR.
    pub error: Option<TransferError>,
    /// HTTP attempts made so far.
    pub attempts: u32,
    /// The recoverable HTTP status that paused it, if any.
    pub web_error_status: Option<u16>,
    /// Position in the queue within its priority (creation order unless moved).
    pub queue_order: i64,
    /// When it reached its terminal status (stored to the millisecond); `None` while it is
    /// unfinished. `--retain-finished` counts from here.
    pub finished_at: Option<SystemTime>,
}

/// A transfer group whose behavior was set. Groups are per tenant: two tenants' groups of one
/// name are two groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredGroup {
    /// The tenant whose group it is.
    pub tenant: Tenant,
    /// The group's name within its tenant.
    pub name: String,
    /// How it runs its downloads.
    pub behavior: Behavior,
}

impl StoredGroup {
    /// A group as a backend read it: its tenant's name, its name and its behavior's number,
    /// or [`StoreError::Corrupt`] for a number this build does not know.
    pub(crate) fn from_row(
        tenant: &str,
        name: String,
        code: i64,
    ) -> Result<StoredGroup, StoreError> {
        let behavior = i32::try_from(code)
            .ok()
            .and_then(Behavior::from_code)
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "stored transfer group `{name}` is unreadable: unknown behavior {code}"
                ))
            })?;
        Ok(StoredGroup {
            tenant: Tenant::new(tenant),
            name,
            behavior,
        })
    }
}

/// A store call in flight.
///
/// The trait returns boxed futures by hand rather than through the `async-trait` macro: it is
/// what that macro would generate, the signatures stay readable in rustdoc, and no proc-macro
/// dependency is needed for five methods. Boxing keeps the trait object-safe (the engine holds
/// `Arc<dyn Store>`); `Send` lets the engine await it from any runtime worker; `'a` lets a
/// networked backend borrow its arguments while the call is in flight instead of copying them.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Durable storage of download records.
///
/// Every write is atomic and durable once its future resolves `Ok`. A write whose future is
/// dropped before it resolves may or may not have been applied. Calls never block the async
/// workers: a backend with blocking I/O moves it off them itself.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Up to `limit` stored downloads whose `seq` is greater than `after_seq`, in `seq` order.
    /// Sequence numbers start at 1, so `after_seq = 0` reads the first page; the last `seq` of a
    /// page is the `after_seq` of the next.
    fn load_page(&self, after_seq: u64, limit: usize) -> StoreFuture<'_, Vec<Record>>;
    /// Stores a new download. A guid or `seq` already stored is a [`StoreError::Conflict`].
    fn insert<'a>(&'a self, record: &'a Record) -> StoreFuture<'a, ()>;
    /// Replaces the stored state of an existing download; its spec stays as inserted. A guid
    /// never inserted is a [`StoreError::Conflict`].
    fn save<'a>(&'a self, record: &'a Record) -> StoreFuture<'a, ()>;
    /// [`Store::save`], for a change that was shown already and that nobody waits to see
    /// stored (the end of a completed download): the store may hold it back briefly so that
    /// it shares a commit with others. It is durable once the future resolves, as a save is.
    fn save_soon<'a>(&'a self, record: &'a Record) -> StoreFuture<'a, ()> {
        self.save(record)
    }
    /// Every transfer group whose behavior was set, in (tenant, name) order.
    fn load_groups(&self) -> StoreFuture<'_, Vec<StoredGroup>>;
    /// Records how a tenant's transfer group runs, replacing what was recorded before.
    fn save_group<'a>(
        &'a self,
        tenant: &'a Tenant,
        group: &'a str,
        behavior: Behavior,
    ) -> StoreFuture<'a, ()>;
    /// Forgets a download. `Ok(false)` if no download with this guid is stored (never stored,
    /// or already deleted), so of two concurrent deletes exactly one sees `true`.
    fn delete<'a>(&'a self, guid: &'a str) -> StoreFuture<'a, bool>;
    /// Forgets every download that finished before `cutoff` and returns their guids. Downloads
    /// without a finish time (unfinished ones) are kept.
    fn delete_finished_before(&self, cutoff: SystemTime) -> StoreFuture<'_, Vec<Guid>>;
}
