//! The gRPC layer of `backgroundtransfer.v1`: converts protobuf requests into engine calls and
//! engine results into protobuf, and maps every [`Error`] to one status code in
//! [`status_from`]. No transfer logic lives here.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status as GrpcStatus};

use crate::engine::{DownloadView, Engine, NewDownload, SystemView};
use crate::error::Error;
use crate::operation::{
    DownloadSpec, ErrorReason, ResponseInfo, Settings, Status, StatusReason, TransferError,
};
use crate::pb::backgroundtransfer::v1 as pb;
use crate::progress::{Lagged, Message};
use pb::background_transfer_service_server::BackgroundTransferService;
use pb::transfer_system_service_server::TransferSystemService;

/// The `BackgroundTransferService` implementation.
#[derive(Clone, Debug)]
pub struct TransferService {
    engine: Engine,
}

impl TransferService {
    /// Serves `engine`.
    pub fn new(engine: Engine) -> TransferService {
        TransferService { engine }
    }
}

type ProgressStream =
    Pin<Box<dyn Stream<Item = Result<pb::BackgroundDownloadProgress, GrpcStatus>> + Send>>;
type EventStream =
    Pin<Box<dyn Stream<Item = Result<pb::DownloadProgressEvent, GrpcStatus>> + Send>>;

#[tonic::async_trait]
impl BackgroundTransferService for TransferService {
    async fn create_download(
        &self,
        request: Request<pb::CreateDownloadRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let pb::CreateDownloadRequest {
            requested_uri,
            result_file,
            priority,
            cost_policy,
            transfer_group,
            request_headers,
            expected_sha256,
            recoverable_web_error_statuses,
        } = request.into_inner();
        let view = self
            .engine
            .create(NewDownload {
                requested_uri,
                result_file,
                priority,
                cost_policy,
                transfer_group,
                request_headers: request_headers.into_iter().collect(),
                expected_sha256,
                recoverable_web_error_statuses,
            })
            .await?;
        Ok(Response::new(operation(view)))
    }

    async fn get_download(
        &self,
        request: Request<pb::GetDownloadRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let pb::GetDownloadRequest { guid } = request.into_inner();
        Ok(Response::new(operation(self.engine.get(&guid)?)))
    }

    async fn list_downloads(
        &self,
        request: Request<pb::ListDownloadsRequest>,
    ) -> Result<Response<pb::ListDownloadsResponse>, GrpcStatus> {
        let pb::ListDownloadsRequest {
            transfer_group,
            page_size,
            page_token,
        } = request.into_inner();
        let page = self.engine.list(
            transfer_group.as_deref(),
            usize::try_from(page_size).unwrap_or(usize::MAX),
            &page_token,
        )?;
        Ok(Response::new(pb::ListDownloadsResponse {
            downloads: page.downloads.into_iter().map(operation).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn pause_download(
        &self,
        request: Request<pb::PauseDownloadRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let pb::PauseDownloadRequest { guid } = request.into_inner();
        Ok(Response::new(operation(self.engine.pause(&guid).await?)))
    }

    async fn resume_download(
        &self,
        request: Request<pb::ResumeDownloadRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let pb::ResumeDownloadRequest { guid } = request.into_inner();
        Ok(Response::new(operation(self.engine.resume(&guid).await?)))
    }

    async fn cancel_download(
        &self,
        request: Request<pb::CancelDownloadRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let pb::CancelDownloadRequest { guid } = request.into_inner();
        Ok(Response::new(operation(self.engine.cancel(&guid).await?)))
    }

    type WatchDownloadStream = ProgressStream;

    async fn watch_download(
        &self,
        request: Request<pb::WatchDownloadRequest>,
    ) -> Result<Response<Self::WatchDownloadStream>, GrpcStatus> {
        let pb::WatchDownloadRequest { guid } = request.into_inner();
        let stream = self
            .engine
            .watch(&guid)?
            .map(|item| item.map(progress).map_err(lagged));
        Ok(Response::new(Box::pin(stream)))
    }

    type WatchDownloadsStream = EventStream;

    async fn watch_downloads(
        &self,
        request: Request<pb::WatchDownloadsRequest>,
    ) -> Result<Response<Self::WatchDownloadsStream>, GrpcStatus> {
        let pb::WatchDownloadsRequest { transfer_group } = request.into_inner();
        let stream = self.engine.watch_all(transfer_group).map(|item| {
            item.map(|(guid, message)| pb::DownloadProgressEvent {
                guid: guid.to_string(),
                progress: Some(progress(message)),
            })
            .map_err(lagged)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_response_information(
        &self,
        request: Request<pb::GetResponseInformationRequest>,
    ) -> Result<Response<pb::ResponseInformation>, GrpcStatus> {
        let pb::GetResponseInformationRequest { guid } = request.into_inner();
        let ResponseInfo {
            is_resumable,
            actual_uri,
            status_code,
            headers,
        } = self.engine.response_information(&guid)?;
        Ok(Response::new(pb::ResponseInformation {
            is_resumable,
            actual_uri,
            status_code: status_code.into(),
            headers: headers.into_iter().collect(),
        }))
    }

    async fn set_cost_policy(
        &self,
        request: Request<pb::SetCostPolicyRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let pb::SetCostPolicyRequest { guid, cost_policy } = request.into_inner();
        let view = self.engine.set_cost_policy(&guid, cost_policy).await?;
        Ok(Response::new(operation(view)))
    }

    async fn set_priority(
        &self,
        request: Request<pb::SetPriorityRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let pb::SetPriorityRequest { guid, priority } = request.into_inner();
        let view = self.engine.set_priority(&guid, priority).await?;
        Ok(Response::new(operation(view)))
    }

    async fn set_request_header(
        &self,
        request: Request<pb::SetRequestHeaderRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let pb::SetRequestHeaderRequest { guid, name, value } = request.into_inner();
        let view = self.engine.set_request_header(&guid, &name, &value).await?;
        Ok(Response::new(operation(view)))
    }

    async fn remove_request_header(
        &self,
        request: Request<pb::RemoveRequestHeaderRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let pb::RemoveRequestHeaderRequest { guid, name } = request.into_inner();
        let view = self.engine.remove_request_header(&guid, &name).await?;
        Ok(Response::new(operation(view)))
    }

    async fn set_requested_uri(
        &self,
        request: Request<pb::SetRequestedUriRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let pb::SetRequestedUriRequest {
            guid,
            requested_uri,
        } = request.into_inner();
        let view = self.engine.set_requested_uri(&guid, &requested_uri).await?;
        Ok(Response::new(operation(view)))
    }

    async fn set_transfer_group_behavior(
        &self,
        request: Request<pb::SetTransferGroupBehaviorRequest>,
    ) -> Result<Response<pb::TransferGroup>, GrpcStatus> {
        let pb::SetTransferGroupBehaviorRequest {
            transfer_group,
            behavior,
        } = request.into_inner();
        let behavior = self
            .engine
            .set_group_behavior(&transfer_group, behavior)
            .await?;
        Ok(Response::new(pb::TransferGroup {
            transfer_group,
            behavior: behavior.code(),
        }))
    }

    async fn make_current_in_transfer_group(
        &self,
        request: Request<pb::MakeCurrentInTransferGroupRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let pb::MakeCurrentInTransferGroupRequest { guid } = request.into_inner();
        let view = self.engine.make_current_in_group(&guid).await?;
        Ok(Response::new(operation(view)))
    }
}

/// The `TransferSystemService` implementation: operator controls of the host.
#[derive(Clone, Debug)]
pub struct SystemService {
    engine: Engine,
}

impl SystemService {
    /// Serves `engine`.
    pub fn new(engine: Engine) -> SystemService {
        SystemService { engine }
    }
}

#[tonic::async_trait]
impl TransferSystemService for SystemService {
    async fn set_network_conditions(
        &self,
        request: Request<pb::SetNetworkConditionsRequest>,
    ) -> Result<Response<pb::SystemStatus>, GrpcStatus> {
        let pb::SetNetworkConditionsRequest { connected, costed } = request.into_inner();
        let view = self.engine.set_network_conditions(connected, costed).await;
        Ok(Response::new(system_status(view)))
    }

    async fn set_system_policy(
        &self,
        request: Request<pb::SetSystemPolicyRequest>,
    ) -> Result<Response<pb::SystemStatus>, GrpcStatus> {
        let pb::SetSystemPolicyRequest { constrained } = request.into_inner();
        let view = self.engine.set_constrained(constrained).await;
        Ok(Response::new(system_status(view)))
    }

    async fn get_system_status(
        &self,
        request: Request<pb::GetSystemStatusRequest>,
    ) -> Result<Response<pb::SystemStatus>, GrpcStatus> {
        let pb::GetSystemStatusRequest {} = request.into_inner();
        Ok(Response::new(system_status(self.engine.system())))
    }
}

fn system_status(view: SystemView) -> pb::SystemStatus {
    let SystemView {
        conditions,
        low_disk_space,
        active,
        queued,
    } = view;
    let source = |overridden: bool| {
        if overridden {
            pb::ConditionSource::Operator
        } else {
            pb::ConditionSource::Detected
        }
    };
    pb::SystemStatus {
        connected: conditions.connected(),
        connected_source: source(conditions.connected_override.is_some()).into(),
        costed: conditions.costed(),
        costed_source: source(conditions.costed_override.is_some()).into(),
        constrained: conditions.constrained,
        free_disk_bytes: conditions.free_disk_bytes,
        min_free_disk_bytes: conditions.min_free_disk_bytes,
        low_disk_space,
        active_downloads: u32::try_from(active).unwrap_or(u32::MAX),
        queued_downloads: u32::try_from(queued).unwrap_or(u32::MAX),
    }
}

/// The one mapping from domain errors to gRPC status codes.
pub fn status_from(error: &Error) -> GrpcStatus {
    let message = error.to_string();
    match error {
        Error::InvalidUri { .. } | Error::InvalidResultFile { .. } | Error::InvalidArgument(_) => {
            GrpcStatus::invalid_argument(message)
        }
        Error::NotFound { .. } => GrpcStatus::not_found(message),
        Error::IllegalTransition { .. }
        | Error::NoResponseYet { .. }
        | Error::NotPaused { .. }
        | Error::NoGroup { .. } => GrpcStatus::failed_precondition(message),
        Error::ResultFileInUse { .. } => GrpcStatus::already_exists(message),
        Error::ShuttingDown | Error::Storage(_) => GrpcStatus::unavailable(message),
    }
}

impl From<Error> for GrpcStatus {
    fn from(error: Error) -> GrpcStatus {
        status_from(&error)
    }
}

fn lagged(e: Lagged) -> GrpcStatus {
    GrpcStatus::resource_exhausted(e.to_string())
}

fn status(s: Status) -> pb::BackgroundTransferStatus {
    use pb::BackgroundTransferStatus as P;
    match s {
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

fn progress(message: Message) -> pb::BackgroundDownloadProgress {
    let Message {
        progress,
        has_response_changed,
        has_restarted,
    } = message;
    pb::BackgroundDownloadProgress {
        bytes_received: progress.bytes_received,
        total_bytes_to_receive: progress.total_bytes_to_receive,
        status: status(progress.status).into(),
        has_response_changed,
        has_restarted,
    }
}

fn operation(view: DownloadView) -> pb::DownloadOperation {
    let DownloadView {
        spec,
        settings,
        reason,
        web_error_status,
        progress: message,
        error,
        attempts,
    } = view;
    let DownloadSpec {
        guid,
        seq: _,
        result_file,
        transfer_group,
        expected_sha256,
        recoverable_web_error_statuses,
    } = spec;
    let Settings {
        requested_uri,
        request_headers,
        priority,
        cost_policy,
    } = settings;
    pb::DownloadOperation {
        guid,
        requested_uri,
        result_file,
        priority: priority.code(),
        cost_policy: cost_policy.code(),
        transfer_group,
        progress: Some(progress(message)),
        error: error.map(transfer_error),
        request_headers: request_headers.into_iter().collect(),
        attempt_count: attempts,
        expected_sha256: expected_sha256.unwrap_or_default(),
        recoverable_web_error_statuses: recoverable_web_error_statuses
            .into_iter()
            .map(u32::from)
            .collect(),
        current_web_error_status: web_error_status.map_or(0, u32::from),
        status_reason: status_reason(reason).into(),
    }
}

fn status_reason(reason: StatusReason) -> pb::StatusReason {
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

fn transfer_error(error: TransferError) -> pb::TransferError {
    let TransferError {
        message,
        http_status,
        reason,
    } = error;
    use pb::TransferErrorReason as P;
    let reason = match reason {
        ErrorReason::HttpStatus => P::HttpStatus,
        ErrorReason::Network => P::Network,
        ErrorReason::Disk => P::Disk,
        ErrorReason::Integrity => P::Integrity,
    };
    pb::TransferError {
        message,
        http_status_code: http_status.map_or(0, u32::from),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_maps_to_the_same_number() {
        for s in Status::ALL {
            assert_eq!(status(s) as i32, s.code(), "{s:?}");
        }
    }
}
