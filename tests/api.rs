//! End-to-end: the gRPC contract itself: input validation with clear codes that change nothing
//! stored, NOT_FOUND for unknown guids, result-file rules, listing and paging, response
//! information, and the health and reflection services.

mod common;

use common::origin::{Origin, Resource, test_bytes};
use common::*;
use tonic::Code;
use transferd::pb::backgroundtransfer::v1 as pb;

async fn list_all(client: &mut Client) -> Vec<pb::DownloadOperation> {
    client
        .list_downloads(pb::ListDownloadsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .downloads
}

#[tokio::test]
async fn bad_create_requests_are_invalid_argument_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let ok = "http://127.0.0.1:9/file";
    let cases: Vec<(pb::CreateDownloadRequest, &str)> = vec![
        (create_request("", "a"), "empty"),
        (create_request("not a uri", "a"), "relative URL"),
        (create_request("ftp://127.0.0.1/a", "a"), "scheme `ftp`"),
        (create_request("file:///etc/passwd", "a"), "scheme `file`"),
        (create_request(ok, "/etc/passwd"), "absolute paths"),
        (create_request(ok, "../escape"), "`..`"),
        (create_request(ok, "a/../../escape"), "`..`"),
        (create_request(ok, "dir/"), "directory"),
        (create_request(ok, ".transferd-partial/x"), "reserved"),
        (create_request(ok, "a\\b"), "`/`"),
        (
            pb::CreateDownloadRequest {
                priority: 9,
                ..create_request(ok, "a")
            },
            "priority 9",
        ),
        (
            pb::CreateDownloadRequest {
                cost_policy: -1,
                ..create_request(ok, "a")
            },
            "cost_policy -1",
        ),
        (
            pb::CreateDownloadRequest {
                request_headers: [("Range".to_string(), "bytes=5-".to_string())].into(),
                ..create_request(ok, "a")
            },
            "managed by transferd",
        ),
        (
            pb::CreateDownloadRequest {
                request_headers: [("bad name".to_string(), "x".to_string())].into(),
                ..create_request(ok, "a")
            },
            "not a valid HTTP header name",
        ),
    ];
    for (request, expected) in cases {
        let err = client
            .create_download(request.clone())
            .await
            .expect_err(&format!("{request:?} accepted"));
        assert_eq!(err.code(), Code::InvalidArgument, "{request:?}: {err:?}");
        assert!(
            err.message().contains(expected),
            "{request:?}: message {:?} lacks {expected:?}",
            err.message()
        );
    }
    assert!(list_all(&mut client).await.is_empty());
    assert!(files_under(&server.download_dir()).is_empty());
}

#[tokio::test]
async fn unknown_guid_is_not_found_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let mut c = server.client().await;
    let g = || "00000000-0000-0000-0000-000000000000".to_string();
    let errors = vec![
        c.get_download(pb::GetDownloadRequest { guid: g() })
            .await
            .unwrap_err(),
        c.pause_download(pb::PauseDownloadRequest { guid: g() })
            .await
            .unwrap_err(),
        c.resume_download(pb::ResumeDownloadRequest { guid: g() })
            .await
            .unwrap_err(),
        c.cancel_download(pb::CancelDownloadRequest { guid: g() })
            .await
            .unwrap_err(),
        c.watch_download(pb::WatchDownloadRequest { guid: g() })
            .await
            .unwrap_err(),
        c.get_response_information(pb::GetResponseInformationRequest { guid: g() })
            .await
            .unwrap_err(),
    ];
    for err in errors {
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        assert!(err.message().contains(&g()), "{}", err.message());
    }
}

#[tokio::test]
async fn a_live_result_file_cannot_be_targeted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    origin.put("/a", Resource::new(test_bytes(4096, 1)).hold_after(10));
    origin.put("/b", Resource::new(test_bytes(4096, 2)));
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let first = create(&mut client, &origin.url("/a"), "same.bin").await;
    let err = client
        .create_download(create_request(&origin.url("/b"), "same.bin"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&first.guid), "{}", err.message());
    assert_eq!(list_all(&mut client).await.len(), 1);
    // Once the first is finished, the file may be written again (it is replaced atomically).
    origin.release("/a");
    wait_status(&mut client, &first.guid, S::Completed).await;
    let second = create(&mut client, &origin.url("/b"), "same.bin").await;
    wait_status(&mut client, &second.guid, S::Completed).await;
    assert_eq!(
        sha256_file(&server.download_dir().join("same.bin")),
        sha256(&test_bytes(4096, 2))
    );
}

#[tokio::test]
async fn empty_result_file_gets_a_name_from_the_uri() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    origin.put(
        "/files/weights.safetensors?sig=1",
        Resource::new(test_bytes(1000, 3)),
    );
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let url = origin.url("/files/weights.safetensors?sig=1");
    let a = create(&mut client, &url, "").await;
    assert_eq!(a.result_file, "weights.safetensors");
    let b = create(&mut client, &url, "").await;
    let short: String = b.guid.chars().take(8).collect();
    assert_eq!(b.result_file, format!("weights-{short}.safetensors"));
    for op in [&a, &b] {
        wait_status(&mut client, &op.guid, S::Completed).await;
        assert_eq!(
            sha256_file(&server.download_dir().join(&op.result_file)),
            sha256(&test_bytes(1000, 3))
        );
    }
}

#[tokio::test]
async fn operation_echoes_what_was_asked_and_sends_request_headers() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    origin.put("/h", Resource::new(test_bytes(100, 4)));
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let mut req = create_request(&origin.url("/h"), "h.bin");
    req.set_priority(pb::BackgroundTransferPriority::Low);
    req.set_cost_policy(pb::BackgroundTransferCostPolicy::Always);
    req.transfer_group = "nightly".into();
    req.request_headers = [("Authorization".to_string(), "Bearer t0ken".to_string())].into();
    let op = client.create_download(req).await.unwrap().into_inner();
    assert_eq!(op.priority(), pb::BackgroundTransferPriority::Low);
    assert_eq!(op.cost_policy(), pb::BackgroundTransferCostPolicy::Always);
    assert_eq!(op.transfer_group, "nightly");
    assert_eq!(
        op.request_headers.get("authorization").map(String::as_str),
        Some("Bearer t0ken")
    );
    assert!(uuid_like(&op.guid), "{}", op.guid);
    let p = op.progress.unwrap();
    assert_eq!((p.bytes_received, p.total_bytes_to_receive), (0, 0));
    wait_status(&mut client, &op.guid, S::Completed).await;
    assert_eq!(
        origin.requests_for("/h")[0].header("authorization"),
        Some("Bearer t0ken")
    );
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test]
async fn list_pages_in_creation_order_and_filters_by_group() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-active", "1"]).await;
    let mut client = server.client().await;
    let mut created = Vec::new();
    for i in 0..7 {
        let mut req = create_request("http://127.0.0.1:9/never", &format!("f{i}"));
        req.transfer_group = if i % 2 == 0 { "even" } else { "odd" }.into();
        created.push(client.create_download(req).await.unwrap().into_inner().guid);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_downloads(pb::ListDownloadsRequest {
                transfer_group: None,
                page_size: 3,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.downloads.len() <= 3);
        seen.extend(page.downloads.into_iter().map(|d| d.guid));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created);
    let even = client
        .list_downloads(pb::ListDownloadsRequest {
            transfer_group: Some("even".into()),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let even: Vec<String> = even.downloads.into_iter().map(|d| d.guid).collect();
    let expected: Vec<String> = created.iter().step_by(2).cloned().collect();
    assert_eq!(even, expected);
    let err = client
        .list_downloads(pb::ListDownloadsRequest {
            transfer_group: None,
            page_size: 3,
            page_token: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn response_information_reports_the_latest_response() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    origin.put(
        "/blocker",
        Resource::new(test_bytes(4096, 1)).hold_after(10),
    );
    origin.put("/r", Resource::new(test_bytes(5000, 5)));
    let server = Server::start(dir.path(), &["--max-active", "1"]).await;
    let mut client = server.client().await;
    create(&mut client, &origin.url("/blocker"), "blocker").await;
    let op = create(&mut client, &origin.url("/r"), "r.bin").await;
    let err = client
        .get_response_information(pb::GetResponseInformationRequest {
            guid: op.guid.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    origin.release("/blocker");
    wait_status(&mut client, &op.guid, S::Completed).await;
    let info = client
        .get_response_information(pb::GetResponseInformationRequest {
            guid: op.guid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.status_code, 200);
    assert!(info.is_resumable);
    assert_eq!(info.actual_uri, origin.url("/r"));
    let etag = Resource::new(test_bytes(5000, 5)).etag.unwrap();
    assert_eq!(info.headers.get("etag"), Some(&etag));
    assert_eq!(
        info.headers.get("content-length").map(String::as_str),
        Some("5000")
    );
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "backgroundtransfer.v1.BackgroundTransferService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    // Both reflection versions list the service (ghz and older tools speak only v1alpha).
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient as V1;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest as Req1;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse as Resp1;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as V1a;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as Req1a;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as Resp1a;
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(Req1::ListServices(String::new())),
    };
    let mut v1 = V1::new(channel.clone());
    let mut stream = v1
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(Resp1::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1 reflection did not list services");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"backgroundtransfer.v1.BackgroundTransferService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(Req1a::ListServices(String::new())),
    };
    let mut v1a = V1a::new(channel);
    let mut stream = v1a
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(Resp1a::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha reflection did not list services");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "backgroundtransfer.v1.BackgroundTransferService")
    );
}

#[tokio::test]
async fn healthcheck_subcommand_probes_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_transferd"))
        .args(["healthcheck", "--addr", &server.addr.to_string()])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "SERVING");
    let addr = server.addr.to_string();
    drop(server);
    let down = std::process::Command::new(env!("CARGO_BIN_EXE_transferd"))
        .args(["healthcheck", "--addr", &addr])
        .output()
        .unwrap();
    assert!(!down.status.success(), "{down:?}");
}

#[tokio::test]
async fn invalid_flags_exit_non_zero_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--max-active", "0"],
        vec!["--max-active", "lots"],
        vec!["--listen", "nowhere"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_transferd"))
            .args(&args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(
            out.stdout.is_empty(),
            "{args:?} bound and announced an address"
        );
        assert!(!out.stderr.is_empty());
    }
}
