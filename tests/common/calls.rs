//! The calls the tests make, through the library [`Client`](transferd::client::Client): each
//! returns what the server answered and panics, naming the call and the status, if it failed.
//! A test that expects a failure calls `h.client` directly and inspects the `Status`.

use tonic::{Status, Streaming};

use super::origin::Resource;
use super::{Harness, S, pb};

/// A CreateDownload request with defaults.
pub fn create_request(uri: &str, result_file: &str) -> pb::CreateDownloadRequest {
    pb::CreateDownloadRequest {
        requested_uri: uri.to_string(),
        result_file: result_file.to_string(),
        ..Default::default()
    }
}

/// The status of an operation as the enum.
pub fn status_of(op: &pb::DownloadOperation) -> S {
    op.progress
        .as_ref()
        .expect("progress is always set")
        .status()
}

/// The value of a call that must succeed.
fn must<T>(call: &str, result: Result<T, Status>) -> T {
    result.unwrap_or_else(|status| panic!("{call} failed: {status:?}"))
}

impl Harness {
    /// Creates a download of `uri` to `result_file`.
    pub async fn create(&self, uri: &str, result_file: &str) -> pb::DownloadOperation {
        self.create_with(create_request(uri, result_file)).await
    }

    /// Creates a download from a full request.
    pub async fn create_with(&self, request: pb::CreateDownloadRequest) -> pb::DownloadOperation {
        let call = format!("CreateDownload of {}", request.requested_uri);
        must(&call, self.client.create(request).await)
    }

    /// Serves `resource` at `path`, held after `held` bytes, creates a download of it to the
    /// result file named like the path, and waits until the server has those bytes.
    pub async fn start_held(
        &self,
        path: &str,
        resource: Resource,
        held: u64,
    ) -> pb::DownloadOperation {
        self.start_held_with(path, resource, held, |_| {}).await
    }

    /// [`Harness::start_held`], with `edit` applied to the request first.
    pub async fn start_held_with(
        &self,
        path: &str,
        resource: Resource,
        held: u64,
        edit: impl FnOnce(&mut pb::CreateDownloadRequest),
    ) -> pb::DownloadOperation {
        self.origin.put(path, resource.hold_after(held));
        let mut request = create_request(&self.origin.url(path), path.trim_start_matches('/'));
        edit(&mut request);
        let op = self.create_with(request).await;
        self.wait_bytes(&op.guid, held).await
    }

    /// The download as it is now.
    pub async fn get(&self, guid: &str) -> pb::DownloadOperation {
        must("GetDownload", self.client.get(guid).await)
    }

    /// The download's status now.
    pub async fn status(&self, guid: &str) -> S {
        status_of(&self.get(guid).await)
    }

    /// Pauses the download.
    pub async fn pause(&self, guid: &str) -> pb::DownloadOperation {
        must("PauseDownload", self.client.pause(guid).await)
    }

    /// Resumes the download.
    pub async fn resume(&self, guid: &str) -> pb::DownloadOperation {
        must("ResumeDownload", self.client.resume(guid).await)
    }

    /// Cancels the download.
    pub async fn cancel(&self, guid: &str) -> pb::DownloadOperation {
        must("CancelDownload", self.client.cancel(guid).await)
    }

    /// Deletes a finished download (and with `delete_file` its result file).
    pub async fn delete(&self, guid: &str, delete_file: bool) -> pb::DeleteDownloadResponse {
        must(
            "DeleteDownload",
            self.client.delete(guid, delete_file).await,
        )
    }

    /// The guids of every download, in ListDownloads order, following every page.
    pub async fn list_guids(&self) -> Vec<String> {
        let downloads = must("ListDownloads", self.client.list_all(None).await);
        downloads.into_iter().map(|d| d.guid).collect()
    }

    /// The latest HTTP response of the download.
    pub async fn response_information(&self, guid: &str) -> pb::ResponseInformation {
        let info = self.client.response_information(guid).await;
        must("GetResponseInformation", info)
    }

    /// Opens a WatchDownload stream.
    pub async fn watch(&self, guid: &str) -> Streaming<pb::BackgroundDownloadProgress> {
        must("WatchDownload", self.client.watch(guid).await)
    }

    /// Opens a WatchDownloads stream, of one group or of all downloads.
    pub async fn watch_all(&self, group: Option<&str>) -> Streaming<pb::DownloadProgressEvent> {
        must("WatchDownloads", self.client.watch_all(group).await)
    }

    /// The host as transferd sees it.
    pub async fn system_status(&self) -> pb::SystemStatus {
        must("GetSystemStatus", self.client.system_status().await)
    }

    /// Overrides (`Some`) or hands back to detection (`None`) each network condition.
    pub async fn set_network(
        &self,
        connected: Option<bool>,
        costed: Option<bool>,
    ) -> pb::SystemStatus {
        let status = self.client.set_network_conditions(connected, costed).await;
        must("SetNetworkConditions", status)
    }

    /// Enters or leaves constrained mode.
    pub async fn set_constrained(&self, constrained: bool) -> pb::SystemStatus {
        must(
            "SetSystemPolicy",
            self.client.set_system_policy(constrained).await,
        )
    }
}
