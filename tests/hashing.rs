//! End-to-end: `expected_sha256` is hashed as the bytes are written, and the hash state is saved
//! with each checkpoint, so neither a resume nor the commit reads the file again. Each test
//! reads the server's debug log to tell how the digest was obtained: `sha-256 verified as
//! written` (from the state), `sha-256 verified by reading the file` (the fallback at commit),
//! and the one-time hash of the partial file's prefix when a resume has no usable state.

mod common;

use std::path::Path;
use std::time::Duration;

use common::origin::{Fault, Resource, test_bytes};
use common::*;

/// Quick retries, so a cut body is resumed at once.
const FAST: [&str; 2] = ["--retry-base-delay", "20ms"];

/// What the engine logs when the digest came from the state hashed as the bytes were written.
const AS_WRITTEN: &str = "sha-256 verified as written";
/// What it logs when it had to read the finished file.
const BY_READING: &str = "sha-256 verified by reading the file";
/// What the fetcher logs when a resume had no usable state and hashed the file's prefix.
const PREFIX: &str = "hashing the partial file's prefix once";

fn with_sha(uri: &str, file: &str, body: &[u8]) -> pb::CreateDownloadRequest {
    pb::CreateDownloadRequest {
        expected_sha256: sha256(body),
        ..create_request(uri, file)
    }
}

/// How many times the server's log says `what`.
fn said(h: &Harness, what: &str) -> usize {
    h.server.log().matches(what).count()
}

/// The checkpoint and SHA-256 state stored for `guid`, read from the server's SQLite file.
fn stored(data_dir: &Path, guid: &str) -> (i64, Option<Vec<u8>>) {
    let conn = rusqlite::Connection::open(data_dir.join("transferd.db")).unwrap();
    conn.query_row(
        "SELECT checkpoint_bytes, sha256_state FROM downloads WHERE guid = ?1",
        [guid],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// Polls the store until `guid` has a checkpoint past 0 with a SHA-256 state; returns it.
async fn stored_checkpoint(h: &Harness, guid: &str) -> (i64, Vec<u8>) {
    let start = tokio::time::Instant::now();
    loop {
        if let (bytes @ 1.., Some(state)) = stored(&h.server.data_dir, guid) {
            return (bytes, state);
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no checkpoint with a SHA-256 state was stored; log:\n{}",
            h.server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_body_cut_mid_way_resumes_and_is_verified_as_written() {
    let h = Harness::start(&FAST).await;
    let body = test_bytes(1_000_000, 11);
    let cut = Resource::new(body.clone()).faults(vec![Some(Fault::ResetAfter(300_000))]);
    h.origin.put("/cut", cut);
    let op = h
        .create_with(with_sha(&h.origin.url("/cut"), "cut.bin", &body))
        .await;
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("cut.bin", &body);
    let requests = h.origin.requests_for("/cut");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].header("range"), Some("bytes=300000-"));
    assert_eq!(said(&h, AS_WRITTEN), 1, "{}", h.server.log());
    assert_eq!(said(&h, BY_READING), 0);
    assert_eq!(said(&h, PREFIX), 0, "the resume continued the state");
}

#[tokio::test]
async fn a_wrong_sha256_ends_in_error_after_resuming() {
    let h = Harness::start(&FAST).await;
    let body = test_bytes(1_000_000, 12);
    let cut = Resource::new(body.clone()).faults(vec![Some(Fault::ResetAfter(400_000))]);
    h.origin.put("/cut", cut);
    let wrong = test_bytes(1_000_000, 13);
    let op = h
        .create_with(with_sha(&h.origin.url("/cut"), "cut.bin", &wrong))
        .await;
    let failed = h.wait_status(&op.guid, S::Error).await;
    let error = failed.error.unwrap();
    assert_eq!(error.reason(), pb::TransferErrorReason::Integrity);
    assert_eq!(
        error.message,
        format!(
            "the downloaded bytes have SHA-256 {}, not the expected {}; nothing was written to `cut.bin`",
            sha256(&body),
            sha256(&wrong)
        )
    );
    assert_eq!(
        h.origin.requests_for("/cut")[1].header("range"),
        Some("bytes=400000-")
    );
    assert!(files_under(&h.download_dir()).is_empty());
    assert_eq!(said(&h, AS_WRITTEN), 1, "{}", h.server.log());
    assert_eq!(said(&h, BY_READING), 0);
}

#[tokio::test]
async fn a_kill_mid_way_resumes_from_the_stored_state() {
    let mut h = Harness::start(&FAST).await;
    let body = test_bytes(2_000_000, 14);
    // Slow enough that a periodic checkpoint lands mid-body.
    let slow = Resource::new(body.clone()).throttle(16 * 1024, Duration::from_millis(50));
    h.origin.put("/slow", slow);
    let op = h
        .create_with(with_sha(&h.origin.url("/slow"), "slow.bin", &body))
        .await;
    let (checkpoint, state) = stored_checkpoint(&h, &op.guid).await;
    h.server.kill().await;
    // What was stored is exactly what the server last checkpointed: the kill cannot have
    // moved it.
    assert_eq!(
        stored(&h.server.data_dir, &op.guid),
        (checkpoint, Some(state))
    );

    // The rest at full speed: the same entity, so the resume continues it.
    h.origin.put("/slow", Resource::new(body.clone()));
    h.restart(&FAST).await;
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("slow.bin", &body);
    let requests = h.origin.requests_for("/slow");
    let last = requests.last().unwrap();
    let range = last.header("range").expect("the restart resumed");
    let from: i64 = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        from >= checkpoint,
        "{range} is before the checkpoint {checkpoint}"
    );
    assert_eq!(said(&h, AS_WRITTEN), 1, "{}", h.server.log());
    assert_eq!(said(&h, BY_READING), 0);
    assert_eq!(said(&h, PREFIX), 0, "the resume continued the stored state");
}

#[tokio::test]
async fn a_restart_from_zero_after_a_validator_change_verifies_the_new_entity() {
    let h = Harness::start(&FAST).await;
    let old = test_bytes(600_000, 15);
    let new = test_bytes(700_000, 16);
    h.origin.put(
        "/v",
        Resource::new(old.clone())
            .etag(Some("\"v1\""))
            .hold_after(250_000),
    );
    let op = h
        .create_with(with_sha(&h.origin.url("/v"), "v.bin", &new))
        .await;
    h.wait_bytes(&op.guid, 250_000).await;
    h.pause(&op.guid).await;
    h.origin
        .put("/v", Resource::new(new.clone()).etag(Some("\"v2\"")));
    h.resume(&op.guid).await;
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("v.bin", &new);
    let requests = h.origin.requests_for("/v");
    assert_eq!(requests.len(), 2);
    // The resume was guarded by the old validator; the origin answered with the whole new
    // entity, and the old bytes (and their hash) were dropped.
    assert_eq!(requests[1].header("if-range"), Some("\"v1\""));
    assert_eq!(said(&h, AS_WRITTEN), 1, "{}", h.server.log());
    assert_eq!(said(&h, PREFIX), 0);
}

/// Stops the server after a pause left `guid` checkpointed with a state, then sets its stored
/// state to `state` (NULL: a download from before states were stored).
async fn replace_stored_state(h: &mut Harness, guid: &str, state: Option<Vec<u8>>) {
    assert_eq!(h.server.terminate().await, Some(0));
    let conn = rusqlite::Connection::open(h.server.data_dir.join("transferd.db")).unwrap();
    let changed = conn
        .execute(
            "UPDATE downloads SET sha256_state = ?1 WHERE guid = ?2 AND sha256_state IS NOT NULL",
            rusqlite::params![state, guid],
        )
        .unwrap();
    assert_eq!(changed, 1, "the pause stored a state");
}

#[tokio::test]
async fn a_resume_without_a_usable_state_hashes_the_prefix_once() {
    for (case, replacement) in [("missing", None), ("damaged", Some(vec![1, 2, 3]))] {
        let mut h = Harness::start(&FAST).await;
        let body = test_bytes(800_000, 17);
        h.origin
            .put("/p", Resource::new(body.clone()).hold_after(300_000));
        let op = h
            .create_with(with_sha(&h.origin.url("/p"), "p.bin", &body))
            .await;
        h.wait_bytes(&op.guid, 300_000).await;
        h.pause(&op.guid).await;
        replace_stored_state(&mut h, &op.guid, replacement).await;
        h.origin.release("/p");
        h.restart(&FAST).await;
        h.resume(&op.guid).await;
        h.wait_status(&op.guid, S::Completed).await;
        h.assert_file("p.bin", &body);
        assert_eq!(
            h.origin.requests_for("/p")[1].header("range"),
            Some("bytes=300000-"),
            "{case}"
        );
        assert_eq!(said(&h, PREFIX), 1, "{case}: {}", h.server.log());
        assert_eq!(said(&h, AS_WRITTEN), 1, "{case}");
        assert_eq!(said(&h, BY_READING), 0, "{case}");
    }
}

#[tokio::test]
async fn a_prefix_that_does_not_match_the_expected_sha256_still_fails() {
    // The fallback hashes what is on disk, never trusts it: bytes damaged while the server was
    // down end the download in ERROR.
    let mut h = Harness::start(&FAST).await;
    let body = test_bytes(800_000, 18);
    h.origin
        .put("/d", Resource::new(body.clone()).hold_after(300_000));
    let op = h
        .create_with(with_sha(&h.origin.url("/d"), "d.bin", &body))
        .await;
    h.wait_bytes(&op.guid, 300_000).await;
    h.pause(&op.guid).await;
    replace_stored_state(&mut h, &op.guid, None).await;
    let partial = partial_file(&h, &op.guid);
    let mut bytes = std::fs::read(&partial).unwrap();
    assert_eq!(bytes.len(), 300_000);
    bytes[1000] ^= 0xff;
    std::fs::write(&partial, &bytes).unwrap();
    h.origin.release("/d");
    h.restart(&FAST).await;
    h.resume(&op.guid).await;
    let failed = h.wait_status(&op.guid, S::Error).await;
    let error = failed.error.unwrap();
    assert_eq!(error.reason(), pb::TransferErrorReason::Integrity);
    assert!(error.message.contains(&sha256(&body)), "{}", error.message);
    assert_eq!(said(&h, PREFIX), 1, "{}", h.server.log());
}

#[tokio::test]
async fn a_whole_body_without_a_state_is_verified_by_reading_the_file() {
    // A download from before states were stored whose body was already whole on disk (a pause
    // won against its commit): it is committed without asking the origin again, and verified
    // the only way left, by reading the file.
    let mut h = Harness::start(&FAST).await;
    let body = test_bytes(500_000, 19);
    h.origin
        .put("/w", Resource::new(body.clone()).hold_after(200_000));
    let op = h
        .create_with(with_sha(&h.origin.url("/w"), "w.bin", &body))
        .await;
    h.wait_bytes(&op.guid, 200_000).await;
    h.pause(&op.guid).await;
    replace_stored_state(&mut h, &op.guid, None).await;
    std::fs::write(partial_file(&h, &op.guid), &body).unwrap();
    let conn = rusqlite::Connection::open(h.server.data_dir.join("transferd.db")).unwrap();
    conn.execute(
        "UPDATE downloads SET checkpoint_bytes = total_bytes WHERE guid = ?1",
        [&op.guid],
    )
    .unwrap();
    drop(conn);
    h.restart(&FAST).await;
    h.resume(&op.guid).await;
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("w.bin", &body);
    assert_eq!(h.origin.requests_for("/w").len(), 1);
    assert_eq!(said(&h, BY_READING), 1, "{}", h.server.log());
    assert_eq!(said(&h, AS_WRITTEN), 0);
}

/// The partial file of `guid` under the server's download directory.
fn partial_file(h: &Harness, guid: &str) -> std::path::PathBuf {
    h.download_dir()
        .join(".transferd-partial")
        .join(format!("{guid}.part"))
}

/// Flags for a segmented download: up to four connections.
const SEGMENTED: [&str; 4] = [
    "--max-connections-per-download",
    "4",
    "--retry-base-delay",
    "20ms",
];

/// Large enough to be split several times (the minimum segment is 4 MiB).
const SEGMENTED_SIZE: usize = 24 << 20;

/// An origin that sends each connection 64 KiB every `pace`: more connections bring more
/// throughput, so the download adds them.
fn capped(body: &bytes::Bytes, pace: Duration) -> Resource {
    Resource::new(body.clone()).throttle(64 << 10, pace)
}

/// How many ranged requests reached the origin for `path`.
fn ranged(h: &Harness, path: &str) -> usize {
    h.origin
        .requests_for(path)
        .iter()
        .filter(|r| r.header("range").is_some())
        .count()
}

/// Once a segment list is stored for `guid` with a SHA-256 state of more than 0 bytes: the
/// state's byte count, and the bytes the list holds durably from byte 0. (Filled in order, a
/// download's finished segments merge into the next, so the list is often one segment.)
async fn stored_prefix_state(h: &Harness, guid: &str) -> (u64, u64) {
    let start = tokio::time::Instant::now();
    loop {
        let conn = rusqlite::Connection::open(h.server.data_dir.join("transferd.db")).unwrap();
        let (segments, state): (String, Option<Vec<u8>>) = conn
            .query_row(
                "SELECT segments, sha256_state FROM downloads WHERE guid = ?1",
                [guid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let segments: Vec<[u64; 3]> = serde_json::from_str(&segments).unwrap();
        // The encoded state: a format byte, then the byte count (big-endian).
        let hashed = state
            .as_deref()
            .and_then(|s| s.get(1..9))
            .map(|n| u64::from_be_bytes(n.try_into().unwrap()));
        if let (Some(first), Some(hashed @ 1..)) = (segments.first(), hashed) {
            assert_eq!(first[0], 0, "segments start at byte 0: {segments:?}");
            return (hashed, first[2]);
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no segment list with a SHA-256 state was stored; log:\n{}",
            h.server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segmented_download_is_hashed_as_its_file_fills() {
    let h = Harness::start(&SEGMENTED).await;
    let body = test_bytes(SEGMENTED_SIZE, 20);
    h.origin
        .put("/seg", capped(&body, Duration::from_millis(10)));
    let op = h
        .create_with(with_sha(&h.origin.url("/seg"), "seg.bin", &body))
        .await;
    // Mid-way, the checkpoint stores the segments with the state of the durable prefix,
    // never of more than that prefix.
    let (hashed, prefix) = stored_prefix_state(&h, &op.guid).await;
    assert!(
        hashed <= prefix,
        "{hashed} bytes hashed, {prefix} durable from 0"
    );
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("seg.bin", &body);
    assert!(ranged(&h, "/seg") >= 2, "the download was split");
    // The commit found the whole file hashed, and did not read it again.
    assert_eq!(said(&h, AS_WRITTEN), 1, "{}", h.server.log());
    assert_eq!(said(&h, BY_READING), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segmented_download_with_the_wrong_sha256_fails_and_commits_nothing() {
    let h = Harness::start(&SEGMENTED).await;
    let body = test_bytes(SEGMENTED_SIZE, 21);
    let wrong = test_bytes(SEGMENTED_SIZE, 22);
    h.origin
        .put("/seg", capped(&body, Duration::from_millis(10)));
    let op = h
        .create_with(with_sha(&h.origin.url("/seg"), "seg.bin", &wrong))
        .await;
    let failed = h.wait_status(&op.guid, S::Error).await;
    let error = failed.error.unwrap();
    assert_eq!(error.reason(), pb::TransferErrorReason::Integrity);
    assert!(error.message.contains(&sha256(&body)), "{}", error.message);
    assert!(ranged(&h, "/seg") >= 2, "the download was split");
    assert!(files_under(&h.download_dir()).is_empty());
    assert_eq!(said(&h, AS_WRITTEN), 1, "{}", h.server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_segmented_download_goes_on_hashing_from_its_saved_state() {
    let mut h = Harness::start(&SEGMENTED).await;
    let body = test_bytes(SEGMENTED_SIZE, 23);
    // Slow enough that segment checkpoints land well before the end.
    h.origin
        .put("/seg", capped(&body, Duration::from_millis(40)));
    let op = h
        .create_with(with_sha(&h.origin.url("/seg"), "seg.bin", &body))
        .await;
    let (hashed, prefix) = stored_prefix_state(&h, &op.guid).await;
    h.server.kill().await;
    assert!(
        hashed <= prefix,
        "{hashed} bytes hashed, {prefix} durable from 0"
    );
    h.origin
        .put("/seg", capped(&body, Duration::from_millis(10)));
    h.restart(&SEGMENTED).await;
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("seg.bin", &body);
    let log = h.server.log();
    assert_eq!(
        said(
            &h,
            "going on with the SHA-256 of the durable prefix from its saved state"
        ),
        1,
        "{log}"
    );
    assert_eq!(said(&h, AS_WRITTEN), 1, "{log}");
    assert_eq!(said(&h, BY_READING), 0);
}
