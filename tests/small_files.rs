//! Many small files at once, the workload where per-download overhead shows: store writes that
//! share commits, directory fsyncs shared by the commits into one directory, and slots handed
//! to the next download as soon as the last one is committed. What is batched must never be
//! published early or lost: a watcher that sees COMPLETED finds the whole file in place, and a
//! kill right after a burst of completions loses none of them.

mod common;

use std::collections::{HashMap, HashSet};

use common::origin::{Resource, test_bytes};
use common::*;

/// Downloads in a burst: many more than the slots, so slots are handed on many times.
const BURST: usize = 120;

/// Slots: enough that commits into one directory overlap and share fsyncs.
const MAX_ACTIVE: &str = "16";

/// Puts `count` small resources on the origin; returns each body by index.
fn small_resources(h: &Harness, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            // Sizes vary so that a mix-up of two files cannot go unnoticed.
            let body = test_bytes(8 * 1024 + i * 97, 1000 + i as u64).to_vec();
            h.origin.put(&format!("/s{i}"), Resource::new(body.clone()));
            body
        })
        .collect()
}

/// Creates every download of `bodies`, `i` into `dir/f{i}` with its expected SHA-256, while a
/// WatchDownloads stream is already open; returns the guids and the stream.
async fn create_burst(
    h: &Harness,
    bodies: &[Vec<u8>],
    dir: &str,
) -> (Vec<String>, tonic::Streaming<pb::DownloadProgressEvent>) {
    let events = h.watch_all(None).await;
    let mut guids = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let mut request = create_request(&h.origin.url(&format!("/s{i}")), &format!("{dir}/f{i}"));
        request.expected_sha256 = sha256(body);
        guids.push(h.create_with(request).await.guid);
    }
    (guids, events)
}

/// Every download of a burst into one directory completes with exactly its bytes, and at the
/// moment a watcher sees a download COMPLETED its file is already in place, whole (the status
/// is published only after the commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_into_one_directory_completes_every_file_exactly() {
    let h = Harness::start(&["--max-active", MAX_ACTIVE]).await;
    let bodies = small_resources(&h, BURST);
    let (guids, mut events) = create_burst(&h, &bodies, "burst").await;
    let index: HashMap<&str, usize> = guids
        .iter()
        .enumerate()
        .map(|(i, g)| (g.as_str(), i))
        .collect();
    let mut completed = HashSet::new();
    while completed.len() < BURST {
        let event = next_message(&mut events).await;
        let status = event.progress.as_ref().expect("progress").status();
        assert!(
            !matches!(status, S::Error | S::Canceled),
            "{} ended {status:?}",
            event.guid
        );
        if status == S::Completed && completed.insert(event.guid.clone()) {
            let i = index[event.guid.as_str()];
            // Read before anything else happens: the file must be there already.
            h.assert_file(&format!("burst/f{i}"), &bodies[i]);
        }
    }
    for (i, guid) in guids.iter().enumerate() {
        let op = h.get(guid).await;
        assert_eq!(status_of(&op), S::Completed);
        let progress = op.progress.expect("progress");
        assert_eq!(progress.bytes_received, bodies[i].len() as u64);
        assert_eq!(progress.total_bytes_to_receive, bodies[i].len() as u64);
    }
    let mut expected: Vec<String> = (0..BURST).map(|i| format!("f{i}")).collect();
    expected.sort();
    assert_eq!(
        files_under(&h.download_dir().join("burst")),
        expected,
        "exactly the result files, nothing else"
    );
}

/// SIGKILL right after a burst of completions: every download a watcher saw COMPLETED is
/// COMPLETED after the restart, with exactly its bytes, and is never fetched again; the rest
/// complete after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_a_burst_of_completions_loses_none_of_them() {
    let mut h = Harness::start(&["--max-active", MAX_ACTIVE]).await;
    let bodies = small_resources(&h, BURST);
    let (guids, mut events) = create_burst(&h, &bodies, "kill").await;
    let index: HashMap<&str, usize> = guids
        .iter()
        .enumerate()
        .map(|(i, g)| (g.as_str(), i))
        .collect();
    // Kill while completions are arriving in quick succession: after a third of them.
    let mut seen = HashSet::new();
    while seen.len() < BURST / 3 {
        let event = next_message(&mut events).await;
        if event.progress.as_ref().expect("progress").status() == S::Completed {
            seen.insert(event.guid);
        }
    }
    h.server.kill().await;
    let hits: HashMap<&str, usize> = seen
        .iter()
        .map(|g| {
            (
                g.as_str(),
                h.origin.hits(&format!("/s{}", index[g.as_str()])),
            )
        })
        .collect();

    h.restart(&["--max-active", MAX_ACTIVE]).await;
    for guid in &seen {
        let i = index[guid.as_str()];
        assert_eq!(
            status_of(&h.get(guid).await),
            S::Completed,
            "download {i} was seen COMPLETED before the kill"
        );
        h.assert_file(&format!("kill/f{i}"), &bodies[i]);
    }
    for (i, guid) in guids.iter().enumerate() {
        h.wait_status(guid, S::Completed).await;
        h.assert_file(&format!("kill/f{i}"), &bodies[i]);
    }
    for guid in &seen {
        let path = format!("/s{}", index[guid.as_str()]);
        assert_eq!(
            h.origin.hits(&path),
            hits[guid.as_str()],
            "{path} was fetched again after it was COMPLETED"
        );
    }
}
