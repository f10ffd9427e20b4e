//! How a [`Record`] maps to the columns of the `downloads` table, in SQLite and in PostgreSQL
//! (which keep the same columns with the same names). The column list is written once, in the
//! `row!` invocation below: reads go by column name and writes bind named parameters (`:guid`
//! in SQLite) or numbered ones in column order (`$1` in PostgreSQL, see
//! [`Row::pg_values`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use rusqlite::ToSql;
use tokio_postgres::types::ToSql as PgToSql;

use super::schema;
use crate::auth::Tenant;
use crate::operation::{
    CostPolicy, DownloadSpec, ErrorReason, Priority, ResponseInfo, Segment, Settings, Status,
    TransferError, Validators,
};
use crate::store::{Record, StoreError};

/// Declares [`Row`] with one field per column, the column lists, and the two ways values cross
/// the SQLite boundary, from a single list of columns.
macro_rules! row {
    (
        fixed { $($fixed:ident: $fixed_ty:ty,)* }
        state { $($state:ident: $state_ty:ty,)* }
    ) => {
        /// A download as database values, one field per column. Kept flat and readable so
        /// operators can query it with the sqlite3 or psql CLI.
        pub(in crate::store) struct Row {
            $(pub(in crate::store) $fixed: $fixed_ty,)*
            $(pub(in crate::store) $state: $state_ty,)*
        }

        /// Columns written once, by `insert`.
        pub(in crate::store) const FIXED_COLUMNS: &[&str] = &[$(stringify!($fixed)),*];
        /// Columns `save` rewrites.
        pub(in crate::store) const STATE_COLUMNS: &[&str] = &[$(stringify!($state)),*];

        impl Row {
            /// Reads a row selected with every column, by column name.
            pub(super) fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
                Ok(Row {
                    $($fixed: r.get(stringify!($fixed))?,)*
                    $($state: r.get(stringify!($state))?,)*
                })
            }

            /// Every column as a named parameter: `:column` and its value.
            pub(super) fn params(&self) -> Vec<(&'static str, &dyn ToSql)> {
                vec![
                    $((concat!(":", stringify!($fixed)), &self.$fixed as &dyn ToSql),)*
                    $((concat!(":", stringify!($state)), &self.$state as &dyn ToSql),)*
                ]
            }

            /// Reads a PostgreSQL row selected with every column, by column name.
            pub(in crate::store) fn read_pg(
                r: &tokio_postgres::Row,
            ) -> Result<Row, tokio_postgres::Error> {
                Ok(Row {
                    $($fixed: r.try_get(stringify!($fixed))?,)*
                    $($state: r.try_get(stringify!($state))?,)*
                })
            }

            /// Every column's value for PostgreSQL, fixed columns then state columns, in the
            /// order of [`FIXED_COLUMNS`] and [`STATE_COLUMNS`].
            pub(in crate::store) fn pg_values(&self) -> Vec<&(dyn PgToSql + Sync)> {
                vec![
                    $(&self.$fixed as &(dyn PgToSql + Sync),)*
                    $(&self.$state as &(dyn PgToSql + Sync),)*
                ]
            }
        }
    };
}

row! {
    fixed {
        guid: String,
        seq: i64,
        tenant: String,
        result_file: String,
        transfer_group: String,
        expected_sha256: Option<String>,
        recoverable_statuses: String,
        max_bytes: Option<i64>,
        replace_existing: bool,
    }
    state {
        requested_uri: String,
        request_headers: String,
        sensitive_headers: String,
        priority: i64,
        cost_policy: i64,
        max_bytes_per_second: Option<i64>,
        status: i64,
        checkpoint_bytes: i64,
        total_bytes: i64,
        sha256_state: Option<Vec<u8>>,
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
        finished_at: Option<i64>,
        segments: String,
    }
}

impl Row {
    /// The columns of `record`.
    pub(in crate::store) fn from_record(record: &Record) -> Row {
        let Record {
            spec,
            settings,
            status,
            checkpoint_bytes,
            segments,
            total_bytes,
            sha256_state,
            validators,
            response,
            error,
            attempts,
            web_error_status,
            queue_order,
            finished_at,
        } = record;
        let DownloadSpec {
            guid,
            seq,
            tenant,
            result_file,
            transfer_group,
            expected_sha256,
            recoverable_web_error_statuses,
            max_bytes,
            replace_existing,
        } = spec;
        let Settings {
            requested_uri,
            request_headers,
            sensitive_headers,
            priority,
            cost_policy,
            max_bytes_per_second,
        } = settings;
        Row {
            guid: guid.clone(),
            seq: to_i64(*seq),
            tenant: tenant.name().to_string(),
            result_file: result_file.clone(),
            transfer_group: transfer_group.clone(),
            expected_sha256: expected_sha256.clone(),
            recoverable_statuses: serde_json::to_string(recoverable_web_error_statuses)
                .expect("a list of numbers always serialises"),
            max_bytes: max_bytes.map(to_i64),
            replace_existing: *replace_existing,
            requested_uri: requested_uri.clone(),
            request_headers: headers_to_json(request_headers),
            sensitive_headers: serde_json::to_string(sensitive_headers)
                .expect("a set of strings always serialises"),
            priority: priority.code().into(),
            cost_policy: cost_policy.code().into(),
            max_bytes_per_second: max_bytes_per_second.map(to_i64),
            status: status.code().into(),
            checkpoint_bytes: to_i64(*checkpoint_bytes),
            total_bytes: to_i64(*total_bytes),
            sha256_state: sha256_state.clone(),
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
            finished_at: finished_at.map(schema::unix_millis),
            segments: segments_to_json(segments),
        }
    }

    /// The record this row holds, or [`StoreError::Corrupt`] if a value cannot be interpreted.
    pub(in crate::store) fn into_record(self) -> Result<Record, StoreError> {
        let guid = self.guid.clone();
        let bad = |detail: String| {
            StoreError::Corrupt(format!("stored download `{guid}` is unreadable: {detail}"))
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
        let (checkpoint_bytes, total_bytes, finished_at) = self.progress().map_err(&bad)?;
        let request_headers = headers_from_json(&self.request_headers).map_err(&bad)?;
        let (sensitive_headers, recoverable_web_error_statuses) = self.lists().map_err(&bad)?;
        let max_bytes_per_second = self.rate_limit().map_err(&bad)?;
        let segments = segments_from_json(&self.segments).map_err(&bad)?;
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
        let error = transfer_error(
            self.error_message,
            self.error_reason,
            self.error_http_status,
        )
        .map_err(&bad)?;
        Ok(Record {
            spec: DownloadSpec {
                guid: self.guid,
                seq: to_u64(self.seq),
                tenant: Tenant::new(&self.tenant),
                result_file: self.result_file,
                transfer_group: self.transfer_group,
                expected_sha256: self.expected_sha256,
                recoverable_web_error_statuses,
                max_bytes: self.max_bytes.map(to_u64),
                replace_existing: self.replace_existing,
            },
            settings: Settings {
                requested_uri: self.requested_uri,
                request_headers,
                sensitive_headers,
                priority,
                cost_policy,
                max_bytes_per_second,
            },
            status,
            checkpoint_bytes,
            segments,
            total_bytes,
            sha256_state: self.sha256_state,
            validators: Validators {
                etag: self.etag,
                last_modified: self.last_modified,
            },
            response,
            error,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            web_error_status: self.web_error_status.and_then(|s| u16::try_from(s).ok()),
            queue_order: self.queue_order,
            finished_at,
        })
    }
}

/// Segments as a JSON list of `[start, end, durable]` triples, readable in the sqlite3 CLI.
fn segments_to_json(segments: &[Segment]) -> String {
    let triples: Vec<[u64; 3]> = segments
        .iter()
        .map(|s| [s.start, s.end, s.durable])
        .collect();
    serde_json::to_string(&triples).expect("a list of numbers always serialises")
}

/// The segments [`segments_to_json`] wrote. Whether they fit the download is the engine's to
/// judge: a list that does not is dropped there and the download starts over.
fn segments_from_json(json: &str) -> Result<Vec<Segment>, String> {
    let triples: Vec<[u64; 3]> =
        serde_json::from_str(json).map_err(|e| format!("segments are not valid JSON: {e}"))?;
    Ok(triples
        .into_iter()
        .map(|[start, end, durable]| Segment {
            start,
            end,
            durable,
        })
        .collect())
}

impl Row {
    /// The download's own bandwidth limit. A negative one is refused rather than read as none:
    /// transferd never writes one.
    fn rate_limit(&self) -> Result<Option<u64>, String> {
        self.max_bytes_per_second
            .map(|v| u64::try_from(v).map_err(|_| format!("bandwidth limit {v} is negative")))
            .transpose()
    }

    /// The header names marked sensitive, and the recoverable statuses: JSON lists.
    fn lists(&self) -> Result<(BTreeSet<String>, Vec<u16>), String> {
        let sensitive = serde_json::from_str(&self.sensitive_headers)
            .map_err(|e| format!("sensitive header names are not valid JSON: {e}"))?;
        let recoverable = serde_json::from_str(&self.recoverable_statuses)
            .map_err(|e| format!("recoverable statuses are not valid JSON: {e}"))?;
        Ok((sensitive, recoverable))
    }

    /// Checkpoint, total size and finish time. A negative byte count is refused rather than
    /// read as zero: it is a row written by hand or by a broken build, and a resume from it
    /// would trust a partial file it knows nothing about.
    fn progress(&self) -> Result<(u64, u64, Option<SystemTime>), String> {
        let count =
            |v: i64, what: &str| u64::try_from(v).map_err(|_| format!("{what} {v} is negative"));
        let finished_at = match self.finished_at {
            None => None,
            Some(ms) => Some(
                schema::from_unix_millis(ms)
                    .ok_or_else(|| format!("finish time {ms} is out of range"))?,
            ),
        };
        Ok((
            count(self.checkpoint_bytes, "checkpoint")?,
            count(self.total_bytes, "total size")?,
            finished_at,
        ))
    }
}

/// The stored error of a download, if it has one.
fn transfer_error(
    message: Option<String>,
    reason: Option<i64>,
    http_status: Option<i64>,
) -> Result<Option<TransferError>, String> {
    let Some(message) = message else {
        return Ok(None);
    };
    let code = reason.unwrap_or(0);
    let reason = i32::try_from(code)
        .ok()
        .and_then(ErrorReason::from_code)
        .ok_or_else(|| format!("unknown error reason {code}"))?;
    Ok(Some(TransferError {
        message,
        http_status: http_status.and_then(|s| u16::try_from(s).ok()),
        reason,
    }))
}

// SQLite integers are signed 64-bit; byte counts and sequence numbers never reach 2^63.
pub(super) fn to_i64(v: u64) -> i64 {
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
