//! Conversions between protobuf and domain types, and the only place where a protobuf enum
//! number is checked. Every conversion destructures its source (`let X { a, b } = x;`), so a
//! field added to a message or a domain type does not compile until it is handled here; every
//! enum mapping is an exhaustive match, checked against the domain's numbers by the tests below.
//!
//! It is also the one place where secrets are redacted on the way out: every response that
//! carries a download, a response information or a transfer error is built here, so sensitive
//! header values, URI userinfo and `Set-Cookie` leave only as [`redact::MARKER`].

use std::borrow::Cow;
use std::sync::Arc;

use crate::engine::Conditions;
use crate::engine::{Deleted, DownloadView, NewDownload, Page, SystemView};
use crate::error::Error;
use crate::operation::{
    Behavior, CostPolicy, DownloadSpec, ErrorReason, Priority, Progress, ResponseInfo, Settings,
    Status, StatusReason, TransferError,
};
use crate::pb::backgroundtransfer::v1 as pb;
use crate::progress::Message;
use crate::redact;

/// The priority with WinRT number `code`, or INVALID_ARGUMENT.
pub fn priority(code: i32) -> Result<Priority, Error> {
    use pb::BackgroundTransferPriority as P;
    match P::try_from(code) {
        Ok(P::Default) => Ok(Priority::Default),
        Ok(P::High) => Ok(Priority::High),
        Ok(P::Low) => Ok(Priority::Low),
        Err(_) => Err(Error::InvalidArgument(format!(
            "priority {code} is not a BackgroundTransferPriority (DEFAULT 0, HIGH 1, LOW 2)"
        ))),
    }
}

/// The cost policy with WinRT number `code`, or INVALID_ARGUMENT.
pub fn cost_policy(code: i32) -> Result<CostPolicy, Error> {
    use pb::BackgroundTransferCostPolicy as P;
    match P::try_from(code) {
        Ok(P::Default) => Ok(CostPolicy::Default),
        Ok(P::UnrestrictedOnly) => Ok(CostPolicy::UnrestrictedOnly),
        Ok(P::Always) => Ok(CostPolicy::Always),
        Err(_) => Err(Error::InvalidArgument(format!(
            "cost_policy {code} is not a BackgroundTransferCostPolicy (DEFAULT 0, UNRESTRICTED_ONLY 1, ALWAYS 2)"
        ))),
    }
}

/// The group behavior with WinRT number `code`, or INVALID_ARGUMENT.
pub fn behavior(code: i32) -> Result<Behavior, Error> {
    use pb::BackgroundTransferBehavior as P;
    match P::try_from(code) {
        Ok(P::Parallel) => Ok(Behavior::Parallel),
        Ok(P::Serialized) => Ok(Behavior::Serialized),
        Err(_) => Err(Error::InvalidArgument(format!(
            "behavior {code} is not a BackgroundTransferBehavior (PARALLEL 0, SERIALIZED 1)"
        ))),
    }
}

impl TryFrom<pb::CreateDownloadRequest> for NewDownload {
    type Error = Error;

    fn try_from(request: pb::CreateDownloadRequest) -> Result<NewDownload, Error> {
        let pb::CreateDownloadRequest {
            requested_uri,
            result_file,
            priority: priority_code,
            cost_policy: cost_policy_code,
            transfer_group,
            request_headers,
            expected_sha256,
            recoverable_web_error_statuses,
            max_bytes,
            replace_existing,
            sensitive_headers,
            max_bytes_per_second,
        } = request;
        Ok(NewDownload {
            requested_uri,
            result_file,
            priority: priority(priority_code)?,
            cost_policy: cost_policy(cost_policy_code)?,
            transfer_group,
            request_headers: request_headers.into_iter().collect(),
            sensitive_headers,
            expected_sha256,
            recoverable_web_error_statuses,
            max_bytes,
            replace_existing,
            max_bytes_per_second,
        })
    }
}

impl From<Status> for pb::BackgroundTransferStatus {
    fn from(status: Status) -> pb::BackgroundTransferStatus {
        use pb::BackgroundTransferStatus as P;
        match status {
            Status::Idle => P::Idle,
            Status::Running => P::Running,
            Status::PausedByApplication => P::PausedByApplication,
            Status::PausedCostedNetwork => P::PausedCostedNetwork,
            Status::PausedNoNetwork => P::PausedNoNetwork,
            Status::Completed => P::Completed,
            Status::Canceled => P::Canceled,
            Status::Error => P::Error,
            Status::PausedRecoverableWebErrorStatus => P::PausedRecoverableWebErrorStatus,
            Status::PausedSystemPolicy => P::PausedSystemPolicy,
        }
    }
}

impl From<Priority> for pb::BackgroundTransferPriority {
    fn from(priority: Priority) -> pb::BackgroundTransferPriority {
        use pb::BackgroundTransferPriority as P;
        match priority {
            Priority::Default => P::Default,
            Priority::High => P::High,
            Priority::Low => P::Low,
        }
    }
}

impl From<CostPolicy> for pb::BackgroundTransferCostPolicy {
    fn from(cost_policy: CostPolicy) -> pb::BackgroundTransferCostPolicy {
        use pb::BackgroundTransferCostPolicy as P;
        match cost_policy {
            CostPolicy::Default => P::Default,
            CostPolicy::UnrestrictedOnly => P::UnrestrictedOnly,
            CostPolicy::Always => P::Always,
        }
    }
}

impl From<Behavior> for pb::BackgroundTransferBehavior {
    fn from(behavior: Behavior) -> pb::BackgroundTransferBehavior {
        use pb::BackgroundTransferBehavior as P;
        match behavior {
            Behavior::Parallel => P::Parallel,
            Behavior::Serialized => P::Serialized,
        }
    }
}

impl From<ErrorReason> for pb::TransferErrorReason {
    fn from(reason: ErrorReason) -> pb::TransferErrorReason {
        use pb::TransferErrorReason as P;
        match reason {
            ErrorReason::HttpStatus => P::HttpStatus,
            ErrorReason::Network => P::Network,
            ErrorReason::Disk => P::Disk,
            ErrorReason::Integrity => P::Integrity,
            ErrorReason::TooLarge => P::TooLarge,
            ErrorReason::Policy => P::Policy,
        }
    }
}

impl From<StatusReason> for pb::StatusReason {
    fn from(reason: StatusReason) -> pb::StatusReason {
        use pb::StatusReason as P;
        match reason {
            StatusReason::Unspecified => P::Unspecified,
            StatusReason::WaitingForSlot => P::WaitingForSlot,
            StatusReason::WaitingForGroup => P::WaitingForGroup,
            StatusReason::PausedByClient => P::PausedByClient,
            StatusReason::NetworkDownDetected => P::NetworkDownDetected,
            StatusReason::NetworkDownByOperator => P::NetworkDownByOperator,
            StatusReason::CostedNetwork => P::CostedNetwork,
            StatusReason::RecoverableWebError => P::RecoverableWebError,
            StatusReason::LowDiskSpace => P::LowDiskSpace,
            StatusReason::ConstrainedMode => P::ConstrainedMode,
        }
    }
}

impl From<Message> for pb::BackgroundDownloadProgress {
    fn from(message: Message) -> pb::BackgroundDownloadProgress {
        let Message {
            progress,
            has_response_changed,
            has_restarted,
        } = message;
        let Progress {
            bytes_received,
            total_bytes_to_receive,
            status,
        } = progress;
        pb::BackgroundDownloadProgress {
            bytes_received,
            total_bytes_to_receive,
            status: pb::BackgroundTransferStatus::from(status).into(),
            has_response_changed,
            has_restarted,
        }
    }
}

/// One WatchDownloads event: `guid` published `message`.
pub fn event(guid: Arc<str>, message: Message) -> pb::DownloadProgressEvent {
    pb::DownloadProgressEvent {
        guid: guid.to_string(),
        progress: Some(message.into()),
    }
}

impl From<TransferError> for pb::TransferError {
    fn from(error: TransferError) -> pb::TransferError {
        let TransferError {
            message,
            http_status,
            reason,
        } = error;
        pb::TransferError {
            message: redact::text(&message).into_owned(),
            http_status_code: http_status.map_or(0, u32::from),
            reason: pb::TransferErrorReason::from(reason).into(),
        }
    }
}

impl From<DownloadView> for pb::DownloadOperation {
    fn from(view: DownloadView) -> pb::DownloadOperation {
        let DownloadView {
            spec,
            settings,
            reason,
            web_error_status,
            progress,
            error,
            attempts,
        } = view;
        let DownloadSpec {
            guid,
            seq: _,
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
        pb::DownloadOperation {
            guid,
            requested_uri: redacted_uri(requested_uri),
            result_file,
            priority: pb::BackgroundTransferPriority::from(priority).into(),
            cost_policy: pb::BackgroundTransferCostPolicy::from(cost_policy).into(),
            transfer_group,
            progress: Some(progress.into()),
            error: error.map(Into::into),
            request_headers: redact::request_headers(&request_headers, &sensitive_headers)
                .into_iter()
                .collect(),
            sensitive_headers: sensitive_headers.into_iter().collect(),
            attempt_count: attempts,
            expected_sha256: expected_sha256.unwrap_or_default(),
            recoverable_web_error_statuses: recoverable_web_error_statuses
                .into_iter()
                .map(u32::from)
                .collect(),
            current_web_error_status: web_error_status.map_or(0, u32::from),
            status_reason: pb::StatusReason::from(reason).into(),
            max_bytes: max_bytes.unwrap_or(0),
            replace_existing,
            tenant: tenant.name().to_string(),
            max_bytes_per_second: max_bytes_per_second.unwrap_or(0),
        }
    }
}

impl From<Deleted> for pb::DeleteDownloadResponse {
    fn from(deleted: Deleted) -> Self {
        let Deleted {
            view,
            result_file_deleted,
        } = deleted;
        pb::DeleteDownloadResponse {
            operation: Some(view.into()),
            result_file_deleted,
        }
    }
}

impl From<Page> for pb::ListDownloadsResponse {
    fn from(page: Page) -> pb::ListDownloadsResponse {
        let Page {
            downloads,
            next_page_token,
        } = page;
        pb::ListDownloadsResponse {
            downloads: downloads.into_iter().map(Into::into).collect(),
            next_page_token,
        }
    }
}

impl From<ResponseInfo> for pb::ResponseInformation {
    fn from(info: ResponseInfo) -> pb::ResponseInformation {
        let ResponseInfo {
            is_resumable,
            actual_uri,
            status_code,
            headers,
        } = info;
        pb::ResponseInformation {
            is_resumable,
            actual_uri: redacted_uri(actual_uri),
            status_code: status_code.into(),
            headers: redact::response_headers(headers).into_iter().collect(),
        }
    }
}

/// `uri` with any userinfo redacted; `uri` itself, not a copy, when it has none (most do).
fn redacted_uri(uri: String) -> String {
    match redact::uri(&uri) {
        Cow::Borrowed(_) => uri,
        Cow::Owned(redacted) => redacted,
    }
}

/// The answer to SetTransferGroupBehavior: `group` now runs its downloads as `behavior` says.
pub fn transfer_group(group: String, behavior: Behavior) -> pb::TransferGroup {
    pb::TransferGroup {
        transfer_group: group,
        behavior: pb::BackgroundTransferBehavior::from(behavior).into(),
    }
}

impl From<SystemView> for pb::SystemStatus {
    fn from(view: SystemView) -> pb::SystemStatus {
        let SystemView {
            conditions,
            low_disk_space,
            active,
            queued,
        } = view;
        // Connectivity and cost are reported as they take effect, with where that came from;
        // the default cost policy is a server setting, not a condition of the host.
        let Conditions {
            detected_connected: _,
            connected_override,
            costed_override,
            constrained,
            free_disk_bytes,
            min_free_disk_bytes,
            default_cost_policy: _,
        } = conditions;
        let source = |overridden: Option<bool>| {
            if overridden.is_some() {
                pb::ConditionSource::Operator
            } else {
                pb::ConditionSource::Detected
            }
        };
        pb::SystemStatus {
            connected: conditions.connected(),
            connected_source: source(connected_override).into(),
            costed: conditions.costed(),
            costed_source: source(costed_override).into(),
            constrained,
            free_disk_bytes,
            min_free_disk_bytes,
            low_disk_space,
            active_downloads: u32::try_from(active).unwrap_or(u32::MAX),
            queued_downloads: u32::try_from(queued).unwrap_or(u32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::{Code, Status as GrpcStatus};

    use super::*;

    /// Every domain enum reaches the protobuf enum with the same number, and that number leads
    /// back to the same variant: through [`priority`], [`cost_policy`] and [`behavior`] for the
    /// enums clients send, through `from_code` (what the store uses) for every enum.
    #[test]
    fn every_domain_enum_round_trips_with_its_number() {
        for s in Status::ALL {
            let wire = pb::BackgroundTransferStatus::from(s) as i32;
            assert_eq!(wire, s.code(), "{s:?}");
            assert_eq!(Status::from_code(wire), Some(s));
        }
        for p in Priority::ALL {
            let wire = pb::BackgroundTransferPriority::from(p) as i32;
            assert_eq!(wire, p.code(), "{p:?}");
            assert_eq!(priority(wire).unwrap(), p);
            assert_eq!(Priority::from_code(wire), Some(p));
        }
        for c in CostPolicy::ALL {
            let wire = pb::BackgroundTransferCostPolicy::from(c) as i32;
            assert_eq!(wire, c.code(), "{c:?}");
            assert_eq!(cost_policy(wire).unwrap(), c);
            assert_eq!(CostPolicy::from_code(wire), Some(c));
        }
        for b in Behavior::ALL {
            let wire = pb::BackgroundTransferBehavior::from(b) as i32;
            assert_eq!(wire, b.code(), "{b:?}");
            assert_eq!(behavior(wire).unwrap(), b);
            assert_eq!(Behavior::from_code(wire), Some(b));
        }
        for r in ErrorReason::ALL {
            let wire = pb::TransferErrorReason::from(r) as i32;
            assert_eq!(wire, r.code(), "{r:?}");
            assert_eq!(ErrorReason::from_code(wire), Some(r));
        }
    }

    /// Status reasons have no numbers of their own; each must reach a distinct protobuf value,
    /// and together they must cover every value the protobuf enum has.
    #[test]
    fn every_status_reason_has_its_own_protobuf_value() {
        let reasons = [
            StatusReason::Unspecified,
            StatusReason::WaitingForSlot,
            StatusReason::WaitingForGroup,
            StatusReason::PausedByClient,
            StatusReason::NetworkDownDetected,
            StatusReason::NetworkDownByOperator,
            StatusReason::CostedNetwork,
            StatusReason::RecoverableWebError,
            StatusReason::LowDiskSpace,
            StatusReason::ConstrainedMode,
        ];
        let mut wire: Vec<i32> = reasons
            .into_iter()
            .map(|r| pb::StatusReason::from(r) as i32)
            .collect();
        wire.sort_unstable();
        wire.dedup();
        assert_eq!(wire.len(), reasons.len(), "two reasons share a value");
        let pb_values: Vec<i32> = (0..=64)
            .filter(|n| pb::StatusReason::try_from(*n).is_ok())
            .collect();
        assert_eq!(wire, pb_values);
    }

    fn invalid(result: Result<impl std::fmt::Debug, Error>) -> GrpcStatus {
        GrpcStatus::from(result.expect_err("out-of-range number accepted"))
    }

    #[test]
    fn out_of_range_enum_numbers_are_invalid_argument() {
        let cases = [
            (
                invalid(priority(3)),
                "priority 3 is not a BackgroundTransferPriority (DEFAULT 0, HIGH 1, LOW 2)",
            ),
            (
                invalid(priority(-1)),
                "priority -1 is not a BackgroundTransferPriority (DEFAULT 0, HIGH 1, LOW 2)",
            ),
            (
                invalid(cost_policy(3)),
                "cost_policy 3 is not a BackgroundTransferCostPolicy (DEFAULT 0, UNRESTRICTED_ONLY 1, ALWAYS 2)",
            ),
            (
                invalid(cost_policy(-1)),
                "cost_policy -1 is not a BackgroundTransferCostPolicy (DEFAULT 0, UNRESTRICTED_ONLY 1, ALWAYS 2)",
            ),
            (
                invalid(behavior(2)),
                "behavior 2 is not a BackgroundTransferBehavior (PARALLEL 0, SERIALIZED 1)",
            ),
            (
                invalid(behavior(i32::MIN)),
                "behavior -2147483648 is not a BackgroundTransferBehavior (PARALLEL 0, SERIALIZED 1)",
            ),
        ];
        for (status, message) in cases {
            assert_eq!(status.code(), Code::InvalidArgument, "{message}");
            assert_eq!(status.message(), message);
        }
    }

    #[test]
    fn a_create_request_with_a_bad_priority_is_refused() {
        let request = pb::CreateDownloadRequest {
            requested_uri: "http://127.0.0.1/a".into(),
            priority: 9,
            ..Default::default()
        };
        let status = invalid(NewDownload::try_from(request));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("priority 9 "), "{status:?}");
    }
}
