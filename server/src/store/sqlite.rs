//! The embedded SQLite store: one file in WAL mode that operators can open with the `sqlite3`
//! CLI. Every SQLite call runs on the store's own thread (`sqlite/writer.rs`), since commits
//! fsync and must not stall the async workers; that thread commits concurrent writes together
//! (group commit), each acknowledged only once durable. SQLite errors are classified into [`StoreError`] here and never leave
//! this module.
//!
//! The database holds the downloads' secrets (request headers such as Authorization, URI
//! userinfo) as given, because a download needs them again after a restart; its files are
//! therefore readable by transferd's user alone ([`DB_FILE_MODE`]).

pub(super) mod row;
pub(super) mod schema;
mod writer;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, named_params};

use super::{Record, Store, StoreError, StoreFuture, StoredGroup};
use crate::auth::Tenant;
use crate::operation::{Behavior, Guid};
use row::{FIXED_COLUMNS, Row, STATE_COLUMNS};
#[cfg(test)]
use schema::SCHEMA_V1;
use writer::{Kind, Writer};

/// How long a store call waits for a lock held by another connection (for example an operator's
/// `sqlite3` shell) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Mode of the database file and of its `-wal` and `-shm` companions: they hold credentials.
/// SQLite creates the companions with the database file's mode, so creating that file with
/// this mode first covers all three; files left by an older build are tightened at open.
pub const DB_FILE_MODE: u32 = 0o600;

/// The companions SQLite keeps next to the database file in WAL mode.
const DB_COMPANION_SUFFIXES: [&str; 2] = ["-wal", "-shm"];

/// The embedded SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    /// The thread that owns the connection and runs every call.
    writer: Writer,
}

impl SqliteStore {
    /// The schema version this build writes, kept in SQLite's `user_version`. A database with a
    /// higher one was written by a newer transferd and is refused rather than misread; an older
    /// one is migrated at open.
    pub const SCHEMA_VERSION: i64 = schema::SCHEMA_VERSION;

    /// File name of the database inside `--data-dir`.
    pub const DB_FILE: &str = "transferd.db";

    /// Opens (or creates) the store in `data_dir`. Refuses a corrupted store or one written by
    /// a newer version instead of starting empty. Its errors name the database file: they are
    /// meant for the operator starting transferd.
    pub async fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        let data_dir = data_dir.to_path_buf();
        let conn = tokio::task::spawn_blocking(move || open_connection(&data_dir))
            .await
            .unwrap_or_else(|e| Err(unfinished(e)))?;
        Ok(SqliteStore {
            writer: Writer::start(conn, writer::LAZY_WAIT)?,
        })
    }

    /// Saves `record` as a write of `kind`.
    fn save_as(&self, kind: Kind, record: &Record) -> StoreFuture<'static, ()> {
        let row = Row::from_record(record);
        self.writer.call(kind, move |conn| {
            let fail = |e| failed(&format!("saving download `{}`", row.guid), e);
            let params: Vec<_> = row
                .params()
                .into_iter()
                .filter(|(name, _)| *name == ":guid" || STATE_COLUMNS.contains(&&name[1..]))
                .collect();
            let mut stmt = conn.prepare_cached(&UPDATE).map_err(fail)?;
            if stmt.execute(&*params).map_err(fail)? != 1 {
                return Err(StoreError::Conflict(format!(
                    "download `{}` cannot be saved: it was never stored",
                    row.guid
                )));
            }
            Ok(())
        })
    }
}

fn open_connection(data_dir: &Path) -> Result<Connection, StoreError> {
    crate::datadir::create_private(data_dir).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot prepare {}: {e}; check --data-dir and its permissions",
            data_dir.display()
        ))
    })?;
    let path = data_dir.join(SqliteStore::DB_FILE);
    make_private(&path)?;
    let failed = |e| open_failed(&path, e);
    let conn = Connection::open(&path).map_err(failed)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(failed)?;
    // Reading the header first turns "file is not a database" into a clear refusal.
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(failed)?;
    if version > SqliteStore::SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            supported: SqliteStore::SCHEMA_VERSION,
        });
    }
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(failed)?;
    if check != "ok" {
        return Err(corrupt_at(&path, &check));
    }
    // WAL lets readers (an operator's sqlite3 shell) work while transferd writes; FULL makes
    // every commit survive power loss, not only a process crash: an acknowledged
    // CreateDownload must never be lost.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(failed)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(failed)?;
    schema::migrate(&conn, version).map_err(failed)?;
    Ok(conn)
}

/// Creates the database file with [`DB_FILE_MODE`] before SQLite opens it, and tightens an
/// existing one and its companions to that mode.
fn make_private(path: &Path) -> Result<(), StoreError> {
    let failed = |e: std::io::Error| {
        StoreError::Unavailable(format!(
            "cannot make {} private to transferd's user: {e}; check its owner and permissions",
            path.display()
        ))
    };
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(DB_FILE_MODE)
        .open(path)
        .map_err(failed)?;
    let mut companions = vec![path.to_path_buf()];
    for suffix in DB_COMPANION_SUFFIXES {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        companions.push(name.into());
    }
    for file in companions {
        match std::fs::metadata(&file) {
            Ok(m) if m.permissions().mode() & 0o777 != DB_FILE_MODE => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(DB_FILE_MODE))
                    .map_err(failed)?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(e)),
        }
    }
    Ok(())
}

/// Every column, fixed ones first.
static COLUMNS: LazyLock<Vec<&str>> =
    LazyLock::new(|| FIXED_COLUMNS.iter().chain(STATE_COLUMNS).copied().collect());

static SELECT_PAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM downloads WHERE seq > :after ORDER BY seq LIMIT :limit",
        COLUMNS.join(", ")
    )
});

static INSERT: LazyLock<String> = LazyLock::new(|| {
    let placeholders: Vec<String> = COLUMNS.iter().map(|c| format!(":{c}")).collect();
    format!(
        "INSERT INTO downloads ({}) VALUES ({})",
        COLUMNS.join(", "),
        placeholders.join(", ")
    )
});

static UPDATE: LazyLock<String> = LazyLock::new(|| {
    let sets: Vec<String> = STATE_COLUMNS
        .iter()
        .map(|c| format!("{c} = :{c}"))
        .collect();
    format!(
        "UPDATE downloads SET {} WHERE guid = :guid",
        sets.join(", ")
    )
});

impl Store for SqliteStore {
    fn load_page(&self, after_seq: u64, limit: usize) -> StoreFuture<'_, Vec<Record>> {
        let after = row::to_i64(after_seq);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.writer.call(Kind::Read, move |conn| {
            let fail = |e| failed("reading stored downloads", e);
            let mut stmt = conn.prepare_cached(&SELECT_PAGE).map_err(fail)?;
            let rows = stmt
                .query_map(named_params! {":after": after, ":limit": limit}, Row::read)
                .map_err(fail)?;
            rows.map(|row| row.map_err(fail)?.into_record()).collect()
        })
    }

    fn insert<'a>(&'a self, record: &'a Record) -> StoreFuture<'a, ()> {
        let row = Row::from_record(record);
        self.writer.call(Kind::Write, move |conn| {
            let fail = |e| failed(&format!("storing new download `{}`", row.guid), e);
            let mut stmt = conn.prepare_cached(&INSERT).map_err(fail)?;
            stmt.execute(&*row.params()).map_err(fail)?;
            Ok(())
        })
    }

    fn save<'a>(&'a self, record: &'a Record) -> StoreFuture<'a, ()> {
        self.save_as(Kind::Write, record)
    }

    fn save_soon<'a>(&'a self, record: &'a Record) -> StoreFuture<'a, ()> {
        self.save_as(Kind::Lazy, record)
    }

    fn load_groups(&self) -> StoreFuture<'_, Vec<StoredGroup>> {
        self.writer.call(Kind::Read, |conn| {
            let fail = |e| failed("reading transfer groups", e);
            let mut stmt = conn
                .prepare_cached(
                    "SELECT tenant, name, behavior FROM transfer_groups ORDER BY tenant, name",
                )
                .map_err(fail)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get("tenant")?, r.get("name")?, r.get("behavior")?))
                })
                .map_err(fail)?;
            rows.map(|row| {
                let (tenant, name, code): (String, String, i64) = row.map_err(fail)?;
                StoredGroup::from_row(&tenant, name, code)
            })
            .collect()
        })
    }

    fn delete<'a>(&'a self, guid: &'a str) -> StoreFuture<'a, bool> {
        let guid = guid.to_string();
        self.writer.call(Kind::Write, move |conn| {
            let deleted = conn
                .execute(
                    "DELETE FROM downloads WHERE guid = :guid",
                    named_params! {":guid": guid},
                )
                .map_err(|e| failed(&format!("deleting download `{guid}`"), e))?;
            Ok(deleted == 1)
        })
    }

    fn delete_finished_before(&self, cutoff: SystemTime) -> StoreFuture<'_, Vec<Guid>> {
        let cutoff = schema::unix_millis(cutoff);
        self.writer.call(Kind::Write, move |conn| {
            let fail = |e| failed("pruning finished downloads", e);
            let mut stmt = conn
                .prepare_cached("DELETE FROM downloads WHERE finished_at < :cutoff RETURNING guid")
                .map_err(fail)?;
            let rows = stmt
                .query_map(named_params! {":cutoff": cutoff}, |r| r.get("guid"))
                .map_err(fail)?;
            rows.map(|row| row.map_err(fail)).collect()
        })
    }

    fn save_group<'a>(
        &'a self,
        tenant: &'a Tenant,
        group: &'a str,
        behavior: Behavior,
    ) -> StoreFuture<'a, ()> {
        let (tenant, group) = (tenant.name().to_string(), group.to_string());
        self.writer.call(Kind::Write, move |conn| {
            conn.execute(
                "INSERT INTO transfer_groups (tenant, name, behavior) \
                 VALUES (:tenant, :name, :behavior) \
                 ON CONFLICT(tenant, name) DO UPDATE SET behavior = excluded.behavior",
                named_params! {":tenant": tenant, ":name": group, ":behavior": behavior.code()},
            )
            .map_err(|e| failed(&format!("saving transfer group `{group}`"), e))?;
            Ok(())
        })
    }
}

/// What a SQLite failure says about the store, whichever call it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Unavailable,
    Corrupt,
    Conflict,
}

fn classify(e: &rusqlite::Error) -> Class {
    use rusqlite::ErrorCode as Code;
    match e {
        rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
            // The file is damaged, or is not a SQLite database at all.
            Code::DatabaseCorrupt | Code::NotADatabase => Class::Corrupt,
            // A UNIQUE rule of the schema refused the write: it contradicts what is stored.
            Code::ConstraintViolation => Class::Conflict,
            // Another connection held the lock past BUSY_TIMEOUT, the disk failed or is full,
            // the file cannot be opened or written (permissions, a read-only mount), memory ran
            // out: this call changed nothing, and a later one may succeed once that passes.
            Code::DatabaseBusy
            | Code::DatabaseLocked
            | Code::SystemIoFailure
            | Code::DiskFull
            | Code::CannotOpen
            | Code::PermissionDenied
            | Code::ReadOnly
            | Code::FileLockingProtocolFailed
            | Code::OutOfMemory
            | Code::OperationInterrupted => Class::Unavailable,
            // The rest (misuse, a value too big, a schema changed under a statement) say
            // nothing about the stored data: the call could not be carried out.
            _ => Class::Unavailable,
        },
        // A stored value of the wrong type, out of range or not UTF-8, or a missing column: a
        // row this version cannot interpret.
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::InvalidColumnName(_)
        | rusqlite::Error::Utf8Error(..) => Class::Corrupt,
        _ => Class::Unavailable,
    }
}

/// The error of a call made while serving. Its message reaches clients, so it says which
/// download or group failed and never names the database file.
fn failed(what: &str, e: rusqlite::Error) -> StoreError {
    let message = format!("{what}: {e}");
    match classify(&e) {
        Class::Unavailable => StoreError::Unavailable(message),
        Class::Corrupt => StoreError::Corrupt(message),
        Class::Conflict => StoreError::Conflict(message),
    }
}

/// The error of opening the database at `path`, for the operator starting transferd.
fn open_failed(path: &Path, e: rusqlite::Error) -> StoreError {
    match classify(&e) {
        Class::Corrupt => corrupt_at(path, &e.to_string()),
        Class::Unavailable | Class::Conflict => StoreError::Unavailable(format!(
            "cannot open the store at {} ({e}); check that transferd may read and write it and \
             its directory, that the disk has space, and that no other program holds it locked",
            path.display()
        )),
    }
}

fn corrupt_at(path: &Path, detail: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "the store at {} is corrupted or not a transferd database ({detail}); restore it from a \
         backup or move it away to start empty",
        path.display()
    ))
}

/// A blocking call that did not finish: it panicked, or the runtime is shutting down.
fn unfinished(e: tokio::task::JoinError) -> StoreError {
    StoreError::Unavailable(format!("a store call did not finish: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operation::{CostPolicy, Priority, Status};
    use crate::store::conformance::{self, Fixture};

    struct SqliteFixture {
        dir: tempfile::TempDir,
    }

    impl Fixture for SqliteFixture {
        const SCHEMA_VERSION: i64 = SqliteStore::SCHEMA_VERSION;

        async fn open() -> (Self, Box<dyn Store>) {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(dir.path()).await.unwrap();
            (SqliteFixture { dir }, Box::new(store))
        }

        async fn reopen(&self) -> Result<Box<dyn Store>, StoreError> {
            Ok(Box::new(SqliteStore::open(self.dir.path()).await?))
        }

        async fn set_schema_version(&self, version: i64) {
            let conn = Connection::open(self.dir.path().join(SqliteStore::DB_FILE)).unwrap();
            conn.pragma_update(None, "user_version", version).unwrap();
        }
    }

    mod conformance_suite {
        use super::SqliteFixture;
        super::conformance::suite!(SqliteFixture);
    }

    #[tokio::test]
    async fn refuses_garbage_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SqliteStore::DB_FILE);
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = SqliteStore::open(dir.path()).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        // The operator learns which file and what to do.
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("restore it from a backup"), "{message}");
    }

    #[tokio::test]
    async fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path()).await.unwrap());
        let conn = Connection::open(dir.path().join(SqliteStore::DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", SqliteStore::SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = SqliteStore::open(dir.path()).await.unwrap_err();
        assert!(
            matches!(err, StoreError::NewerSchema { found, .. } if found == SqliteStore::SCHEMA_VERSION + 1),
            "{err:?}"
        );
    }

    /// The database and its companions are private to transferd's user, whether the store
    /// created them or an older build left them readable by others.
    #[tokio::test]
    async fn database_files_are_private() {
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(SqliteStore::DB_FILE);
        let files = |db: &Path| -> Vec<std::path::PathBuf> {
            let mut files = vec![db.to_path_buf()];
            for suffix in DB_COMPANION_SUFFIXES {
                let mut name = db.as_os_str().to_owned();
                name.push(suffix);
                files.push(name.into());
            }
            files
        };
        let store = SqliteStore::open(dir.path()).await.unwrap();
        store.insert(&conformance::record("a", 1)).await.unwrap();
        for file in files(&db) {
            assert_eq!(mode(&file), DB_FILE_MODE, "{}", file.display());
        }
        drop(store);
        for file in files(&db).iter().filter(|f| f.exists()) {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        drop(SqliteStore::open(dir.path()).await.unwrap());
        for file in files(&db).iter().filter(|f| f.exists()) {
            assert_eq!(mode(file), DB_FILE_MODE, "{}", file.display());
        }
    }

    #[tokio::test]
    async fn every_schema_column_is_read_and_written() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path()).await.unwrap());
        let conn = Connection::open(dir.path().join(SqliteStore::DB_FILE)).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM pragma_table_info('downloads') ORDER BY name")
            .unwrap();
        let in_schema: Vec<String> = stmt
            .query_map([], |r| r.get("name"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut in_row: Vec<&str> = COLUMNS.clone();
        in_row.sort_unstable();
        assert_eq!(in_schema, in_row);
    }

    /// A database written before columns were bound by name opens and reads unchanged.
    #[tokio::test]
    async fn reads_a_version_1_database_as_written_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SqliteStore::DB_FILE);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.execute_batch(
            "INSERT INTO downloads VALUES ('g1', 3, 'f.bin', 'grp', NULL, '[503]', \
             'http://h/x', '{\"x-k\":\"v\"}', 1, 2, 2, 10, 20, '\"e\"', NULL, 206, 'http://h/y', \
             1, '{\"etag\":\"\\\"e\\\"\"}', NULL, NULL, NULL, 4, NULL, 9);",
        )
        .unwrap();
        drop(conn);
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let loaded = store.load_page(0, 10).await.unwrap();
        let [r] = &loaded[..] else {
            panic!("{loaded:?}")
        };
        assert_eq!(
            (&*r.spec.guid, r.spec.seq, &*r.spec.transfer_group),
            ("g1", 3, "grp")
        );
        assert_eq!(r.spec.recoverable_web_error_statuses, vec![503]);
        assert_eq!(r.settings.request_headers["x-k"], "v");
        assert_eq!(
            (r.settings.priority, r.settings.cost_policy, r.status),
            (
                Priority::High,
                CostPolicy::Always,
                Status::PausedByApplication
            )
        );
        assert_eq!((r.checkpoint_bytes, r.total_bytes, r.attempts), (10, 20, 4));
        let response = r.response.as_ref().unwrap();
        assert!(response.is_resumable);
        assert_eq!(response.headers["etag"], "\"e\"");
        assert_eq!(r.queue_order, 9);
    }

    #[test]
    fn sqlite_errors_are_classified() {
        use rusqlite::ffi;
        let code = |c| classify(&rusqlite::Error::SqliteFailure(ffi::Error::new(c), None));
        for c in [
            ffi::SQLITE_BUSY,
            ffi::SQLITE_LOCKED,
            ffi::SQLITE_IOERR,
            ffi::SQLITE_FULL,
            ffi::SQLITE_CANTOPEN,
            ffi::SQLITE_READONLY,
        ] {
            assert_eq!(code(c), Class::Unavailable, "{c}");
        }
        assert_eq!(code(ffi::SQLITE_CORRUPT), Class::Corrupt);
        assert_eq!(code(ffi::SQLITE_NOTADB), Class::Corrupt);
        assert_eq!(code(ffi::SQLITE_CONSTRAINT_UNIQUE), Class::Conflict);
        let unreadable =
            rusqlite::Error::InvalidColumnType(0, "seq".into(), rusqlite::types::Type::Text);
        assert_eq!(classify(&unreadable), Class::Corrupt);
    }
}
