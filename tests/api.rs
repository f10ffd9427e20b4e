//! End-to-end: the gRPC contract itself: input validation with clear codes that change nothing
//! stored, NOT_FOUND for unknown guids, result-file rules, listing and paging, response
//! information, and the health and reflection services.

mod common;

use common::origin::{Resource, test_bytes};
use common::*;
use tonic::Code;

#[tokio::test]
async fn bad_create_requests_are_invalid_argument_and_store_nothing() {
    let h = Harness::start(&[]).await;
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
        let err = h
            .client
            .create(request.clone())
            .await
            .expect_err(&format!("{request:?} accepted"));
        assert_eq!(err.code(), Code::InvalidArgument, "{request:?}: {err:?}");
        assert!(
            err.message().contains(expected),
            "{request:?}: message {:?} lacks {expected:?}",
            err.message()
        );
    }
    assert!(h.list_guids().await.is_empty());
    assert!(files_under(&h.download_dir()).is_empty());
}

#[tokio::test]
async fn unknown_guid_is_not_found_everywhere() {
    let h = Harness::start(&[]).await;
    let c = &h.client;
    let g = "00000000-0000-0000-0000-000000000000";
    let errors = vec![
        c.get(g).await.unwrap_err(),
        c.pause(g).await.unwrap_err(),
        c.resume(g).await.unwrap_err(),
        c.cancel(g).await.unwrap_err(),
        c.watch(g).await.unwrap_err(),
        c.response_information(g).await.unwrap_err(),
    ];
    for err in errors {
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        assert!(err.message().contains(g), "{}", err.message());
    }
}

#[tokio::test]
async fn a_live_result_file_cannot_be_targeted_twice() {
    let h = Harness::start(&[]).await;
    h.origin
        .put("/a", Resource::new(test_bytes(4096, 1)).hold_after(10));
    h.origin.put("/b", Resource::new(test_bytes(4096, 2)));
    let first = h.create(&h.origin.url("/a"), "same.bin").await;
    let err = h
        .client
        .create(create_request(&h.origin.url("/b"), "same.bin"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&first.guid), "{}", err.message());
    assert_eq!(h.list_guids().await.len(), 1);
    // Once the first is finished, a download that asks to replace the file may write it again
    // (it is replaced atomically).
    h.origin.release("/a");
    h.wait_status(&first.guid, S::Completed).await;
    let second = h
        .create_with(pb::CreateDownloadRequest {
            replace_existing: true,
            ..create_request(&h.origin.url("/b"), "same.bin")
        })
        .await;
    assert!(second.replace_existing);
    h.wait_status(&second.guid, S::Completed).await;
    h.assert_file("same.bin", &test_bytes(4096, 2));
}

#[tokio::test]
async fn empty_result_file_gets_a_name_from_the_uri() {
    let h = Harness::start(&[]).await;
    let path = "/files/weights.safetensors?sig=1";
    h.origin.put(path, Resource::new(test_bytes(1000, 3)));
    let url = h.origin.url(path);
    let a = h.create(&url, "").await;
    assert_eq!(a.result_file, "weights.safetensors");
    // Taken names get the guid's last 12 hex digits: guids made in the same minute share
    // their first ones (UUIDv7 starts with the time), so two more in a row still differ.
    let b = h.create(&url, "").await;
    let c = h.create(&url, "").await;
    for op in [&b, &c] {
        let short = &op.guid[op.guid.len() - 12..];
        assert_eq!(op.result_file, format!("weights-{short}.safetensors"));
    }
    assert_ne!(b.result_file, c.result_file);
    for op in [&a, &b, &c] {
        h.wait_status(&op.guid, S::Completed).await;
        h.assert_file(&op.result_file, &test_bytes(1000, 3));
    }
}

#[tokio::test]
async fn operation_echoes_what_was_asked_and_sends_request_headers() {
    let h = Harness::start(&[]).await;
    h.origin.put("/h", Resource::new(test_bytes(100, 4)));
    let mut req = create_request(&h.origin.url("/h"), "h.bin");
    req.set_priority(pb::BackgroundTransferPriority::Low);
    req.set_cost_policy(pb::BackgroundTransferCostPolicy::Always);
    req.transfer_group = "nightly".into();
    req.request_headers = [("Authorization".to_string(), "Bearer t0ken".to_string())].into();
    let op = h.create_with(req).await;
    assert_eq!(op.priority(), pb::BackgroundTransferPriority::Low);
    assert_eq!(op.cost_policy(), pb::BackgroundTransferCostPolicy::Always);
    assert_eq!(op.transfer_group, "nightly");
    // Sent as given, echoed redacted (README, Secrets).
    assert_eq!(
        op.request_headers.get("authorization").map(String::as_str),
        Some("[redacted]")
    );
    assert!(uuid_like(&op.guid), "{}", op.guid);
    let p = op.progress.unwrap();
    assert_eq!((p.bytes_received, p.total_bytes_to_receive), (0, 0));
    h.wait_status(&op.guid, S::Completed).await;
    assert_eq!(
        h.origin.requests_for("/h")[0].header("authorization"),
        Some("Bearer t0ken")
    );
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test]
async fn list_pages_in_creation_order_and_filters_by_group() {
    let h = Harness::start(&["--max-active", "1"]).await;
    let mut created = Vec::new();
    for i in 0..7 {
        let mut req = create_request("http://127.0.0.1:9/never", &format!("f{i}"));
        req.transfer_group = if i % 2 == 0 { "even" } else { "odd" }.into();
        created.push(h.create_with(req).await.guid);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = h.client.list(None, 3, &token).await.unwrap();
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
    let even = h.client.list(Some("even"), 0, "").await.unwrap();
    let even: Vec<String> = even.downloads.into_iter().map(|d| d.guid).collect();
    let expected: Vec<String> = created.iter().step_by(2).cloned().collect();
    assert_eq!(even, expected);
    let err = h.client.list(None, 3, "garbage").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn response_information_reports_the_latest_response() {
    let h = Harness::start(&["--max-active", "1"]).await;
    h.origin.put(
        "/blocker",
        Resource::new(test_bytes(4096, 1)).hold_after(10),
    );
    h.origin.put("/r", Resource::new(test_bytes(5000, 5)));
    h.create(&h.origin.url("/blocker"), "blocker").await;
    let op = h.create(&h.origin.url("/r"), "r.bin").await;
    let err = h.client.response_information(&op.guid).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    h.origin.release("/blocker");
    h.wait_status(&op.guid, S::Completed).await;
    let info = h.response_information(&op.guid).await;
    assert_eq!(info.status_code, 200);
    assert!(info.is_resumable);
    assert_eq!(info.actual_uri, h.origin.url("/r"));
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
    let h = Harness::start(&[]).await;
    let channel = h.server.channel().await;
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
    let mut h = Harness::start(&[]).await;
    let addr = h.server.addr.to_string();
    let ok = run_transferd(["healthcheck", "--addr", &addr]);
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "SERVING");
    h.server.kill().await;
    let down = run_transferd(["healthcheck", "--addr", &addr]);
    assert!(!down.status.success(), "{down:?}");
}

#[tokio::test]
async fn invalid_flags_exit_non_zero_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    for args in [
        vec!["--max-active", "0"],
        vec!["--max-active", "lots"],
        vec!["--listen", "nowhere"],
    ] {
        let out = run_transferd(args.iter().chain(&["--data-dir", data_dir]));
        assert!(!out.status.success(), "{args:?}");
        assert!(
            out.stdout.is_empty(),
            "{args:?} bound and announced an address"
        );
        assert!(!out.stderr.is_empty());
    }
}
