//! Durable storage of downloads behind the small [`Store`] trait, so a networked store can be
//! added for multi-node deployments. [`SqliteStore`] is the embedded default: one SQLite file in
//! WAL mode that operators can open with the `sqlite3` CLI.
//!
//! The store is written on state changes and periodic checkpoints, never per network read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, params};

use crate::operation::{
    Behavior, CostPolicy, DownloadSpec, ErrorReason, Priority, ResponseInfo, Settings, Status,
    TransferError, Validators,
};

/// The schema version this build writes. A store with a higher `user_version` was written by a
/// newer transferd and is refused rather than misread.
pub const SCHEMA_VERSION: i64 = 1;

/// File name of the database inside `--data-dir`.
pub const DB_FILE: &str = "transferd.db";

/// How long a store call waits for a lock held by another connection (for example an operator's
/// `sqlite3` shell) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file is damaged or is not a transferd database.
    #[error(
        "the store at {path} is corrupted or not a transferd database ({detail}); restore it from a backup or move it away to start empty"
    )]
    Corrupt {
        /// Database path.
        path: PathBuf,
        /// What SQLite reported.
        detail: String,
    },
    /// The database was written by a newer transferd.
    #[error(
        "the store at {path} has schema version {found}, newer than this transferd understands ({SCHEMA_VERSION}); run the newer transferd or restore a backup"
    )]
    NewerSchema {
        /// Database path.
        path: PathBuf,
        /// The version found.
        found: i64,
    },
    /// A stored row holds a value this version cannot interpret.
    #[error("stored download `{guid}` is unreadable: {detail}")]
    BadRow {
        /// The download.
        guid: String,
        /// What is wrong.
        detail: String,
    },
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A store call did not finish (it panicked); nothing is known to have been written.
    #[error("a store call did not finish: {0}")]
    Interrupted(String),
    /// The data directory could not be prepared.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
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
    pub checkpoint_bytes: u64,
    /// Entity length, or 0 while unknown.
    pub total_bytes: u64,
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
}

/// Durable storage of download records.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Every stored download, in creation order.
    fn load(&self) -> Result<Vec<Record>, StoreError>;
    /// Stores a new download. Returns only once it is durable.
    fn insert(&self, record: &Record) -> Result<(), StoreError>;
    /// Replaces the stored state of an existing download.
    fn save(&self, record: &Record) -> Result<(), StoreError>;
    /// Every transfer group with a non-default behavior.
    fn load_groups(&self) -> Result<Vec<(String, Behavior)>, StoreError>;
    /// Records how a transfer group runs.
    fn save_group(&self, group: &str, behavior: Behavior) -> Result<(), StoreError>;
}

/// The embedded SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    // A std mutex, not a tokio one: calls are short, synchronous and run on blocking threads,
    // never held across an await.
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (or creates) the store in `data_dir`. Refuses a corrupted store or one written by
    /// a newer version instead of starting empty.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        };
        let conn = Connection::open(&path).map_err(corrupt)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Reading the header first turns "file is not a database" into a clear refusal.
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(corrupt)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path,
                found: version,
            });
        }
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(corrupt)?;
        if check != "ok" {
            return Err(StoreError::Corrupt {
                path,
                detail: check,
            });
        }
        // WAL lets readers (an operator's sqlite3 shell) work while transferd writes; FULL makes
        // every commit survive power loss, not only a process crash: an acknowledged
        // CreateDownload must never be lost.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(corrupt)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        if version == 0 {
            conn.execute_batch(SCHEMA_V1)?;
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (every write is one
        // statement), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

const SCHEMA_V1: &str = "
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

/// Columns in [`Row`] order; the fixed ones first, then the ones `save` rewrites.
const FIXED_COLUMNS: [&str; 6] = [
    "guid",
    "seq",
    "result_file",
    "transfer_group",
    "expected_sha256",
    "recoverable_statuses",
];
const STATE_COLUMNS: [&str; 19] = [
    "requested_uri",
    "request_headers",
    "priority",
    "cost_policy",
    "status",
    "checkpoint_bytes",
    "total_bytes",
    "etag",
    "last_modified",
    "response_status",
    "response_uri",
    "response_resumable",
    "response_headers",
    "error_message",
    "error_http_status",
    "error_reason",
    "attempts",
    "web_error_status",
    "queue_order",
];

impl Store for SqliteStore {
    fn load(&self) -> Result<Vec<Record>, StoreError> {
        let columns = [&FIXED_COLUMNS[..], &STATE_COLUMNS[..]].concat().join(", ");
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {columns} FROM downloads ORDER BY seq"))?;
        let rows = stmt.query_map([], Row::read)?;
        let mut records = Vec::new();
        for row in rows {
            records.push(row?.into_record()?);
        }
        Ok(records)
    }

    fn insert(&self, record: &Record) -> Result<(), StoreError> {
        let all = [&FIXED_COLUMNS[..], &STATE_COLUMNS[..]].concat();
        let placeholders: Vec<String> = (1..=all.len()).map(|i| format!("?{i}")).collect();
        let row = Row::from_record(record);
        self.conn().execute(
            &format!(
                "INSERT INTO downloads ({}) VALUES ({})",
                all.join(", "),
                placeholders.join(", ")
            ),
            rusqlite::params_from_iter(row.values()),
        )?;
        Ok(())
    }

    fn save(&self, record: &Record) -> Result<(), StoreError> {
        let sets: Vec<String> = STATE_COLUMNS
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ?{}", i + 2))
            .collect();
        let row = Row::from_record(record);
        let values = row.values();
        let params = std::iter::once(&values[0]).chain(&values[FIXED_COLUMNS.len()..]);
        let changed = self.conn().execute(
            &format!("UPDATE downloads SET {} WHERE guid = ?1", sets.join(", ")),
            rusqlite::params_from_iter(params),
        )?;
        if changed != 1 {
            return Err(StoreError::BadRow {
                guid: row.guid,
                detail: "not in the store".into(),
            });
        }
        Ok(())
    }

    fn load_groups(&self) -> Result<Vec<(String, Behavior)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, behavior FROM transfer_groups ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut groups = Vec::new();
        for row in rows {
            let (name, code) = row?;
            let behavior = i32::try_from(code)
                .ok()
                .and_then(Behavior::from_code)
                .ok_or_else(|| StoreError::BadRow {
                    guid: format!("transfer group {name}"),
                    detail: format!("unknown behavior {code}"),
                })?;
            groups.push((name, behavior));
        }
        Ok(groups)
    }

    fn save_group(&self, group: &str, behavior: Behavior) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO transfer_groups (name, behavior) VALUES (?1, ?2) \
             ON CONFLICT(name) DO UPDATE SET behavior = excluded.behavior",
            params![group, behavior.code()],
        )?;
        Ok(())
    }
}

/// A download as SQLite values, in column order. Kept flat and readable so operators can query
/// it with the sqlite3 CLI.
struct Row {
    guid: String,
    seq: i64,
    result_file: String,
    transfer_group: String,
    expected_sha256: Option<String>,
    recoverable_statuses: String,
    requested_uri: String,
    request_headers: String,
    priority: i64,
    cost_policy: i64,
    status: i64,
    checkpoint_bytes: i64,
    total_bytes: i64,
    etag: Option<String>,
    last_modified: Option<String>,
    response_status: Option<i64>,
    response_uri: Option<String>,
    response_resumable: Option<bool>,
    response_headers: Option<String>,
    error_message: Option<String>,
    error_http_status: Option<i64>,
    error_reason: Option<i64>,
    attempts: i64,
    web_error_status: Option<i64>,
    queue_order: i64,
}

impl Row {
    fn values(&self) -> Vec<rusqlite::types::Value> {
        use rusqlite::types::Value;
        let text = |s: &str| Value::Text(s.to_string());
        let opt_text = |s: &Option<String>| s.clone().map_or(Value::Null, Value::Text);
        let opt_int = |i: Option<i64>| i.map_or(Value::Null, Value::Integer);
        vec![
            text(&self.guid),
            Value::Integer(self.seq),
            text(&self.result_file),
            text(&self.transfer_group),
            opt_text(&self.expected_sha256),
            text(&self.recoverable_statuses),
            text(&self.requested_uri),
            text(&self.request_headers),
            Value::Integer(self.priority),
            Value::Integer(self.cost_policy),
            Value::Integer(self.status),
            Value::Integer(self.checkpoint_bytes),
            Value::Integer(self.total_bytes),
            opt_text(&self.etag),
            opt_text(&self.last_modified),
            opt_int(self.response_status),
            opt_text(&self.response_uri),
            opt_int(self.response_resumable.map(i64::from)),
            opt_text(&self.response_headers),
            opt_text(&self.error_message),
            opt_int(self.error_http_status),
            opt_int(self.error_reason),
            Value::Integer(self.attempts),
            opt_int(self.web_error_status),
            Value::Integer(self.queue_order),
        ]
    }

    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        Ok(Row {
            guid: r.get(0)?,
            seq: r.get(1)?,
            result_file: r.get(2)?,
            transfer_group: r.get(3)?,
            expected_sha256: r.get(4)?,
            recoverable_statuses: r.get(5)?,
            requested_uri: r.get(6)?,
            request_headers: r.get(7)?,
            priority: r.get(8)?,
            cost_policy: r.get(9)?,
            status: r.get(10)?,
            checkpoint_bytes: r.get(11)?,
            total_bytes: r.get(12)?,
            etag: r.get(13)?,
            last_modified: r.get(14)?,
            response_status: r.get(15)?,
            response_uri: r.get(16)?,
            response_resumable: r.get(17)?,
            response_headers: r.get(18)?,
            error_message: r.get(19)?,
            error_http_status: r.get(20)?,
            error_reason: r.get(21)?,
            attempts: r.get(22)?,
            web_error_status: r.get(23)?,
            queue_order: r.get(24)?,
        })
    }

    fn from_record(record: &Record) -> Row {
        let Record {
            spec,
            settings,
            status,
            checkpoint_bytes,
            total_bytes,
            validators,
            response,
            error,
            attempts,
            web_error_status,
            queue_order,
        } = record;
        let DownloadSpec {
            guid,
            seq,
            result_file,
            transfer_group,
            expected_sha256,
            recoverable_web_error_statuses,
            replace_existing: _, // stored from schema v2 (merge)
        } = spec;
        let Settings {
            requested_uri,
            request_headers,
            priority,
            cost_policy,
        } = settings;
        Row {
            guid: guid.clone(),
            seq: to_i64(*seq),
            result_file: result_file.clone(),
            transfer_group: transfer_group.clone(),
            expected_sha256: expected_sha256.clone(),
            recoverable_statuses: serde_json::to_string(recoverable_web_error_statuses)
                .expect("a list of numbers always serialises"),
            requested_uri: requested_uri.clone(),
            request_headers: headers_to_json(request_headers),
            priority: priority.code().into(),
            cost_policy: cost_policy.code().into(),
            status: status.code().into(),
            checkpoint_bytes: to_i64(*checkpoint_bytes),
            total_bytes: to_i64(*total_bytes),
            etag: validators.etag.clone(),
            last_modified: validators.last_modified.clone(),
            response_status: response.as_ref().map(|r| r.status_code.into()),
            response_uri: response.as_ref().map(|r| r.actual_uri.clone()),
            response_resumable: response.as_ref().map(|r| r.is_resumable),
            response_headers: response.as_ref().map(|r| headers_to_json(&r.headers)),
            error_message: error.as_ref().map(|e| e.message.clone()),
            error_http_status: error.as_ref().and_then(|e| e.http_status.map(i64::from)),
            error_reason: error.as_ref().map(|e| e.reason.code().into()),
            attempts: (*attempts).into(),
            web_error_status: web_error_status.map(i64::from),
            queue_order: *queue_order,
        }
    }

    fn into_record(self) -> Result<Record, StoreError> {
        let guid = self.guid.clone();
        let bad = |detail: String| StoreError::BadRow {
            guid: guid.clone(),
            detail,
        };
        let code = |v: i64, what: &str| {
            i32::try_from(v).map_err(|_| bad(format!("{what} {v} is out of range")))
        };
        let status = Status::from_code(code(self.status, "status")?)
            .ok_or_else(|| bad(format!("unknown status {}", self.status)))?;
        let priority = Priority::from_code(code(self.priority, "priority")?)
            .ok_or_else(|| bad(format!("unknown priority {}", self.priority)))?;
        let cost_policy = CostPolicy::from_code(code(self.cost_policy, "cost policy")?)
            .ok_or_else(|| bad(format!("unknown cost policy {}", self.cost_policy)))?;
        let request_headers = headers_from_json(&self.request_headers).map_err(&bad)?;
        let recoverable_web_error_statuses: Vec<u16> =
            serde_json::from_str(&self.recoverable_statuses)
                .map_err(|e| bad(format!("recoverable statuses are not valid JSON: {e}")))?;
        let response = match self.response_status {
            None => None,
            Some(status_code) => Some(ResponseInfo {
                is_resumable: self.response_resumable.unwrap_or(false),
                actual_uri: self.response_uri.unwrap_or_default(),
                status_code: u16::try_from(status_code)
                    .map_err(|_| bad(format!("HTTP status {status_code} is out of range")))?,
                headers: match &self.response_headers {
                    Some(json) => headers_from_json(json).map_err(&bad)?,
                    None => BTreeMap::new(),
                },
            }),
        };
        let error = match self.error_message {
            None => None,
            Some(message) => {
                let code = self.error_reason.unwrap_or(0);
                let reason = i32::try_from(code)
                    .ok()
                    .and_then(ErrorReason::from_code)
                    .ok_or_else(|| bad(format!("unknown error reason {code}")))?;
                Some(TransferError {
                    message,
                    http_status: self.error_http_status.and_then(|s| u16::try_from(s).ok()),
                    reason,
                })
            }
        };
        Ok(Record {
            spec: DownloadSpec {
                guid: self.guid,
                seq: to_u64(self.seq),
                result_file: self.result_file,
                transfer_group: self.transfer_group,
                expected_sha256: self.expected_sha256,
                recoverable_web_error_statuses,
                replace_existing: false, // stored from schema v2 (merge)
            },
            settings: Settings {
                requested_uri: self.requested_uri,
                request_headers,
                priority,
                cost_policy,
            },
            status,
            checkpoint_bytes: to_u64(self.checkpoint_bytes),
            total_bytes: to_u64(self.total_bytes),
            validators: Validators {
                etag: self.etag,
                last_modified: self.last_modified,
            },
            response,
            error,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            web_error_status: self.web_error_status.and_then(|s| u16::try_from(s).ok()),
            queue_order: self.queue_order,
        })
    }
}

// SQLite integers are signed 64-bit; byte counts and sequence numbers never reach 2^63.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn headers_to_json(headers: &BTreeMap<String, String>) -> String {
    serde_json::to_string(headers).expect("a string map always serialises")
}

fn headers_from_json(json: &str) -> Result<BTreeMap<String, String>, String> {
    serde_json::from_str(json).map_err(|e| format!("header map is not valid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(guid: &str, seq: u64) -> Record {
        Record {
            spec: DownloadSpec {
                guid: guid.into(),
                seq,
                result_file: "a.bin".into(),
                transfer_group: "g".into(),
                expected_sha256: Some("ab".repeat(32)),
                recoverable_web_error_statuses: vec![401, 403],
                replace_existing: false,
            },
            settings: Settings {
                requested_uri: "http://127.0.0.1/a".into(),
                request_headers: [("authorization".to_string(), "Bearer x".to_string())].into(),
                priority: Priority::High,
                cost_policy: CostPolicy::UnrestrictedOnly,
            },
            status: Status::Idle,
            checkpoint_bytes: 0,
            total_bytes: 0,
            validators: Validators::default(),
            response: None,
            error: None,
            attempts: 0,
            web_error_status: None,
            queue_order: seq as i64,
        }
    }

    #[test]
    fn round_trips_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let mut a = record("a", 1);
        store.insert(&a).unwrap();
        store.insert(&record("b", 2)).unwrap();
        a.status = Status::Error;
        a.checkpoint_bytes = 12345;
        a.total_bytes = 99999;
        a.validators = Validators {
            etag: Some("\"e\"".into()),
            last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
        };
        a.response = Some(ResponseInfo {
            is_resumable: true,
            actual_uri: "http://127.0.0.1/b".into(),
            status_code: 404,
            headers: [("etag".to_string(), "\"e\"".to_string())].into(),
        });
        a.error = Some(TransferError {
            message: "not found".into(),
            http_status: Some(404),
            reason: ErrorReason::HttpStatus,
        });
        a.attempts = 3;
        a.web_error_status = Some(403);
        a.queue_order = -5;
        a.settings.requested_uri = "http://127.0.0.1/moved".into();
        a.settings.priority = Priority::Low;
        store.save(&a).unwrap();
        drop(store);
        let store = SqliteStore::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded, vec![a, record("b", 2)]);
    }

    #[test]
    fn group_behaviors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store.save_group("b", Behavior::Serialized).unwrap();
        store.save_group("a", Behavior::Serialized).unwrap();
        store.save_group("b", Behavior::Parallel).unwrap();
        assert_eq!(
            store.load_groups().unwrap(),
            vec![
                ("a".to_string(), Behavior::Serialized),
                ("b".to_string(), Behavior::Parallel)
            ]
        );
    }

    #[test]
    fn duplicate_insert_fails_and_save_of_unknown_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store.insert(&record("a", 1)).unwrap();
        assert!(store.insert(&record("a", 2)).is_err());
        assert!(matches!(
            store.save(&record("zz", 3)),
            Err(StoreError::BadRow { .. })
        ));
    }

    #[test]
    fn refuses_garbage_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0x5a; 8192]).unwrap();
        let err = SqliteStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = SqliteStore::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1),
            "{err:?}"
        );
    }
}
