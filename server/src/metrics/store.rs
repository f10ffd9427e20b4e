//! [`TimedStore`]: any [`Store`] (and any [`SharedStore`], for replicas) with every call timed
//! into `transferd_store_operation_duration_seconds`, so the store's latency is measured in
//! one place, around the traits, whatever the backend.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use crate::auth::Tenant;
use crate::operation::{Behavior, Guid};
use crate::store::shared::{
    Claim, ClaimFilter, Claimed, FencedWrite, Inserted, Lease, Notice, SharedStore,
};
use crate::store::{Record, Store, StoreError, StoreFuture, StoredGroup};

/// A store whose calls are timed; otherwise exactly the store it wraps.
#[derive(Debug)]
pub(crate) struct TimedStore<S> {
    inner: S,
}

impl<S: Store> TimedStore<S> {
    /// `inner`, timed.
    pub(crate) fn new(inner: S) -> TimedStore<S> {
        TimedStore { inner }
    }
}

/// `call`, with its duration recorded under `operation` once it resolves (a call dropped
/// before it resolves is not recorded: it has no duration).
fn timed<'a, T: 'a>(operation: &'static str, call: StoreFuture<'a, T>) -> StoreFuture<'a, T> {
    let started = Instant::now();
    Box::pin(async move {
        let result = call.await;
        super::global().store_call(operation, started.elapsed());
        result
    })
}

impl<S: Store> Store for TimedStore<S> {
    fn load_page(&self, after_seq: u64, limit: usize) -> StoreFuture<'_, Vec<Record>> {
        timed("load_page", self.inner.load_page(after_seq, limit))
    }

    fn insert<'a>(&'a self, record: &'a Record) -> StoreFuture<'a, ()> {
        timed("insert", self.inner.insert(record))
    }

    fn save<'a>(&'a self, record: &'a Record) -> StoreFuture<'a, ()> {
        timed("save", self.inner.save(record))
    }

    fn save_soon<'a>(&'a self, record: &'a Record) -> StoreFuture<'a, ()> {
        // A save like any other in the metrics; only its commit may wait for company.
        timed("save", self.inner.save_soon(record))
    }

    fn load_groups(&self) -> StoreFuture<'_, Vec<StoredGroup>> {
        timed("load_groups", self.inner.load_groups())
    }

    fn save_group<'a>(
        &'a self,
        tenant: &'a Tenant,
        group: &'a str,
        behavior: Behavior,
    ) -> StoreFuture<'a, ()> {
        timed("save_group", self.inner.save_group(tenant, group, behavior))
    }

    fn delete<'a>(&'a self, guid: &'a str) -> StoreFuture<'a, bool> {
        timed("delete", self.inner.delete(guid))
    }

    fn delete_finished_before(&self, cutoff: SystemTime) -> StoreFuture<'_, Vec<Guid>> {
        timed(
            "delete_finished_before",
            self.inner.delete_finished_before(cutoff),
        )
    }
}

impl<S: SharedStore> SharedStore for TimedStore<S> {
    fn insert_new<'a>(
        &'a self,
        record: &'a Record,
        quota: Option<u64>,
    ) -> StoreFuture<'a, Inserted> {
        timed("insert_new", self.inner.insert_new(record, quota))
    }

    fn claim_next<'a>(
        &'a self,
        node: &'a str,
        limit: usize,
        filter: &'a ClaimFilter,
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Claimed>> {
        timed(
            "claim_next",
            self.inner.claim_next(node, limit, filter, ttl),
        )
    }

    fn claim<'a>(&'a self, node: &'a str, guid: &'a str, ttl: Duration) -> StoreFuture<'a, Claim> {
        timed("claim", self.inner.claim(node, guid, ttl))
    }

    fn renew<'a>(
        &'a self,
        node: &'a str,
        leases: &'a [(Guid, Lease)],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Guid>> {
        timed("renew", self.inner.renew(node, leases, ttl))
    }

    fn save_fenced<'a>(&'a self, node: &'a str, write: &'a FencedWrite<'a>) -> StoreFuture<'a, ()> {
        timed("save_fenced", self.inner.save_fenced(node, write))
    }

    fn release<'a>(&'a self, node: &'a str, guid: &'a str, lease: Lease) -> StoreFuture<'a, ()> {
        timed("release", self.inner.release(node, guid, lease))
    }

    fn expire_leases_of<'a>(&'a self, node: &'a str) -> StoreFuture<'a, u64> {
        timed("expire_leases_of", self.inner.expire_leases_of(node))
    }

    fn page<'a>(
        &'a self,
        tenant: Option<&'a str>,
        group: Option<&'a str>,
        after: u64,
        limit: usize,
    ) -> StoreFuture<'a, (Vec<Record>, u64)> {
        timed("page", self.inner.page(tenant, group, after, limit))
    }

    fn next_seq(&self) -> StoreFuture<'_, u64> {
        timed("next_seq", self.inner.next_seq())
    }

    fn get<'a>(&'a self, guids: &'a [Guid]) -> StoreFuture<'a, Vec<Record>> {
        timed("get", self.inner.get(guids))
    }

    fn notify<'a>(&'a self, notices: &'a [Notice]) -> StoreFuture<'a, ()> {
        timed("notify", self.inner.notify(notices))
    }

    /// Times only opening the feed; the notices that arrive on it are not calls.
    fn listen(&self) -> StoreFuture<'_, mpsc::UnboundedReceiver<Result<Notice, StoreError>>> {
        timed("listen", self.inner.listen())
    }
}
