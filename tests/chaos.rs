//! Chaos: downloads in flight, the server killed with SIGKILL at random moments and restarted on
//! the same data directory, again and again. Afterwards every acknowledged download must exist
//! exactly once, be COMPLETED (each was given its expected SHA-256, verified at commit), and hold
//! exactly the origin's bytes.
//!
//! CI runs a bounded version (3 cycles over 20 downloads). The release soak is the same test
//! with more of both:
//!
//! ```sh
//! CHAOS_CYCLES=30 CHAOS_DOWNLOADS=100 cargo test --release --test chaos -- --nocapture
//! ```
//!
//! `CHAOS_SEED` replays a run; the seed is printed at the start.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::origin::{Resource, test_bytes};
use common::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Creates download `i` with its expected SHA-256 (`sha`), so every kill also lands in the
/// middle of hashing as written: a state saved out of step with its bytes ends it in ERROR.
async fn create(h: &Harness, i: usize, sha: &str) -> String {
    let request = pb::CreateDownloadRequest {
        expected_sha256: sha.into(),
        ..create_request(&h.origin.url(&format!("/d{i}")), &format!("d{i}"))
    };
    h.create_with(request).await.guid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_restart_cycles_lose_and_corrupt_nothing() {
    let cycles = env_or("CHAOS_CYCLES", 3);
    let downloads = env_or("CHAOS_DOWNLOADS", 20) as usize;
    let seed = env_or("CHAOS_SEED", fastrand::u64(..));
    println!("chaos: {cycles} cycles, {downloads} downloads, CHAOS_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);

    let args = ["--max-active", "8", "--retry-base-delay", "50ms"];
    let mut h = Harness::start(&args).await;
    let mut expected = Vec::new();
    for i in 0..downloads {
        // Sizes from 64 KiB to 2 MiB, throttled so that kills land mid-body.
        let len = rng.usize(64 * 1024..2 * 1024 * 1024);
        let body = test_bytes(len, seed ^ i as u64);
        let mut resource =
            Resource::new(body.clone()).throttle(64 * 1024, Duration::from_millis(15));
        if i % 5 == 4 {
            // Some servers cannot resume: those downloads restart after each kill.
            resource = resource.ignore_range();
        }
        h.origin.put(&format!("/d{i}"), resource);
        expected.push(sha256(&body));
    }

    let mut created = Vec::new();
    for cycle in 0..cycles {
        // Queue a share of the downloads in every cycle: each acknowledged create must survive
        // the kill that follows.
        let upto = (downloads * (cycle as usize + 1) / cycles as usize).max(created.len());
        while created.len() < upto {
            let i = created.len();
            created.push(create(&h, i, &expected[i]).await);
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(20..800))).await;
        h.server.kill().await;
        h.restart(&args).await;
    }
    while created.len() < downloads {
        let i = created.len();
        created.push(create(&h, i, &expected[i]).await);
    }

    let listed = h.list_guids().await;
    let unique: HashSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "a download was duplicated");
    assert_eq!(listed, created, "a download was lost or reordered");

    for (i, guid) in created.iter().enumerate() {
        let op = h.wait_finished(guid).await;
        assert_eq!(
            status_of(&op),
            S::Completed,
            "d{i}: {op:?}\n{}",
            h.server.log()
        );
        assert_eq!(
            sha256_file(&h.download_dir().join(format!("d{i}"))),
            expected[i],
            "d{i} has the wrong bytes"
        );
    }
    let mut want: Vec<String> = (0..downloads).map(|i| format!("d{i}")).collect();
    want.sort();
    let files = files_settled(&h.download_dir(), &want).await;
    assert_eq!(
        files, want,
        "stray or missing files (partial files must be gone)"
    );
}
