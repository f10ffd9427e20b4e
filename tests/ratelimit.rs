//! Bandwidth limits, end to end: a real transferd, a real origin on loopback and the real
//! client. A download's own `max_bytes_per_second` (at create, and live with SetRateLimit) and
//! the server-wide `--max-download-rate`, shared by the running downloads.
//!
//! Only lower bounds on time are asserted: a limited download never finishes faster than its
//! limit allows, however fast the machine; a slow machine only makes every bound easier to
//! meet. The one upper bound on bytes (a window after SetRateLimit) is of the same kind: a slow
//! machine moves fewer bytes, never more. Bytes are checked by hash.

mod common;

use std::time::{Duration, Instant};

use common::origin::{Resource, test_bytes};
use common::{Harness, S, create_request, pb, run_transferd};
use tonic::Code;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// How far a download may run ahead of its rate, as the README documents: one bucket, 100 ms
/// of the rate but at least 16 KiB.
fn burst(rate: u64) -> u64 {
    (rate / 10).max(16 * KIB)
}

/// What one socket read may bring beyond the limit at any instant (hyper's largest read
/// buffer is about 400 KiB); completion waits it out, so only windows need it.
const ONE_READ: u64 = 512 * KIB;

/// How stale a download's published byte count may be: progress is published every 250 ms.
const PROGRESS_LAG: Duration = Duration::from_millis(500);

/// The least time `bytes` take at `rate` bytes/s, after `allowance` bytes of burst.
fn least_time(bytes: u64, allowance: u64, rate: u64) -> Duration {
    Duration::from_secs_f64(bytes.saturating_sub(allowance) as f64 / rate as f64)
}

/// A create request for `path` on the origin, limited to `rate` bytes/s (0: none).
fn limited(h: &Harness, path: &str, rate: u64) -> pb::CreateDownloadRequest {
    pb::CreateDownloadRequest {
        max_bytes_per_second: rate,
        ..create_request(&h.origin.url(path), path.trim_start_matches('/'))
    }
}

#[tokio::test]
async fn a_limited_download_never_finishes_faster_than_its_limit() {
    let h = Harness::start(&[]).await;
    let (size, rate) = (MIB, 384 * KIB);
    let body = test_bytes(size as usize, 1);
    h.origin.put("/limited.bin", Resource::new(body.clone()));
    let started = Instant::now();
    let op = h.create_with(limited(&h, "/limited.bin", rate)).await;
    assert_eq!(op.max_bytes_per_second, rate, "shown at create");
    let done = h.wait_status(&op.guid, S::Completed).await;
    let took = started.elapsed();
    assert!(
        took >= least_time(size, burst(rate), rate),
        "{size} bytes at {rate} B/s took only {took:?}"
    );
    assert_eq!(done.max_bytes_per_second, rate);
    assert_eq!(done.attempt_count, 1);
    h.assert_file("limited.bin", &body);
}

#[tokio::test]
async fn set_rate_limit_slows_a_running_download_and_lifting_it_lets_it_finish() {
    let h = Harness::start(&[]).await;
    let (size, held, rate) = (8 * MIB, 64 * KIB, 64 * KIB);
    let body = test_bytes(size as usize, 2);
    let op = h
        .start_held("/live.bin", Resource::new(body.clone()), held)
        .await;
    assert_eq!(op.max_bytes_per_second, 0);
    let set = h.client.set_rate_limit(&op.guid, rate).await.unwrap();
    assert_eq!(set.max_bytes_per_second, rate);
    assert_eq!(
        common::status_of(&set),
        S::Running,
        "the request was not restarted"
    );
    h.origin.release("/live.bin");
    // Bytes over a window: at most the limit times the window, one burst and one read.
    let from = Instant::now();
    let before = h.get(&op.guid).await.progress.unwrap().bytes_received;
    let window = Duration::from_secs(2);
    let after = loop {
        let now = h.get(&op.guid).await;
        if from.elapsed() >= window {
            break now.progress.unwrap().bytes_received;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let span = from.elapsed() + PROGRESS_LAG;
    let allowed = (rate as f64 * span.as_secs_f64()) as u64 + burst(rate) + ONE_READ;
    assert!(
        after - before <= allowed,
        "{} bytes in {span:?} under a limit of {rate} B/s",
        after - before
    );
    assert!(after < size, "still running under the limit");
    // Lifting the limit lets it finish, on the same request.
    let lifted = h.client.set_rate_limit(&op.guid, 0).await.unwrap();
    assert_eq!(lifted.max_bytes_per_second, 0);
    let done = h.wait_status(&op.guid, S::Completed).await;
    assert_eq!(done.attempt_count, 1);
    assert_eq!(h.origin.hits("/live.bin"), 1);
    h.assert_file("live.bin", &body);
}

#[tokio::test]
async fn the_server_wide_limit_is_shared_by_the_running_downloads() {
    let cap = MIB;
    let h = Harness::start(&["--max-download-rate", "1MiB"]).await;
    let size = MIB;
    let bodies = [test_bytes(size as usize, 3), test_bytes(size as usize, 4)];
    for (i, body) in bodies.iter().enumerate() {
        h.origin
            .put(&format!("/shared{i}.bin"), Resource::new(body.clone()));
    }
    let started = Instant::now();
    let a = h.create_with(limited(&h, "/shared0.bin", 0)).await;
    let b = h.create_with(limited(&h, "/shared1.bin", 0)).await;
    // Whichever finishes first, the other got its share meanwhile: neither starves.
    let deadline = Instant::now() + common::DEADLINE;
    let mut share_checked = false;
    loop {
        let ops = [h.get(&a.guid).await, h.get(&b.guid).await];
        let running: Vec<&pb::DownloadOperation> = ops
            .iter()
            .filter(|op| common::status_of(op) != S::Completed)
            .collect();
        match running[..] {
            [] => break,
            [other] if !share_checked => {
                let got = other.progress.as_ref().unwrap().bytes_received;
                assert!(
                    got >= size / 4,
                    "when one finished the other had only {got} bytes: it was starved"
                );
                share_checked = true;
            }
            _ => {}
        }
        assert!(Instant::now() < deadline, "both complete in time: {ops:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    // Together they never exceed the cap: each lane may run ahead by one burst of its share.
    let floor = least_time(2 * size, 2 * burst(cap), cap);
    assert!(
        took >= floor,
        "{} bytes at {cap} B/s took only {took:?}",
        2 * size
    );
    h.assert_file("shared0.bin", &bodies[0]);
    h.assert_file("shared1.bin", &bodies[1]);
}

#[tokio::test]
async fn a_download_limited_below_min_speed_is_not_a_stalled_origin() {
    // Without the rule that our own throttling is not the origin's slowness, every window
    // would fail the attempt (128 KiB/s is far below --min-speed), and reads held back longer
    // than the stall timeout would time out.
    let h = Harness::start(&["--min-speed", "1MiB", "--stall-timeout", "500ms"]).await;
    let (size, rate) = (384 * KIB, 128 * KIB);
    let body = test_bytes(size as usize, 5);
    h.origin.put("/slow.bin", Resource::new(body.clone()));
    let started = Instant::now();
    let op = h.create_with(limited(&h, "/slow.bin", rate)).await;
    let done = h.wait_finished(&op.guid).await;
    assert_eq!(common::status_of(&done), S::Completed, "{:?}", done.error);
    assert!(started.elapsed() >= least_time(size, burst(rate), rate));
    assert_eq!(done.attempt_count, 1, "no attempt failed as stalled");
    assert_eq!(h.origin.hits("/slow.bin"), 1);
    h.assert_file("slow.bin", &body);
}

#[tokio::test]
async fn out_of_range_limits_are_invalid_arguments_and_change_nothing() {
    let h = Harness::start(&[]).await;
    h.origin
        .put("/v.bin", Resource::new(test_bytes(64 * 1024, 6)));
    // u64::MAX is what a client sending -1 as a signed number puts on the wire.
    for bad in [1, 1023, (1 << 40) + 1, u64::MAX] {
        let status = h
            .client
            .create(limited(&h, "/v.bin", bad))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
        assert!(
            status.message().contains("max_bytes_per_second")
                && status.message().contains("0 for no limit"),
            "{status:?}"
        );
    }
    assert!(h.list_guids().await.is_empty(), "nothing was created");
    let op = h
        .start_held("/held.bin", Resource::new(test_bytes(64 * 1024, 7)), 1024)
        .await;
    h.client.set_rate_limit(&op.guid, 4096).await.unwrap();
    for bad in [1023, u64::MAX] {
        let status = h.client.set_rate_limit(&op.guid, bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
        assert!(status.message().contains("bytes_per_second"), "{status:?}");
    }
    assert_eq!(h.get(&op.guid).await.max_bytes_per_second, 4096);
    let missing = uuid_like();
    let status = h.client.set_rate_limit(&missing, 4096).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // The server-wide flag is checked before anything binds.
    let dir = tempfile::tempdir().unwrap();
    for bad in ["1000", "2TiB", "fast"] {
        let out = run_transferd([
            "--max-download-rate",
            bad,
            "--data-dir",
            dir.path().to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{bad}");
        assert!(
            out.stdout.is_empty(),
            "{bad} bound and announced an address"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--max-download-rate"), "{bad}: {stderr}");
    }
}

/// A well-formed guid no download has.
fn uuid_like() -> String {
    "00000000-0000-4000-8000-000000000000".into()
}

#[tokio::test]
async fn set_rate_limit_on_another_tenants_download_is_not_found() {
    use common::tokens::{MEDIA, ML};
    let h = Harness::start_with_tokens(&[MEDIA, ML], &MEDIA, &[]).await;
    let ml = h.server.client_as(&ML).await;
    let op = h
        .start_held_with(
            "/theirs.bin",
            Resource::new(test_bytes(64 * 1024, 8)),
            1024,
            |r| r.max_bytes_per_second = 8192,
        )
        .await;
    let status = ml.set_rate_limit(&op.guid, 2048).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let never = ml.set_rate_limit(&uuid_like(), 2048).await.unwrap_err();
    assert_eq!(
        status.message().replace(&op.guid, "G"),
        never.message().replace(&uuid_like(), "G"),
        "answered like a guid that never existed"
    );
    assert_eq!(h.get(&op.guid).await.max_bytes_per_second, 8192);
}

#[tokio::test]
async fn a_rate_limit_survives_a_restart() {
    let mut h = Harness::start(&[]).await;
    let (size, held, rate) = (MIB, 64 * KIB, 256 * KIB);
    let body = test_bytes(size as usize, 9);
    let op = h
        .start_held("/kept.bin", Resource::new(body.clone()), held)
        .await;
    h.client.set_rate_limit(&op.guid, rate).await.unwrap();
    h.server.terminate().await;
    h.restart(&[]).await;
    assert_eq!(h.get(&op.guid).await.max_bytes_per_second, rate);
    let released = Instant::now();
    h.origin.release("/kept.bin");
    let done = h.wait_status(&op.guid, S::Completed).await;
    // It resumes from its checkpoint and the rest is limited as before (the resumed response
    // may have sent up to one more hold's worth before the release).
    let rest = size - 2 * held;
    assert!(released.elapsed() >= least_time(rest, burst(rate), rate));
    assert_eq!(done.max_bytes_per_second, rate);
    h.assert_file("kept.bin", &body);
}
