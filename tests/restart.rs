//! End-to-end: restarts lose nothing. SIGTERM ends streams cleanly, checkpoints and exits 0; a
//! fresh start on the same data directory shows every download, continues unfinished ones from
//! their checkpoint with a Range request, and keeps finished ones as they were. A SIGKILL never
//! loses an acknowledged download.

mod common;

use common::origin::{Resource, test_bytes};
use common::*;

#[tokio::test]
async fn sigterm_checkpoints_and_a_restart_continues_every_download() {
    let flags = ["--max-active", "2"];
    let mut h = Harness::start(&flags).await;
    let running_body = test_bytes(1024 * 1024, 1);
    let held = 400_000u64;
    h.origin.put("/done", Resource::new(test_bytes(5000, 2)));
    h.origin.put("/queued", Resource::new(test_bytes(7000, 4)));

    let done = h.create(&h.origin.url("/done"), "done.bin").await;
    h.wait_status(&done.guid, S::Completed).await;
    let paused = Resource::new(test_bytes(300_000, 3));
    let paused = h.start_held("/paused", paused, 1000).await;
    h.pause(&paused.guid).await;
    h.origin.put(
        "/running",
        Resource::new(running_body.clone()).hold_after(held),
    );
    let running = h.create(&h.origin.url("/running"), "running.bin").await;
    // Fill the second slot so the LOW download stays queued.
    h.origin
        .put("/filler", Resource::new(test_bytes(4096, 5)).hold_after(10));
    let filler = h.create(&h.origin.url("/filler"), "filler.bin").await;
    let mut queued = create_request(&h.origin.url("/queued"), "queued.bin");
    queued.set_priority(pb::BackgroundTransferPriority::Low);
    let queued = h.create_with(queued).await;
    h.wait_bytes(&running.guid, held).await;
    assert_eq!(h.status(&queued.guid).await, S::Idle);

    let mut streams = Vec::new();
    for guid in [&running.guid, &queued.guid] {
        let mut stream = h.watch(guid).await;
        next_message(&mut stream).await;
        streams.push(stream);
    }
    let mut all = h.watch_all(None).await;
    next_message(&mut all).await;

    let code = h.server.terminate().await;
    assert_eq!(code, Some(0), "transferd must exit 0 on SIGTERM");
    // Streams end cleanly rather than breaking.
    for stream in streams {
        read_to_end(stream).await;
    }
    read_to_end(all).await;

    // The checkpoint holds every byte received before the stop, fsynced.
    h.origin.release("/running");
    h.origin.release("/filler");
    h.restart(&flags).await;
    let listed = h.list_guids().await;
    let created = [&done, &paused, &running, &filler, &queued];
    assert_eq!(listed, created.map(|op| op.guid.clone()));
    let done_now = h.get(&done.guid).await;
    assert_eq!(status_of(&done_now), S::Completed);
    assert_eq!(done_now.progress.unwrap().bytes_received, 5000);
    assert_eq!(h.status(&paused.guid).await, S::PausedByApplication);

    h.wait_status(&running.guid, S::Completed).await;
    let requests = h.origin.requests_for("/running");
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].header("range"),
        Some(&*format!("bytes={held}-"))
    );
    assert!(requests[1].header("if-range").is_some());
    h.assert_file("running.bin", &running_body);
    h.wait_status(&queued.guid, S::Completed).await;
    h.assert_file("queued.bin", &test_bytes(7000, 4));
    // The paused one continues from its checkpoint when resumed.
    h.origin.release("/paused");
    h.resume(&paused.guid).await;
    h.wait_status(&paused.guid, S::Completed).await;
    assert_eq!(
        h.origin.requests_for("/paused")[1].header("range"),
        Some("bytes=1000-")
    );
    h.assert_file("paused", &test_bytes(300_000, 3));
}

#[tokio::test]
async fn sigkill_never_loses_an_acknowledged_download() {
    let mut h = Harness::start(&["--max-active", "1"]).await;
    h.origin.put(
        "/blocker",
        Resource::new(test_bytes(100_000, 1)).hold_after(50_000),
    );
    let blocker = h.create(&h.origin.url("/blocker"), "blocker").await;
    let mut guids = vec![blocker.guid.clone()];
    for i in 0..20 {
        let path = format!("/f{i}");
        h.origin
            .put(&path, Resource::new(test_bytes(10_000 + i, i as u64)));
        guids.push(h.create(&h.origin.url(&path), &format!("f{i}")).await.guid);
    }
    h.server.kill().await;

    h.origin.release("/blocker");
    h.restart(&["--max-active", "4"]).await;
    assert_eq!(h.list_guids().await, guids);
    h.wait_status(&blocker.guid, S::Completed).await;
    h.assert_file("blocker", &test_bytes(100_000, 1));
    for i in 0..20 {
        h.wait_status(&guids[i + 1], S::Completed).await;
        h.assert_file(&format!("f{i}"), &test_bytes(10_000 + i, i as u64));
    }
}

#[tokio::test]
async fn a_corrupted_store_stops_the_server_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("transferd.db"), vec![0x42; 4096]).unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let out = run_transferd(["--listen", "127.0.0.1:0", "--data-dir", data_dir]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("corrupted"), "{stderr}");
    // The damaged file is left for the operator, never replaced by an empty store.
    assert_eq!(
        std::fs::read(dir.path().join("transferd.db")).unwrap(),
        vec![0x42; 4096]
    );
}

#[tokio::test]
async fn sigterm_under_load_ends_streams_and_exits_within_ten_seconds() {
    const N: usize = 50;
    let flags = ["--max-active", "64"];
    let mut h = Harness::start(&flags).await;
    let held = 100_000u64;
    let mut guids = Vec::new();
    for i in 0..N {
        let path = format!("/l{i}");
        let resource = Resource::new(test_bytes(300_000 + i, i as u64)).hold_after(held);
        h.origin.put(&path, resource);
        guids.push(h.create(&h.origin.url(&path), &format!("l{i}")).await.guid);
    }
    let mut watchers = Vec::new();
    for guid in &guids {
        h.wait_bytes(guid, held).await;
        let mut stream = h.watch(guid).await;
        next_message(&mut stream).await;
        // Panics in the task, and so fails the join below, unless the stream ends cleanly.
        watchers.push(tokio::spawn(read_to_end(stream)));
    }

    let started = std::time::Instant::now();
    assert_eq!(h.server.terminate().await, Some(0));
    // The contract's bound for a clean stop under load; a healthy stop takes well under a second.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    for w in watchers {
        w.await.expect("streams end cleanly on shutdown");
    }

    for i in 0..N {
        h.origin.release(&format!("/l{i}"));
    }
    h.restart(&flags).await;
    for (i, guid) in guids.iter().enumerate() {
        h.wait_status(guid, S::Completed).await;
        let requests = h.origin.requests_for(&format!("/l{i}"));
        assert_eq!(requests.len(), 2, "l{i}");
        assert_eq!(
            requests[1].header("range"),
            Some(&*format!("bytes={held}-")),
            "l{i}"
        );
        h.assert_file(&format!("l{i}"), &test_bytes(300_000 + i, i as u64));
    }
}

#[tokio::test]
async fn a_store_from_a_newer_version_is_refused_not_misread() {
    let mut h = Harness::start(&[]).await;
    let op = h.create("http://127.0.0.1:9/x", "x").await;
    assert_eq!(h.server.terminate().await, Some(0));
    let db = h.server.data_dir.join("transferd.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let data_dir = h.server.data_dir.to_str().unwrap();
    let out = run_transferd(["--listen", "127.0.0.1:0", "--data-dir", data_dir]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "it must not announce an address");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("schema version 99"), "{stderr}");
    // The data is still there for the newer version.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let guid: String = conn
        .query_row("SELECT guid FROM downloads", [], |r| r.get(0))
        .unwrap();
    assert_eq!(guid, op.guid);
}
