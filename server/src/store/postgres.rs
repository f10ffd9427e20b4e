//! The PostgreSQL store (`--store postgres://...`): the store several replicas share. Its
//! `downloads` table has the SQLite store's columns with the same names (see `sqlite/row.rs`,
//! which maps a [`Record`] for both), plus the three lease columns of `postgres/shared.rs`.
//! Every call takes a connection from a pool; every write is one statement or one transaction
//! with PostgreSQL's default `synchronous_commit = on`, so it is durable once it returns.
//! Driver errors are classified into [`StoreError`] here and never leave this module.
//!
//! The connection runs without TLS: run PostgreSQL on loopback, a private network or a Unix
//! socket (see the README).

mod create;
mod schema;
mod shared;

use std::sync::LazyLock;
use std::time::SystemTime;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::sqlite::row::{FIXED_COLUMNS, Row, STATE_COLUMNS};
use super::sqlite::schema::unix_millis;
use super::{Record, Store, StoreError, StoreFuture, StoredGroup};
use crate::auth::Tenant;
use crate::operation::{Behavior, Guid};

/// Connections one replica keeps open at most: enough for concurrent creates and checkpoints,
/// few enough that many replicas stay well under PostgreSQL's default of 100 connections.
const POOL_SIZE: usize = 16;

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: Pool,
    config: tokio_postgres::Config,
    /// Where it is, for messages: host, port and database, never the password.
    name: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.name)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user[:password]@host[:port]/database`),
    /// creates or migrates its schema, and refuses one written by a newer transferd. Errors
    /// name the database, never the password.
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Unavailable(format!("--store is not a PostgreSQL URL: {e}"))
        })?;
        let name = describe(&config);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("{name}: {e}")))?;
        let store = PostgresStore { pool, config, name };
        let mut client = store.client().await.map_err(|e| store.named(e))?;
        schema::migrate(&mut client)
            .await
            .map_err(|e| store.named(e))?;
        Ok(store)
    }

    /// A pooled connection.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => classify(e),
            e => StoreError::Unavailable(e.to_string()),
        })
    }

    /// The connection settings, for a connection of its own (LISTEN).
    fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// `e` with the database named, for errors an operator starting transferd reads.
    fn named(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Unavailable(m) => StoreError::Unavailable(format!(
                "PostgreSQL database {}: {m}; check that it runs and that --store names it",
                self.name
            )),
            StoreError::Corrupt(m) => StoreError::Corrupt(format!("{}: {m}", self.name)),
            other => other,
        }
    }
}

/// `host:port/database` of a connection config, for messages.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

/// Classifies a driver error: a constraint broken by the call is a conflict; a connection
/// that failed or a server that refused is unavailable; data this build cannot read is
/// corrupt.
fn classify(e: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => StoreError::Conflict(format!(
            "already stored: {}",
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string())
        )),
        Some(code) if code.code().starts_with("22") || *code == SqlState::UNDEFINED_COLUMN => {
            StoreError::Corrupt(e.to_string())
        }
        _ => StoreError::Unavailable(match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => e.to_string(),
        }),
    }
}

/// Every column, as `d.col` (the table aliased `d`).
static COLUMNS_OF_D: LazyLock<String> = LazyLock::new(|| {
    FIXED_COLUMNS
        .iter()
        .chain(STATE_COLUMNS)
        .map(|c| format!("d.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
});

static INSERT: LazyLock<String> = LazyLock::new(|| {
    let columns: Vec<&str> = FIXED_COLUMNS.iter().chain(STATE_COLUMNS).copied().collect();
    let params: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO downloads ({}) VALUES ({})",
        columns.join(", "),
        params.join(", ")
    )
});

/// Rewrites the state columns; `$1` is the guid, then the state columns in order.
static UPDATE: LazyLock<String> = LazyLock::new(|| {
    let sets: Vec<String> = STATE_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = ${}", i + 2))
        .collect();
    format!("UPDATE downloads SET {} WHERE guid = $1", sets.join(", "))
});

/// A row read with [`COLUMNS_OF_D`] as the download it holds.
fn record(r: &tokio_postgres::Row) -> Result<Record, StoreError> {
    Row::read_pg(r)
        .map_err(|e| StoreError::Corrupt(format!("a stored download is unreadable: {e}")))?
        .into_record()
}

/// Rewrites a download's state (not its lease) in whatever transaction `client` is in;
/// `Ok(false)` if it was never stored.
async fn save_in(
    client: &impl deadpool_postgres::GenericClient,
    record: &Record,
) -> Result<bool, StoreError> {
    let row = Row::from_record(record);
    let values = row.pg_values();
    let mut params = vec![values[0]];
    params.extend_from_slice(&values[FIXED_COLUMNS.len()..]);
    let updated = client
        .execute(UPDATE.as_str(), &params)
        .await
        .map_err(classify)?;
    Ok(updated == 1)
}

impl Store for PostgresStore {
    fn load_page(&self, after_seq: u64, limit: usize) -> StoreFuture<'_, Vec<Record>> {
        Box::pin(async move {
            let client = self.client().await?;
            let sql = format!(
                "SELECT {} FROM downloads d WHERE d.seq > $1 ORDER BY d.seq LIMIT $2",
                *COLUMNS_OF_D
            );
            let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = client
                .query(&sql, &[&after, &limit])
                .await
                .map_err(classify)?;
            rows.iter().map(record).collect()
        })
    }

    fn insert<'a>(&'a self, record: &'a Record) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = Row::from_record(record);
            match client.execute(INSERT.as_str(), &row.pg_values()).await {
                Ok(_) => Ok(()),
                Err(e) => Err(match classify(e) {
                    StoreError::Conflict(_) => StoreError::Conflict(format!(
                        "download `{}` is already stored",
                        record.spec.guid
                    )),
                    other => other,
                }),
            }
        })
    }

    fn save<'a>(&'a self, record: &'a Record) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let client = self.client().await?;
            if save_in(&client, record).await? {
                Ok(())
            } else {
                Err(StoreError::Conflict(format!(
                    "download `{}` cannot be saved: it was never stored",
                    record.spec.guid
                )))
            }
        })
    }

    fn load_groups(&self) -> StoreFuture<'_, Vec<StoredGroup>> {
        Box::pin(async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT tenant, name, behavior FROM transfer_groups ORDER BY tenant, name",
                    &[],
                )
                .await
                .map_err(classify)?;
            rows.iter()
                .map(|r| {
                    let (tenant, name, code): (String, String, i64) =
                        (r.get(0), r.get(1), r.get(2));
                    StoredGroup::from_row(&tenant, name, code)
                })
                .collect()
        })
    }

    fn save_group<'a>(
        &'a self,
        tenant: &'a Tenant,
        group: &'a str,
        behavior: Behavior,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO transfer_groups (tenant, name, behavior) VALUES ($1, $2, $3)
                     ON CONFLICT (tenant, name) DO UPDATE SET behavior = excluded.behavior",
                    &[&tenant.name(), &group, &i64::from(behavior.code())],
                )
                .await
                .map_err(classify)?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, guid: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let client = self.client().await?;
            let deleted = client
                .execute("DELETE FROM downloads WHERE guid = $1", &[&guid])
                .await
                .map_err(classify)?;
            Ok(deleted == 1)
        })
    }

    fn delete_finished_before(&self, cutoff: SystemTime) -> StoreFuture<'_, Vec<Guid>> {
        Box::pin(async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    "DELETE FROM downloads WHERE finished_at < $1 RETURNING guid",
                    &[&unix_millis(cutoff)],
                )
                .await
                .map_err(classify)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }
}

#[cfg(test)]
mod tests;
