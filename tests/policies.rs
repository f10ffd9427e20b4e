//! End-to-end: the paused states that follow the host and the client's repairs. Costed
//! networks and cost policies, an operator's network override and constrained mode, low disk
//! space, recoverable web errors repaired by new headers or a new URI, live priority changes,
//! and serialized transfer groups. Every state is entered and left for a real reason, and the
//! final bytes are checked by hash.

mod common;

use std::collections::HashSet;

use common::disk::Mount;
use common::origin::{Fault, Resource, test_bytes};
use common::*;
use pb::BackgroundTransferCostPolicy as Cost;
use pb::StatusReason as Reason;
use tonic::Code;

#[tokio::test]
async fn costed_network_pauses_unrestricted_only_downloads_and_lifts_by_itself() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(600_000, 1);
    let held = |path, cost| {
        let resource = Resource::new(body.clone());
        h.start_held_with(path, resource, 100_000, move |r| r.set_cost_policy(cost))
    };
    let a = held("/a", Cost::UnrestrictedOnly).await;
    let b = held("/b", Cost::Always).await;
    let c = held("/c", Cost::Default).await;
    let watch = h.watch(&a.guid).await;

    let st = h.set_network(None, Some(true)).await;
    assert!(st.costed && st.connected);
    assert_eq!(st.costed_source(), pb::ConditionSource::Operator);
    assert_eq!(st.connected_source(), pb::ConditionSource::Detected);
    h.wait_status_reason(&a.guid, S::PausedCostedNetwork, Reason::CostedNetwork)
        .await;
    // ALWAYS runs on a costed network; DEFAULT follows --default-cost-policy (always here).
    assert_eq!(h.status(&b.guid).await, S::Running);
    assert_eq!(h.status(&c.guid).await, S::Running);

    // A live policy change takes effect at once, both ways.
    let b_now = h.client.set_cost_policy(&b.guid, Cost::UnrestrictedOnly);
    assert_eq!(b_now.await.unwrap().cost_policy(), Cost::UnrestrictedOnly);
    h.wait_status_reason(&b.guid, S::PausedCostedNetwork, Reason::CostedNetwork)
        .await;
    for p in ["/a", "/b", "/c"] {
        h.origin.release(p);
    }
    h.client
        .set_cost_policy(&a.guid, Cost::Always)
        .await
        .unwrap();
    h.wait_status(&a.guid, S::Completed).await;
    // The network becomes unrestricted: B continues by itself.
    h.set_network(None, None).await;
    for op in [&a, &b, &c] {
        h.wait_status(&op.guid, S::Completed).await;
    }
    for (path, file) in [("/a", "a"), ("/b", "b"), ("/c", "c")] {
        h.assert_file(file, &body);
        let requests = h.origin.requests_for(path);
        if path != "/c" {
            assert_eq!(requests.len(), 2, "{path}");
            assert_eq!(requests[1].header("range"), Some("bytes=100000-"), "{path}");
        }
    }
    // The watcher saw the pause and the resume (a new response, no restart).
    let messages = read_to_end(watch).await;
    let statuses: Vec<S> = messages.iter().map(|m| m.status()).collect();
    let paused_at = statuses
        .iter()
        .position(|s| *s == S::PausedCostedNetwork)
        .expect("pause seen");
    assert!(statuses[paused_at..].contains(&S::Running), "{statuses:?}");
    assert_eq!(responses_changed(&messages[paused_at..]), 1, "{messages:?}");
    assert_eq!(restarts(&messages), 0, "{messages:?}");
}

#[tokio::test]
async fn default_cost_policy_follows_the_server_flag() {
    let h = Harness::start(&["--default-cost-policy", "unrestricted-only"]).await;
    h.set_network(None, Some(true)).await;
    h.origin.put("/d", Resource::new(test_bytes(1000, 2)));
    let op = h.create(&h.origin.url("/d"), "d").await;
    h.wait_status_reason(&op.guid, S::PausedCostedNetwork, Reason::CostedNetwork)
        .await;
    assert!(
        h.origin.requests_for("/d").is_empty(),
        "it must not have started"
    );
    h.set_network(None, Some(false)).await;
    h.wait_status(&op.guid, S::Completed).await;
}

#[tokio::test]
async fn operator_says_no_network_then_gives_detection_back() {
    let h = Harness::start(&["--max-active", "1"]).await;
    let body = test_bytes(300_000, 3);
    let running = h
        .start_held("/r", Resource::new(body.clone()), 50_000)
        .await;
    h.origin.put("/q", Resource::new(body.clone()));
    let queued = h.create(&h.origin.url("/q"), "q").await;
    let mut events = h.watch_all(None).await;
    let st = h.set_network(Some(false), None).await;
    assert!(!st.connected);
    assert_eq!(st.connected_source(), pb::ConditionSource::Operator);
    for guid in [&running.guid, &queued.guid] {
        h.wait_status_reason(guid, S::PausedNoNetwork, Reason::NetworkDownByOperator)
            .await;
    }
    // WatchDownloads showed both pauses, each download's in order after its current state.
    let mut paused = HashSet::new();
    read_until(&mut events, "both pauses", |event| {
        if event.progress.unwrap().status() == S::PausedNoNetwork {
            paused.insert(event.guid.clone());
        }
        paused.len() == 2
    })
    .await;
    assert!(paused.contains(&running.guid) && paused.contains(&queued.guid));
    // New downloads wait too, from the start (WatchDownloads never shows them IDLE), and
    // never touch the network.
    h.origin.put("/n", Resource::new(body.clone()));
    let new = h.create(&h.origin.url("/n"), "n").await;
    assert_eq!(status_of(&new), S::PausedNoNetwork);
    assert_eq!(new.status_reason(), Reason::NetworkDownByOperator);
    let seen = read_until(&mut events, "the new download's first event", |event| {
        event.guid == new.guid
    })
    .await;
    let first = seen.last().unwrap().progress.unwrap();
    assert_eq!(first.status(), S::PausedNoNetwork);
    h.wait_status_reason(&new.guid, S::PausedNoNetwork, Reason::NetworkDownByOperator)
        .await;
    assert!(h.origin.requests_for("/n").is_empty());
    // A client cannot resume what only the network can: Resume changes nothing.
    let still = h.resume(&new.guid).await;
    assert_eq!(status_of(&still), S::PausedNoNetwork);

    h.origin.release("/r");
    let st = h.set_network(None, None).await;
    assert!(st.connected);
    assert_eq!(st.connected_source(), pb::ConditionSource::Detected);
    for (op, file) in [(&running, "r"), (&queued, "q"), (&new, "n")] {
        h.wait_status(&op.guid, S::Completed).await;
        h.assert_file(file, &body);
    }
    assert_eq!(
        h.origin.requests_for("/r")[1].header("range"),
        Some("bytes=50000-")
    );
}

#[tokio::test]
async fn constrained_mode_pauses_everything_until_lifted() {
    let h = Harness::start(&["--max-active", "1"]).await;
    let body = test_bytes(200_000, 4);
    let running = h
        .start_held_with("/r", Resource::new(body.clone()), 20_000, |r| {
            r.set_cost_policy(Cost::Always)
        })
        .await;
    h.origin.put("/q", Resource::new(body.clone()));
    let queued = h.create(&h.origin.url("/q"), "q").await;
    let before = h.system_status().await;
    assert_eq!((before.active_downloads, before.queued_downloads), (1, 1));
    assert!(h.set_constrained(true).await.constrained);
    for guid in [&running.guid, &queued.guid] {
        h.wait_status_reason(guid, S::PausedSystemPolicy, Reason::ConstrainedMode)
            .await;
    }
    // Paused transfer tasks count as active until they have wound down.
    h.wait_system_status("no download active or queued", |st| {
        (st.active_downloads, st.queued_downloads) == (0, 0)
    })
    .await;
    h.origin.release("/r");
    h.set_constrained(false).await;
    for (op, file) in [(&running, "r"), (&queued, "q")] {
        h.wait_status(&op.guid, S::Completed).await;
        h.assert_file(file, &body);
    }
}

#[tokio::test]
async fn low_disk_space_pauses_until_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let downloads = dir.path().join("disk");
    let Some(_mount) = Mount::tmpfs(&downloads, "size=8m") else {
        return;
    };
    let dl = downloads.to_str().unwrap();
    let flags = ["--download-dir", dl, "--min-free-disk", "4MiB"];
    let h = Harness::start_at(&dir.path().join("data"), &flags).await;
    let body = test_bytes(500_000, 5);
    h.origin
        .put("/f", Resource::new(body.clone()).hold_after(100_000));
    let op = h.create(&h.origin.url("/f"), "f.bin").await;
    h.wait_bytes(&op.guid, 100_000).await;
    // Something else fills the volume below the floor.
    let filler = downloads.join("other-program.dat");
    std::fs::write(&filler, vec![0u8; 6 * 1024 * 1024]).unwrap();
    h.wait_status_reason(&op.guid, S::PausedSystemPolicy, Reason::LowDiskSpace)
        .await;
    let st = h.system_status().await;
    assert!(st.low_disk_space);
    assert_eq!(st.min_free_disk_bytes, 4 * 1024 * 1024);
    assert!(st.free_disk_bytes < st.min_free_disk_bytes);
    h.origin.release("/f");
    std::fs::remove_file(&filler).unwrap();
    h.wait_status(&op.guid, S::Completed).await;
    assert_holds(&downloads.join("f.bin"), &body);
    assert!(!h.system_status().await.low_disk_space);
}

#[tokio::test]
async fn a_recoverable_status_pauses_and_a_new_header_repairs_it() {
    let h = Harness::start(&["--retry-base-delay", "20ms"]).await;
    let body = test_bytes(400_000, 6);
    // The connection breaks after 100 kB; the retry finds the token expired (403).
    let faults = vec![
        Some(Fault::ResetAfter(100_000)),
        Some(Fault::Status {
            code: 403,
            retry_after: None,
        }),
    ];
    h.origin
        .put("/secret", Resource::new(body.clone()).faults(faults));
    let op = h
        .create_with(pb::CreateDownloadRequest {
            recoverable_web_error_statuses: vec![401, 403],
            request_headers: [("Authorization".to_string(), "Bearer old".to_string())].into(),
            ..create_request(&h.origin.url("/secret"), "secret.bin")
        })
        .await;
    assert_eq!(op.recoverable_web_error_statuses, vec![401, 403]);
    let paused = h
        .wait_status_reason(
            &op.guid,
            S::PausedRecoverableWebErrorStatus,
            Reason::RecoverableWebError,
        )
        .await;
    assert_eq!(paused.current_web_error_status, 403);
    assert!(paused.error.is_none());
    assert_eq!(paused.progress.unwrap().bytes_received, 100_000);

    let fixed = h
        .client
        .set_request_header(&op.guid, "Authorization", "Bearer fresh");
    let fixed = fixed.await.unwrap();
    assert_eq!(
        fixed
            .request_headers
            .get("authorization")
            .map(String::as_str),
        Some("[redacted]"),
        "a secret is echoed redacted"
    );
    let err = h.client.set_request_header(&op.guid, "Range", "bytes=0-");
    assert_eq!(err.await.unwrap_err().code(), Code::InvalidArgument);
    let resumed = h.resume(&op.guid).await;
    assert_eq!(resumed.current_web_error_status, 0);
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("secret.bin", &body);
    let requests = h.origin.requests_for("/secret");
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[1].header("authorization"), Some("Bearer old"));
    assert_eq!(requests[2].header("authorization"), Some("Bearer fresh"));
    assert_eq!(requests[2].header("range"), Some("bytes=100000-"));

    let removed = h.client.remove_request_header(&op.guid, "authorization");
    assert_eq!(
        removed.await.unwrap_err().code(),
        Code::FailedPrecondition,
        "finished downloads cannot change"
    );
}

#[tokio::test]
async fn remove_request_header_drops_it_from_later_requests() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(100_000, 7);
    let op = h
        .start_held_with("/h", Resource::new(body), 10_000, |r| {
            r.request_headers = [("X-Trace".to_string(), "abc".to_string())].into();
        })
        .await;
    h.pause(&op.guid).await;
    let edited = h.client.remove_request_header(&op.guid, "X-TRACE").await;
    assert!(edited.unwrap().request_headers.is_empty());
    h.origin.release("/h");
    h.resume(&op.guid).await;
    h.wait_status(&op.guid, S::Completed).await;
    let requests = h.origin.requests_for("/h");
    assert_eq!(requests[0].header("x-trace"), Some("abc"));
    assert_eq!(requests[1].header("x-trace"), None);
}

#[tokio::test]
async fn a_new_uri_continues_when_the_resource_matches_and_restarts_when_not() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(500_000, 8);
    let other = test_bytes(300_000, 9);
    // The same file on a mirror (same validators) and a different file elsewhere.
    h.origin.put("/mirror", Resource::new(body.clone()));
    h.origin.put("/elsewhere", Resource::new(other.clone()));
    for (path, target_path, expected, restarted) in [
        ("/same", "/mirror", body.clone(), 0),
        ("/diff", "/elsewhere", other.clone(), 1),
    ] {
        let op = h
            .start_held(path, Resource::new(body.clone()), 123_456)
            .await;
        let target = h.origin.url(target_path);
        // Only a paused download may change its URI.
        let err = h.client.set_requested_uri(&op.guid, &target).await;
        let err = err.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(
            err.message().contains("pause it first"),
            "{}",
            err.message()
        );
        h.pause(&op.guid).await;
        let err = h.client.set_requested_uri(&op.guid, "ftp://nope/x").await;
        assert_eq!(err.unwrap_err().code(), Code::InvalidArgument);
        let moved = h.client.set_requested_uri(&op.guid, &target).await;
        assert_eq!(moved.unwrap().requested_uri, target);
        let watch = h.watch(&op.guid).await;
        h.resume(&op.guid).await;
        let messages = read_to_end(watch).await;
        assert_eq!(messages.last().unwrap().status(), S::Completed);
        assert_eq!(restarts(&messages), restarted, "{path}: {messages:?}");
        h.assert_file(path.trim_start_matches('/'), &expected);
        let last = h.origin.requests_for(target_path).pop().unwrap();
        assert_eq!(last.header("range"), Some("bytes=123456-"), "{path}");
    }
}

#[tokio::test]
async fn set_priority_reorders_the_queue_live() {
    use pb::BackgroundTransferPriority as P;
    let h = Harness::start(&["--max-active", "1"]).await;
    h.start_held("/blocker", Resource::new(test_bytes(4096, 1)), 10)
        .await;
    let mut guids = Vec::new();
    for p in ["/first", "/second", "/third"] {
        h.origin.put(p, Resource::new(test_bytes(1000, 2)));
        let file = p.trim_start_matches('/');
        guids.push(h.create(&h.origin.url(p), file).await.guid);
    }
    let raised = h.client.set_priority(&guids[2], P::High).await.unwrap();
    assert_eq!(raised.priority(), P::High);
    h.client.set_priority(&guids[0], P::Low).await.unwrap();
    h.origin.release("/blocker");
    for g in &guids {
        h.wait_status(g, S::Completed).await;
    }
    let order: Vec<String> = h
        .origin
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p != "/blocker")
        .collect();
    assert_eq!(order, ["/third", "/second", "/first"]);
}

#[tokio::test]
async fn a_serialized_group_runs_one_at_a_time_and_make_current_reorders_it() {
    use pb::BackgroundTransferBehavior as Behavior;
    let h = Harness::start(&["--max-active", "4"]).await;
    let group = h.client.set_group_behavior("fleet", Behavior::Serialized);
    assert_eq!(group.await.unwrap().behavior(), Behavior::Serialized);
    let mut guids = Vec::new();
    for i in 0..4 {
        let path = format!("/g{i}");
        h.origin
            .put(&path, Resource::new(test_bytes(5000, i)).hold_after(100));
        let req = pb::CreateDownloadRequest {
            transfer_group: "fleet".into(),
            ..create_request(&h.origin.url(&path), &format!("g{i}"))
        };
        guids.push(h.create_with(req).await.guid);
    }
    h.origin.put("/solo", Resource::new(test_bytes(5000, 9)));
    let solo = h.create(&h.origin.url("/solo"), "solo").await;
    // Outside the group, downloads still run in parallel.
    h.wait_status(&solo.guid, S::Completed).await;
    h.wait_status(&guids[0], S::Running).await;
    for g in &guids[1..] {
        let op = h.get(g).await;
        assert_eq!(status_of(&op), S::Idle);
        assert_eq!(op.status_reason(), Reason::WaitingForGroup);
    }
    // g3 and everything queued after it (nothing) go to the front of the group: g3, g1, g2.
    h.client.make_current(&guids[3]).await.unwrap();
    for i in 0..4 {
        h.origin.release(&format!("/g{i}"));
    }
    for g in &guids {
        h.wait_status(g, S::Completed).await;
    }
    let order: Vec<String> = h
        .origin
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p.starts_with("/g"))
        .collect();
    assert_eq!(order, ["/g0", "/g3", "/g1", "/g2"]);

    let err = h.client.make_current(&solo.guid).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = h.client.set_group_behavior("", Behavior::Serialized).await;
    assert_eq!(err.unwrap_err().code(), Code::InvalidArgument);
}
