//! Every RPC of both services in one call, for the tests of who may do what: [`every_rpc`]
//! makes each call as a given client and returns what the server answered, [`stored_state`]
//! reads everything those calls could change, so a test can show that a refused call changed
//! nothing.

use tonic::{Code, Status};

use super::origin::{Resource, test_bytes};
use super::{Client, Harness, S, Server, create_request, pb};

/// Every RPC of both services, as `client`, aimed at the download `guid` (in group `nightly`):
/// the method's name and what the server answered. Watches count as answered once the stream
/// opens.
pub async fn every_rpc(
    h: &Harness,
    client: &Client,
    guid: &str,
) -> Vec<(&'static str, Result<(), Status>)> {
    use pb::{BackgroundTransferBehavior as B, BackgroundTransferCostPolicy as C};
    let url = h.origin.url("/other.bin");
    let create = create_request(&url, "created-by-test.bin");
    vec![
        ("CreateDownload", ok(client.create(create).await)),
        ("GetDownload", ok(client.get(guid).await)),
        ("ListDownloads", ok(client.list(None, 0, "").await)),
        ("PauseDownload", ok(client.pause(guid).await)),
        ("ResumeDownload", ok(client.resume(guid).await)),
        ("CancelDownload", ok(client.cancel(guid).await)),
        ("DeleteDownload", ok(client.delete(guid, true).await)),
        ("WatchDownload", ok(client.watch(guid).await)),
        ("WatchDownloads", ok(client.watch_all(None).await)),
        (
            "GetResponseInformation",
            ok(client.response_information(guid).await),
        ),
        // With follow, so that opening the stream succeeds for a download that is not done.
        ("ReadResult", ok(client.read_result(guid, 0, 0, true).await)),
        (
            "SetCostPolicy",
            ok(client.set_cost_policy(guid, C::UnrestrictedOnly).await),
        ),
        (
            "SetPriority",
            ok(client
                .set_priority(guid, pb::BackgroundTransferPriority::High)
                .await),
        ),
        (
            "SetRequestHeader",
            ok(client.set_request_header(guid, "x-test", "1").await),
        ),
        (
            "SetRateLimit",
            ok(client.set_rate_limit(guid, 64 * 1024).await),
        ),
        (
            "RemoveRequestHeader",
            ok(client.remove_request_header(guid, "x-kept").await),
        ),
        (
            "SetRequestedUri",
            ok(client.set_requested_uri(guid, &url).await),
        ),
        (
            "SetTransferGroupBehavior",
            ok(client.set_group_behavior("nightly", B::Serialized).await),
        ),
        (
            "MakeCurrentInTransferGroup",
            ok(client.make_current(guid).await),
        ),
        (
            "SetNetworkConditions",
            ok(client.set_network_conditions(Some(false), Some(true)).await),
        ),
        ("SetSystemPolicy", ok(client.set_system_policy(true).await)),
        ("GetSystemStatus", ok(client.system_status().await)),
    ]
}

/// Every RPC named in the contract, so [`every_rpc`] cannot miss a new one.
pub fn rpcs_of_the_contract() -> Vec<String> {
    include_str!("../../proto/backgroundtransfer/v1/backgroundtransfer.proto")
        .lines()
        .filter_map(|line| line.trim().strip_prefix("rpc "))
        .map(|rest| rest.split('(').next().unwrap().trim().to_owned())
        .collect()
}

/// A paused download in group `nightly` with a request header, that stays as it is unless a
/// call changes it.
pub async fn paused_download(h: &Harness) -> pb::DownloadOperation {
    h.origin.put(
        "/file.bin",
        Resource::new(test_bytes(64 * 1024, 7)).hold_after(1024),
    );
    let mut request = create_request(&h.origin.url("/file.bin"), "file.bin");
    request.transfer_group = "nightly".into();
    request
        .request_headers
        .insert("x-kept".into(), "yes".into());
    let op = h.create_with(request).await;
    h.wait_bytes(&op.guid, 1024).await;
    h.pause(&op.guid).await;
    h.wait_status(&op.guid, S::PausedByApplication).await
}

/// Everything the calls of [`every_rpc`] could change, read as admin: every stored download and
/// the host conditions and policy.
pub async fn stored_state(h: &Harness, admin: &Client) -> String {
    let downloads = admin.list_all(None).await.expect("admin lists");
    let pb::SystemStatus {
        connected,
        connected_source,
        costed,
        costed_source,
        constrained,
        ..
    } = admin
        .system_status()
        .await
        .expect("admin reads the system status");
    let files = super::files_under(&h.download_dir());
    format!(
        "{downloads:?}\n{connected} {connected_source} {costed} {costed_source} {constrained}\n{files:?}"
    )
}

/// Asserts that every call was refused with `code`, with a message containing what `expect`
/// gives for the method.
pub fn assert_refused(
    answers: &[(&str, Result<(), Status>)],
    code: Code,
    expect: impl Fn(&str) -> String,
) {
    for (method, answer) in answers {
        let status = answer
            .as_ref()
            .expect_err(&format!("{method} must be refused"));
        assert_eq!(status.code(), code, "{method}: {status:?}");
        let wanted = expect(method);
        assert!(
            status.message().contains(&wanted),
            "{method}: {:?} lacks {wanted:?}",
            status.message()
        );
    }
}

/// GetSystemStatus with `authorization: VALUE` exactly as given; the status it got (OK on
/// success).
pub async fn raw_authorization(server: &Server, value: &str) -> Status {
    use pb::transfer_system_service_client::TransferSystemServiceClient;
    let value: tonic::metadata::AsciiMetadataValue = value.parse().unwrap();
    let mut client = TransferSystemServiceClient::with_interceptor(
        server.channel().await,
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
            Ok(request)
        },
    );
    match client
        .get_system_status(pb::GetSystemStatusRequest {})
        .await
    {
        Ok(_) => Status::ok(""),
        Err(status) => status,
    }
}

/// What a call answered, without its value.
pub fn ok<T>(answer: Result<T, Status>) -> Result<(), Status> {
    answer.map(drop)
}
