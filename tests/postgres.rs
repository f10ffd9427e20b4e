//! End-to-end on PostgreSQL (`--store postgres://...`) with one replica: downloads complete with
//! the origin's exact bytes, and a SIGKILL mid-transfer resumes from the checkpoint stored in
//! PostgreSQL after a restart on the same database with the same `--node-id` (which takes its
//! own leases back at once). Each test has a database of its own (tests/common/postgres.rs);
//! several replicas are tests/replicas.rs.

mod common;

use std::time::Duration;

use common::origin::{Resource, test_bytes};
use common::postgres::{connect, fresh_database};
use common::{DEADLINE, Harness, S, create_request, pb, sha256, sha256_file};

/// Quick retries, so the resumed transfer starts at once.
const FAST: [&str; 2] = ["--retry-base-delay", "20ms"];

/// The checkpoint PostgreSQL holds for `guid`.
async fn stored_checkpoint(db: &tokio_postgres::Client, guid: &str) -> i64 {
    let row = db
        .query_one(
            "SELECT checkpoint_bytes FROM downloads WHERE guid = $1",
            &[&guid],
        )
        .await
        .expect("the download is stored");
    row.get(0)
}

#[tokio::test]
async fn downloads_complete_and_survive_a_kill() {
    let Some(url) = fresh_database().await else {
        return;
    };
    let flags = [
        "--store",
        url.as_str(),
        "--node-id",
        "one",
        FAST[0],
        FAST[1],
    ];
    let mut h = Harness::start(&flags).await;

    // Created, completed, with the exact bytes and SHA-256 the server was asked to check.
    let small = test_bytes(300_000, 1);
    h.origin.put("/small", Resource::new(small.clone()));
    let done = h
        .create_with(pb::CreateDownloadRequest {
            expected_sha256: sha256(&small),
            ..create_request(&h.origin.url("/small"), "small.bin")
        })
        .await;
    h.wait_status(&done.guid, S::Completed).await;
    assert_eq!(
        sha256_file(&h.download_dir().join("small.bin")),
        sha256(&small)
    );

    // Killed mid-transfer, once PostgreSQL holds a checkpoint past 0.
    let body = test_bytes(2_000_000, 2);
    let slow = Resource::new(body.clone()).throttle(16 * 1024, Duration::from_millis(50));
    h.origin.put("/slow", slow);
    let op = h
        .create_with(pb::CreateDownloadRequest {
            expected_sha256: sha256(&body),
            ..create_request(&h.origin.url("/slow"), "slow.bin")
        })
        .await;
    let db = connect(&url).await;
    let start = tokio::time::Instant::now();
    let checkpoint = loop {
        match stored_checkpoint(&db, &op.guid).await {
            0 => {
                assert!(start.elapsed() < DEADLINE, "no checkpoint was stored");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            bytes => break bytes,
        }
    };
    h.server.kill().await;
    assert_eq!(stored_checkpoint(&db, &op.guid).await, checkpoint);

    // Restarted on the same database: everything is there, and the slow one resumes from its
    // checkpoint and completes with the exact bytes.
    h.origin.put("/slow", Resource::new(body.clone()));
    h.restart(&flags).await;
    assert_eq!(
        h.list_guids().await,
        vec![done.guid.clone(), op.guid.clone()]
    );
    assert_eq!(h.status(&done.guid).await, S::Completed);
    h.wait_status(&op.guid, S::Completed).await;
    assert_eq!(
        sha256_file(&h.download_dir().join("slow.bin")),
        sha256(&body)
    );
    let requests = h.origin.requests_for("/slow");
    let range = requests
        .last()
        .unwrap()
        .header("range")
        .expect("it resumed");
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
}
