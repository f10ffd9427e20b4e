//! Forgetting finished downloads: DeleteDownload, and pruning by age under `--retain-finished`
//! (at open, before anything is loaded, and then every [`prune_interval`] while serving). A
//! forgotten download is gone from the store first and then from memory, so it is NOT_FOUND
//! afterwards, also after a restart.

use std::time::{Duration, SystemTime};

use super::{DownloadView, Engine};
use crate::auth::Caller;
use crate::error::Error;
use crate::operation::Status;
use crate::paths;
use crate::store::shared::Notice;
use crate::store::{Store, StoreError};

/// Shortest pause between two prunes: keeps a tiny retention (tests use one second) from
/// turning pruning into a busy loop.
const MIN_PRUNE_INTERVAL: Duration = Duration::from_millis(250);

/// Longest pause between two prunes: a record outlives its retention by at most this long.
const MAX_PRUNE_INTERVAL: Duration = Duration::from_secs(300);

/// How often to prune under `retain`: a quarter of it, so a record outlives its retention by at
/// most a quarter, within [`MIN_PRUNE_INTERVAL`] and [`MAX_PRUNE_INTERVAL`].
pub(super) fn prune_interval(retain: Duration) -> Duration {
    (retain / 4).clamp(MIN_PRUNE_INTERVAL, MAX_PRUNE_INTERVAL)
}

/// What DeleteDownload did.
#[derive(Clone, Debug)]
pub struct Deleted {
    /// The download as it was when deleted.
    pub view: DownloadView,
    /// Whether its result file was removed.
    pub result_file_deleted: bool,
}

/// Forgets the downloads that finished more than `retain` ago; returns their guids.
pub(super) async fn prune_store(
    store: &dyn Store,
    retain: Duration,
) -> Result<Vec<String>, StoreError> {
    match SystemTime::now().checked_sub(retain) {
        Some(cutoff) => store.delete_finished_before(cutoff).await,
        None => Ok(Vec::new()),
    }
}

impl Engine {
    /// Forgets a finished download (COMPLETED, CANCELED or ERROR) and removes what is left of
    /// its partial data. With `delete_file`, a COMPLETED download's result file is removed too,
    /// unless a later download committed to the same path since (the file is then that one's).
    /// A file replaced from outside transferd cannot be told apart from the committed one.
    pub async fn delete(
        &self,
        caller: &Caller,
        guid: &str,
        delete_file: bool,
    ) -> Result<Deleted, Error> {
        let (op, remove_file) = {
            let core = self.lock();
            let op = core.registry.find(guid, caller)?;
            let (status, finished_at) = {
                let st = op.lock();
                (st.status(), st.finished_at())
            };
            if !status.is_terminal() {
                return Err(Error::IllegalTransition {
                    guid: guid.into(),
                    action: "delete",
                    status,
                });
            }
            // Files are compared where they land: the default tenant's `media/x` is tenant
            // media's `x`. The suffix test spares most downloads building their path.
            let target = op.spec.resolved_path();
            let replaced_later = core.registry.all().any(|other| {
                if other.spec.guid == op.spec.guid
                    || !target.ends_with(other.spec.result_file.as_str())
                    || other.spec.resolved_path() != target
                {
                    return false;
                }
                // Equal times (downloads finished before version 2 share the upgrade time)
                // leave it unknown which committed last: keep the file.
                let st = other.lock();
                st.status() == Status::Completed && st.finished_at() >= finished_at
            });
            let remove_file = delete_file && status == Status::Completed && !replaced_later;
            (op, remove_file)
        };
        let view = self.lock().view(&op);
        let result_file_deleted = remove_file && self.remove_result_file(&op.spec).await?;
        if !self.inner.store.delete(guid).await? {
            // Deleted or pruned meanwhile by another call.
            return Err(Error::NotFound { guid: guid.into() });
        }
        self.lock().registry.remove(guid);
        let guids = vec![guid.to_string()];
        self.announce(|node| Notice::Deleted { guids, node }).await;
        self.remove_partial(&op).await;
        tracing::info!(%guid, host = %op.log_host(), result_file_deleted, "download deleted");
        Ok(Deleted {
            view,
            result_file_deleted,
        })
    }

    async fn remove_result_file(
        &self,
        spec: &crate::operation::DownloadSpec,
    ) -> Result<bool, Error> {
        let dir = self.inner.config.download_dir.clone();
        let (tenant, file) = (spec.tenant.clone(), spec.result_file.clone());
        let removed =
            tokio::task::spawn_blocking(move || paths::remove_result_file(&dir, &tenant, &file))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        removed.map_err(|e| Error::ResultFileNotRemoved {
            guid: spec.guid.clone(),
            path: spec.result_file.clone(),
            reason: e.to_string(),
        })
    }

    /// Prunes finished downloads every [`prune_interval`] until shutdown.
    pub(super) async fn prune_periodically(self, retain: Duration) {
        let mut tick = tokio::time::interval(prune_interval(retain));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.inner.shutdown.cancelled() => return,
            }
            match prune_store(&*self.inner.store, retain).await {
                Ok(pruned) if pruned.is_empty() => {}
                Ok(pruned) => {
                    {
                        let mut core = self.lock();
                        for guid in &pruned {
                            core.registry.remove(guid);
                        }
                    }
                    tracing::info!(count = pruned.len(), "pruned finished downloads");
                    let guids = pruned.clone();
                    self.announce(|node| Notice::Deleted { guids, node }).await;
                }
                // The next tick tries again; nothing was forgotten.
                Err(e) => tracing::warn!(error = %e, "could not prune finished downloads"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_interval_is_a_bounded_quarter_of_the_retention() {
        assert_eq!(prune_interval(Duration::from_secs(1)), MIN_PRUNE_INTERVAL);
        assert_eq!(
            prune_interval(Duration::from_secs(60)),
            Duration::from_secs(15)
        );
        assert_eq!(
            prune_interval(Duration::from_secs(86_400)),
            MAX_PRUNE_INTERVAL
        );
    }
}
