//! End-to-end: the paused states that follow the host and the client's repairs. Costed
//! networks and cost policies, an operator's network override and constrained mode, low disk
//! space, recoverable web errors repaired by new headers or a new URI, live priority changes,
//! and serialized transfer groups. Every state is entered and left for a real reason, and the
//! final bytes are checked by hash.

mod common;

use common::origin::{Fault, Origin, Resource, test_bytes};
use common::*;
use tonic::Code;
use transferd::pb::backgroundtransfer::v1 as pb;
use transferd::pb::backgroundtransfer::v1::transfer_system_service_client::TransferSystemServiceClient;

type System = TransferSystemServiceClient<tonic::transport::Channel>;

async fn system(server: &Server) -> System {
    TransferSystemServiceClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap()
}

async fn set_network(
    system: &mut System,
    connected: Option<bool>,
    costed: Option<bool>,
) -> pb::SystemStatus {
    system
        .set_network_conditions(pb::SetNetworkConditionsRequest { connected, costed })
        .await
        .unwrap()
        .into_inner()
}

async fn status(system: &mut System) -> pb::SystemStatus {
    system
        .get_system_status(pb::GetSystemStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Waits until the download has `status` for `reason`.
async fn wait_paused(
    client: &mut Client,
    guid: &str,
    status: S,
    reason: pb::StatusReason,
) -> pb::DownloadOperation {
    wait_until(client, guid, &format!("{status:?} for {reason:?}"), |op| {
        status_of(op) == status && op.status_reason() == reason
    })
    .await
}

/// Creates a download of `path` held by the origin after `held` bytes, and waits for them.
async fn held(
    client: &mut Client,
    origin: &Origin,
    path: &str,
    body: &bytes::Bytes,
    held: u64,
    cost_policy: pb::BackgroundTransferCostPolicy,
) -> pb::DownloadOperation {
    origin.put(path, Resource::new(body.clone()).hold_after(held));
    let mut req = create_request(&origin.url(path), path.trim_start_matches('/'));
    req.set_cost_policy(cost_policy);
    let op = client.create_download(req).await.unwrap().into_inner();
    wait_bytes(client, &op.guid, held).await
}

#[tokio::test]
async fn costed_network_pauses_unrestricted_only_downloads_and_lifts_by_itself() {
    use pb::BackgroundTransferCostPolicy as Cost;
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let mut sys = system(&server).await;
    let body = test_bytes(600_000, 1);
    let a = held(
        &mut client,
        &origin,
        "/a",
        &body,
        100_000,
        Cost::UnrestrictedOnly,
    )
    .await;
    let b = held(&mut client, &origin, "/b", &body, 100_000, Cost::Always).await;
    let c = held(&mut client, &origin, "/c", &body, 100_000, Cost::Default).await;
    let mut watch = client
        .watch_download(pb::WatchDownloadRequest {
            guid: a.guid.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    let st = set_network(&mut sys, None, Some(true)).await;
    assert!(st.costed && st.connected);
    assert_eq!(st.costed_source(), pb::ConditionSource::Operator);
    assert_eq!(st.connected_source(), pb::ConditionSource::Detected);
    wait_paused(
        &mut client,
        &a.guid,
        S::PausedCostedNetwork,
        pb::StatusReason::CostedNetwork,
    )
    .await;
    // ALWAYS runs on a costed network; DEFAULT follows --default-cost-policy (always here).
    assert_eq!(status_of(&get(&mut client, &b.guid).await), S::Running);
    assert_eq!(status_of(&get(&mut client, &c.guid).await), S::Running);

    // A live policy change takes effect at once, both ways.
    let b_now = client
        .set_cost_policy(pb::SetCostPolicyRequest {
            guid: b.guid.clone(),
            cost_policy: Cost::UnrestrictedOnly.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b_now.cost_policy(), Cost::UnrestrictedOnly);
    wait_paused(
        &mut client,
        &b.guid,
        S::PausedCostedNetwork,
        pb::StatusReason::CostedNetwork,
    )
    .await;
    for p in ["/a", "/b", "/c"] {
        origin.release(p);
    }
    client
        .set_cost_policy(pb::SetCostPolicyRequest {
            guid: a.guid.clone(),
            cost_policy: Cost::Always.into(),
        })
        .await
        .unwrap();
    wait_status(&mut client, &a.guid, S::Completed).await;
    // The network becomes unrestricted: B continues by itself.
    set_network(&mut sys, None, None).await;
    for op in [&a, &b, &c] {
        wait_status(&mut client, &op.guid, S::Completed).await;
    }
    for (path, file) in [("/a", "a"), ("/b", "b"), ("/c", "c")] {
        assert_eq!(
            sha256_file(&server.download_dir().join(file)),
            sha256(&body)
        );
        let requests = origin.requests_for(path);
        if path != "/c" {
            assert_eq!(requests.len(), 2, "{path}");
            assert_eq!(requests[1].header("range"), Some("bytes=100000-"), "{path}");
        }
    }
    // The watcher saw the pause and the resume (a new response, no restart).
    let mut messages = Vec::new();
    while let Some(m) = watch.message().await.unwrap() {
        messages.push(m);
    }
    let statuses: Vec<S> = messages.iter().map(|m| m.status()).collect();
    let paused_at = statuses
        .iter()
        .position(|s| *s == S::PausedCostedNetwork)
        .expect("pause seen");
    assert!(statuses[paused_at..].contains(&S::Running), "{statuses:?}");
    let after = &messages[paused_at..];
    assert_eq!(
        after.iter().filter(|m| m.has_response_changed).count(),
        1,
        "{messages:?}"
    );
    assert!(messages.iter().all(|m| !m.has_restarted));
}

#[tokio::test]
async fn default_cost_policy_follows_the_server_flag() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let server = Server::start(dir.path(), &["--default-cost-policy", "unrestricted-only"]).await;
    let mut client = server.client().await;
    let mut sys = system(&server).await;
    set_network(&mut sys, None, Some(true)).await;
    origin.put("/d", Resource::new(test_bytes(1000, 2)));
    let op = create(&mut client, &origin.url("/d"), "d").await;
    wait_paused(
        &mut client,
        &op.guid,
        S::PausedCostedNetwork,
        pb::StatusReason::CostedNetwork,
    )
    .await;
    assert!(
        origin.requests_for("/d").is_empty(),
        "it must not have started"
    );
    set_network(&mut sys, None, Some(false)).await;
    wait_status(&mut client, &op.guid, S::Completed).await;
}

#[tokio::test]
async fn operator_says_no_network_then_gives_detection_back() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let server = Server::start(dir.path(), &["--max-active", "1"]).await;
    let mut client = server.client().await;
    let mut sys = system(&server).await;
    let body = test_bytes(300_000, 3);
    let running = held(
        &mut client,
        &origin,
        "/r",
        &body,
        50_000,
        pb::BackgroundTransferCostPolicy::Default,
    )
    .await;
    origin.put("/q", Resource::new(body.clone()));
    let queued = create(&mut client, &origin.url("/q"), "q").await;
    let mut events = client
        .watch_downloads(pb::WatchDownloadsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let st = set_network(&mut sys, Some(false), None).await;
    assert!(!st.connected);
    assert_eq!(st.connected_source(), pb::ConditionSource::Operator);
    for guid in [&running.guid, &queued.guid] {
        wait_paused(
            &mut client,
            guid,
            S::PausedNoNetwork,
            pb::StatusReason::NetworkDownByOperator,
        )
        .await;
    }
    // WatchDownloads showed both pauses, each download's in order after its current state.
    let mut paused = std::collections::HashSet::new();
    while paused.len() < 2 {
        let event = tokio::time::timeout(DEADLINE, events.message())
            .await
            .expect("events keep coming")
            .unwrap()
            .unwrap();
        if event.progress.unwrap().status() == S::PausedNoNetwork {
            paused.insert(event.guid);
        }
    }
    assert!(paused.contains(&running.guid) && paused.contains(&queued.guid));
    // New downloads wait too, and never touch the network.
    origin.put("/n", Resource::new(body.clone()));
    let new = create(&mut client, &origin.url("/n"), "n").await;
    wait_paused(
        &mut client,
        &new.guid,
        S::PausedNoNetwork,
        pb::StatusReason::NetworkDownByOperator,
    )
    .await;
    assert!(origin.requests_for("/n").is_empty());
    // A client cannot resume what only the network can: Resume changes nothing.
    let still = resume(&mut client, &new.guid).await;
    assert_eq!(status_of(&still), S::PausedNoNetwork);

    origin.release("/r");
    let st = set_network(&mut sys, None, None).await;
    assert!(st.connected);
    assert_eq!(st.connected_source(), pb::ConditionSource::Detected);
    for (op, file) in [(&running, "r"), (&queued, "q"), (&new, "n")] {
        wait_status(&mut client, &op.guid, S::Completed).await;
        assert_eq!(
            sha256_file(&server.download_dir().join(file)),
            sha256(&body)
        );
    }
    assert_eq!(
        origin.requests_for("/r")[1].header("range"),
        Some("bytes=50000-")
    );
}

#[tokio::test]
async fn constrained_mode_pauses_everything_until_lifted() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let server = Server::start(dir.path(), &["--max-active", "1"]).await;
    let mut client = server.client().await;
    let mut sys = system(&server).await;
    let body = test_bytes(200_000, 4);
    let running = held(
        &mut client,
        &origin,
        "/r",
        &body,
        20_000,
        pb::BackgroundTransferCostPolicy::Always,
    )
    .await;
    origin.put("/q", Resource::new(body.clone()));
    let queued = create(&mut client, &origin.url("/q"), "q").await;
    let before = status(&mut sys).await;
    assert_eq!((before.active_downloads, before.queued_downloads), (1, 1));
    let st = sys
        .set_system_policy(pb::SetSystemPolicyRequest { constrained: true })
        .await
        .unwrap()
        .into_inner();
    assert!(st.constrained);
    for guid in [&running.guid, &queued.guid] {
        wait_paused(
            &mut client,
            guid,
            S::PausedSystemPolicy,
            pb::StatusReason::ConstrainedMode,
        )
        .await;
    }
    let during = status(&mut sys).await;
    assert_eq!((during.active_downloads, during.queued_downloads), (0, 0));
    origin.release("/r");
    sys.set_system_policy(pb::SetSystemPolicyRequest { constrained: false })
        .await
        .unwrap();
    for (op, file) in [(&running, "r"), (&queued, "q")] {
        wait_status(&mut client, &op.guid, S::Completed).await;
        assert_eq!(
            sha256_file(&server.download_dir().join(file)),
            sha256(&body)
        );
    }
}

#[tokio::test]
async fn low_disk_space_pauses_until_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let downloads = dir.path().join("disk");
    std::fs::create_dir_all(&downloads).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&downloads)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(downloads.clone());
    let origin = Origin::start().await;
    let body = test_bytes(500_000, 5);
    origin.put("/f", Resource::new(body.clone()).hold_after(100_000));
    let dl = downloads.to_str().unwrap();
    let server = Server::start(
        dir.path().join("data").as_path(),
        &["--download-dir", dl, "--min-free-disk", "4MiB"],
    )
    .await;
    let mut client = server.client().await;
    let mut sys = system(&server).await;
    let op = create(&mut client, &origin.url("/f"), "f.bin").await;
    wait_bytes(&mut client, &op.guid, 100_000).await;
    // Something else fills the volume below the floor.
    let filler = downloads.join("other-program.dat");
    std::fs::write(&filler, vec![0u8; 6 * 1024 * 1024]).unwrap();
    wait_paused(
        &mut client,
        &op.guid,
        S::PausedSystemPolicy,
        pb::StatusReason::LowDiskSpace,
    )
    .await;
    let st = status(&mut sys).await;
    assert!(st.low_disk_space);
    assert_eq!(st.min_free_disk_bytes, 4 * 1024 * 1024);
    assert!(st.free_disk_bytes < st.min_free_disk_bytes);
    origin.release("/f");
    std::fs::remove_file(&filler).unwrap();
    wait_status(&mut client, &op.guid, S::Completed).await;
    assert_eq!(sha256_file(&downloads.join("f.bin")), sha256(&body));
    assert!(!status(&mut sys).await.low_disk_space);
}

#[tokio::test]
async fn a_recoverable_status_pauses_and_a_new_header_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let body = test_bytes(400_000, 6);
    // The connection breaks after 100 kB; the retry finds the token expired (403).
    let faults = vec![
        Some(Fault::ResetAfter(100_000)),
        Some(Fault::Status {
            code: 403,
            retry_after: None,
        }),
    ];
    origin.put("/secret", Resource::new(body.clone()).faults(faults));
    let server = Server::start(dir.path(), &["--retry-base-delay", "20ms"]).await;
    let mut client = server.client().await;
    let req = pb::CreateDownloadRequest {
        recoverable_web_error_statuses: vec![401, 403],
        request_headers: [("Authorization".to_string(), "Bearer old".to_string())].into(),
        ..create_request(&origin.url("/secret"), "secret.bin")
    };
    let op = client.create_download(req).await.unwrap().into_inner();
    assert_eq!(op.recoverable_web_error_statuses, vec![401, 403]);
    let paused = wait_paused(
        &mut client,
        &op.guid,
        S::PausedRecoverableWebErrorStatus,
        pb::StatusReason::RecoverableWebError,
    )
    .await;
    assert_eq!(paused.current_web_error_status, 403);
    assert!(paused.error.is_none());
    assert_eq!(paused.progress.unwrap().bytes_received, 100_000);

    let fixed = client
        .set_request_header(pb::SetRequestHeaderRequest {
            guid: op.guid.clone(),
            name: "Authorization".into(),
            value: "Bearer fresh".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        fixed
            .request_headers
            .get("authorization")
            .map(String::as_str),
        Some("Bearer fresh")
    );
    let err = client
        .set_request_header(pb::SetRequestHeaderRequest {
            guid: op.guid.clone(),
            name: "Range".into(),
            value: "bytes=0-".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let resumed = resume(&mut client, &op.guid).await;
    assert_eq!(resumed.current_web_error_status, 0);
    wait_status(&mut client, &op.guid, S::Completed).await;
    assert_eq!(
        sha256_file(&server.download_dir().join("secret.bin")),
        sha256(&body)
    );
    let requests = origin.requests_for("/secret");
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[1].header("authorization"), Some("Bearer old"));
    assert_eq!(requests[2].header("authorization"), Some("Bearer fresh"));
    assert_eq!(requests[2].header("range"), Some("bytes=100000-"));

    let removed = client
        .remove_request_header(pb::RemoveRequestHeaderRequest {
            guid: op.guid.clone(),
            name: "authorization".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        removed.code(),
        Code::FailedPrecondition,
        "finished downloads cannot change"
    );
}

#[tokio::test]
async fn remove_request_header_drops_it_from_later_requests() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let body = test_bytes(100_000, 7);
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    origin.put("/h", Resource::new(body.clone()).hold_after(10_000));
    let req = pb::CreateDownloadRequest {
        request_headers: [("X-Trace".to_string(), "abc".to_string())].into(),
        ..create_request(&origin.url("/h"), "h")
    };
    let op = client.create_download(req).await.unwrap().into_inner();
    wait_bytes(&mut client, &op.guid, 10_000).await;
    pause(&mut client, &op.guid).await;
    let edited = client
        .remove_request_header(pb::RemoveRequestHeaderRequest {
            guid: op.guid.clone(),
            name: "X-TRACE".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(edited.request_headers.is_empty());
    origin.release("/h");
    resume(&mut client, &op.guid).await;
    wait_status(&mut client, &op.guid, S::Completed).await;
    let requests = origin.requests_for("/h");
    assert_eq!(requests[0].header("x-trace"), Some("abc"));
    assert_eq!(requests[1].header("x-trace"), None);
}

#[tokio::test]
async fn a_new_uri_continues_when_the_resource_matches_and_restarts_when_not() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let body = test_bytes(500_000, 8);
    let other = test_bytes(300_000, 9);
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    // The same file on a mirror (same validators) and a different file elsewhere.
    origin.put("/mirror", Resource::new(body.clone()));
    origin.put("/elsewhere", Resource::new(other.clone()));
    for (path, target, expected, restarts) in [
        ("/same", "/mirror", body.clone(), 0),
        ("/diff", "/elsewhere", other.clone(), 1),
    ] {
        origin.put(path, Resource::new(body.clone()).hold_after(123_456));
        let op = create(&mut client, &origin.url(path), path.trim_start_matches('/')).await;
        wait_bytes(&mut client, &op.guid, 123_456).await;
        // Only a paused download may change its URI.
        let err = client
            .set_requested_uri(pb::SetRequestedUriRequest {
                guid: op.guid.clone(),
                requested_uri: origin.url(target),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(
            err.message().contains("pause it first"),
            "{}",
            err.message()
        );
        pause(&mut client, &op.guid).await;
        let err = client
            .set_requested_uri(pb::SetRequestedUriRequest {
                guid: op.guid.clone(),
                requested_uri: "ftp://nope/x".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let moved = client
            .set_requested_uri(pb::SetRequestedUriRequest {
                guid: op.guid.clone(),
                requested_uri: origin.url(target),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(moved.requested_uri, origin.url(target));
        let mut watch = client
            .watch_download(pb::WatchDownloadRequest {
                guid: op.guid.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        resume(&mut client, &op.guid).await;
        let mut messages = Vec::new();
        while let Some(m) = watch.message().await.unwrap() {
            messages.push(m);
        }
        assert_eq!(messages.last().unwrap().status(), S::Completed);
        assert_eq!(
            messages.iter().filter(|m| m.has_restarted).count(),
            restarts,
            "{path}: {messages:?}"
        );
        let file = path.trim_start_matches('/');
        assert_eq!(
            sha256_file(&server.download_dir().join(file)),
            sha256(&expected)
        );
        let last = origin.requests_for(target).last().cloned().unwrap();
        assert_eq!(last.header("range"), Some("bytes=123456-"), "{path}");
    }
}

#[tokio::test]
async fn set_priority_reorders_the_queue_live() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    origin.put(
        "/blocker",
        Resource::new(test_bytes(4096, 1)).hold_after(10),
    );
    for p in ["/first", "/second", "/third"] {
        origin.put(p, Resource::new(test_bytes(1000, 2)));
    }
    let server = Server::start(dir.path(), &["--max-active", "1"]).await;
    let mut client = server.client().await;
    let blocker = create(&mut client, &origin.url("/blocker"), "blocker").await;
    wait_status(&mut client, &blocker.guid, S::Running).await;
    let mut guids = Vec::new();
    for p in ["/first", "/second", "/third"] {
        guids.push(
            create(&mut client, &origin.url(p), p.trim_start_matches('/'))
                .await
                .guid,
        );
    }
    let raised = client
        .set_priority(pb::SetPriorityRequest {
            guid: guids[2].clone(),
            priority: pb::BackgroundTransferPriority::High.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raised.priority(), pb::BackgroundTransferPriority::High);
    client
        .set_priority(pb::SetPriorityRequest {
            guid: guids[0].clone(),
            priority: pb::BackgroundTransferPriority::Low.into(),
        })
        .await
        .unwrap();
    origin.release("/blocker");
    for g in &guids {
        wait_status(&mut client, g, S::Completed).await;
    }
    let order: Vec<String> = origin
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p != "/blocker")
        .collect();
    assert_eq!(order, ["/third", "/second", "/first"]);
}

#[tokio::test]
async fn a_serialized_group_runs_one_at_a_time_and_make_current_reorders_it() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let server = Server::start(dir.path(), &["--max-active", "4"]).await;
    let mut client = server.client().await;
    let group = client
        .set_transfer_group_behavior(pb::SetTransferGroupBehaviorRequest {
            transfer_group: "fleet".into(),
            behavior: pb::BackgroundTransferBehavior::Serialized.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(group.behavior(), pb::BackgroundTransferBehavior::Serialized);
    let mut guids = Vec::new();
    for i in 0..4 {
        let path = format!("/g{i}");
        origin.put(&path, Resource::new(test_bytes(5000, i)).hold_after(100));
        let req = pb::CreateDownloadRequest {
            transfer_group: "fleet".into(),
            ..create_request(&origin.url(&path), &format!("g{i}"))
        };
        guids.push(client.create_download(req).await.unwrap().into_inner().guid);
    }
    origin.put("/solo", Resource::new(test_bytes(5000, 9)));
    let solo = create(&mut client, &origin.url("/solo"), "solo").await;
    // Outside the group, downloads still run in parallel.
    wait_status(&mut client, &solo.guid, S::Completed).await;
    wait_status(&mut client, &guids[0], S::Running).await;
    for g in &guids[1..] {
        let op = get(&mut client, g).await;
        assert_eq!(status_of(&op), S::Idle);
        assert_eq!(op.status_reason(), pb::StatusReason::WaitingForGroup);
    }
    // g3 and everything queued after it (nothing) go to the front of the group: g3, g1, g2.
    client
        .make_current_in_transfer_group(pb::MakeCurrentInTransferGroupRequest {
            guid: guids[3].clone(),
        })
        .await
        .unwrap();
    for i in 0..4 {
        origin.release(&format!("/g{i}"));
    }
    for g in &guids {
        wait_status(&mut client, g, S::Completed).await;
    }
    let order: Vec<String> = origin
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p.starts_with("/g"))
        .collect();
    assert_eq!(order, ["/g0", "/g3", "/g1", "/g2"]);

    let err = client
        .make_current_in_transfer_group(pb::MakeCurrentInTransferGroupRequest { guid: solo.guid })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = client
        .set_transfer_group_behavior(pb::SetTransferGroupBehaviorRequest {
            transfer_group: String::new(),
            behavior: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}
