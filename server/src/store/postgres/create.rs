//! A new download's insert with replicas: its path and its tenant's quota are checked by the
//! database in the transaction that stores it (see `SharedStore::insert_new`).

use std::sync::LazyLock;

use super::schema::LIVE_PATH;
use super::{INSERT, PostgresStore, Row, classify};
use crate::store::shared::Inserted;
use crate::store::{Record, StoreError};

/// The advisory lock space a tenant's creates take while its quota is counted ("quot").
const QUOTA_LOCK: i32 = 0x71_75_6f_74;

/// The insert of a new download that stores nothing when another unfinished download lands at
/// the same path.
static INSERT_UNLESS_PATH_TAKEN: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{insert} ON CONFLICT ({LIVE_PATH}) WHERE finished_at IS NULL DO NOTHING",
        insert = *INSERT
    )
});

/// See `SharedStore::insert_new`.
pub(super) async fn insert_new(
    store: &PostgresStore,
    record: &Record,
    quota: Option<u64>,
) -> Result<Inserted, StoreError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(classify)?;
    let tenant = record.spec.tenant.name();
    if let Some(quota) = quota {
        // A tenant's creates are counted one at a time, so two at once cannot both
        // take its last place.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&QUOTA_LOCK, &tenant],
        )
        .await
        .map_err(classify)?;
        let count: i64 = tx
            .query_one(
                "SELECT count(*) FROM downloads WHERE tenant = $1 AND finished_at IS NULL",
                &[&tenant],
            )
            .await
            .map_err(classify)?
            .get(0);
        let count = u64::try_from(count).unwrap_or(0);
        if count >= quota {
            return Ok(Inserted::OverQuota { count });
        }
    }
    let row = Row::from_record(record);
    let stored = tx
        .execute(INSERT_UNLESS_PATH_TAKEN.as_str(), &row.pg_values())
        .await
        .map_err(|e| match classify(e) {
            StoreError::Conflict(_) => {
                StoreError::Conflict(format!("download `{}` is already stored", record.spec.guid))
            }
            other => other,
        })?;
    if stored == 0 {
        let holder = tx
            .query_opt(
                &format!(
                    "SELECT guid FROM downloads WHERE {LIVE_PATH} = $1 AND finished_at IS NULL"
                ),
                &[&record.spec.resolved_path()],
            )
            .await
            .map_err(classify)?
            .map(|r| r.get(0))
            .unwrap_or_default();
        return Ok(Inserted::PathTaken { holder });
    }
    tx.commit().await.map_err(classify)?;
    Ok(Inserted::Stored)
}
