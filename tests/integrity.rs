//! End-to-end: integrity. `expected_sha256` is checked before a file is committed, and a disk
//! that fills up or refuses writes stops the download with a clear reason without harming files
//! already committed. The disk tests mount small tmpfs filesystems of their own; where the
//! machine does not allow mounting (not root, no privileges), they say so and skip.

mod common;

use std::path::{Path, PathBuf};

use common::origin::{Origin, Resource, test_bytes};
use common::*;
use transferd::pb::backgroundtransfer::v1 as pb;

fn with_sha(uri: &str, file: &str, sha: &str) -> pb::CreateDownloadRequest {
    pb::CreateDownloadRequest {
        expected_sha256: sha.into(),
        ..create_request(uri, file)
    }
}

#[tokio::test]
async fn matching_sha256_commits_even_across_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let body = test_bytes(700_000, 1);
    origin.put("/ok", Resource::new(body.clone()).hold_after(250_000));
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    // Upper-case hex is accepted and normalised.
    let op = client
        .create_download(with_sha(
            &origin.url("/ok"),
            "ok.bin",
            &sha256(&body).to_uppercase(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.expected_sha256, sha256(&body));
    wait_bytes(&mut client, &op.guid, 250_000).await;
    pause(&mut client, &op.guid).await;
    origin.release("/ok");
    resume(&mut client, &op.guid).await;
    wait_status(&mut client, &op.guid, S::Completed).await;
    assert_eq!(
        origin.requests_for("/ok")[1].header("range"),
        Some("bytes=250000-")
    );
    assert_eq!(
        sha256_file(&server.download_dir().join("ok.bin")),
        sha256(&body)
    );
}

#[tokio::test]
async fn mismatching_sha256_is_an_integrity_error_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let body = test_bytes(300_000, 2);
    origin.put("/bad", Resource::new(body.clone()));
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    let wrong = sha256(b"something else");
    let op = client
        .create_download(with_sha(&origin.url("/bad"), "bad.bin", &wrong))
        .await
        .unwrap()
        .into_inner();
    let failed = wait_status(&mut client, &op.guid, S::Error).await;
    let error = failed.error.unwrap();
    assert_eq!(error.reason(), pb::TransferErrorReason::Integrity);
    assert!(error.message.contains(&wrong), "{}", error.message);
    assert!(error.message.contains(&sha256(&body)), "{}", error.message);
    assert_eq!(error.http_status_code, 0);
    // Nothing at the result path, and the partial data is gone.
    assert!(files_under(&server.download_dir()).is_empty());
}

#[tokio::test]
async fn malformed_sha256_is_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let mut client = server.client().await;
    for bad in ["abc", &"g".repeat(64), &"a".repeat(65)] {
        let err = client
            .create_download(with_sha("http://127.0.0.1:9/x", "x", bad))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        assert!(
            err.message().contains("expected_sha256"),
            "{}",
            err.message()
        );
    }
}

/// A tmpfs mounted by the test, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, options: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Some(Mount(at.to_path_buf()))
        } else {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); disk test not run");
            None
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_pauses_the_download_until_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let downloads = dir.path().join("small-disk");
    let Some(_mount) = Mount::tmpfs(&downloads, "size=1m") else {
        return;
    };
    let origin = Origin::start().await;
    let small = test_bytes(200_000, 3);
    let big = test_bytes(4 * 1024 * 1024, 4);
    origin.put("/small", Resource::new(small.clone()));
    origin.put("/big", Resource::new(big.clone()));
    let dl = downloads.to_str().unwrap();
    // No free-space floor: the point is to run into the full disk itself.
    let server = Server::start(
        dir.path().join("data").as_path(),
        &["--download-dir", dl, "--min-free-disk", "0"],
    )
    .await;
    let mut client = server.client().await;
    let first = create(&mut client, &origin.url("/small"), "small.bin").await;
    wait_status(&mut client, &first.guid, S::Completed).await;

    let op = create(&mut client, &origin.url("/big"), "big.bin").await;
    let paused = wait_status(&mut client, &op.guid, S::PausedSystemPolicy).await;
    assert_eq!(paused.status_reason(), pb::StatusReason::LowDiskSpace);
    assert!(paused.error.is_none());
    // Nothing committed was harmed, and the full disk was not retried against the server.
    assert_eq!(sha256_file(&downloads.join("small.bin")), sha256(&small));
    assert_eq!(origin.requests_for("/big").len(), 1);
    let checkpoint = paused.progress.unwrap().bytes_received;

    // Space returns: the download continues by itself from its checkpoint.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=16m"])
        .arg(&downloads)
        .status()
        .unwrap();
    assert!(grown.success());
    wait_status(&mut client, &op.guid, S::Completed).await;
    assert_eq!(sha256_file(&downloads.join("big.bin")), sha256(&big));
    let requests = origin.requests_for("/big");
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
    let origin = Origin::start().await;
    origin.put("/f", Resource::new(test_bytes(1000, 5)));
    let dl = downloads.to_str().unwrap();
    let server = Server::start(
        dir.path().join("data").as_path(),
        &["--download-dir", dl, "--min-free-disk", "0"],
    )
    .await;
    let mut client = server.client().await;
    let op = create(&mut client, &origin.url("/f"), "f.bin").await;
    let failed = wait_status(&mut client, &op.guid, S::Error).await;
    let error = failed.error.unwrap();
    assert_eq!(error.reason(), pb::TransferErrorReason::Disk);
    assert!(
        error.message.contains("Read-only file system"),
        "{}",
        error.message
    );
}
