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

/// A request for `file` that may replace what is there.
fn replacing(uri: &str, file: &str) -> pb::CreateDownloadRequest {
    pb::CreateDownloadRequest {
        replace_existing: true,
        ..create_request(uri, file)
    }
}

#[tokio::test]
async fn an_existing_result_file_is_already_exists_unless_the_client_asks_to_replace_it() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(5000, 43);
    h.origin.put("/new.bin", Resource::new(body.clone()));
    let url = h.origin.url("/new.bin");
    std::fs::create_dir_all(h.download_dir().join("dir")).unwrap();
    std::fs::write(h.download_dir().join("dir/mine.txt"), b"not transferd's").unwrap();
    // A dangling symlink is something at the path too.
    std::os::unix::fs::symlink("nowhere", h.download_dir().join("dangling")).unwrap();
    for file in ["dir/mine.txt", "dangling"] {
        let err = h
            .client
            .create(create_request(&url, file))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
        assert!(err.message().contains("replace_existing"), "{err:?}");
    }
    assert!(h.list_guids().await.is_empty());
    h.assert_file("dir/mine.txt", b"not transferd's");

    let op = h.create_with(replacing(&url, "dir/mine.txt")).await;
    assert!(op.replace_existing);
    assert!(h.get(&op.guid).await.replace_existing);
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("dir/mine.txt", &body);
}

#[tokio::test]
async fn a_file_that_appears_before_the_commit_is_kept_and_the_download_ends_in_error() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(300_000, 44);
    let op = h
        .start_held("/late.bin", Resource::new(body.clone()), 100_000)
        .await;
    std::fs::write(h.download_dir().join("late.bin"), b"arrived first").unwrap();
    h.origin.release("/late.bin");
    let finished = h.wait_finished(&op.guid).await;
    assert_eq!(status_of(&finished), S::Error);
    let message = finished.error.unwrap().message;
    assert!(message.contains("was not replaced"), "{message}");
    h.assert_file("late.bin", b"arrived first");
    // The partial data is gone; only the file that arrived first remains.
    assert_eq!(files_under(&h.download_dir()), ["late.bin"]);

    // Asked to replace, the same race replaces it.
    let op = h
        .start_held_with("/late2.bin", Resource::new(body.clone()), 100_000, |r| {
            r.replace_existing = true;
            r.result_file = "late.bin".into();
        })
        .await;
    h.origin.release("/late2.bin");
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("late.bin", &body);
}

#[tokio::test]
async fn a_symlink_out_of_the_download_dir_creates_nothing_outside() {
    let h = Harness::start(&[]).await;
    let outside = tempfile::tempdir().unwrap();
    let dl = h.download_dir();
    std::os::unix::fs::symlink(outside.path(), dl.join("link")).unwrap();
    // A relative symlink that climbs out is no better.
    std::os::unix::fs::symlink("..", dl.join("up")).unwrap();
    h.origin.put("/x.bin", Resource::new(test_bytes(3000, 45)));
    let url = h.origin.url("/x.bin");
    for file in ["link/sub/x.bin", "link/x.bin", "up/sub/x.bin"] {
        let err = h
            .client
            .create(create_request(&url, file))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{file}: {err:?}");
        assert!(
            err.message().contains("outside the download directory"),
            "{err:?}"
        );
    }
    // Planted after the download was created, the symlink is refused at the commit.
    let body = test_bytes(200_000, 46);
    let op = h
        .start_held_with("/later.bin", Resource::new(body), 50_000, |r| {
            r.result_file = "planted/sub/x.bin".into();
        })
        .await;
    std::os::unix::fs::symlink(outside.path(), dl.join("planted")).unwrap();
    h.origin.release("/later.bin");
    let finished = h.wait_finished(&op.guid).await;
    assert_eq!(status_of(&finished), S::Error);
    let message = finished.error.unwrap().message;
    assert!(
        message.contains("outside the download directory"),
        "{message}"
    );
    assert!(
        std::fs::read_dir(outside.path()).unwrap().next().is_none(),
        "something was created outside"
    );
    assert!(!h.server.data_dir.join("sub").exists());
}

/// How many downloads commit while a directory on their path is swapped for a symlink.
const SWAP_DOWNLOADS: usize = 120;

#[tokio::test]
async fn swapping_a_directory_for_a_symlink_while_downloads_commit_never_lands_a_file_outside() {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    use std::sync::atomic::{AtomicBool, Ordering};
    let h = Harness::start(&["--max-active", "8"]).await;
    let outside = tempfile::tempdir().unwrap();
    let (swap, other) = (
        h.download_dir().join("swap"),
        h.download_dir().join("other"),
    );
    std::fs::create_dir(&swap).unwrap();
    std::os::unix::fs::symlink(outside.path(), &other).unwrap();
    let mut ops = Vec::new();
    for i in 0..SWAP_DOWNLOADS {
        let path = format!("/s{i}.bin");
        // Held, so that they commit only once the swapping has begun.
        h.origin.put(
            &path,
            Resource::new(test_bytes(2048, i as u64)).hold_after(1024),
        );
        let op = h
            .create(&h.origin.url(&path), &format!("swap/f{i}.bin"))
            .await;
        ops.push(op.guid);
    }
    // `swap` flips between the real directory and a symlink out, atomically and as fast as the
    // machine allows, while the downloads commit into it.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, swap, other) = (stop.clone(), swap.clone(), other.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                renameat_with(CWD, &swap, CWD, &other, RenameFlags::EXCHANGE).unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    for i in 0..SWAP_DOWNLOADS {
        h.origin.release(&format!("/s{i}.bin"));
    }
    let mut completed = Vec::new();
    for (i, guid) in ops.iter().enumerate() {
        if status_of(&h.wait_finished(guid).await) == S::Completed {
            completed.push(i);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    let landed: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .flatten()
        .collect();
    assert!(landed.is_empty(), "landed outside: {landed:?}");
    // Every completed download is in the real directory, whatever its name is now.
    let real = if swap.symlink_metadata().unwrap().is_dir() {
        swap
    } else {
        other
    };
    for i in &completed {
        assert_holds(
            &real.join(format!("f{i}.bin")),
            &test_bytes(2048, *i as u64),
        );
    }
    eprintln!(
        "{} of {SWAP_DOWNLOADS} completed inside during {swaps} swaps",
        completed.len()
    );
}
