//! End-to-end: downloads through the real server from a real HTTP origin: exact bytes, the
//! queue and its priorities, pause and resume with Range/If-Range, restarts when the server
//! cannot resume, cancel, and HTTP errors.

mod common;

use std::time::Duration;

use common::origin::{Origin, Resource, test_bytes};
use common::*;
use transferd::pb::backgroundtransfer::v1 as pb;

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn downloads_exact_bytes_to_the_result_file() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let body = test_bytes(3 * MIB + 17, 1);
    origin.put("/model.bin", Resource::new(body.clone()));
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;

    let op = create(&mut client, &origin.url("/model.bin"), "models/model.bin").await;
    assert_eq!(op.result_file, "models/model.bin");
    assert_eq!(op.requested_uri, origin.url("/model.bin"));
    let done = wait_status(&mut client, &op.guid, S::Completed).await;
    let progress = done.progress.unwrap();
    assert_eq!(progress.bytes_received, body.len() as u64);
    assert_eq!(progress.total_bytes_to_receive, body.len() as u64);
    assert!(done.error.is_none());
    let path = server.download_dir().join("models/model.bin");
    assert_eq!(sha256_file(&path), sha256(&body));
    // Only the result file remains: the partial file was renamed, not copied.
    assert_eq!(
        files_under(&server.download_dir()),
        vec!["models/model.bin"]
    );
    let requests = origin.requests_for("/model.bin");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].header("accept-encoding"), Some("identity"));
    assert_eq!(requests[0].header("range"), None);
}

#[tokio::test]
async fn unknown_length_is_zero_until_known() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let body = test_bytes(MIB, 2);
    origin.put(
        "/stream",
        Resource::new(body.clone()).chunked().hold_after(4096),
    );
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;

    let op = create(&mut client, &origin.url("/stream"), "stream.bin").await;
    let running = wait_bytes(&mut client, &op.guid, 4096).await;
    assert_eq!(status_of(&running), S::Running);
    assert_eq!(running.progress.unwrap().total_bytes_to_receive, 0);
    origin.release("/stream");
    let done = wait_status(&mut client, &op.guid, S::Completed).await;
    assert_eq!(done.progress.unwrap().bytes_received, body.len() as u64);
    assert_eq!(
        sha256_file(&server.download_dir().join("stream.bin")),
        sha256(&body)
    );
}

#[tokio::test]
async fn queue_runs_high_then_default_then_low_first_come_first_served() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    origin.put(
        "/blocker",
        Resource::new(test_bytes(64 * 1024, 3)).hold_after(1024),
    );
    for name in ["low", "default1", "high1", "default2", "high2"] {
        origin.put(&format!("/{name}"), Resource::new(test_bytes(1000, 4)));
    }
    let server = Server::start(dir.path(), &["--max-active", "1"]).await;
    let mut client = server.client().await;

    let blocker = create(&mut client, &origin.url("/blocker"), "blocker").await;
    wait_status(&mut client, &blocker.guid, S::Running).await;
    let mut guids = Vec::new();
    for (name, priority) in [
        ("low", pb::BackgroundTransferPriority::Low),
        ("default1", pb::BackgroundTransferPriority::Default),
        ("high1", pb::BackgroundTransferPriority::High),
        ("default2", pb::BackgroundTransferPriority::Default),
        ("high2", pb::BackgroundTransferPriority::High),
    ] {
        let mut req = create_request(&origin.url(&format!("/{name}")), name);
        req.set_priority(priority);
        let op = client.create_download(req).await.unwrap().into_inner();
        assert_eq!(op.priority(), priority);
        guids.push(op.guid);
    }
    // With the only slot taken, everything else waits as IDLE.
    for guid in &guids {
        assert_eq!(status_of(&get(&mut client, guid).await), S::Idle);
    }
    origin.release("/blocker");
    for guid in &guids {
        wait_status(&mut client, guid, S::Completed).await;
    }
    let order: Vec<String> = origin
        .requests()
        .into_iter()
        .map(|r| r.path.trim_start_matches('/').to_string())
        .filter(|p| p != "blocker")
        .collect();
    assert_eq!(order, ["high1", "high2", "default1", "default2", "low"]);
}

#[tokio::test]
async fn max_active_bounds_concurrent_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    for i in 0..5 {
        origin.put(
            &format!("/f{i}"),
            Resource::new(test_bytes(8192, i)).hold_after(100),
        );
    }
    let server = Server::start(dir.path(), &["--max-active", "2"]).await;
    let mut client = server.client().await;
    let mut guids = Vec::new();
    for i in 0..5 {
        guids.push(
            create(
                &mut client,
                &origin.url(&format!("/f{i}")),
                &format!("f{i}"),
            )
            .await
            .guid,
        );
    }
    wait_status(&mut client, &guids[0], S::Running).await;
    wait_status(&mut client, &guids[1], S::Running).await;
    let mut statuses = Vec::new();
    for g in &guids {
        statuses.push(status_of(&get(&mut client, g).await));
    }
    assert_eq!(
        statuses,
        [S::Running, S::Running, S::Idle, S::Idle, S::Idle]
    );
    assert_eq!(origin.requests().len(), 2);
    for i in 0..5 {
        origin.release(&format!("/f{i}"));
    }
    for (i, g) in guids.iter().enumerate() {
        wait_status(&mut client, g, S::Completed).await;
        assert_eq!(
            sha256_file(&server.download_dir().join(format!("f{i}"))),
            sha256(&test_bytes(8192, i as u64))
        );
    }
}

/// Starts a download held by the origin after `held` bytes and waits until the server has them.
async fn start_held(
    client: &mut Client,
    origin: &Origin,
    path: &str,
    resource: Resource,
    held: u64,
) -> pb::DownloadOperation {
    origin.put(path, resource.hold_after(held));
    let op = create(client, &origin.url(path), path.trim_start_matches('/')).await;
    wait_bytes(client, &op.guid, held).await
}

#[tokio::test]
async fn pause_keeps_partial_data_and_resume_continues_with_range_and_etag() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let body = test_bytes(2 * MIB, 5);
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let held = 300_000;
    let op = start_held(
        &mut client,
        &origin,
        "/a.bin",
        Resource::new(body.clone()),
        held,
    )
    .await;

    let paused = pause(&mut client, &op.guid).await;
    assert_eq!(status_of(&paused), S::PausedByApplication);
    // Pausing again changes nothing.
    let again = pause(&mut client, &op.guid).await;
    assert_eq!(status_of(&again), S::PausedByApplication);
    // The partial data stays on disk; nothing appears at the result path.
    let partial = server
        .download_dir()
        .join(".transferd-partial")
        .join(format!("{}.part", op.guid));
    let on_disk = std::fs::read(&partial).unwrap();
    assert_eq!(on_disk.len() as u64, held);
    assert_eq!(&on_disk[..], &body[..held as usize]);
    assert!(!server.download_dir().join("a.bin").exists());

    let mut watch = client
        .watch_download(pb::WatchDownloadRequest {
            guid: op.guid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    origin.release("/a.bin");
    let resumed = resume(&mut client, &op.guid).await;
    assert!(matches!(status_of(&resumed), S::Idle | S::Running));
    let mut messages = Vec::new();
    while let Some(m) = watch.message().await.unwrap() {
        messages.push(m);
    }
    assert_eq!(messages.first().unwrap().status(), S::PausedByApplication);
    let done = messages.last().unwrap();
    assert_eq!(done.status(), S::Completed);
    assert_eq!(done.bytes_received, body.len() as u64);
    // Exactly one new response during the resume, and no restart.
    assert_eq!(
        messages.iter().filter(|m| m.has_response_changed).count(),
        1,
        "{messages:?}"
    );
    assert!(messages.iter().all(|m| !m.has_restarted), "{messages:?}");
    // Bytes never went backwards.
    assert!(
        messages
            .windows(2)
            .all(|w| w[0].bytes_received <= w[1].bytes_received)
    );

    let requests = origin.requests_for("/a.bin");
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].header("range"),
        Some(&*format!("bytes={held}-"))
    );
    let etag = Resource::new(body.clone()).etag.unwrap();
    assert_eq!(requests[1].header("if-range"), Some(etag.as_str()));
    assert_eq!(
        sha256_file(&server.download_dir().join("a.bin")),
        sha256(&body)
    );
}

#[tokio::test]
async fn resume_uses_last_modified_when_there_is_no_strong_etag() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let body = test_bytes(MIB, 6);
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let resource = Resource::new(body.clone()).etag(Some("W/\"weak\""));
    let date = resource.last_modified.clone().unwrap();
    let op = start_held(&mut client, &origin, "/lm.bin", resource, 65536).await;
    pause(&mut client, &op.guid).await;
    origin.release("/lm.bin");
    resume(&mut client, &op.guid).await;
    wait_status(&mut client, &op.guid, S::Completed).await;
    let requests = origin.requests_for("/lm.bin");
    assert_eq!(requests[1].header("range"), Some("bytes=65536-"));
    assert_eq!(requests[1].header("if-range"), Some(date.as_str()));
    assert_eq!(
        sha256_file(&server.download_dir().join("lm.bin")),
        sha256(&body)
    );
}

/// Bytes the origin sends after a restart before it holds the body, so the test can see the
/// download's bytes fall before letting it finish.
const RESTART_HOLD: u64 = 1000;

/// Pauses, makes the origin serve `on_resume` (held after [`RESTART_HOLD`] bytes), resumes,
/// and returns every message a watcher saw. Checks that the download restarted: the first
/// message with `has_restarted` shows the bytes fallen below `held`, with a new response.
async fn pause_change_resume(
    client: &mut Client,
    origin: &Origin,
    path: &str,
    guid: &str,
    held: u64,
    on_resume: Resource,
) -> Vec<pb::BackgroundDownloadProgress> {
    pause(client, guid).await;
    origin.put(path, on_resume.hold_after(RESTART_HOLD));
    let mut watch = client
        .watch_download(pb::WatchDownloadRequest { guid: guid.into() })
        .await
        .unwrap()
        .into_inner();
    resume(client, guid).await;
    let mut messages = Vec::new();
    let mut released = false;
    while let Some(m) = watch.message().await.unwrap() {
        if m.has_restarted && !released {
            assert!(m.has_response_changed, "{m:?}");
            assert!(
                m.bytes_received <= RESTART_HOLD && m.bytes_received < held,
                "{m:?}"
            );
            origin.release(path);
            released = true;
        }
        messages.push(m);
    }
    assert!(released, "the download never restarted: {messages:?}");
    assert_eq!(
        messages.iter().filter(|m| m.has_restarted).count(),
        1,
        "has_restarted exactly once: {messages:?}"
    );
    assert_eq!(messages.last().unwrap().status(), S::Completed);
    messages
}

#[tokio::test]
async fn server_that_ignores_range_forces_a_restart_flagged_once() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let body = test_bytes(MIB, 7);
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let held = 200_000;
    let op = start_held(
        &mut client,
        &origin,
        "/nr.bin",
        Resource::new(body.clone()).ignore_range(),
        held,
    )
    .await;
    let on_resume = Resource::new(body.clone()).ignore_range();
    pause_change_resume(&mut client, &origin, "/nr.bin", &op.guid, held, on_resume).await;
    let requests = origin.requests_for("/nr.bin");
    assert_eq!(
        requests[1].header("range"),
        Some(&*format!("bytes={held}-"))
    );
    assert_eq!(
        sha256_file(&server.download_dir().join("nr.bin")),
        sha256(&body)
    );
}

#[tokio::test]
async fn changed_file_on_the_server_restarts_instead_of_splicing() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let old = test_bytes(MIB, 8);
    let new = test_bytes(MIB + 5, 9);
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let held = 100_000;
    let op = start_held(
        &mut client,
        &origin,
        "/c.bin",
        Resource::new(old.clone()),
        held,
    )
    .await;
    let on_resume = Resource::new(new.clone());
    let messages =
        pause_change_resume(&mut client, &origin, "/c.bin", &op.guid, held, on_resume).await;
    assert_eq!(messages.last().unwrap().bytes_received, new.len() as u64);
    assert_eq!(
        sha256_file(&server.download_dir().join("c.bin")),
        sha256(&new)
    );
}

#[tokio::test]
async fn without_validators_resume_starts_over_without_range() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let body = test_bytes(MIB, 10);
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let held = 50_000;
    let resource = Resource::new(body.clone()).etag(None).last_modified(None);
    let op = start_held(&mut client, &origin, "/nv.bin", resource, held).await;
    let info = client
        .get_response_information(pb::GetResponseInformationRequest {
            guid: op.guid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!info.is_resumable);
    let on_resume = Resource::new(body.clone()).etag(None).last_modified(None);
    pause_change_resume(&mut client, &origin, "/nv.bin", &op.guid, held, on_resume).await;
    let requests = origin.requests_for("/nv.bin");
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].header("range"),
        None,
        "an unguarded Range could splice two versions"
    );
    assert_eq!(
        sha256_file(&server.download_dir().join("nv.bin")),
        sha256(&body)
    );
}

#[tokio::test]
async fn cancel_is_terminal_and_removes_partial_data() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let op = start_held(
        &mut client,
        &origin,
        "/x.bin",
        Resource::new(test_bytes(MIB, 11)),
        70_000,
    )
    .await;
    let canceled = cancel(&mut client, &op.guid).await;
    assert_eq!(status_of(&canceled), S::Canceled);
    let partial_dir = server.download_dir().join(".transferd-partial");
    let start = tokio::time::Instant::now();
    while !files_under(&partial_dir).is_empty() {
        assert!(start.elapsed() < DEADLINE, "partial file not removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!server.download_dir().join("x.bin").exists());
    for call in ["resume", "pause", "cancel"] {
        let guid = op.guid.clone();
        let err = match call {
            "resume" => client
                .resume_download(pb::ResumeDownloadRequest { guid })
                .await
                .unwrap_err(),
            "pause" => client
                .pause_download(pb::PauseDownloadRequest { guid })
                .await
                .unwrap_err(),
            _ => client
                .cancel_download(pb::CancelDownloadRequest { guid })
                .await
                .unwrap_err(),
        };
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
    assert_eq!(status_of(&get(&mut client, &op.guid).await), S::Canceled);
    // A canceled download no longer holds its result file.
    origin.put("/y.bin", Resource::new(test_bytes(10, 12)));
    create(&mut client, &origin.url("/y.bin"), "x.bin").await;
}

#[tokio::test]
async fn cancel_of_a_queued_download_never_contacts_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let server = Server::start(dir.path(), &["--max-active", "1"]).await;
    let mut client = server.client().await;
    start_held(
        &mut client,
        &origin,
        "/busy",
        Resource::new(test_bytes(4096, 1)),
        10,
    )
    .await;
    origin.put("/queued", Resource::new(test_bytes(4096, 2)));
    let queued = create(&mut client, &origin.url("/queued"), "queued").await;
    assert_eq!(status_of(&queued), S::Idle);
    let canceled = cancel(&mut client, &queued.guid).await;
    assert_eq!(status_of(&canceled), S::Canceled);
    origin.release("/busy");
    assert!(origin.requests_for("/queued").is_empty());
}

#[tokio::test]
async fn http_error_ends_in_error_with_status_code_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let op = create(&mut client, &origin.url("/missing"), "missing.bin").await;
    let failed = wait_status(&mut client, &op.guid, S::Error).await;
    let error = failed.error.expect("error is set");
    assert_eq!(error.http_status_code, 404);
    assert!(error.message.contains("404"), "{}", error.message);
    assert!(files_under(&server.download_dir()).is_empty());
    let info = client
        .get_response_information(pb::GetResponseInformationRequest {
            guid: op.guid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.status_code, 404);
    assert_eq!(info.actual_uri, origin.url("/missing"));
    let err = client
        .resume_download(pb::ResumeDownloadRequest { guid: op.guid })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}
