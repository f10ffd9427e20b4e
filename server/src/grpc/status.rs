//! The one table from domain errors to gRPC status codes. Every code is chosen on purpose and
//! every match is exhaustive, so a new error cannot reach a client without a decision here. The
//! message is always the error's own `Display`, which says what was wrong and what to do.

use tonic::{Code, Status as GrpcStatus};

use crate::error::Error;
use crate::progress::Lagged;
use crate::store::StoreError;

impl From<Error> for GrpcStatus {
    fn from(error: Error) -> GrpcStatus {
        GrpcStatus::new(code(&error), error.to_string())
    }
}

/// A watcher that fell behind was dropped for its own good: the server is fine, the client
/// consumed too slowly and must watch again.
impl From<Lagged> for GrpcStatus {
    fn from(lagged: Lagged) -> GrpcStatus {
        GrpcStatus::new(Code::ResourceExhausted, lagged.to_string())
    }
}

/// The gRPC code a domain error is answered with.
pub(crate) fn code(error: &Error) -> Code {
    match error {
        Error::InvalidUri { .. } | Error::InvalidResultFile { .. } | Error::InvalidArgument(_) => {
            Code::InvalidArgument
        }
        Error::NotFound { .. } => Code::NotFound,
        Error::IllegalTransition { .. }
        | Error::NoResponseYet { .. }
        | Error::NotPaused { .. }
        | Error::NoGroup { .. }
        | Error::ResultFileNotRemoved { .. }
        | Error::NotReadable { .. }
        | Error::ResultUnreadable { .. } => Code::FailedPrecondition,
        Error::ReadOutOfRange { .. } => Code::OutOfRange,
        // The read may be asked again: the download may be retried or recreated.
        Error::ReadAborted { .. } => Code::Aborted,
        Error::ResultFileInUse { .. } | Error::ResultFileExists { .. } => Code::AlreadyExists,
        Error::QuotaExceeded { .. } => Code::ResourceExhausted,
        Error::OtherTenant { .. } => Code::PermissionDenied,
        Error::ShuttingDown => Code::Unavailable,
        Error::Storage(e) => store_status(e),
        // Decided by the replica that carried the call out, with this same table.
        Error::Remote { code, .. } => Code::from(*code),
    }
}

/// The store's part of the table: a store that cannot be reached now may work on retry
/// (UNAVAILABLE); damaged data will not heal by retrying (DATA_LOSS); a newer schema needs the
/// operator to act (FAILED_PRECONDITION); a call that contradicts what is stored lost a race
/// the client may retry (ABORTED).
fn store_status(e: &StoreError) -> Code {
    match e {
        StoreError::Unavailable(_) => Code::Unavailable,
        StoreError::Corrupt(_) => Code::DataLoss,
        StoreError::NewerSchema { .. } => Code::FailedPrecondition,
        StoreError::Conflict(_) => Code::Aborted,
        // Another replica took the download over while this one changed it: the client may
        // retry, and the retry reaches the new holder.
        StoreError::Fenced(_) => Code::Aborted,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::operation::Status;

    /// Which variant `error` is. Exhaustive, so a new variant does not compile until it is given
    /// an index here, and then [`every_error_has_its_code`] fails until it has a case.
    fn variant(error: &Error) -> usize {
        match error {
            Error::InvalidUri { .. } => 0,
            Error::InvalidResultFile { .. } => 1,
            Error::InvalidArgument(_) => 2,
            Error::NotFound { .. } => 3,
            Error::IllegalTransition { .. } => 4,
            Error::ResultFileInUse { .. } => 5,
            Error::NotPaused { .. } => 6,
            Error::NoGroup { .. } => 7,
            Error::NoResponseYet { .. } => 8,
            Error::ShuttingDown => 9,
            Error::Storage(_) => 10,
            Error::ResultFileExists { .. } => 11,
            Error::ResultFileNotRemoved { .. } => 12,
            Error::QuotaExceeded { .. } => 13,
            Error::OtherTenant { .. } => 14,
            Error::NotReadable { .. } => 15,
            Error::ReadOutOfRange { .. } => 16,
            Error::ResultUnreadable { .. } => 17,
            Error::ReadAborted { .. } => 18,
            Error::Remote { .. } => 19,
        }
    }
    const VARIANTS: usize = 20;

    /// One of each store error with its code. The store's errors are being reworked on another
    /// branch; this and [`store_status`] are what a merge swaps.
    fn store_cases() -> Vec<(StoreError, Code)> {
        vec![
            (
                StoreError::Unavailable("the database is locked".into()),
                Code::Unavailable,
            ),
            (
                StoreError::Corrupt("stored download `g` is unreadable".into()),
                Code::DataLoss,
            ),
            (
                StoreError::NewerSchema {
                    found: 99,
                    supported: 1,
                },
                Code::FailedPrecondition,
            ),
            (
                StoreError::Conflict("download `g` is already stored".into()),
                Code::Aborted,
            ),
            (StoreError::Fenced("g".into()), Code::Aborted),
        ]
    }

    fn guid() -> String {
        "00000000-0000-4000-8000-000000000000".into()
    }

    #[test]
    fn every_error_has_its_code() {
        let mut cases = vec![
            (
                Error::InvalidUri {
                    uri: "ftp://x".into(),
                    reason: "scheme".into(),
                },
                Code::InvalidArgument,
            ),
            (
                Error::InvalidResultFile {
                    path: "../x".into(),
                    reason: "`..`".into(),
                },
                Code::InvalidArgument,
            ),
            (
                Error::InvalidArgument("priority 9".into()),
                Code::InvalidArgument,
            ),
            (Error::NotFound { guid: guid() }, Code::NotFound),
            (
                Error::IllegalTransition {
                    guid: guid(),
                    action: "pause",
                    status: Status::Completed,
                },
                Code::FailedPrecondition,
            ),
            (
                Error::ResultFileInUse {
                    path: "a".into(),
                    guid: guid(),
                },
                Code::AlreadyExists,
            ),
            (
                Error::ResultFileExists { path: "a".into() },
                Code::AlreadyExists,
            ),
            (
                Error::NotPaused {
                    guid: guid(),
                    status: Status::Running,
                },
                Code::FailedPrecondition,
            ),
            (Error::NoGroup { guid: guid() }, Code::FailedPrecondition),
            (
                Error::NoResponseYet { guid: guid() },
                Code::FailedPrecondition,
            ),
            (Error::ShuttingDown, Code::Unavailable),
            (
                Error::Remote {
                    code: Code::FailedPrecondition as i32,
                    message: "download g is COMPLETED".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                Error::QuotaExceeded {
                    tenant: "media".into(),
                    count: 100,
                    limit: 100,
                },
                Code::ResourceExhausted,
            ),
            (
                Error::OtherTenant {
                    tenant: "ml".into(),
                },
                Code::PermissionDenied,
            ),
            (
                Error::ResultFileNotRemoved {
                    guid: guid(),
                    path: "a".into(),
                    reason: "permission denied".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                Error::NotReadable {
                    guid: guid(),
                    status: Status::Running,
                },
                Code::FailedPrecondition,
            ),
            (
                Error::ReadOutOfRange {
                    guid: guid(),
                    offset: 9,
                    size: 8,
                },
                Code::OutOfRange,
            ),
            (
                Error::ResultUnreadable {
                    guid: guid(),
                    path: "a".into(),
                    reason: "it is gone".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                Error::ReadAborted {
                    guid: guid(),
                    reason: "it was canceled".into(),
                },
                Code::Aborted,
            ),
        ];
        cases.extend(
            store_cases()
                .into_iter()
                .map(|(e, code)| (Error::Storage(e), code)),
        );
        let covered: BTreeSet<usize> = cases.iter().map(|(e, _)| variant(e)).collect();
        assert_eq!(covered.len(), VARIANTS, "a variant of Error has no case");
        for (error, expected) in cases {
            let message = error.to_string();
            let status = GrpcStatus::from(error);
            assert_eq!(status.code(), expected, "{message}");
            assert_eq!(status.message(), message);
        }
    }

    #[test]
    fn every_store_error_has_its_code() {
        for (error, expected) in store_cases() {
            assert_eq!(store_status(&error), expected, "{error}");
        }
    }

    #[test]
    fn a_lagging_watcher_is_resource_exhausted() {
        let status = GrpcStatus::from(Lagged);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), Lagged.to_string());
    }
}
