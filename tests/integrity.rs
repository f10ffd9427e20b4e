//! End-to-end: integrity. `expected_sha256` is checked before a file is committed, and a disk
//! that fills up or refuses writes stops the download with a clear reason without harming files
//! already committed. The disk tests mount small tmpfs filesystems of their own; where the
//! machine does not allow mounting (not root, no privileges), they say so and skip.

mod common;

use common::disk::Mount;
use common::origin::{Resource, test_bytes};
use common::*;

fn with_sha(uri: &str, file: &str, sha: &str) -> pb::CreateDownloadRequest {
    pb::CreateDownloadRequest {
        expected_sha256: sha.into(),
        ..create_request(uri, file)
    }
}

#[tokio::test]
async fn matching_sha256_commits_even_across_a_resume() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(700_000, 1);
    h.origin
        .put("/ok", Resource::new(body.clone()).hold_after(250_000));
    // Upper-case hex is accepted and normalised.
    let upper = sha256(&body).to_uppercase();
    let op = h
        .create_with(with_sha(&h.origin.url("/ok"), "ok.bin", &upper))
        .await;
    assert_eq!(op.expected_sha256, sha256(&body));
    h.wait_bytes(&op.guid, 250_000).await;
    h.pause(&op.guid).await;
    h.origin.release("/ok");
    h.resume(&op.guid).await;
    h.wait_status(&op.guid, S::Completed).await;
    assert_eq!(
        h.origin.requests_for("/ok")[1].header("range"),
        Some("bytes=250000-")
    );
    h.assert_file("ok.bin", &body);
}

#[tokio::test]
async fn mismatching_sha256_is_an_integrity_error_and_commits_nothing() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(300_000, 2);
    h.origin.put("/bad", Resource::new(body.clone()));
    let wrong = sha256(b"something else");
    let op = h
        .create_with(with_sha(&h.origin.url("/bad"), "bad.bin", &wrong))
        .await;
    let failed = h.wait_status(&op.guid, S::Error).await;
    let error = failed.error.unwrap();
    assert_eq!(error.reason(), pb::TransferErrorReason::Integrity);
    assert!(error.message.contains(&wrong), "{}", error.message);
    assert!(error.message.contains(&sha256(&body)), "{}", error.message);
    assert_eq!(error.http_status_code, 0);
    // Nothing at the result path, and the partial data is gone.
    assert!(files_under(&h.download_dir()).is_empty());
}

#[tokio::test]
async fn malformed_sha256_is_invalid_argument() {
    let h = Harness::start(&[]).await;
    for bad in ["abc", &"g".repeat(64), &"a".repeat(65)] {
        let request = with_sha("http://127.0.0.1:9/x", "x", bad);
        let err = h.client.create(request).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        assert!(
            err.message().contains("expected_sha256"),
            "{}",
            err.message()
        );
    }
}

#[tokio::test]
async fn a_full_disk_pauses_the_download_until_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let downloads = dir.path().join("small-disk");
    let Some(mount) = Mount::tmpfs(&downloads, "size=1m") else {
        return;
    };
    let dl = downloads.to_str().unwrap();
    // No free-space floor: the point is to run into the full disk itself.
    let flags = ["--download-dir", dl, "--min-free-disk", "0"];
    let h = Harness::start_at(&dir.path().join("data"), &flags).await;
    let small = test_bytes(200_000, 3);
    let big = test_bytes(4 * 1024 * 1024, 4);
    h.origin.put("/small", Resource::new(small.clone()));
    h.origin.put("/big", Resource::new(big.clone()));
    let first = h.create(&h.origin.url("/small"), "small.bin").await;
    h.wait_status(&first.guid, S::Completed).await;

    let op = h.create(&h.origin.url("/big"), "big.bin").await;
    let paused = h.wait_status(&op.guid, S::PausedSystemPolicy).await;
    assert_eq!(paused.status_reason(), pb::StatusReason::LowDiskSpace);
    assert!(paused.error.is_none());
    // Nothing committed was harmed, and the full disk was not retried against the server.
    assert_holds(&downloads.join("small.bin"), &small);
    assert_eq!(h.origin.requests_for("/big").len(), 1);
    let checkpoint = paused.progress.unwrap().bytes_received;

    // Space returns: the download continues by itself from its checkpoint.
    mount.remount("size=16m");
    h.wait_status(&op.guid, S::Completed).await;
    assert_holds(&downloads.join("big.bin"), &big);
    let requests = h.origin.requests_for("/big");
    assert_eq!(requests.len(), 2);
    if checkpoint > 0 {
        assert_eq!(
            requests[1].header("range"),
            Some(&*format!("bytes={checkpoint}-"))
        );
    }
}

#[tokio::test]
async fn an_unwritable_download_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let downloads = dir.path().join("read-only");
    let Some(_mount) = Mount::tmpfs(&downloads, "ro,size=1m") else {
        return;
    };
    let dl = downloads.to_str().unwrap();
    let flags = ["--download-dir", dl, "--min-free-disk", "0"];
    let h = Harness::start_at(&dir.path().join("data"), &flags).await;
    h.origin.put("/f", Resource::new(test_bytes(1000, 5)));
    let op = h.create(&h.origin.url("/f"), "f.bin").await;
    let failed = h.wait_status(&op.guid, S::Error).await;
    let error = failed.error.unwrap();
    assert_eq!(error.reason(), pb::TransferErrorReason::Disk);
    assert!(
        error.message.contains("Read-only file system"),
        "{}",
        error.message
    );
}
