//! The PostgreSQL schema and its versioned migrations. The version lives in the one-row table
//! `transferd_schema`; migrations run in one transaction under an advisory lock, so replicas
//! that start together migrate once, and a database written by a newer transferd is refused.

use super::classify;
use crate::store::StoreError;

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i64 = 2;

/// Where an unfinished download lands, as `paths::resolved` spells it: its tenant's directory
/// (none for the default tenant) joined with its result file. No two unfinished downloads
/// share one (version 2's index).
pub(super) const LIVE_PATH: &str =
    "(CASE WHEN tenant = '' THEN result_file ELSE tenant || '/' || result_file END)";

/// The advisory lock migrations hold ("migrate" in ASCII).
const MIGRATION_LOCK: i64 = 0x006d_6967_7261_7465;

/// Version 1: the SQLite store's columns at its version 7, with the same names (so one mapping
/// serves both, see `sqlite/row.rs`), and the lease of `postgres/shared.rs`: who holds it,
/// until when, and the epoch every claim raises (the fencing token); and the sequence every
/// replica takes creation numbers from.
pub(super) const V1: &str = "
CREATE TABLE downloads (
    guid                  TEXT PRIMARY KEY,
    seq                   BIGINT NOT NULL UNIQUE,
    tenant                TEXT NOT NULL,
    result_file           TEXT NOT NULL,
    transfer_group        TEXT NOT NULL,
    expected_sha256       TEXT,
    recoverable_statuses  TEXT NOT NULL,
    max_bytes             BIGINT,
    replace_existing      BOOLEAN NOT NULL,
    requested_uri         TEXT NOT NULL,
    request_headers       TEXT NOT NULL,
    sensitive_headers     TEXT NOT NULL,
    priority              BIGINT NOT NULL,
    cost_policy           BIGINT NOT NULL,
    max_bytes_per_second  BIGINT,
    status                BIGINT NOT NULL,
    checkpoint_bytes      BIGINT NOT NULL,
    total_bytes           BIGINT NOT NULL,
    sha256_state          BYTEA,
    etag                  TEXT,
    last_modified         TEXT,
    response_status       BIGINT,
    response_uri          TEXT,
    response_resumable    BOOLEAN,
    response_headers      TEXT,
    error_message         TEXT,
    error_http_status     BIGINT,
    error_reason          BIGINT,
    attempts              BIGINT NOT NULL,
    web_error_status      BIGINT,
    queue_order           BIGINT NOT NULL,
    finished_at           BIGINT,
    segments              TEXT NOT NULL,
    lease_owner           TEXT,
    lease_until           TIMESTAMPTZ,
    lease_epoch           BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX downloads_by_finished_at ON downloads (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX downloads_queue ON downloads (priority, queue_order, seq) WHERE finished_at IS NULL;
CREATE SEQUENCE download_seq;
CREATE TABLE transfer_groups (
    tenant    TEXT NOT NULL,
    name      TEXT NOT NULL,
    behavior  BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);
";

/// Version 2: the claims that every replica once checked in its own memory, checked by the
/// database: one unfinished download per path ([`LIVE_PATH`]), and the unfinished downloads
/// of a tenant counted from an index for its quota.
fn v2() -> String {
    format!(
        "CREATE UNIQUE INDEX downloads_live_path ON downloads ({LIVE_PATH}) WHERE finished_at IS NULL;
         CREATE INDEX downloads_live_by_tenant ON downloads (tenant) WHERE finished_at IS NULL;"
    )
}

/// Brings the database to [`SCHEMA_VERSION`], or refuses a newer one.
pub(super) async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(classify)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(classify)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS transferd_schema (version BIGINT NOT NULL)")
        .await
        .map_err(classify)?;
    let found: Option<i64> = tx
        .query_opt("SELECT max(version) FROM transferd_schema", &[])
        .await
        .map_err(classify)?
        .and_then(|r| r.get(0));
    let found = found.unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 1 {
        tx.batch_execute(V1).await.map_err(classify)?;
    }
    if found < 2 {
        tx.batch_execute(&v2()).await.map_err(|e| match classify(e) {
            StoreError::Conflict(detail) => StoreError::Conflict(format!(
                "two unfinished downloads land at the same path, which this version refuses; cancel one with the transferd that made them, then start this one again ({detail})"
            )),
            other => other,
        })?;
    }
    if found < SCHEMA_VERSION {
        tx.execute("DELETE FROM transferd_schema", &[])
            .await
            .map_err(classify)?;
        tx.execute(
            "INSERT INTO transferd_schema (version) VALUES ($1)",
            &[&SCHEMA_VERSION],
        )
        .await
        .map_err(classify)?;
    }
    tx.commit().await.map_err(classify)
}

/// Records `version` as the database's schema version (tests: as a newer transferd would).
#[cfg(test)]
pub(super) async fn set_version(client: &tokio_postgres::Client, version: i64) {
    client
        .execute("UPDATE transferd_schema SET version = $1", &[&version])
        .await
        .unwrap();
}
