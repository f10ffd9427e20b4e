//! `BackgroundTransferService`: the client API. Each handler reads the call's [`Caller`],
//! converts its request, calls the engine as that caller and converts the answer; errors become
//! status codes in [`super::status`].

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status as GrpcStatus};

use super::audit::Subject;
use super::convert;
use crate::auth::Caller;
use crate::engine::results::ReadRange;
use crate::engine::{Engine, NewDownload, Scope};
use crate::pb::backgroundtransfer::v1 as pb;
use crate::progress;
use pb::background_transfer_service_server::BackgroundTransferService;

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

/// A WatchDownload stream, unboxed: with thousands of watchers, each box is one more cold
/// object that every status change touches once per watcher.
type ProgressStream = futures_util::stream::Map<
    progress::WatchOne,
    fn(
        Result<progress::Message, progress::Lagged>,
    ) -> Result<pb::BackgroundDownloadProgress, GrpcStatus>,
>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ResultChunk, GrpcStatus>> + Send>>;
type EventStream =
    Pin<Box<dyn Stream<Item = Result<pb::DownloadProgressEvent, GrpcStatus>> + Send>>;

#[tonic::async_trait]
impl BackgroundTransferService for TransferService {
    async fn create_download(
        &self,
        request: Request<pb::CreateDownloadRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let subject = Subject::of(&request);
        let new = NewDownload::try_from(request.into_inner())?;
        let view = self.engine.create(&caller, new).await?;
        subject.set(&view.spec.guid);
        Ok(Response::new(view.into()))
    }

    async fn get_download(
        &self,
        request: Request<pb::GetDownloadRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let pb::GetDownloadRequest { guid } = request.into_inner();
        Ok(Response::new(self.engine.get(&caller, &guid).await?.into()))
    }

    async fn list_downloads(
        &self,
        request: Request<pb::ListDownloadsRequest>,
    ) -> Result<Response<pb::ListDownloadsResponse>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let pb::ListDownloadsRequest {
            transfer_group,
            page_size,
            page_token,
            tenant,
        } = request.into_inner();
        let scope = Scope::of(&caller, tenant.as_deref())?;
        let page = self
            .engine
            .list(
                &scope,
                transfer_group.as_deref(),
                usize::try_from(page_size).unwrap_or(usize::MAX),
                &page_token,
            )
            .await?;
        Ok(Response::new(page.into()))
    }

    async fn pause_download(
        &self,
        request: Request<pb::PauseDownloadRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        Subject::of(&request).set(&request.get_ref().guid);
        let pb::PauseDownloadRequest { guid } = request.into_inner();
        Ok(Response::new(
            self.engine.pause(&caller, &guid).await?.into(),
        ))
    }

    async fn resume_download(
        &self,
        request: Request<pb::ResumeDownloadRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        Subject::of(&request).set(&request.get_ref().guid);
        let pb::ResumeDownloadRequest { guid } = request.into_inner();
        Ok(Response::new(
            self.engine.resume(&caller, &guid).await?.into(),
        ))
    }

    async fn cancel_download(
        &self,
        request: Request<pb::CancelDownloadRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        Subject::of(&request).set(&request.get_ref().guid);
        let pb::CancelDownloadRequest { guid } = request.into_inner();
        Ok(Response::new(
            self.engine.cancel(&caller, &guid).await?.into(),
        ))
    }

    async fn delete_download(
        &self,
        request: Request<pb::DeleteDownloadRequest>,
    ) -> Result<Response<pb::DeleteDownloadResponse>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        Subject::of(&request).set(&request.get_ref().guid);
        let pb::DeleteDownloadRequest { guid, delete_file } = request.into_inner();
        Ok(Response::new(
            self.engine
                .delete(&caller, &guid, delete_file)
                .await?
                .into(),
        ))
    }

    type WatchDownloadStream = ProgressStream;

    async fn watch_download(
        &self,
        request: Request<pb::WatchDownloadRequest>,
    ) -> Result<Response<Self::WatchDownloadStream>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let pb::WatchDownloadRequest { guid } = request.into_inner();
        let stream = self.engine.watch(&caller, &guid).await?;
        Ok(Response::new(
            stream.map(|item| item.map(Into::into).map_err(Into::into)),
        ))
    }

    type WatchDownloadsStream = EventStream;

    async fn watch_downloads(
        &self,
        request: Request<pb::WatchDownloadsRequest>,
    ) -> Result<Response<Self::WatchDownloadsStream>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let pb::WatchDownloadsRequest {
            transfer_group,
            tenant,
        } = request.into_inner();
        let scope = Scope::of(&caller, tenant.as_deref())?;
        let stream = self.engine.watch_all(scope, transfer_group).map(|item| {
            item.map(|(guid, message)| convert::event(guid, message))
                .map_err(Into::into)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type ReadResultStream = ChunkStream;

    async fn read_result(
        &self,
        request: Request<pb::ReadResultRequest>,
    ) -> Result<Response<Self::ReadResultStream>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let pb::ReadResultRequest {
            guid,
            offset,
            length,
            follow,
        } = request.into_inner();
        let range = ReadRange {
            offset,
            length,
            follow,
        };
        let stream = self.engine.read_result(&caller, &guid, range)?.map(|item| {
            item.map(|chunk| pb::ResultChunk {
                offset: chunk.offset,
                data: chunk.data,
            })
            .map_err(Into::into)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_response_information(
        &self,
        request: Request<pb::GetResponseInformationRequest>,
    ) -> Result<Response<pb::ResponseInformation>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        let pb::GetResponseInformationRequest { guid } = request.into_inner();
        let info = self.engine.response_information(&caller, &guid)?;
        Ok(Response::new(info.into()))
    }

    async fn set_cost_policy(
        &self,
        request: Request<pb::SetCostPolicyRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        Subject::of(&request).set(&request.get_ref().guid);
        let pb::SetCostPolicyRequest { guid, cost_policy } = request.into_inner();
        let cost_policy = convert::cost_policy(cost_policy)?;
        let view = self
            .engine
            .set_cost_policy(&caller, &guid, cost_policy)
            .await?;
        Ok(Response::new(view.into()))
    }

    async fn set_priority(
        &self,
        request: Request<pb::SetPriorityRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        Subject::of(&request).set(&request.get_ref().guid);
        let pb::SetPriorityRequest { guid, priority } = request.into_inner();
        let priority = convert::priority(priority)?;
        let view = self.engine.set_priority(&caller, &guid, priority).await?;
        Ok(Response::new(view.into()))
    }

    async fn set_request_header(
        &self,
        request: Request<pb::SetRequestHeaderRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        Subject::of(&request).set(&request.get_ref().guid);
        let pb::SetRequestHeaderRequest {
            guid,
            name,
            value,
            sensitive,
        } = request.into_inner();
        let view = self
            .engine
            .set_request_header(&caller, &guid, &name, &value, sensitive)
            .await?;
        Ok(Response::new(view.into()))
    }

    async fn remove_request_header(
        &self,
        request: Request<pb::RemoveRequestHeaderRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        Subject::of(&request).set(&request.get_ref().guid);
        let pb::RemoveRequestHeaderRequest { guid, name } = request.into_inner();
        let view = self
            .engine
            .remove_request_header(&caller, &guid, &name)
            .await?;
        Ok(Response::new(view.into()))
    }

    async fn set_requested_uri(
        &self,
        request: Request<pb::SetRequestedUriRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        Subject::of(&request).set(&request.get_ref().guid);
        let pb::SetRequestedUriRequest {
            guid,
            requested_uri,
            request_headers,
            sensitive_headers,
        } = request.into_inner();
        let headers = request_headers.into_iter().collect();
        let view = self
            .engine
            .set_requested_uri(&caller, &guid, &requested_uri, &headers, &sensitive_headers)
            .await?;
        Ok(Response::new(view.into()))
    }

    async fn set_transfer_group_behavior(
        &self,
        request: Request<pb::SetTransferGroupBehaviorRequest>,
    ) -> Result<Response<pb::TransferGroup>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        Subject::of(&request).set(&request.get_ref().transfer_group);
        let pb::SetTransferGroupBehaviorRequest {
            transfer_group,
            behavior,
        } = request.into_inner();
        let behavior = convert::behavior(behavior)?;
        let behavior = self
            .engine
            .set_group_behavior(&caller, &transfer_group, behavior)
            .await?;
        Ok(Response::new(convert::transfer_group(
            transfer_group,
            behavior,
        )))
    }

    async fn make_current_in_transfer_group(
        &self,
        request: Request<pb::MakeCurrentInTransferGroupRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        Subject::of(&request).set(&request.get_ref().guid);
        let pb::MakeCurrentInTransferGroupRequest { guid } = request.into_inner();
        let view = self.engine.make_current_in_group(&caller, &guid).await?;
        Ok(Response::new(view.into()))
    }

    async fn set_rate_limit(
        &self,
        request: Request<pb::SetRateLimitRequest>,
    ) -> Result<Response<pb::DownloadOperation>, GrpcStatus> {
        let caller = Caller::of(&request)?;
        Subject::of(&request).set(&request.get_ref().guid);
        let pb::SetRateLimitRequest {
            guid,
            bytes_per_second,
        } = request.into_inner();
        let view = self
            .engine
            .set_rate_limit(&caller, &guid, bytes_per_second)
            .await?;
        Ok(Response::new(view.into()))
    }
}
