//! End-to-end: downloads through the real server from a real HTTP origin: exact bytes, the
//! queue and its priorities, pause and resume with Range/If-Range, restarts when the server
//! cannot resume, cancel, and HTTP errors.

mod common;

use std::time::Duration;

use common::origin::{Resource, test_bytes};
use common::*;

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn downloads_exact_bytes_to_the_result_file() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(3 * MIB + 17, 1);
    h.origin.put("/model.bin", Resource::new(body.clone()));

    let op = h
        .create(&h.origin.url("/model.bin"), "models/model.bin")
        .await;
    assert_eq!(op.result_file, "models/model.bin");
    assert_eq!(op.requested_uri, h.origin.url("/model.bin"));
    let done = h.wait_status(&op.guid, S::Completed).await;
    let progress = done.progress.unwrap();
    assert_eq!(progress.bytes_received, body.len() as u64);
    assert_eq!(progress.total_bytes_to_receive, body.len() as u64);
    assert!(done.error.is_none());
    h.assert_file("models/model.bin", &body);
    // Only the result file remains: the partial file was renamed, not copied.
    assert_eq!(files_under(&h.download_dir()), vec!["models/model.bin"]);
    let requests = h.origin.requests_for("/model.bin");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].header("accept-encoding"), Some("identity"));
    assert_eq!(requests[0].header("range"), None);
}

#[tokio::test]
async fn unknown_length_is_zero_until_known() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(MIB, 2);
    let chunked = Resource::new(body.clone()).chunked();

    let running = h.start_held("/stream", chunked, 4096).await;
    assert_eq!(status_of(&running), S::Running);
    assert_eq!(running.progress.unwrap().total_bytes_to_receive, 0);
    h.origin.release("/stream");
    let done = h.wait_status(&running.guid, S::Completed).await;
    assert_eq!(done.progress.unwrap().bytes_received, body.len() as u64);
    h.assert_file("stream", &body);
}

#[tokio::test]
async fn queue_runs_high_then_default_then_low_first_come_first_served() {
    use pb::BackgroundTransferPriority as P;
    let h = Harness::start(&["--max-active", "1"]).await;
    for name in ["low", "default1", "high1", "default2", "high2"] {
        h.origin
            .put(&format!("/{name}"), Resource::new(test_bytes(1000, 4)));
    }

    let blocker = Resource::new(test_bytes(64 * 1024, 3));
    h.start_held("/blocker", blocker, 1024).await;
    let mut guids = Vec::new();
    for (name, priority) in [
        ("low", P::Low),
        ("default1", P::Default),
        ("high1", P::High),
        ("default2", P::Default),
        ("high2", P::High),
    ] {
        let mut req = create_request(&h.origin.url(&format!("/{name}")), name);
        req.set_priority(priority);
        let op = h.create_with(req).await;
        assert_eq!(op.priority(), priority);
        guids.push(op.guid);
    }
    // With the only slot taken, everything else waits as IDLE.
    for guid in &guids {
        assert_eq!(h.status(guid).await, S::Idle);
    }
    h.origin.release("/blocker");
    for guid in &guids {
        h.wait_status(guid, S::Completed).await;
    }
    let order: Vec<String> = h
        .origin
        .requests()
        .into_iter()
        .map(|r| r.path.trim_start_matches('/').to_string())
        .filter(|p| p != "blocker")
        .collect();
    assert_eq!(order, ["high1", "high2", "default1", "default2", "low"]);
}

#[tokio::test]
async fn max_active_bounds_concurrent_transfers() {
    let h = Harness::start(&["--max-active", "2"]).await;
    let mut guids = Vec::new();
    for i in 0..5 {
        let path = format!("/f{i}");
        h.origin
            .put(&path, Resource::new(test_bytes(8192, i)).hold_after(100));
        guids.push(h.create(&h.origin.url(&path), &format!("f{i}")).await.guid);
    }
    // Both hold at byte 100, so both requests have reached the origin.
    h.wait_bytes(&guids[0], 100).await;
    h.wait_bytes(&guids[1], 100).await;
    let mut statuses = Vec::new();
    for g in &guids {
        statuses.push(h.status(g).await);
    }
    assert_eq!(
        statuses,
        [S::Running, S::Running, S::Idle, S::Idle, S::Idle]
    );
    assert_eq!(h.origin.requests().len(), 2);
    for i in 0..5 {
        h.origin.release(&format!("/f{i}"));
    }
    for (i, g) in guids.iter().enumerate() {
        h.wait_status(g, S::Completed).await;
        h.assert_file(&format!("f{i}"), &test_bytes(8192, i as u64));
    }
}

#[tokio::test]
async fn pause_keeps_partial_data_and_resume_continues_with_range_and_etag() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(2 * MIB, 5);
    let held = 300_000;
    let op = h
        .start_held("/a.bin", Resource::new(body.clone()), held)
        .await;

    let paused = h.pause(&op.guid).await;
    assert_eq!(status_of(&paused), S::PausedByApplication);
    // Pausing again changes nothing.
    let again = h.pause(&op.guid).await;
    assert_eq!(status_of(&again), S::PausedByApplication);
    // The partial data stays on disk; nothing appears at the result path.
    let partial = h
        .download_dir()
        .join(".transferd-partial")
        .join(format!("{}.part", op.guid));
    let on_disk = std::fs::read(&partial).unwrap();
    assert_eq!(on_disk.len() as u64, held);
    assert_eq!(&on_disk[..], &body[..held as usize]);
    assert!(!h.download_dir().join("a.bin").exists());

    let watch = h.watch(&op.guid).await;
    h.origin.release("/a.bin");
    let resumed = h.resume(&op.guid).await;
    assert!(matches!(status_of(&resumed), S::Idle | S::Running));
    let messages = read_to_end(watch).await;
    assert_eq!(messages.first().unwrap().status(), S::PausedByApplication);
    let done = messages.last().unwrap();
    assert_eq!(done.status(), S::Completed);
    assert_eq!(done.bytes_received, body.len() as u64);
    // Exactly one new response during the resume, and no restart.
    assert_eq!(responses_changed(&messages), 1, "{messages:?}");
    assert_eq!(restarts(&messages), 0, "{messages:?}");
    // Bytes never went backwards.
    assert!(
        messages
            .windows(2)
            .all(|w| w[0].bytes_received <= w[1].bytes_received)
    );

    let requests = h.origin.requests_for("/a.bin");
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].header("range"),
        Some(&*format!("bytes={held}-"))
    );
    let etag = Resource::new(body.clone()).etag.unwrap();
    assert_eq!(requests[1].header("if-range"), Some(etag.as_str()));
    h.assert_file("a.bin", &body);
}

#[tokio::test]
async fn resume_uses_last_modified_when_there_is_no_strong_etag() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(MIB, 6);
    let resource = Resource::new(body.clone()).etag(Some("W/\"weak\""));
    let date = resource.last_modified.clone().unwrap();
    let op = h.start_held("/lm.bin", resource, 65536).await;
    h.pause(&op.guid).await;
    h.origin.release("/lm.bin");
    h.resume(&op.guid).await;
    h.wait_status(&op.guid, S::Completed).await;
    let requests = h.origin.requests_for("/lm.bin");
    assert_eq!(requests[1].header("range"), Some("bytes=65536-"));
    assert_eq!(requests[1].header("if-range"), Some(date.as_str()));
    h.assert_file("lm.bin", &body);
}

/// Bytes the origin sends after a restart before it holds the body, so the test can see the
/// download's bytes fall before letting it finish.
const RESTART_HOLD: u64 = 1000;

/// Pauses, makes the origin serve `on_resume` (held after [`RESTART_HOLD`] bytes), resumes,
/// and returns every message a watcher saw. Checks that the download restarted: the first
/// message with `has_restarted` shows the bytes fallen below `held`, with a new response.
async fn pause_change_resume(
    h: &Harness,
    path: &str,
    guid: &str,
    held: u64,
    on_resume: Resource,
) -> Vec<pb::BackgroundDownloadProgress> {
    h.pause(guid).await;
    h.origin.put(path, on_resume.hold_after(RESTART_HOLD));
    let mut watch = h.watch(guid).await;
    h.resume(guid).await;
    let mut messages = read_until(&mut watch, "the restart", |m| m.has_restarted).await;
    let restarted = messages.last().unwrap();
    assert!(restarted.has_response_changed, "{restarted:?}");
    assert!(
        restarted.bytes_received <= RESTART_HOLD && restarted.bytes_received < held,
        "{restarted:?}"
    );
    h.origin.release(path);
    messages.extend(read_to_end(watch).await);
    assert_eq!(
        restarts(&messages),
        1,
        "has_restarted exactly once: {messages:?}"
    );
    assert_eq!(messages.last().unwrap().status(), S::Completed);
    messages
}

#[tokio::test]
async fn server_that_ignores_range_forces_a_restart_flagged_once() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(MIB, 7);
    let held = 200_000;
    let resource = Resource::new(body.clone()).ignore_range();
    let op = h.start_held("/nr.bin", resource.clone(), held).await;
    pause_change_resume(&h, "/nr.bin", &op.guid, held, resource).await;
    let requests = h.origin.requests_for("/nr.bin");
    assert_eq!(
        requests[1].header("range"),
        Some(&*format!("bytes={held}-"))
    );
    h.assert_file("nr.bin", &body);
}

#[tokio::test]
async fn changed_file_on_the_server_restarts_instead_of_splicing() {
    let h = Harness::start(&[]).await;
    let old = test_bytes(MIB, 8);
    let new = test_bytes(MIB + 5, 9);
    let held = 100_000;
    let op = h.start_held("/c.bin", Resource::new(old), held).await;
    let on_resume = Resource::new(new.clone());
    let messages = pause_change_resume(&h, "/c.bin", &op.guid, held, on_resume).await;
    assert_eq!(messages.last().unwrap().bytes_received, new.len() as u64);
    h.assert_file("c.bin", &new);
}

#[tokio::test]
async fn without_validators_resume_starts_over_without_range() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(MIB, 10);
    let held = 50_000;
    let resource = Resource::new(body.clone()).etag(None).last_modified(None);
    let op = h.start_held("/nv.bin", resource.clone(), held).await;
    assert!(!h.response_information(&op.guid).await.is_resumable);
    pause_change_resume(&h, "/nv.bin", &op.guid, held, resource).await;
    let requests = h.origin.requests_for("/nv.bin");
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].header("range"),
        None,
        "an unguarded Range could splice two versions"
    );
    h.assert_file("nv.bin", &body);
}

#[tokio::test]
async fn cancel_is_terminal_and_removes_partial_data() {
    let h = Harness::start(&[]).await;
    let resource = Resource::new(test_bytes(MIB, 11));
    let op = h.start_held("/x.bin", resource, 70_000).await;
    let canceled = h.cancel(&op.guid).await;
    assert_eq!(status_of(&canceled), S::Canceled);
    let partial_dir = h.download_dir().join(".transferd-partial");
    let start = tokio::time::Instant::now();
    while !files_under(&partial_dir).is_empty() {
        assert!(start.elapsed() < DEADLINE, "partial file not removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!h.download_dir().join("x.bin").exists());
    let calls = [
        ("resume", h.client.resume(&op.guid).await),
        ("pause", h.client.pause(&op.guid).await),
        ("cancel", h.client.cancel(&op.guid).await),
    ];
    for (call, result) in calls {
        let err = result.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::FailedPrecondition,
            "{call}: {err:?}"
        );
        assert!(
            err.message().contains("CANCELED"),
            "{call}: {}",
            err.message()
        );
    }
    assert_eq!(h.status(&op.guid).await, S::Canceled);
    // A canceled download no longer holds its result file.
    h.origin.put("/y.bin", Resource::new(test_bytes(10, 12)));
    h.create(&h.origin.url("/y.bin"), "x.bin").await;
}

#[tokio::test]
async fn cancel_of_a_queued_download_never_contacts_the_server() {
    let h = Harness::start(&["--max-active", "1"]).await;
    h.start_held("/busy", Resource::new(test_bytes(4096, 1)), 10)
        .await;
    h.origin.put("/queued", Resource::new(test_bytes(4096, 2)));
    let queued = h.create(&h.origin.url("/queued"), "queued").await;
    assert_eq!(status_of(&queued), S::Idle);
    let canceled = h.cancel(&queued.guid).await;
    assert_eq!(status_of(&canceled), S::Canceled);
    h.origin.release("/busy");
    assert!(h.origin.requests_for("/queued").is_empty());
}

#[tokio::test]
async fn http_error_ends_in_error_with_status_code_and_message() {
    let h = Harness::start(&[]).await;
    let op = h.create(&h.origin.url("/missing"), "missing.bin").await;
    let failed = h.wait_status(&op.guid, S::Error).await;
    let error = failed.error.expect("error is set");
    assert_eq!(error.http_status_code, 404);
    assert!(error.message.contains("404"), "{}", error.message);
    assert!(files_under(&h.download_dir()).is_empty());
    let info = h.response_information(&op.guid).await;
    assert_eq!(info.status_code, 404);
    assert_eq!(info.actual_uri, h.origin.url("/missing"));
    let err = h.client.resume(&op.guid).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}
