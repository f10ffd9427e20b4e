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

/// Size of the files in the commit races: large enough that verifying their SHA-256 takes a
/// window a client's call can land in.
const RACE_FILE_LEN: usize = 4 << 20;

/// How many times each commit race runs, each time acting a little later after the body is
/// whole: the early ones land in the verification, the late ones after the commit.
const RACE_ROUNDS: u64 = 6;

/// Step between the rounds' delays.
const RACE_STEP: std::time::Duration = std::time::Duration::from_millis(80);

/// Which call races the commit.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Racer {
    Cancel,
    Pause,
}

/// Starts a download of `body` with its SHA-256, waits until the whole body is in the partial
/// file, waits `delay` more and races `racer` against the verification and commit. Returns
/// whether the call won (true) or found the file committed (false), after checking that
/// exactly that outcome holds.
async fn race_commit(
    h: &Harness,
    n: u64,
    body: &[u8],
    racer: Racer,
    delay: std::time::Duration,
) -> bool {
    let path = format!("/race-{racer:?}-{n}.bin");
    let file = path.trim_start_matches('/').to_string();
    h.origin.put(&path, Resource::new(body.to_vec()));
    let op = h
        .create_with(pb::CreateDownloadRequest {
            expected_sha256: sha256(body),
            ..create_request(&h.origin.url(&path), &file)
        })
        .await;
    let partial = h
        .download_dir()
        .join(".transferd-partial")
        .join(format!("{}.part", op.guid));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < body.len() as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the body never became whole"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    tokio::time::sleep(delay).await;
    let result = match racer {
        Racer::Cancel => h.client.cancel(&op.guid).await,
        Racer::Pause => h.client.pause(&op.guid).await,
    };
    let target = h.download_dir().join(&file);
    match result {
        Ok(answer) => {
            let expected = match racer {
                Racer::Cancel => S::Canceled,
                Racer::Pause => S::PausedByApplication,
            };
            assert_eq!(status_of(&answer), expected);
            // The call won: no file at the result path, also once the transfer has let go.
            h.wait_until(&op.guid, "the transfer let go", |_| {
                racer == Racer::Pause || !partial.exists()
            })
            .await;
            assert!(
                !target.exists(),
                "round {n}: {racer:?} won but {file} was committed"
            );
            assert_eq!(h.status(&op.guid).await, expected);
            if racer == Racer::Pause {
                // The verified body stays, and resuming commits it without asking again.
                let hits = h.origin.hits(&path);
                h.resume(&op.guid).await;
                h.wait_status(&op.guid, S::Completed).await;
                h.assert_file(&file, body);
                assert_eq!(h.origin.hits(&path), hits, "resume downloaded again");
            }
            true
        }
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
            assert!(status.message().contains("COMPLETED"), "{status:?}");
            assert_eq!(h.status(&op.guid).await, S::Completed);
            h.assert_file(&file, body);
            false
        }
    }
}

async fn race_rounds(racer: Racer) {
    let h = Harness::start(&[]).await;
    let body = test_bytes(RACE_FILE_LEN, 7);
    let mut won = 0;
    for n in 0..RACE_ROUNDS {
        let delay = RACE_STEP * u32::try_from(n).unwrap();
        if race_commit(&h, n, &body, racer, delay).await {
            won += 1;
        }
    }
    eprintln!("{racer:?} won {won} of {RACE_ROUNDS} rounds against the commit");
}

#[tokio::test]
async fn a_cancel_racing_the_commit_either_wins_with_no_file_or_sees_completed() {
    race_rounds(Racer::Cancel).await;
}

#[tokio::test]
async fn a_pause_racing_the_commit_either_wins_keeping_the_verified_body_or_sees_completed() {
    race_rounds(Racer::Pause).await;
}
