//! A new download's first write with replicas. Each replica checks a create's result file and
//! its tenant's quota against its own copy first, but that copy may not yet know a download
//! another replica created a moment ago, so the database checks both again in the transaction
//! that stores it (see `SharedStore::insert_new`).

use super::{Engine, cluster};
use crate::error::Error;
use crate::paths;
use crate::store::Record;
use crate::store::shared::Inserted;

impl Engine {
    /// Stores a new download. With replicas, a path another replica's unfinished download
    /// holds is refused if the client named it; a name transferd chose (from the URI) gets the
    /// guid suffix instead, as a name taken on this replica would. `record` then carries the
    /// name it was stored under.
    pub(in crate::engine) async fn store_new(
        &self,
        record: &mut Record,
        named: bool,
        quota: Option<u64>,
    ) -> Result<(), Error> {
        if self.inner.cluster.is_none() {
            return Ok(self.inner.store.insert(record).await?);
        }
        let shared = &cluster(&self.inner).shared;
        let mut renamed = false;
        loop {
            match shared.insert_new(record, quota).await? {
                Inserted::Stored => return Ok(()),
                Inserted::OverQuota { count } => {
                    return Err(Error::QuotaExceeded {
                        tenant: record.spec.tenant.name().into(),
                        count,
                        limit: quota.unwrap_or(count),
                    });
                }
                Inserted::PathTaken { .. } if !named && !renamed => {
                    let name = paths::with_guid_suffix(&record.spec.result_file, &record.spec.guid);
                    let to = paths::resolved(&record.spec.tenant, &name);
                    self.lock().registry.rename_claim(&record.spec, to);
                    record.spec.result_file = name;
                    renamed = true;
                }
                Inserted::PathTaken { holder } => {
                    return Err(Error::ResultFileInUse {
                        path: record.spec.result_file.clone(),
                        guid: holder,
                    });
                }
            }
        }
    }
}
