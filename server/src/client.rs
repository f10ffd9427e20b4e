//! A typed client for transferd: both gRPC services (`BackgroundTransferService` and
//! `TransferSystemService`) over one connection, with one method per RPC. The end-to-end tests
//! drive transferd through it, and so will the `transferctl` CLI.
//!
//! It speaks the generated [`pb`] types: it is the edge of the wire, and the messages are the
//! contract. Methods take plain arguments where a request has one or two fields, and the request
//! message where it has many ([`Client::create`]). Every RPC returns `Result<_, tonic::Status>`
//! with the server's status untouched, so callers see exactly the code and message the server
//! chose.
//!
//! The generated clients need `&mut self` for each call (a tower service must be polled ready
//! before use); cloning one is cheap (the [`Channel`] is a handle to a shared connection), so
//! every method clones it and [`Client`] itself takes `&self` and can be shared or cloned freely,
//! e.g. into a spawned task that reads a stream.
//!
//! [`Client::connect`] speaks plaintext; [`Client::connect_tls`] takes [`TlsOptions`] (the CA
//! to trust, a client certificate for mTLS, the server name to expect).

mod tls;

use tonic::Status;
use tonic::metadata::{AsciiMetadataValue, errors::InvalidMetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use tls::TlsOptions;

use crate::pb::backgroundtransfer::v1 as pb;
use pb::background_transfer_service_client::BackgroundTransferServiceClient;
use pb::transfer_system_service_client::TransferSystemServiceClient;

/// The scheme assumed for an address given without one (`127.0.0.1:50051`) by
/// [`Client::connect`]: a transferd without `--tls-cert` serves plaintext HTTP/2; for one with
/// it, use [`Client::connect_tls`].
const DEFAULT_SCHEME: &str = "http://";

/// Page size [`Client::list_all`] asks for: the largest the contract allows, so listing many
/// downloads takes as few round trips as possible.
const LIST_ALL_PAGE_SIZE: u32 = 1000;

/// A connection to one transferd, for both of its services. Cloning it shares the connection.
#[derive(Clone, Debug)]
pub struct Client {
    transfers: BackgroundTransferServiceClient<Authorized>,
    system: TransferSystemServiceClient<Authorized>,
}

/// The channel every call goes through: it adds the bearer token, if the client has one.
type Authorized = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to every call, or nothing without a token.
#[derive(Clone, Debug, Default)]
struct Bearer(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl Client {
    /// Connects to transferd at `addr`: a `host:port` such as `127.0.0.1:50051` (plaintext
    /// HTTP/2 is assumed) or a full URI such as `http://127.0.0.1:50051`. Fails if the address
    /// is not a valid URI or nothing answers there.
    pub async fn connect(addr: &str) -> Result<Client, tonic::transport::Error> {
        let uri = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("{DEFAULT_SCHEME}{addr}")
        };
        let channel = Endpoint::from_shared(uri)?.connect().await?;
        Ok(Client::from_channel(channel))
    }

    /// A client over an existing channel, so a caller can configure the transport itself (TLS,
    /// timeouts, an auth interceptor's channel) without any change to the methods.
    pub fn from_channel(channel: Channel) -> Client {
        Client::with_bearer(channel, Bearer::default())
    }

    /// A client over `channel` that sends `token` as `authorization: Bearer <token>` on every
    /// call, for a transferd started with `--auth-tokens`. Fails if the token cannot be sent as
    /// metadata (it must be printable ASCII).
    pub fn from_channel_with_token(
        channel: Channel,
        token: &str,
    ) -> Result<Client, InvalidMetadataValue> {
        let value = format!("Bearer {token}").parse()?;
        Ok(Client::with_bearer(channel, Bearer(Some(value))))
    }

    fn with_bearer(channel: Channel, bearer: Bearer) -> Client {
        Client {
            transfers: BackgroundTransferServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            system: TransferSystemServiceClient::with_interceptor(channel, bearer),
        }
    }

    fn transfers(&self) -> BackgroundTransferServiceClient<Authorized> {
        self.transfers.clone()
    }

    fn system(&self) -> TransferSystemServiceClient<Authorized> {
        self.system.clone()
    }

    /// `CreateDownload`: validates, durably records and queues a download; returns it once it
    /// is stored.
    pub async fn create(
        &self,
        request: pb::CreateDownloadRequest,
    ) -> Result<pb::DownloadOperation, Status> {
        Ok(self
            .transfers()
            .create_download(request)
            .await?
            .into_inner())
    }

    /// `GetDownload`: the download `guid` as it is now.
    pub async fn get(&self, guid: &str) -> Result<pb::DownloadOperation, Status> {
        let request = pb::GetDownloadRequest { guid: guid.into() };
        Ok(self.transfers().get_download(request).await?.into_inner())
    }

    /// `ListDownloads`: one page of downloads in creation order, only those of `group` if one
    /// is given. `page_size` 0 means the server's default; `page_token` is empty for the first
    /// page and the previous page's `next_page_token` after that.
    pub async fn list(
        &self,
        group: Option<&str>,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListDownloadsResponse, Status> {
        let request = pb::ListDownloadsRequest {
            transfer_group: group.map(str::to_owned),
            page_size,
            page_token: page_token.into(),
            tenant: None,
        };
        self.list_with(request).await
    }

    /// `ListDownloads` with every field of the request, e.g. an admin's tenant filter.
    pub async fn list_with(
        &self,
        request: pb::ListDownloadsRequest,
    ) -> Result<pb::ListDownloadsResponse, Status> {
        Ok(self.transfers().list_downloads(request).await?.into_inner())
    }

    /// Every download (of `group`, if given) in creation order, following every page.
    pub async fn list_all(
        &self,
        group: Option<&str>,
    ) -> Result<Vec<pb::DownloadOperation>, Status> {
        let mut downloads = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self.list(group, LIST_ALL_PAGE_SIZE, &page_token).await?;
            downloads.extend(page.downloads);
            if page.next_page_token.is_empty() {
                return Ok(downloads);
            }
            page_token = page.next_page_token;
        }
    }

    /// `PauseDownload`: stops the transfer and keeps its partial data (PAUSED_BY_APPLICATION).
    pub async fn pause(&self, guid: &str) -> Result<pb::DownloadOperation, Status> {
        let request = pb::PauseDownloadRequest { guid: guid.into() };
        Ok(self.transfers().pause_download(request).await?.into_inner())
    }

    /// `ResumeDownload`: queues a paused download again.
    pub async fn resume(&self, guid: &str) -> Result<pb::DownloadOperation, Status> {
        let request = pb::ResumeDownloadRequest { guid: guid.into() };
        Ok(self
            .transfers()
            .resume_download(request)
            .await?
            .into_inner())
    }

    /// `CancelDownload`: cancels the download (terminal) and removes its partial data.
    pub async fn cancel(&self, guid: &str) -> Result<pb::DownloadOperation, Status> {
        let request = pb::CancelDownloadRequest { guid: guid.into() };
        Ok(self
            .transfers()
            .cancel_download(request)
            .await?
            .into_inner())
    }

    /// `DeleteDownload`: forgets a finished download; with `delete_file`, a completed one's
    /// result file is removed too.
    pub async fn delete(
        &self,
        guid: &str,
        delete_file: bool,
    ) -> Result<pb::DeleteDownloadResponse, Status> {
        let request = pb::DeleteDownloadRequest {
            guid: guid.into(),
            delete_file,
        };
        Ok(self
            .transfers()
            .delete_download(request)
            .await?
            .into_inner())
    }

    /// `WatchDownload`: the progress of one download, its current state first; the stream ends
    /// after a terminal status.
    pub async fn watch(
        &self,
        guid: &str,
    ) -> Result<tonic::Streaming<pb::BackgroundDownloadProgress>, Status> {
        let request = pb::WatchDownloadRequest { guid: guid.into() };
        Ok(self.transfers().watch_download(request).await?.into_inner())
    }

    /// `ReadResult`: the bytes of a download's result from `offset`, `length` of them (0: to
    /// the end), in chunks; with `follow`, also of a download that has not completed, as they
    /// become durable.
    pub async fn read_result(
        &self,
        guid: &str,
        offset: u64,
        length: u64,
        follow: bool,
    ) -> Result<tonic::Streaming<pb::ResultChunk>, Status> {
        let request = pb::ReadResultRequest {
            guid: guid.into(),
            offset,
            length,
            follow,
        };
        Ok(self.transfers().read_result(request).await?.into_inner())
    }

    /// `WatchDownloads`: the progress of every download (of `group`, if given), the current
    /// state of each first; the stream never ends by itself.
    pub async fn watch_all(
        &self,
        group: Option<&str>,
    ) -> Result<tonic::Streaming<pb::DownloadProgressEvent>, Status> {
        let request = pb::WatchDownloadsRequest {
            transfer_group: group.map(str::to_owned),
            tenant: None,
        };
        self.watch_all_with(request).await
    }

    /// `WatchDownloads` with every field of the request, e.g. an admin's tenant filter.
    pub async fn watch_all_with(
        &self,
        request: pb::WatchDownloadsRequest,
    ) -> Result<tonic::Streaming<pb::DownloadProgressEvent>, Status> {
        Ok(self
            .transfers()
            .watch_downloads(request)
            .await?
            .into_inner())
    }

    /// `GetResponseInformation`: the latest HTTP response of the download.
    pub async fn response_information(
        &self,
        guid: &str,
    ) -> Result<pb::ResponseInformation, Status> {
        let request = pb::GetResponseInformationRequest { guid: guid.into() };
        let response = self.transfers().get_response_information(request).await?;
        Ok(response.into_inner())
    }

    /// `SetCostPolicy`: whether the download may run on a costed network, from now on.
    pub async fn set_cost_policy(
        &self,
        guid: &str,
        cost_policy: pb::BackgroundTransferCostPolicy,
    ) -> Result<pb::DownloadOperation, Status> {
        let request = pb::SetCostPolicyRequest {
            guid: guid.into(),
            cost_policy: cost_policy.into(),
        };
        Ok(self
            .transfers()
            .set_cost_policy(request)
            .await?
            .into_inner())
    }

    /// `SetPriority`: the download's priority; a queued download moves in the queue at once.
    pub async fn set_priority(
        &self,
        guid: &str,
        priority: pb::BackgroundTransferPriority,
    ) -> Result<pb::DownloadOperation, Status> {
        let request = pb::SetPriorityRequest {
            guid: guid.into(),
            priority: priority.into(),
        };
        Ok(self.transfers().set_priority(request).await?.into_inner())
    }

    /// `SetRateLimit`: the download's own bandwidth limit in bytes/s (0: none); a running
    /// download follows it at once.
    pub async fn set_rate_limit(
        &self,
        guid: &str,
        bytes_per_second: u64,
    ) -> Result<pb::DownloadOperation, Status> {
        let request = pb::SetRateLimitRequest {
            guid: guid.into(),
            bytes_per_second,
        };
        Ok(self.transfers().set_rate_limit(request).await?.into_inner())
    }

    /// `SetRequestHeader`: adds or replaces a header sent with the download's next requests.
    pub async fn set_request_header(
        &self,
        guid: &str,
        name: &str,
        value: &str,
    ) -> Result<pb::DownloadOperation, Status> {
        self.set_header(guid, name, value, false).await
    }

    /// `SetRequestHeader` with the header marked sensitive: its value is sent, never returned.
    pub async fn set_sensitive_request_header(
        &self,
        guid: &str,
        name: &str,
        value: &str,
    ) -> Result<pb::DownloadOperation, Status> {
        self.set_header(guid, name, value, true).await
    }

    async fn set_header(
        &self,
        guid: &str,
        name: &str,
        value: &str,
        sensitive: bool,
    ) -> Result<pb::DownloadOperation, Status> {
        let request = pb::SetRequestHeaderRequest {
            guid: guid.into(),
            name: name.into(),
            value: value.into(),
            sensitive,
        };
        Ok(self
            .transfers()
            .set_request_header(request)
            .await?
            .into_inner())
    }

    /// `RemoveRequestHeader`: stops sending a header with the download's next requests.
    pub async fn remove_request_header(
        &self,
        guid: &str,
        name: &str,
    ) -> Result<pb::DownloadOperation, Status> {
        let request = pb::RemoveRequestHeaderRequest {
            guid: guid.into(),
            name: name.into(),
        };
        let response = self.transfers().remove_request_header(request).await?;
        Ok(response.into_inner())
    }

    /// `SetRequestedUri`: a new URI for a paused download.
    pub async fn set_requested_uri(
        &self,
        guid: &str,
        requested_uri: &str,
    ) -> Result<pb::DownloadOperation, Status> {
        self.set_requested_uri_with(pb::SetRequestedUriRequest {
            guid: guid.into(),
            requested_uri: requested_uri.into(),
            ..Default::default()
        })
        .await
    }

    /// `SetRequestedUri` from a full request: a new URI with headers set (and names marked
    /// sensitive) in the same call.
    pub async fn set_requested_uri_with(
        &self,
        request: pb::SetRequestedUriRequest,
    ) -> Result<pb::DownloadOperation, Status> {
        Ok(self
            .transfers()
            .set_requested_uri(request)
            .await?
            .into_inner())
    }

    /// `SetTransferGroupBehavior`: whether `group` runs its downloads in parallel or one at a
    /// time.
    pub async fn set_group_behavior(
        &self,
        group: &str,
        behavior: pb::BackgroundTransferBehavior,
    ) -> Result<pb::TransferGroup, Status> {
        let request = pb::SetTransferGroupBehaviorRequest {
            transfer_group: group.into(),
            behavior: behavior.into(),
        };
        let response = self
            .transfers()
            .set_transfer_group_behavior(request)
            .await?;
        Ok(response.into_inner())
    }

    /// `MakeCurrentInTransferGroup`: moves the download, and those of its group queued after
    /// it, to the front of its group.
    pub async fn make_current(&self, guid: &str) -> Result<pb::DownloadOperation, Status> {
        let request = pb::MakeCurrentInTransferGroupRequest { guid: guid.into() };
        let response = self
            .transfers()
            .make_current_in_transfer_group(request)
            .await?;
        Ok(response.into_inner())
    }

    /// `GetSystemStatus`: transferd's current view of the host.
    pub async fn system_status(&self) -> Result<pb::SystemStatus, Status> {
        let request = pb::GetSystemStatusRequest {};
        Ok(self.system().get_system_status(request).await?.into_inner())
    }

    /// `SetNetworkConditions`: `Some` overrides what transferd detects, `None` hands that
    /// condition back to detection.
    pub async fn set_network_conditions(
        &self,
        connected: Option<bool>,
        costed: Option<bool>,
    ) -> Result<pb::SystemStatus, Status> {
        let request = pb::SetNetworkConditionsRequest { connected, costed };
        Ok(self
            .system()
            .set_network_conditions(request)
            .await?
            .into_inner())
    }

    /// `SetSystemPolicy`: enters (`true`) or leaves constrained mode.
    pub async fn set_system_policy(&self, constrained: bool) -> Result<pb::SystemStatus, Status> {
        let request = pb::SetSystemPolicyRequest { constrained };
        Ok(self.system().set_system_policy(request).await?.into_inner())
    }
}
