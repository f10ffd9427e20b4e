//! End-to-end: files only where they belong, and exactly one outcome. One transferd per data
//! directory; a cancel or pause racing the commit of a finished file either wins or sees the
//! file committed, never both; symlinks inside the download directory never lead a file or a
//! directory out of it; an existing file is never silently replaced.

mod common;

use common::origin::{Resource, test_bytes};
use common::*;

#[tokio::test]
async fn a_second_server_on_one_data_dir_refuses_to_start_and_a_killed_servers_lock_does_not_linger()
 {
    let mut h = Harness::start(&[]).await;
    let body = test_bytes(600_000, 41);
    let op = h
        .start_held("/held.bin", Resource::new(body.clone()), 200_000)
        .await;
    let data_dir = h.server.data_dir.clone();
    let db = std::fs::read(data_dir.join("transferd.db")).unwrap();
    let out = run_transferd([
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "it must not announce an address");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(data_dir.to_str().unwrap()), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", h.server.pid())),
        "{stderr}"
    );
    // It did not touch the store, and the first server still owns its download.
    assert_eq!(std::fs::read(data_dir.join("transferd.db")).unwrap(), db);
    assert_eq!(h.status(&op.guid).await, S::Running);

    // A lock left by a killed process does not block the next start.
    h.server.kill().await;
    h.origin.release("/held.bin");
    h.restart(&[]).await;
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("held.bin", &body);
}
