//! What a store shared by several transferd replicas adds to [`Store`]: leases on downloads,
//! claims from the shared queue, writes fenced by a lease's epoch, and a feed of notices so
//! every replica learns what the others changed. [`SharedStore`] is backend-neutral; the
//! PostgreSQL store implements it (`postgres/shared.rs`), the embedded SQLite store does not
//! (one process owns it).
//!
//! # Leases and fencing
//! A replica changes a download only while it holds its lease: to run it (a claim from the
//! queue) or to carry out one control call (a claim of that one download). Every claim adds one
//! to the download's epoch, and every write a holder makes is conditional on its epoch, so a
//! replica that stalled past its lease and was taken over can no longer checkpoint, change the
//! status or release anything: its writes fail with [`StoreError::Fenced`].

use serde::{Deserialize, Serialize};

use super::{Record, Store, StoreError, StoreFuture};
use crate::operation::{CostPolicy, Guid, Status, StatusReason};

/// A lease this replica holds: the download's epoch as its claim set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The fencing token: every write under this lease names it.
    pub epoch: i64,
}

/// A download claimed by this replica.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The download as stored when it was claimed (its status before the claim).
    pub record: Record,
    /// The lease the claim took.
    pub lease: Lease,
    /// Whether the previous holder's lease had expired rather than been released: that holder
    /// may still be alive, so its partial file must be fenced off before it is used.
    pub took_over: bool,
}

/// What a claim of one download found.
#[derive(Clone, Debug)]
pub enum Claim {
    /// This replica holds the lease now.
    Claimed(Box<Claimed>),
    /// Another replica holds a live lease.
    HeldBy(String),
    /// No download with this guid is stored.
    Missing,
}

/// Which queued downloads a replica may run under its host conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimFilter {
    /// The cost policies whose downloads the replica's network allows.
    pub cost_policies: Vec<CostPolicy>,
}

/// A status change of one download, as the feed carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    /// The status, as its contract value.
    pub status: i32,
    /// Why, as [`StatusReason::code`].
    pub reason: i32,
}

impl StatusChange {
    /// The change to `status` for `reason`.
    pub fn new(status: Status, reason: StatusReason) -> StatusChange {
        StatusChange {
            status: status.code(),
            reason: reason.code(),
        }
    }

    /// The status and reason, if this build knows their numbers.
    pub fn decode(self) -> Option<(Status, StatusReason)> {
        Some((
            Status::from_code(self.status)?,
            StatusReason::from_code(self.reason)?,
        ))
    }
}

/// One message on the feed every replica listens to. Kept small: a notice names what changed
/// and the listener reads the rest from the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Notice {
    /// A holder stored a download's state; `changes` are the status changes since its previous
    /// write, in order (written in the same transaction, so notices arrive in commit order).
    Saved {
        /// The download.
        guid: Guid,
        /// The replica that wrote it.
        node: String,
        /// Status changes since the previous write, oldest first.
        changes: Vec<StatusChange>,
        /// Bytes received when it was written.
        bytes: u64,
        /// Restarts so far (a watcher's `has_restarted` follows it).
        restarts: u64,
        /// The writer's lease epoch: its partial file is `GUID@EPOCH.part`, which a replica
        /// following the download reads for ReadResult.
        #[serde(default)]
        epoch: i64,
    },
    /// A running download's byte progress, coalesced at the holder.
    Progress {
        /// The download.
        guid: Guid,
        /// The replica running it.
        node: String,
        /// Its status when the bytes were counted; a listener whose copy is in another status
        /// ignores the notice.
        status: i32,
        /// Bytes received.
        bytes: u64,
        /// Entity length, or 0 while unknown.
        total: u64,
    },
    /// A download was created or otherwise changed; listeners read it again.
    Changed {
        /// The download.
        guid: Guid,
        /// The replica that changed it.
        node: String,
    },
    /// A lease was given back: the download may be claimable now.
    Released {
        /// The download.
        guid: Guid,
        /// The replica that gave it back.
        node: String,
    },
    /// Downloads were forgotten.
    Deleted {
        /// The downloads.
        guids: Vec<Guid>,
        /// The replica that deleted them.
        node: String,
    },
    /// A transfer group's behavior changed; listeners read the groups again.
    Groups {
        /// The replica that changed it.
        node: String,
    },
    /// A control call for a download another replica holds, forwarded to it.
    Call {
        /// Names the reply.
        id: u64,
        /// The replica waiting for the reply.
        from: String,
        /// The replica holding the download.
        to: String,
        /// The call, as the engine encodes it.
        call: serde_json::Value,
    },
    /// The outcome of a forwarded call.
    Reply {
        /// The call's id.
        id: u64,
        /// The replica waiting for it.
        to: String,
        /// `None` when the call succeeded; otherwise the error, as the engine encodes it.
        error: Option<serde_json::Value>,
    },
}

/// One write under a lease (see [`SharedStore::save_fenced`]).
#[derive(Clone, Copy, Debug)]
pub struct FencedWrite<'a> {
    /// What to store.
    pub record: &'a Record,
    /// The lease it is written under.
    pub lease: Lease,
    /// Status changes since the previous write, oldest first, announced with it.
    pub changes: &'a [StatusChange],
    /// Bytes received when it was written.
    pub bytes: u64,
    /// Restarts so far.
    pub restarts: u64,
}

/// What [`SharedStore::insert_new`] did with a new download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// It is stored.
    Stored,
    /// Another unfinished download lands at the same path (its tenant's directory joined with
    /// its result file); nothing was stored.
    PathTaken {
        /// That download.
        holder: Guid,
    },
    /// Its tenant already has `count` unfinished downloads, as many as its quota allows;
    /// nothing was stored.
    OverQuota {
        /// The tenant's unfinished downloads.
        count: u64,
    },
}

/// A store several replicas share. Every method is atomic and durable once its future
/// resolves `Ok`.
pub trait SharedStore: Store {
    /// Stores a new download, unless another unfinished download lands at the same path or its
    /// tenant already has `quota` unfinished downloads. Both are checked in the transaction
    /// that stores it, so replicas creating at the same moment cannot both pass.
    fn insert_new<'a>(
        &'a self,
        record: &'a Record,
        quota: Option<u64>,
    ) -> StoreFuture<'a, Inserted>;
    /// Claims up to `limit` runnable downloads for `node` in queue order (priority, then queue
    /// position, then creation), at most one per serialized group running anywhere, with a
    /// lease of `ttl`. Runnable: unfinished, not paused by a client or a recoverable web
    /// error, and no live lease. Each claimed download is stored RUNNING.
    fn claim_next<'a>(
        &'a self,
        node: &'a str,
        limit: usize,
        filter: &'a ClaimFilter,
        ttl: std::time::Duration,
    ) -> StoreFuture<'a, Vec<Claimed>>;
    /// Claims one download for a control call, whatever its status, unless another replica
    /// holds a live lease on it.
    fn claim<'a>(
        &'a self,
        node: &'a str,
        guid: &'a str,
        ttl: std::time::Duration,
    ) -> StoreFuture<'a, Claim>;
    /// Extends the leases `node` still holds among `leases` to `ttl` from now and returns the
    /// guids it still holds; the others were taken over.
    fn renew<'a>(
        &'a self,
        node: &'a str,
        leases: &'a [(Guid, Lease)],
        ttl: std::time::Duration,
    ) -> StoreFuture<'a, Vec<Guid>>;
    /// Stores a download under a lease held by `node` and announces its status changes on
    /// the feed in the same transaction. [`StoreError::Fenced`] if the lease was taken over.
    fn save_fenced<'a>(&'a self, node: &'a str, write: &'a FencedWrite<'a>) -> StoreFuture<'a, ()>;
    /// Gives a lease back without writing anything else, and announces
    /// [`Notice::Released`] in the same transaction. [`StoreError::Fenced`] if it was taken
    /// over.
    fn release<'a>(&'a self, node: &'a str, guid: &'a str, lease: Lease) -> StoreFuture<'a, ()>;
    /// Ends the leases `node` holds, as a replica restarted under the same name does for its
    /// earlier life's: their downloads are taken over at once (their partial files fenced as
    /// for any expired lease). Returns how many.
    fn expire_leases_of<'a>(&'a self, node: &'a str) -> StoreFuture<'a, u64>;
    /// Up to `limit` downloads with `seq` greater than `after`, in `seq` order, of `tenant`
    /// (all tenants when `None`) and of `group` (all groups when `None`): a page of
    /// ListDownloads. Also the highest creation number ever handed out, to tell a page token
    /// that was never issued.
    fn page<'a>(
        &'a self,
        tenant: Option<&'a str>,
        group: Option<&'a str>,
        after: u64,
        limit: usize,
    ) -> StoreFuture<'a, (Vec<Record>, u64)>;
    /// A creation number no replica has used: downloads list in this order everywhere.
    fn next_seq(&self) -> StoreFuture<'_, u64>;
    /// The stored downloads among `guids` (missing ones are left out).
    fn get<'a>(&'a self, guids: &'a [Guid]) -> StoreFuture<'a, Vec<Record>>;
    /// Sends notices on the feed, in order.
    fn notify<'a>(&'a self, notices: &'a [Notice]) -> StoreFuture<'a, ()>;
    /// Starts listening to the feed: every notice any replica sends from now on arrives on the
    /// returned channel, in commit order. If the listening connection is lost, the channel
    /// gets `Err` and the caller must read what it missed again.
    fn listen(
        &self,
    ) -> StoreFuture<'_, tokio::sync::mpsc::UnboundedReceiver<Result<Notice, StoreError>>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_as_json() {
        let notice = Notice::Saved {
            guid: "g".into(),
            node: "a".into(),
            changes: vec![StatusChange::new(
                Status::Running,
                StatusReason::Unspecified,
            )],
            bytes: 5,
            restarts: 1,
            epoch: 3,
        };
        let text = serde_json::to_string(&notice).unwrap();
        assert!(text.starts_with(r#"{"k":"saved""#), "{text}");
        assert_eq!(serde_json::from_str::<Notice>(&text).unwrap(), notice);
    }
}
