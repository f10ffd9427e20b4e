//! End-to-end: finished downloads can be forgotten, and the store refuses rows it cannot trust.
//! DeleteDownload forgets a finished download (and on request its result file) for good, also
//! across a restart; `--retain-finished` prunes finished downloads at start and while serving;
//! a store row with a negative byte count, a result path that escapes, or a result file claimed
//! by two unfinished downloads stops transferd before it serves, naming the download.

mod common;

use std::time::{Duration, Instant};

use common::origin::{Resource, test_bytes};
use common::*;
use tonic::Code;

/// Completes a download of `len` bytes (seeded `seed`) to `file`.
async fn completed(h: &Harness, file: &str, len: usize, seed: u64) -> String {
    let path = format!("/{file}-{seed}");
    h.origin.put(&path, Resource::new(test_bytes(len, seed)));
    // Replacing lets a later download commit over an earlier one's file.
    let op = h
        .create_with(pb::CreateDownloadRequest {
            replace_existing: true,
            ..create_request(&h.origin.url(&path), file)
        })
        .await;
    h.wait_status(&op.guid, S::Completed).await;
    op.guid
}

/// The code GetDownload answers for `guid`, or `Ok` if it exists.
async fn get_code(h: &Harness, guid: &str) -> Code {
    match h.client.get(guid).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Polls until `guid` is NOT_FOUND; panics after [`DEADLINE`].
async fn wait_gone(h: &Harness, guid: &str) {
    let start = Instant::now();
    while get_code(h, guid).await != Code::NotFound {
        assert!(start.elapsed() < DEADLINE, "`{guid}` was never pruned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn delete_download_forgets_finished_downloads_for_good() {
    let mut h = Harness::start(&[]).await;
    let kept_file = completed(&h, "kept.bin", 3000, 1).await;
    let removed_file = completed(&h, "dir/removed.bin", 4000, 2).await;
    let running = h
        .start_held("/running.bin", Resource::new(test_bytes(100_000, 3)), 1000)
        .await;

    let refused = h.client.delete(&running.guid, true).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("RUNNING"), "{refused:?}");
    let unknown = h.client.delete("no-such-guid", false).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    // Without delete_file the record goes and the file stays; a watch of it has ended.
    let watch = h.watch(&kept_file).await;
    let deleted = h.delete(&kept_file, false).await;
    assert!(!deleted.result_file_deleted);
    assert_eq!(deleted.operation.unwrap().guid, kept_file);
    read_to_end(watch).await;
    h.assert_file("kept.bin", &test_bytes(3000, 1));
    assert_eq!(get_code(&h, &kept_file).await, Code::NotFound);
    let watch_again = h.client.watch(&kept_file).await.unwrap_err();
    assert_eq!(watch_again.code(), Code::NotFound);

    // With delete_file the committed file goes too; a second delete finds nothing.
    let deleted = h.delete(&removed_file, true).await;
    assert!(deleted.result_file_deleted);
    assert!(!h.download_dir().join("dir/removed.bin").exists());
    let again = h.client.delete(&removed_file, true).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound);

    // A canceled download has no result file to remove.
    h.cancel(&running.guid).await;
    assert!(!h.delete(&running.guid, true).await.result_file_deleted);
    assert_eq!(h.list_guids().await, Vec::<String>::new());

    assert_eq!(h.server.terminate().await, Some(0));
    h.restart(&[]).await;
    assert_eq!(h.list_guids().await, Vec::<String>::new());
    for guid in [&kept_file, &removed_file, &running.guid] {
        assert_eq!(get_code(&h, guid).await, Code::NotFound, "{guid}");
    }
    h.assert_file("kept.bin", &test_bytes(3000, 1));
}

/// A result file a later download committed to belongs to that one: deleting the earlier
/// download with delete_file leaves it.
#[tokio::test]
async fn delete_file_spares_a_file_a_later_download_committed() {
    let h = Harness::start(&[]).await;
    let first = completed(&h, "shared.bin", 2000, 1).await;
    let second = completed(&h, "shared.bin", 2500, 2).await;
    assert!(!h.delete(&first, true).await.result_file_deleted);
    h.assert_file("shared.bin", &test_bytes(2500, 2));
    assert!(h.delete(&second, true).await.result_file_deleted);
    assert!(!h.download_dir().join("shared.bin").exists());
}

#[tokio::test]
async fn retention_prunes_finished_downloads_while_serving() {
    let h = Harness::start(&["--retain-finished", "1s"]).await;
    let live = h
        .start_held("/live.bin", Resource::new(test_bytes(50_000, 1)), 1000)
        .await;
    let done = completed(&h, "done.bin", 3000, 2).await;
    wait_gone(&h, &done).await;
    // Retention forgets records, never result files, and never an unfinished download.
    h.assert_file("done.bin", &test_bytes(3000, 2));
    assert_eq!(h.list_guids().await, vec![live.guid.clone()]);
}

#[tokio::test]
async fn retention_prunes_at_start_before_anything_is_served() {
    let mut h = Harness::start(&[]).await;
    let old = completed(&h, "old.bin", 1000, 1).await;
    let recent = completed(&h, "recent.bin", 1000, 2).await;
    assert_eq!(h.server.terminate().await, Some(0));
    // Age one record by two hours, as if the server had been down that long since.
    let conn = rusqlite::Connection::open(h.server.data_dir.join("transferd.db")).unwrap();
    let aged = conn
        .execute(
            "UPDATE downloads SET finished_at = finished_at - 7200000 WHERE guid = ?1",
            [&old],
        )
        .unwrap();
    assert_eq!(aged, 1);
    drop(conn);
    h.restart(&["--retain-finished", "1h"]).await;
    assert_eq!(h.list_guids().await, vec![recent.clone()]);
    assert_eq!(get_code(&h, &old).await, Code::NotFound);
    assert_eq!(h.server.terminate().await, Some(0));
    // Gone from the store, not only hidden: it stays gone without retention.
    h.restart(&[]).await;
    assert_eq!(h.list_guids().await, vec![recent]);
}

#[tokio::test]
async fn untrusted_rows_stop_the_server_naming_the_download() {
    let mut h = Harness::start(&[]).await;
    let a = h
        .start_held("/a.bin", Resource::new(test_bytes(50_000, 1)), 1000)
        .await;
    let b = h
        .start_held("/b.bin", Resource::new(test_bytes(50_000, 2)), 1000)
        .await;
    assert_eq!(h.server.terminate().await, Some(0));
    let db = h.server.data_dir.join("transferd.db");
    let data_dir = h.server.data_dir.to_str().unwrap().to_string();
    let cases = [
        (
            format!(
                "UPDATE downloads SET checkpoint_bytes = -1 WHERE guid = '{}'",
                a.guid
            ),
            format!(
                "UPDATE downloads SET checkpoint_bytes = 1000 WHERE guid = '{}'",
                a.guid
            ),
            a.guid.clone(),
            "negative",
        ),
        (
            format!(
                "UPDATE downloads SET total_bytes = -7 WHERE guid = '{}'",
                b.guid
            ),
            format!(
                "UPDATE downloads SET total_bytes = 50000 WHERE guid = '{}'",
                b.guid
            ),
            b.guid.clone(),
            "negative",
        ),
        (
            format!(
                "UPDATE downloads SET result_file = 'a.bin' WHERE guid = '{}'",
                b.guid
            ),
            format!(
                "UPDATE downloads SET result_file = 'b.bin' WHERE guid = '{}'",
                b.guid
            ),
            b.guid.clone(),
            "claims the same result file",
        ),
        (
            format!(
                "UPDATE downloads SET result_file = '../../escape.bin' WHERE guid = '{}'",
                a.guid
            ),
            format!(
                "UPDATE downloads SET result_file = 'a.bin' WHERE guid = '{}'",
                a.guid
            ),
            a.guid.clone(),
            "cannot be trusted",
        ),
    ];
    for (corrupt, repair, guid, why) in cases {
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch(&corrupt)
            .unwrap();
        let out = run_transferd(["--listen", "127.0.0.1:0", "--data-dir", &data_dir]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "started despite: {corrupt}\n{stderr}"
        );
        assert!(out.stdout.is_empty(), "it must not announce an address");
        assert!(stderr.contains("corrupt"), "{corrupt}: {stderr}");
        assert!(
            stderr.contains(&guid) && stderr.contains(why),
            "{corrupt}: {stderr}"
        );
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch(&repair)
            .unwrap();
    }
    // Repaired, it serves both again.
    h.restart(&[]).await;
    assert_eq!(h.list_guids().await, vec![a.guid, b.guid]);
}
