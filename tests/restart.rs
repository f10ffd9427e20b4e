//! End-to-end: restarts lose nothing. SIGTERM ends streams cleanly, checkpoints and exits 0; a
//! fresh start on the same data directory shows every download, continues unfinished ones from
//! their checkpoint with a Range request, and keeps finished ones as they were. A SIGKILL never
//! loses an acknowledged download.

mod common;

use common::origin::{Origin, Resource, test_bytes};
use common::*;
use transferd::pb::backgroundtransfer::v1 as pb;

#[tokio::test]
async fn sigterm_checkpoints_and_a_restart_continues_every_download() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let running_body = test_bytes(1024 * 1024, 1);
    let held = 400_000u64;
    origin.put(
        "/running",
        Resource::new(running_body.clone()).hold_after(held),
    );
    origin.put("/done", Resource::new(test_bytes(5000, 2)));
    origin.put(
        "/paused",
        Resource::new(test_bytes(300_000, 3)).hold_after(1000),
    );
    origin.put("/queued", Resource::new(test_bytes(7000, 4)));

    let server = Server::start(dir.path(), &["--max-active", "2"]).await;
    let mut client = server.client().await;
    let done = create(&mut client, &origin.url("/done"), "done.bin").await;
    wait_status(&mut client, &done.guid, S::Completed).await;
    let paused = create(&mut client, &origin.url("/paused"), "paused.bin").await;
    wait_bytes(&mut client, &paused.guid, 1000).await;
    pause(&mut client, &paused.guid).await;
    let running = create(&mut client, &origin.url("/running"), "running.bin").await;
    let mut queued_req = create_request(&origin.url("/queued"), "queued.bin");
    queued_req.set_priority(pb::BackgroundTransferPriority::Low);
    // Fill the second slot so the LOW download stays queued.
    origin.put("/filler", Resource::new(test_bytes(4096, 5)).hold_after(10));
    let filler = create(&mut client, &origin.url("/filler"), "filler.bin").await;
    let queued = client
        .create_download(queued_req)
        .await
        .unwrap()
        .into_inner();
    wait_bytes(&mut client, &running.guid, held).await;
    assert_eq!(status_of(&get(&mut client, &queued.guid).await), S::Idle);

    let mut streams = Vec::new();
    for guid in [&running.guid, &queued.guid] {
        let mut s = client
            .watch_download(pb::WatchDownloadRequest { guid: guid.clone() })
            .await
            .unwrap()
            .into_inner();
        s.message().await.unwrap().unwrap();
        streams.push(s);
    }
    let mut all = client
        .watch_downloads(pb::WatchDownloadsRequest::default())
        .await
        .unwrap()
        .into_inner();
    all.message().await.unwrap().unwrap();

    let code = server.terminate().await;
    assert_eq!(code, Some(0), "transferd must exit 0 on SIGTERM");
    // Streams end cleanly rather than breaking.
    for mut s in streams {
        loop {
            match s.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => panic!("stream broke on shutdown: {e:?}"),
            }
        }
    }
    loop {
        match all.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(e) => panic!("WatchDownloads broke on shutdown: {e:?}"),
        }
    }

    // The checkpoint holds every byte received before the stop, fsynced.
    origin.release("/running");
    origin.release("/filler");
    let server = Server::start(dir.path(), &["--max-active", "2"]).await;
    let mut client = server.client().await;
    let listed: Vec<String> = list_guids(&mut client).await;
    assert_eq!(
        listed,
        [
            &done.guid,
            &paused.guid,
            &running.guid,
            &filler.guid,
            &queued.guid
        ]
        .map(String::clone)
    );
    let done_now = get(&mut client, &done.guid).await;
    assert_eq!(status_of(&done_now), S::Completed);
    assert_eq!(done_now.progress.unwrap().bytes_received, 5000);
    assert_eq!(
        status_of(&get(&mut client, &paused.guid).await),
        S::PausedByApplication
    );

    wait_status(&mut client, &running.guid, S::Completed).await;
    let requests = origin.requests_for("/running");
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].header("range"),
        Some(&*format!("bytes={held}-"))
    );
    assert!(requests[1].header("if-range").is_some());
    assert_eq!(
        sha256_file(&server.download_dir().join("running.bin")),
        sha256(&running_body)
    );
    wait_status(&mut client, &queued.guid, S::Completed).await;
    assert_eq!(
        sha256_file(&server.download_dir().join("queued.bin")),
        sha256(&test_bytes(7000, 4))
    );
    // The paused one continues from its checkpoint when resumed.
    origin.release("/paused");
    resume(&mut client, &paused.guid).await;
    wait_status(&mut client, &paused.guid, S::Completed).await;
    assert_eq!(
        origin.requests_for("/paused")[1].header("range"),
        Some("bytes=1000-")
    );
    assert_eq!(
        sha256_file(&server.download_dir().join("paused.bin")),
        sha256(&test_bytes(300_000, 3))
    );
}

#[tokio::test]
async fn sigkill_never_loses_an_acknowledged_download() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    origin.put(
        "/blocker",
        Resource::new(test_bytes(100_000, 1)).hold_after(50_000),
    );
    for i in 0..20 {
        origin.put(
            &format!("/f{i}"),
            Resource::new(test_bytes(10_000 + i, i as u64)),
        );
    }
    let server = Server::start(dir.path(), &["--max-active", "1"]).await;
    let mut client = server.client().await;
    let blocker = create(&mut client, &origin.url("/blocker"), "blocker").await;
    let mut guids = vec![blocker.guid.clone()];
    for i in 0..20 {
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
    server.kill().await;

    origin.release("/blocker");
    let server = Server::start(dir.path(), &["--max-active", "4"]).await;
    let mut client = server.client().await;
    let listed: Vec<String> = list_guids(&mut client).await;
    assert_eq!(listed, guids);
    wait_status(&mut client, &blocker.guid, S::Completed).await;
    assert_eq!(
        sha256_file(&server.download_dir().join("blocker")),
        sha256(&test_bytes(100_000, 1))
    );
    for i in 0..20 {
        wait_status(&mut client, &guids[i + 1], S::Completed).await;
        assert_eq!(
            sha256_file(&server.download_dir().join(format!("f{i}"))),
            sha256(&test_bytes(10_000 + i, i as u64))
        );
    }
}

#[tokio::test]
async fn a_corrupted_store_stops_the_server_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("transferd.db"), vec![0x42; 4096]).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_transferd"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let held = 100_000u64;
    for i in 0..N {
        origin.put(
            &format!("/l{i}"),
            Resource::new(test_bytes(300_000 + i, i as u64)).hold_after(held),
        );
    }
    let server = Server::start(dir.path(), &["--max-active", "64"]).await;
    let mut client = server.client().await;
    let mut guids = Vec::new();
    for i in 0..N {
        guids.push(
            create(
                &mut client,
                &origin.url(&format!("/l{i}")),
                &format!("l{i}"),
            )
            .await
            .guid,
        );
    }
    let mut watchers = Vec::new();
    for guid in &guids {
        wait_bytes(&mut client, guid, held).await;
        let mut stream = client
            .watch_download(pb::WatchDownloadRequest { guid: guid.clone() })
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap();
        watchers.push(tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }));
    }

    let started = std::time::Instant::now();
    assert_eq!(server.terminate().await, Some(0));
    // The contract's bound for a clean stop under load; a healthy stop takes well under a second.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    for w in watchers {
        w.await.unwrap().expect("streams end cleanly on shutdown");
    }

    for i in 0..N {
        origin.release(&format!("/l{i}"));
    }
    let server = Server::start(dir.path(), &["--max-active", "64"]).await;
    let mut client = server.client().await;
    for (i, guid) in guids.iter().enumerate() {
        wait_status(&mut client, guid, S::Completed).await;
        let requests = origin.requests_for(&format!("/l{i}"));
        assert_eq!(requests.len(), 2, "l{i}");
        assert_eq!(
            requests[1].header("range"),
            Some(&*format!("bytes={held}-")),
            "l{i}"
        );
        assert_eq!(
            sha256_file(&server.download_dir().join(format!("l{i}"))),
            sha256(&test_bytes(300_000 + i, i as u64))
        );
    }
}

#[tokio::test]
async fn a_store_from_a_newer_version_is_refused_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let op = create(&mut client, "http://127.0.0.1:9/x", "x").await;
    assert_eq!(server.terminate().await, Some(0));
    let db = dir.path().join("transferd.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_transferd"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
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
