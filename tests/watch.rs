//! End-to-end: progress streams. WatchDownload sends the current state first, then every
//! status change in order and coalesced byte progress, and ends after a terminal status;
//! WatchDownloads does the same for every download of a group. The one-shot flags appear in
//! exactly the messages WinRT defines. A client's pause, resume or cancel, and a transfer's
//! failure, reach watchers only once they are stored.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::origin::{Resource, test_bytes};
use common::*;

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
    let h = Harness::start(&["--max-active", "1"]).await;
    let body = test_bytes(512 * 1024, 1);
    h.origin.put(
        "/blocker",
        Resource::new(test_bytes(4096, 2)).hold_after(10),
    );
    h.origin
        .put("/w", Resource::new(body.clone()).hold_after(100_000));
    h.create(&h.origin.url("/blocker"), "blocker").await;
    let op = h.create(&h.origin.url("/w"), "w.bin").await;
    assert_eq!(status_of(&op), S::Idle);

    // The stream is open (its first message fixed) before anything changes.
    let watcher = tokio::spawn(read_to_end(h.watch(&op.guid).await));
    h.origin.release("/blocker");
    // The held body proves a message with partial bytes is sent while running.
    h.wait_bytes(&op.guid, 100_000).await;
    h.origin.release("/w");
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
    assert_eq!(restarts(&messages), 0, "{messages:?}");
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
    const WATCHERS: usize = 200;
    let h = Harness::start(&[]).await;
    let body = test_bytes(256 * 1024, 3);
    h.origin
        .put("/m", Resource::new(body.clone()).hold_after(1000));
    let op = h.create(&h.origin.url("/m"), "m.bin").await;
    h.wait_status(&op.guid, S::Running).await;
    let mut watchers = Vec::new();
    let (subscribed_tx, mut subscribed_rx) = tokio::sync::mpsc::channel(WATCHERS);
    for i in 0..WATCHERS {
        // Spread the watchers over a few connections, as separate clients would.
        let client = if i % 50 == 0 {
            h.server.client().await
        } else {
            h.client.clone()
        };
        let guid = op.guid.clone();
        let subscribed = subscribed_tx.clone();
        watchers.push(tokio::spawn(async move {
            let mut stream = client.watch(&guid).await.unwrap();
            let first = next_message(&mut stream).await;
            subscribed.send(()).await.unwrap();
            let mut messages = vec![first];
            messages.extend(read_to_end(stream).await);
            messages
        }));
    }
    // Pause only once every watcher has its first message, so each one sees the pause.
    for _ in 0..WATCHERS {
        subscribed_rx.recv().await.unwrap();
    }
    h.pause(&op.guid).await;
    h.origin.release("/m");
    h.resume(&op.guid).await;
    for w in watchers {
        let messages = w.await.unwrap();
        let seq = status_sequence(&messages);
        assert_eq!(seq.first(), Some(&S::Running));
        assert_eq!(seq.last(), Some(&S::Completed));
        assert!(seq.contains(&S::PausedByApplication), "{seq:?}");
        assert_eq!(messages.last().unwrap().bytes_received, body.len() as u64);
        assert_eq!(restarts(&messages), 0, "{messages:?}");
    }
    h.assert_file("m.bin", &body);
}

#[tokio::test]
async fn watching_a_finished_download_sends_its_final_state_and_ends() {
    let h = Harness::start(&[]).await;
    h.origin.put("/f", Resource::new(test_bytes(1234, 4)));
    let op = h.create(&h.origin.url("/f"), "f").await;
    h.wait_status(&op.guid, S::Completed).await;
    let messages = h.watch_to_end(&op.guid).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].status(), S::Completed);
    assert_eq!(messages[0].bytes_received, 1234);
}

#[tokio::test]
async fn watch_downloads_streams_one_group_from_its_current_state() {
    let h = Harness::start(&[]).await;
    h.origin
        .put("/a", Resource::new(test_bytes(2000, 5)).hold_after(500));
    h.origin.put("/b", Resource::new(test_bytes(3000, 6)));
    h.origin.put("/c", Resource::new(test_bytes(4000, 7)));
    let in_group = |path: &str, file: &str| pb::CreateDownloadRequest {
        transfer_group: "media".into(),
        ..create_request(&h.origin.url(path), file)
    };
    let a = h.create_with(in_group("/a", "a")).await;
    h.wait_status(&a.guid, S::Running).await;
    let mut events = h.watch_all(Some("media")).await;
    let first = next_message(&mut events).await;
    assert_eq!(first.guid, a.guid);
    assert_eq!(first.progress.unwrap().status(), S::Running);
    // Another group's download never shows; a new one in the group does.
    let c = h.create(&h.origin.url("/c"), "c").await;
    let b = h.create_with(in_group("/b", "b")).await;
    h.origin.release("/a");
    let mut done = HashSet::new();
    let events = read_until(&mut events, "both completed", |event| {
        if event.progress.unwrap().status() == S::Completed {
            done.insert(event.guid.clone());
        }
        done.len() == 2
    })
    .await;
    let mut per_guid: HashMap<String, Vec<pb::BackgroundDownloadProgress>> = HashMap::new();
    for event in events {
        assert_ne!(event.guid, c.guid, "an event from another group leaked");
        per_guid
            .entry(event.guid)
            .or_default()
            .push(event.progress.unwrap());
    }
    let b_seq = status_sequence(&per_guid[&b.guid]);
    assert_eq!(b_seq, [S::Idle, S::Running, S::Completed]);
    assert_eq!(responses_changed(&per_guid[&b.guid]), 1);
    assert_eq!(per_guid[&b.guid].last().unwrap().bytes_received, 3000);
    assert_eq!(per_guid[&a.guid].last().unwrap().bytes_received, 2000);
}

#[tokio::test]
async fn the_snapshot_of_many_downloads_arrives_complete_in_order_then_live_events_follow() {
    // More downloads than the server walks per page, so the snapshot spans several pages.
    const DOWNLOADS: usize = 700;
    let h = Harness::start(&["--max-active", "1"]).await;
    // The first download holds the only slot for the whole test, so the rest stay quiet.
    h.origin
        .put("/held", Resource::new(test_bytes(4096, 8)).hold_after(0));
    let mut created = Vec::new();
    for i in 0..DOWNLOADS {
        let op = h.create(&h.origin.url("/held"), &format!("many-{i}")).await;
        created.push(op.guid);
    }
    h.wait_status(&created[0], S::Running).await;
    // Most stored downloads are finished, as on a long-lived server.
    for guid in created.iter().skip(1).step_by(3) {
        h.cancel(guid).await;
    }
    let mut expected = Vec::new();
    for guid in &created {
        expected.push((guid.clone(), h.status(guid).await));
    }

    let mut events = h.watch_all(None).await;
    let mut snapshot = Vec::new();
    for _ in 0..DOWNLOADS {
        let event = next_message(&mut events).await;
        snapshot.push((event.guid, event.progress.unwrap().status()));
    }
    assert_eq!(
        snapshot, expected,
        "the snapshot is every download once, in creation order"
    );

    // Then live events, each once: a change to a download already sent, and a new download.
    let live = &created[2];
    assert_eq!(h.status(live).await, S::Idle);
    h.cancel(live).await;
    let late = h.create(&h.origin.url("/held"), "late").await;
    let first = next_message(&mut events).await;
    assert_eq!(
        (first.guid.as_str(), first.progress.unwrap().status()),
        (live.as_str(), S::Canceled)
    );
    let second = next_message(&mut events).await;
    assert_eq!(
        (second.guid.as_str(), second.progress.unwrap().status()),
        (late.guid.as_str(), S::Idle)
    );
}

/// How long a test watches a stream for a message that must not come.
const QUIET: Duration = Duration::from_millis(300);

/// The store's write lock, held by another connection to the database (as an operator's
/// `sqlite3` shell can hold it) until dropped: every store write of the server waits meanwhile,
/// within its busy timeout.
struct StoreLocked(rusqlite::Connection);

impl StoreLocked {
    fn take(h: &Harness) -> StoreLocked {
        let conn = rusqlite::Connection::open(h.server.data_dir.join("transferd.db")).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        StoreLocked(conn)
    }
}

impl Drop for StoreLocked {
    fn drop(&mut self) {
        self.0.execute_batch("ROLLBACK").unwrap();
    }
}

/// The statuses of the messages `stream` sends within [`QUIET`].
async fn statuses_within(stream: &mut tonic::Streaming<pb::BackgroundDownloadProgress>) -> Vec<S> {
    let mut seen = Vec::new();
    let until = tokio::time::Instant::now() + QUIET;
    while let Ok(message) = tokio::time::timeout_at(until, stream.message()).await {
        seen.push(message.unwrap().expect("the stream ended").status());
    }
    seen
}

/// A client's control call.
#[derive(Clone, Copy)]
enum Call {
    Pause,
    Resume,
    Cancel,
}

/// Takes the store's write lock, sends `call` for `guid` without waiting for its answer, and
/// waits until the server's log says it made the change (which it cannot store yet).
async fn send_unstored(
    h: &Harness,
    guid: &str,
    call: Call,
) -> (
    StoreLocked,
    tokio::task::JoinHandle<Result<pb::DownloadOperation, tonic::Status>>,
) {
    let locked = StoreLocked::take(h);
    let (client, guid) = (h.client.clone(), guid.to_string());
    let answer = tokio::spawn(async move {
        match call {
            Call::Pause => client.pause(&guid).await,
            Call::Resume => client.resume(&guid).await,
            Call::Cancel => client.cancel(&guid).await,
        }
    });
    h.wait_log(match call {
        Call::Pause => "paused by a client",
        Call::Resume => "resumed by a client",
        Call::Cancel => "canceled by a client",
    })
    .await;
    (locked, answer)
}

#[tokio::test]
async fn a_pause_reaches_watchers_only_once_it_is_stored() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(300_000, 8);
    let op = h.start_held("/p.bin", Resource::new(body), 100_000).await;
    let mut watcher = h.watch(&op.guid).await;
    assert_eq!(next_message(&mut watcher).await.status(), S::Running);

    // The server has paused it but cannot store that yet, so no watcher is told, and
    // GetDownload agrees with them: a crash now would bring it back RUNNING.
    let (locked, pause) = send_unstored(&h, &op.guid, Call::Pause).await;
    assert_eq!(statuses_within(&mut watcher).await, []);
    let during = h.get(&op.guid).await;
    assert_eq!(
        (status_of(&during), during.status_reason()),
        (S::Running, pb::StatusReason::Unspecified)
    );
    assert!(
        !pause.is_finished(),
        "the call answers once the pause is stored"
    );
    // A running download is stored as IDLE: where a restart would queue it again.
    assert_eq!(h.stored_status(&op.guid), S::Idle as i32);

    drop(locked);
    let answered = pause.await.unwrap().expect("PauseDownload");
    assert_eq!(status_of(&answered), S::PausedByApplication);
    let seen = next_message(&mut watcher).await;
    assert_eq!(
        (seen.status(), seen.bytes_received),
        (S::PausedByApplication, 100_000)
    );
    assert_eq!(h.stored_status(&op.guid), S::PausedByApplication as i32);

    // A resume and a cancel are shown the same way: stored first.
    let (locked, resume) = send_unstored(&h, &op.guid, Call::Resume).await;
    assert_eq!(statuses_within(&mut watcher).await, []);
    assert_eq!(h.status(&op.guid).await, S::PausedByApplication);
    drop(locked);
    resume.await.unwrap().expect("ResumeDownload");
    assert_eq!(next_message(&mut watcher).await.status(), S::Idle);

    let (locked, cancel) = send_unstored(&h, &op.guid, Call::Cancel).await;
    let seen = statuses_within(&mut watcher).await;
    assert!(!seen.contains(&S::Canceled), "{seen:?}");
    drop(locked);
    cancel.await.unwrap().expect("CancelDownload");
    // It may have started running again before the cancel; the cancel comes last.
    let rest = read_until(&mut watcher, "CANCELED", |m| m.status() != S::Running).await;
    assert_eq!(rest.last().map(|m| m.status()), Some(S::Canceled));
    assert_eq!(h.stored_status(&op.guid), S::Canceled as i32);
}

#[tokio::test]
async fn a_pause_that_a_crash_takes_back_was_never_shown() {
    let mut h = Harness::start(&[]).await;
    let body = test_bytes(300_000, 14);
    let op = h
        .start_held("/k.bin", Resource::new(body.clone()), 100_000)
        .await;
    let mut watcher = h.watch(&op.guid).await;
    assert_eq!(next_message(&mut watcher).await.status(), S::Running);

    // The server pauses it, then dies (SIGKILL) before it could store the pause.
    let (locked, pause) = send_unstored(&h, &op.guid, Call::Pause).await;
    h.server.kill().await;
    drop(locked);
    let mut seen = Vec::new();
    while let Ok(Ok(Some(message))) = tokio::time::timeout(DEADLINE, watcher.message()).await {
        seen.push(message.status());
    }
    assert!(!seen.contains(&S::PausedByApplication), "{seen:?}");
    assert!(
        pause.await.unwrap().is_err(),
        "the pause was never acknowledged"
    );

    // After the restart the download goes on, as the store says, and completes byte-exact.
    h.restart(&[]).await;
    assert_ne!(h.status(&op.guid).await, S::PausedByApplication);
    h.origin.release("/k.bin");
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("k.bin", &body);
}

#[tokio::test]
async fn a_failure_reaches_watchers_only_once_it_is_stored() {
    let h = Harness::start(&["--max-active", "1"]).await;
    h.origin.put(
        "/blocker",
        Resource::new(test_bytes(4096, 9)).hold_after(10),
    );
    h.origin
        .put("/gone", Resource::new(test_bytes(1000, 10)).status(404));
    let blocker = h.create(&h.origin.url("/blocker"), "blocker").await;
    h.wait_bytes(&blocker.guid, 10).await;
    let op = h.create(&h.origin.url("/gone"), "gone.bin").await;
    let mut watcher = h.watch(&op.guid).await;
    assert_eq!(next_message(&mut watcher).await.status(), S::Idle);

    // The blocker completes and frees its slot without waiting for the store; the next
    // download starts, and its origin answers 404.
    let locked = StoreLocked::take(&h);
    h.origin.release("/blocker");
    h.wait_log("failed: the server answered HTTP 404").await;
    // Watchers see it start, but not fail until the failure is stored: a crash now would run
    // it again.
    let mut seen = statuses_within(&mut watcher).await;
    seen.dedup();
    assert_eq!(seen, [S::Running]);
    let during = h.get(&op.guid).await;
    assert_eq!(status_of(&during), S::Running);
    assert!(during.error.is_none(), "{during:?}");
    assert_eq!(h.stored_status(&op.guid), S::Idle as i32);

    drop(locked);
    let seen = next_message(&mut watcher).await;
    assert_eq!(seen.status(), S::Error);
    assert_eq!(h.stored_status(&op.guid), S::Error as i32);
}

/// A connection coalesces its writes only while it carries 16 or more open streams (see
/// `grpc/coalesce.rs`): unary answers and a few watchers are written at once, thousands of
/// watchers share writes. The server logs each switch at debug level; this checks the wiring
/// end to end (the connection's stream count reaches the socket wrapper through tonic's
/// connect info and the limits layer) and that watchers on a coalescing connection still see
/// every change.
#[tokio::test]
async fn only_a_connection_with_many_streams_coalesces_its_writes() {
    const COALESCING: &str = "coalescing the writes of a connection with many streams";
    const AT_ONCE: &str = "writing at once on a connection with few streams";
    let h = Harness::start(&[]).await;
    h.origin.put(
        "/c",
        Resource::new(test_bytes(64 * 1024, 5)).hold_after(1000),
    );
    let op = h.create(&h.origin.url("/c"), "c.bin").await;
    // Held at 1,000 bytes, so no progress message comes between the watchers' first message
    // and the pause.
    h.wait_bytes(&op.guid, 1000).await;
    // A connection of its own: 15 watchers and unary calls, answered without coalescing.
    let client = h.server.client().await;
    let mut streams = Vec::new();
    for _ in 0..15 {
        let mut stream = client.watch(&op.guid).await.unwrap();
        assert_eq!(next_message(&mut stream).await.status(), S::Running);
        streams.push(stream);
    }
    for _ in 0..20 {
        assert_eq!(status_of(&client.get(&op.guid).await.unwrap()), S::Running);
    }
    assert!(!h.server.log().contains(COALESCING), "{}", h.server.log());
    // The 16th stream: from its first message on, the connection coalesces.
    let mut stream = client.watch(&op.guid).await.unwrap();
    assert_eq!(next_message(&mut stream).await.status(), S::Running);
    streams.push(stream);
    h.wait_log(COALESCING).await;
    client.pause(&op.guid).await.unwrap();
    for stream in &mut streams {
        assert_eq!(next_message(stream).await.status(), S::PausedByApplication);
    }
    // Back to one stream: once the server has seen the others close, writes go out at once.
    streams.truncate(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !h.server.log().contains(AT_ONCE) {
        assert!(tokio::time::Instant::now() < deadline, "{}", h.server.log());
        let got = client.get(&op.guid).await.unwrap();
        assert_eq!(status_of(&got), S::PausedByApplication);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = h.server.log();
    assert_eq!(log.matches(COALESCING).count(), 1, "{log}");
    assert_eq!(log.matches(AT_ONCE).count(), 1, "{log}");
    client.resume(&op.guid).await.unwrap();
    h.origin.release("/c");
    let messages = read_to_end(streams.pop().unwrap()).await;
    assert_eq!(
        status_sequence(&messages).last(),
        Some(&S::Completed),
        "{messages:?}"
    );
}
