//! Chaos: downloads in flight, the server killed with SIGKILL at random moments and restarted on
//! the same data directory, again and again. Afterwards every acknowledged download must exist
//! exactly once, be COMPLETED, and hold exactly the origin's bytes.
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

use common::origin::{Origin, Resource, test_bytes};
use common::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_restart_cycles_lose_and_corrupt_nothing() {
    let cycles = env_or("CHAOS_CYCLES", 3);
    let downloads = env_or("CHAOS_DOWNLOADS", 20) as usize;
    let seed = env_or("CHAOS_SEED", fastrand::u64(..));
    println!("chaos: {cycles} cycles, {downloads} downloads, CHAOS_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);

    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
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
        origin.put(&format!("/d{i}"), resource);
        expected.push(sha256(&body));
    }
    let args = ["--max-active", "8", "--retry-base-delay", "50ms"];

    let mut server = Server::start(dir.path(), &args).await;
    let mut client = server.client().await;
    let mut guids: Vec<(String, usize)> = Vec::new();
    let mut next = 0;
    for cycle in 0..cycles {
        // Queue a share of the downloads in every cycle: each acknowledged create must survive
        // the kill that follows.
        let upto = (downloads * (cycle as usize + 1) / cycles as usize).max(next);
        while next < upto {
            let op = create(
                &mut client,
                &origin.url(&format!("/d{next}")),
                &format!("d{next}"),
            )
            .await;
            guids.push((op.guid, next));
            next += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(20..800))).await;
        server.kill().await;
        server = Server::start(dir.path(), &args).await;
        client = server.client().await;
    }
    while next < downloads {
        let op = create(
            &mut client,
            &origin.url(&format!("/d{next}")),
            &format!("d{next}"),
        )
        .await;
        guids.push((op.guid, next));
        next += 1;
    }

    let listed = list_guids(&mut client).await;
    let unique: HashSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "a download was duplicated");
    let created: Vec<String> = guids.iter().map(|(g, _)| g.clone()).collect();
    assert_eq!(listed, created, "a download was lost or reordered");

    for (guid, i) in &guids {
        let op = wait_until(&mut client, guid, "COMPLETED", |op| {
            let s = status_of(op);
            s == S::Completed || s == S::Error
        })
        .await;
        assert_eq!(
            status_of(&op),
            S::Completed,
            "d{i}: {op:?}\n{}",
            server.log()
        );
        assert_eq!(
            sha256_file(&server.download_dir().join(format!("d{i}"))),
            expected[*i],
            "d{i} has the wrong bytes"
        );
    }
    let mut files = files_under(&server.download_dir());
    files.sort();
    let mut want: Vec<String> = (0..downloads).map(|i| format!("d{i}")).collect();
    want.sort();
    assert_eq!(
        files, want,
        "stray or missing files (partial files must be gone)"
    );
}
