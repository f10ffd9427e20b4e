//! End-to-end: connectivity detection on a real link. transferd runs in a network namespace
//! with two veth links to the test: a control link that carries gRPC and stays up, and a data
//! link to the origin that the test takes down and brings back up inside the namespace. Down,
//! the namespace has no route to the origin, so connecting fails with `ENETUNREACH` and the
//! running transfer, whose connection silently dies, stalls. transferd must pause every download
//! as PAUSED_NO_NETWORK without spending retries, notice the route coming back on its own, and
//! finish every download with the exact bytes, resuming the interrupted one with a Range request.

mod common;

use std::time::Duration;

use common::netns::Netns;
use common::origin::{Origin, Resource, test_bytes};
use common::*;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Long enough for several route probes of the monitor (one a second) while the link is down.
const HOLD_DOWN: Duration = Duration::from_millis(2500);

fn paused_no_network(op: &pb::DownloadOperation) -> bool {
    status_of(op) == S::PausedNoNetwork
        && op.status_reason() == pb::StatusReason::NetworkDownDetected
}

#[tokio::test]
async fn link_down_pauses_every_download_and_link_up_resumes_them() {
    // No resolver leaves the namespace: the origin is addressed by IP.
    let Some(mut ns) = Netns::create("nameserver 127.0.0.1\n") else {
        return;
    };
    let data = ns.add_link();
    let origin = Origin::start_on(data.outer.into()).await;
    let flags = [
        "--stall-timeout",
        "1s",
        "--retry-base-delay",
        "50ms",
        "--max-active",
        "1",
    ];
    let h = Harness::start_in(&ns, origin, &flags).await;
    // 4 MiB at 32 KiB every 20 ms: about 2.6 s, so the link surely goes down mid-body.
    let first_body = test_bytes(4 * MIB + 5, 41);
    h.origin.put(
        "/first.bin",
        Resource::new(first_body.clone()).throttle(32 * KIB, Duration::from_millis(20)),
    );
    let second_body = test_bytes(MIB + 3, 42);
    h.origin
        .put("/second.bin", Resource::new(second_body.clone()));
    let status = h.system_status().await;
    assert!(status.connected, "{status:?}");

    let first = h.create(&h.origin.url("/first.bin"), "first.bin").await;
    let second = h.create(&h.origin.url("/second.bin"), "second.bin").await;
    h.wait_until(&first.guid, "the first bytes", |op| {
        status_of(op) == S::Running && op.progress.unwrap().bytes_received > 0
    })
    .await;
    // --max-active 1: the second waits for the slot.
    assert_eq!(h.status(&second.guid).await, S::Idle);

    // Pull the cable. The open connection goes silent and stalls; the retry finds no route.
    ns.set_link_up(&data, false);
    let what = "the first paused as PAUSED_NO_NETWORK";
    let first_paused = h.wait_until(&first.guid, what, paused_no_network).await;
    let what = "the queued one paused as PAUSED_NO_NETWORK";
    let second_paused = h.wait_until(&second.guid, what, paused_no_network).await;
    assert!(first_paused.error.is_none(), "{first_paused:?}");
    assert!(second_paused.error.is_none(), "{second_paused:?}");
    // The first request, then the retry after the stall that found no route; no retry budget
    // spent on a network that is down.
    assert_eq!(first_paused.attempt_count, 2, "{first_paused:?}");
    assert_eq!(second_paused.attempt_count, 0, "{second_paused:?}");
    let kept = first_paused.progress.unwrap().bytes_received;
    assert!(
        kept > 0 && kept < first_body.len() as u64,
        "the interrupted download keeps its checkpoint: {first_paused:?}"
    );
    let status = h.system_status().await;
    assert!(!status.connected, "{status:?}");
    assert_eq!(status.connected_source(), pb::ConditionSource::Detected);
    assert_eq!(status.active_downloads, 0, "{status:?}");

    // While the route stays gone the monitor's probes find nothing: no download moves and no
    // request is attempted.
    tokio::time::sleep(HOLD_DOWN).await;
    for (guid, attempts) in [(&first.guid, 2), (&second.guid, 0)] {
        let op = h.get(guid).await;
        assert!(paused_no_network(&op), "{op:?}");
        assert_eq!(op.attempt_count, attempts, "{op:?}");
        assert!(op.error.is_none(), "{op:?}");
    }
    assert!(!h.system_status().await.connected);

    // Plug it back in: the monitor sees the route and both continue by themselves.
    ns.set_link_up(&data, true);
    let first_done = h.wait_status(&first.guid, S::Completed).await;
    let second_done = h.wait_status(&second.guid, S::Completed).await;
    assert!(first_done.error.is_none(), "{first_done:?}");
    assert_eq!(first_done.attempt_count, 3, "{first_done:?}");
    assert_eq!(second_done.attempt_count, 1, "{second_done:?}");
    h.assert_file("first.bin", &first_body);
    h.assert_file("second.bin", &second_body);

    // The interrupted download continued from its checkpoint instead of starting over: the
    // origin saw the first request (the retry never reached it) and then one Range request
    // from exactly the bytes kept, guarded by If-Range.
    let requests = h.origin.requests_for("/first.bin");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].header("range"), None);
    assert_eq!(
        requests[1].header("range"),
        Some(&*format!("bytes={kept}-")),
        "{requests:?}"
    );
    assert!(requests[1].header("if-range").is_some(), "{requests:?}");
    let requests = h.origin.requests_for("/second.bin");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].header("range"), None);

    let status = h.system_status().await;
    assert!(status.connected, "{status:?}");
    assert_eq!(status.connected_source(), pb::ConditionSource::Detected);
}
