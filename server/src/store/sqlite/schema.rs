//! The SQLite schema and its versioned migrations. The version lives in SQLite's
//! `user_version`; a new database is created at version 1 and migrated like an old one, so
//! every database reaches the current schema by the same steps.

use std::time::SystemTime;

use rusqlite::{Connection, named_params};

use crate::operation::Status;

/// The schema version this build writes. A database with a higher one was written by a newer
/// transferd and is refused rather than misread.
pub(super) const SCHEMA_VERSION: i64 = 7;

/// Version 1: downloads and transfer groups.
pub(super) const SCHEMA_V1: &str = "
BEGIN;
CREATE TABLE downloads (
    guid                  TEXT PRIMARY KEY,
    seq                   INTEGER NOT NULL UNIQUE,
    result_file           TEXT NOT NULL,
    transfer_group        TEXT NOT NULL,
    expected_sha256       TEXT,
    recoverable_statuses  TEXT NOT NULL,
    requested_uri         TEXT NOT NULL,
    request_headers       TEXT NOT NULL,
    priority              INTEGER NOT NULL,
    cost_policy           INTEGER NOT NULL,
    status                INTEGER NOT NULL,
    checkpoint_bytes      INTEGER NOT NULL,
    total_bytes           INTEGER NOT NULL,
    etag                  TEXT,
    last_modified         TEXT,
    response_status       INTEGER,
    response_uri          TEXT,
    response_resumable    INTEGER,
    response_headers      TEXT,
    error_message         TEXT,
    error_http_status     INTEGER,
    error_reason          INTEGER,
    attempts              INTEGER NOT NULL,
    web_error_status      INTEGER,
    queue_order           INTEGER NOT NULL
);
CREATE TABLE transfer_groups (
    name      TEXT PRIMARY KEY,
    behavior  INTEGER NOT NULL
);
PRAGMA user_version = 1;
COMMIT;
";

/// Version 2 adds when a download finished (milliseconds since the Unix epoch; NULL while
/// unfinished), indexed for pruning, and the columns of two `DownloadSpec` fields: a byte limit
/// (NULL for none) and whether an existing result file may be replaced.
const V1_TO_V2: &str = "
ALTER TABLE downloads ADD COLUMN finished_at INTEGER;
ALTER TABLE downloads ADD COLUMN max_bytes INTEGER;
ALTER TABLE downloads ADD COLUMN replace_existing INTEGER NOT NULL DEFAULT 0;
CREATE INDEX downloads_by_finished_at ON downloads (finished_at)
    WHERE finished_at IS NOT NULL;
";

/// Version 3 adds the header names a download marked sensitive (a JSON list of lower-case
/// names; downloads stored before have none, and the built-in rule still covers their
/// Authorization, Cookie and the like).
const V2_TO_V3: &str = "
ALTER TABLE downloads ADD COLUMN sensitive_headers TEXT NOT NULL DEFAULT '[]';
";

/// Version 4 gives every download and transfer group a tenant; what was stored before belongs
/// to the default tenant (the empty name). Groups are named per tenant, so the group table's
/// key becomes (tenant, name): SQLite cannot change a primary key in place, so the table is
/// copied.
const V3_TO_V4: &str = "
ALTER TABLE downloads ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
CREATE TABLE transfer_groups_v4 (
    tenant    TEXT NOT NULL DEFAULT '',
    name      TEXT NOT NULL,
    behavior  INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);
INSERT INTO transfer_groups_v4 (tenant, name, behavior)
    SELECT '', name, behavior FROM transfer_groups;
DROP TABLE transfer_groups;
ALTER TABLE transfer_groups_v4 RENAME TO transfer_groups;
";

/// Version 5 adds a download's own bandwidth limit in bytes/s (NULL for none, which every
/// download stored before has).
const V4_TO_V5: &str = "
ALTER TABLE downloads ADD COLUMN max_bytes_per_second INTEGER;
";

/// Version 6 adds the SHA-256 state saved with each checkpoint of a download that hashes as it
/// writes (a BLOB; NULL for every download stored before, which hashes its partial file's
/// prefix once when it resumes).
const V5_TO_V6: &str = "
ALTER TABLE downloads ADD COLUMN sha256_state BLOB;
";

/// Version 7 adds the segments of a download fetched over several connections: a JSON list of
/// `[start, end, durable]` triples in entity order (empty for a single-stream download). A
/// column, not a table: the segments are saved with every checkpoint of the download, in the
/// same row write, so they can never disagree with `checkpoint_bytes`.
const V6_TO_V7: &str = "
ALTER TABLE downloads ADD COLUMN segments TEXT NOT NULL DEFAULT '[]';
";

/// Brings a database at `version` (0 for a new one) to [`SCHEMA_VERSION`], one version per
/// transaction, so an interrupted migration leaves the last completed version.
pub(super) fn migrate(conn: &Connection, version: i64) -> rusqlite::Result<()> {
    if version < 1 {
        conn.execute_batch(SCHEMA_V1)?;
    }
    if version < 2 {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(V1_TO_V2)?;
        // Downloads that finished under version 1 have no finish time: they count as finished
        // now, so an operator who enables retention on upgrade loses nothing at once.
        tx.execute(
            &format!(
                "UPDATE downloads SET finished_at = :now WHERE status IN ({})",
                terminal_codes()
            ),
            named_params! {":now": unix_millis(SystemTime::now())},
        )?;
        tx.pragma_update(None, "user_version", 2)?;
        tx.commit()?;
    }
    if version < 3 {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(V2_TO_V3)?;
        tx.pragma_update(None, "user_version", 3)?;
        tx.commit()?;
    }
    if version < 4 {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(V3_TO_V4)?;
        tx.pragma_update(None, "user_version", 4)?;
        tx.commit()?;
    }
    if version < 5 {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(V4_TO_V5)?;
        tx.pragma_update(None, "user_version", 5)?;
        tx.commit()?;
    }
    for (to, step) in [(6, V5_TO_V6), (7, V6_TO_V7)] {
        if version < to {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", to)?;
            tx.commit()?;
        }
    }
    Ok(())
}

/// The stored codes of the terminal statuses, as an SQL list.
fn terminal_codes() -> String {
    let codes: Vec<String> = Status::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(|s| s.code().to_string())
        .collect();
    codes.join(", ")
}

/// A time as stored: milliseconds since the Unix epoch (0 for earlier times).
pub(in crate::store) fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A stored time back as a [`SystemTime`]; `None` for a negative value.
pub(in crate::store) fn from_unix_millis(ms: i64) -> Option<SystemTime> {
    let ms = u64::try_from(ms).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Store, StoreError};

    /// A row written under version 1 with the values given as SQL.
    fn v1_row(guid: &str, seq: i64, status: Status, checkpoint: i64) -> String {
        format!(
            "INSERT INTO downloads VALUES ('{guid}', {seq}, '{guid}.bin', '', NULL, '[]', \
             'http://h/x', '{{}}', 0, 0, {}, {checkpoint}, 0, NULL, NULL, NULL, NULL, NULL, NULL, \
             NULL, NULL, NULL, 0, NULL, {seq});",
            status.code()
        )
    }

    #[tokio::test]
    async fn version_1_is_migrated_and_its_finished_downloads_count_as_finished_now() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(SqliteStore::DB_FILE)).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.execute_batch(&v1_row("done", 1, Status::Completed, 5))
            .unwrap();
        conn.execute_batch(&v1_row("live", 2, Status::Idle, 0))
            .unwrap();
        drop(conn);
        let before = SystemTime::now() - std::time::Duration::from_millis(1);
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let loaded = store.load_page(0, 10).await.unwrap();
        let finished = loaded[0].finished_at.expect("stamped by the migration");
        assert!(finished >= before, "{finished:?}");
        assert_eq!(loaded[1].finished_at, None);
        // Version 5: what was stored before has no bandwidth limit of its own.
        assert_eq!(loaded[1].settings.max_bytes_per_second, None);
        // Version 6: nor a saved SHA-256 state.
        assert_eq!(loaded[1].sha256_state, None);
        drop(store);
        let conn = Connection::open(dir.path().join(SqliteStore::DB_FILE)).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let (max_bytes, replace): (Option<i64>, i64) = conn
            .query_row(
                "SELECT max_bytes, replace_existing FROM downloads WHERE guid = 'done'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((max_bytes, replace), (None, 0));
    }

    #[tokio::test]
    async fn negative_byte_counts_are_refused_naming_the_download() {
        for column in ["checkpoint_bytes", "total_bytes"] {
            let dir = tempfile::tempdir().unwrap();
            let conn = Connection::open(dir.path().join(SqliteStore::DB_FILE)).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.execute_batch(&v1_row("g-neg", 1, Status::Idle, 0))
                .unwrap();
            conn.execute_batch(&format!("UPDATE downloads SET {column} = -1"))
                .unwrap();
            drop(conn);
            let store = SqliteStore::open(dir.path()).await.unwrap();
            let err = store.load_page(0, 10).await.unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
            let message = err.to_string();
            assert!(
                message.contains("`g-neg`") && message.contains("negative"),
                "{message}"
            );
        }
    }

    #[tokio::test]
    async fn version_2_is_migrated_and_everything_stored_belongs_to_the_default_tenant() {
        use crate::auth::Tenant;
        use crate::operation::Behavior;
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(SqliteStore::DB_FILE)).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.execute_batch(&v1_row("live", 1, Status::Idle, 3))
            .unwrap();
        conn.execute_batch(V1_TO_V2).unwrap();
        conn.execute_batch(
            "INSERT INTO transfer_groups VALUES ('nightly', 1); PRAGMA user_version = 2;",
        )
        .unwrap();
        drop(conn);
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let loaded = store.load_page(0, 10).await.unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].spec.tenant, Tenant::default_tenant());
        assert_eq!(
            (
                loaded[0].spec.result_file.as_str(),
                loaded[0].checkpoint_bytes
            ),
            ("live.bin", 3)
        );
        let groups = store.load_groups().await.unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(
            (
                &groups[0].tenant,
                groups[0].name.as_str(),
                groups[0].behavior
            ),
            (&Tenant::default_tenant(), "nightly", Behavior::Serialized)
        );
        // The same group name in another tenant is another group.
        let media = Tenant::new("media");
        store
            .save_group(&media, "nightly", Behavior::Parallel)
            .await
            .unwrap();
        let groups = store.load_groups().await.unwrap();
        assert_eq!(groups.len(), 2);
        drop(store);
        let conn = Connection::open(dir.path().join(SqliteStore::DB_FILE)).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
}
