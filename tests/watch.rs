//! End-to-end: progress streams. WatchDownload sends the current state first, then every
//! status change in order and coalesced byte progress, and ends after a terminal status;
//! WatchDownloads does the same for every download of a group. The one-shot flags appear in
//! exactly the messages WinRT defines.

mod common;

use common::origin::{Origin, Resource, test_bytes};
use common::*;
use transferd::pb::backgroundtransfer::v1 as pb;

/// Statuses in the order they appeared, with consecutive repeats folded.
fn status_sequence(messages: &[pb::BackgroundDownloadProgress]) -> Vec<S> {
    let mut seq: Vec<S> = Vec::new();
    for m in messages {
        if seq.last() != Some(&m.status()) {
            seq.push(m.status());
        }
    }
    seq
}

#[tokio::test]
async fn watch_sends_current_state_then_every_change_and_ends_after_completion() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let body = test_bytes(512 * 1024, 1);
    origin.put(
        "/blocker",
        Resource::new(test_bytes(4096, 2)).hold_after(10),
    );
    origin.put("/w", Resource::new(body.clone()).hold_after(100_000));
    let server = Server::start(dir.path(), &["--max-active", "1"]).await;
    let mut client = server.client().await;
    create(&mut client, &origin.url("/blocker"), "blocker").await;
    let op = create(&mut client, &origin.url("/w"), "w.bin").await;
    assert_eq!(status_of(&op), S::Idle);

    // The stream is open (its first message fixed) before anything changes.
    let mut stream = client
        .watch_download(pb::WatchDownloadRequest {
            guid: op.guid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let watcher = tokio::spawn(async move {
        let mut messages = Vec::new();
        while let Some(m) = stream.message().await.unwrap() {
            messages.push(m);
        }
        messages
    });
    origin.release("/blocker");
    // The held body proves a message with partial bytes is sent while running.
    wait_bytes(&mut client, &op.guid, 100_000).await;
    origin.release("/w");
    let messages = watcher.await.unwrap();

    let first = &messages[0];
    assert_eq!(first.status(), S::Idle);
    assert_eq!(
        (first.bytes_received, first.has_response_changed),
        (0, false)
    );
    assert_eq!(
        status_sequence(&messages),
        [S::Idle, S::Running, S::Completed]
    );
    assert!(
        messages
            .iter()
            .any(|m| m.status() == S::Running && m.bytes_received == 100_000)
    );
    let changed: Vec<_> = messages.iter().filter(|m| m.has_response_changed).collect();
    assert_eq!(changed.len(), 1, "{messages:?}");
    assert_eq!(changed[0].status(), S::Running);
    assert_eq!(changed[0].total_bytes_to_receive, body.len() as u64);
    assert!(messages.iter().all(|m| !m.has_restarted));
    assert!(
        messages
            .windows(2)
            .all(|w| w[0].bytes_received <= w[1].bytes_received)
    );
    let last = messages.last().unwrap();
    assert_eq!(last.bytes_received, body.len() as u64);
    assert_eq!(last.total_bytes_to_receive, body.len() as u64);
}

#[tokio::test]
async fn many_watchers_each_see_the_whole_story() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let body = test_bytes(256 * 1024, 3);
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    origin.put("/m", Resource::new(body.clone()).hold_after(1000));
    let op = create(&mut client, &origin.url("/m"), "m.bin").await;
    wait_status(&mut client, &op.guid, S::Running).await;
    let mut watchers = Vec::new();
    let (subscribed_tx, mut subscribed_rx) = tokio::sync::mpsc::channel(200);
    for i in 0..200 {
        // Spread the watchers over a few connections, as separate clients would.
        let mut client = if i % 50 == 0 {
            server.client().await
        } else {
            client.clone()
        };
        let guid = op.guid.clone();
        let subscribed = subscribed_tx.clone();
        watchers.push(tokio::spawn(async move {
            let mut stream = client
                .watch_download(pb::WatchDownloadRequest { guid })
                .await
                .unwrap()
                .into_inner();
            let mut messages = vec![stream.message().await.unwrap().unwrap()];
            subscribed.send(()).await.unwrap();
            while let Some(m) = stream.message().await.unwrap() {
                messages.push(m);
            }
            messages
        }));
    }
    // Pause only once every watcher has its first message, so each one sees the pause.
    for _ in 0..200 {
        subscribed_rx.recv().await.unwrap();
    }
    pause(&mut client, &op.guid).await;
    origin.release("/m");
    resume(&mut client, &op.guid).await;
    for w in watchers {
        let messages = w.await.unwrap();
        let seq = status_sequence(&messages);
        assert_eq!(seq.first(), Some(&S::Running));
        assert_eq!(seq.last(), Some(&S::Completed));
        assert!(seq.contains(&S::PausedByApplication), "{seq:?}");
        assert_eq!(messages.last().unwrap().bytes_received, body.len() as u64);
        assert!(messages.iter().all(|m| !m.has_restarted));
    }
    assert_eq!(
        sha256_file(&server.download_dir().join("m.bin")),
        sha256(&body)
    );
}

#[tokio::test]
async fn watching_a_finished_download_sends_its_final_state_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    origin.put("/f", Resource::new(test_bytes(1234, 4)));
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let op = create(&mut client, &origin.url("/f"), "f").await;
    wait_status(&mut client, &op.guid, S::Completed).await;
    let messages = watch_to_end(&mut client, &op.guid).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].status(), S::Completed);
    assert_eq!(messages[0].bytes_received, 1234);
}

#[tokio::test]
async fn watch_downloads_streams_one_group_from_its_current_state() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    origin.put("/a", Resource::new(test_bytes(2000, 5)).hold_after(500));
    origin.put("/b", Resource::new(test_bytes(3000, 6)));
    origin.put("/c", Resource::new(test_bytes(4000, 7)));
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let in_group = |uri: String, file: &str| pb::CreateDownloadRequest {
        transfer_group: "media".into(),
        ..create_request(&uri, file)
    };
    let a = client
        .create_download(in_group(origin.url("/a"), "a"))
        .await
        .unwrap()
        .into_inner();
    wait_status(&mut client, &a.guid, S::Running).await;
    let mut events = client
        .watch_downloads(pb::WatchDownloadsRequest {
            transfer_group: Some("media".into()),
        })
        .await
        .unwrap()
        .into_inner();
    let first = events.message().await.unwrap().unwrap();
    assert_eq!(first.guid, a.guid);
    assert_eq!(first.progress.unwrap().status(), S::Running);
    // Another group's download never shows; a new one in the group does.
    let c = create(&mut client, &origin.url("/c"), "c").await;
    let b = client
        .create_download(in_group(origin.url("/b"), "b"))
        .await
        .unwrap()
        .into_inner();
    origin.release("/a");
    let mut done = std::collections::HashSet::new();
    let mut per_guid: std::collections::HashMap<String, Vec<pb::BackgroundDownloadProgress>> =
        Default::default();
    while done.len() < 2 {
        let event = tokio::time::timeout(DEADLINE, events.message())
            .await
            .expect("events keep coming")
            .unwrap()
            .unwrap();
        assert_ne!(event.guid, c.guid, "an event from another group leaked");
        let progress = event.progress.unwrap();
        if progress.status() == S::Completed {
            done.insert(event.guid.clone());
        }
        per_guid.entry(event.guid).or_default().push(progress);
    }
    let b_seq = status_sequence(&per_guid[&b.guid]);
    assert_eq!(b_seq, [S::Idle, S::Running, S::Completed]);
    assert_eq!(
        per_guid[&b.guid]
            .iter()
            .filter(|m| m.has_response_changed)
            .count(),
        1
    );
    assert_eq!(per_guid[&b.guid].last().unwrap().bytes_received, 3000);
    assert_eq!(per_guid[&a.guid].last().unwrap().bytes_received, 2000);
}
