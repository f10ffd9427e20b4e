//! [`TimedStore`]: any [`Store`] with every call timed into
//! `transferd_store_operation_duration_seconds`, so the store's latency is measured in one
//! place, around the trait, whatever the backend.

use std::time::{Instant, SystemTime};

use crate::auth::Tenant;
use crate::operation::{Behavior, Guid};
use crate::store::{Record, Store, StoreFuture, StoredGroup};

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
