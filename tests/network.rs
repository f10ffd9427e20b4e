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
use pb::transfer_system_service_client::TransferSystemServiceClient;
use tonic::transport::Channel;
use transferd::pb::backgroundtransfer::v1 as pb;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Long enough for several route probes of the monitor (one a second) while the link is down.
const HOLD_DOWN: Duration = Duration::from_millis(2500);

type SystemClient = TransferSystemServiceClient<Channel>;

async fn system_status(system: &mut SystemClient) -> pb::SystemStatus {
    system
        .get_system_status(pb::GetSystemStatusRequest {})
        .await
        .expect("GetSystemStatus succeeds")
        .into_inner()
}

/// Polls GetDownload until `pred` holds; after [`DEADLINE`] panics with the last state and the
/// server's log, which tells what the engine saw of the link.
async fn wait_for(
    server: &Server,
    client: &mut Client,
    guid: &str,
    what: &str,
    pred: impl Fn(&pb::DownloadOperation) -> bool,
) -> pb::DownloadOperation {
    let start = tokio::time::Instant::now();
    loop {
        let op = get(client, guid).await;
        if pred(&op) {
            return op;
        }
        if start.elapsed() > DEADLINE {
            panic!(
                "timed out waiting for {what}; last state: {op:?}\nserver log:\n{}",
                server.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
    // 4 MiB at 32 KiB every 20 ms: about 2.6 s, so the link surely goes down mid-body.
    let first_body = test_bytes(4 * MIB + 5, 41);
    origin.put(
        "/first.bin",
        Resource::new(first_body.clone()).throttle(32 * KIB, Duration::from_millis(20)),
    );
    let second_body = test_bytes(MIB + 3, 42);
    origin.put("/second.bin", Resource::new(second_body.clone()));

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(
        &ns,
        dir.path(),
        &[
            "--stall-timeout",
            "1s",
            "--retry-base-delay",
            "50ms",
            "--max-active",
            "1",
        ],
    )
    .await;
    let mut client = server.client().await;
    let mut system = TransferSystemServiceClient::connect(format!("http://{}", server.addr))
        .await
        .expect("system client connects");
    let status = system_status(&mut system).await;
    assert!(status.connected, "{status:?}");

    let first = create(&mut client, &origin.url("/first.bin"), "first.bin").await;
    let second = create(&mut client, &origin.url("/second.bin"), "second.bin").await;
    wait_for(&server, &mut client, &first.guid, "the first bytes", |op| {
        status_of(op) == S::Running && op.progress.unwrap().bytes_received > 0
    })
    .await;
    // --max-active 1: the second waits for the slot.
    assert_eq!(status_of(&get(&mut client, &second.guid).await), S::Idle);

    // Pull the cable. The open connection goes silent and stalls; the retry finds no route.
    ns.set_link_up(&data, false);
    let first_paused = wait_for(
        &server,
        &mut client,
        &first.guid,
        "the first paused as PAUSED_NO_NETWORK",
        paused_no_network,
    )
    .await;
    let second_paused = wait_for(
        &server,
        &mut client,
        &second.guid,
        "the queued one paused as PAUSED_NO_NETWORK",
        paused_no_network,
    )
    .await;
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
    let status = system_status(&mut system).await;
    assert!(!status.connected, "{status:?}");
    assert_eq!(status.connected_source(), pb::ConditionSource::Detected);
    assert_eq!(status.active_downloads, 0, "{status:?}");

    // While the route stays gone the monitor's probes find nothing: no download moves and no
    // request is attempted.
    tokio::time::sleep(HOLD_DOWN).await;
    for (guid, attempts) in [(&first.guid, 2), (&second.guid, 0)] {
        let op = get(&mut client, guid).await;
        assert!(paused_no_network(&op), "{op:?}");
        assert_eq!(op.attempt_count, attempts, "{op:?}");
        assert!(op.error.is_none(), "{op:?}");
    }
    assert!(!system_status(&mut system).await.connected);

    // Plug it back in: the monitor sees the route and both continue by themselves.
    ns.set_link_up(&data, true);
    let first_done = wait_for(
        &server,
        &mut client,
        &first.guid,
        "the first COMPLETED",
        |op| status_of(op) == S::Completed,
    )
    .await;
    let second_done = wait_for(
        &server,
        &mut client,
        &second.guid,
        "the second COMPLETED",
        |op| status_of(op) == S::Completed,
    )
    .await;
    assert!(first_done.error.is_none(), "{first_done:?}");
    assert_eq!(first_done.attempt_count, 3, "{first_done:?}");
    assert_eq!(second_done.attempt_count, 1, "{second_done:?}");
    assert_eq!(
        sha256_file(&server.download_dir().join("first.bin")),
        sha256(&first_body)
    );
    assert_eq!(
        sha256_file(&server.download_dir().join("second.bin")),
        sha256(&second_body)
    );

    // The interrupted download continued from its checkpoint instead of starting over: the
    // origin saw the first request (the retry never reached it) and then one Range request
    // from exactly the bytes kept, guarded by If-Range.
    let requests = origin.requests_for("/first.bin");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].header("range"), None);
    assert_eq!(
        requests[1].header("range"),
        Some(&*format!("bytes={kept}-")),
        "{requests:?}"
    );
    assert!(requests[1].header("if-range").is_some(), "{requests:?}");
    let requests = origin.requests_for("/second.bin");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].header("range"), None);

    let status = system_status(&mut system).await;
    assert!(status.connected, "{status:?}");
    assert_eq!(status.connected_source(), pb::ConditionSource::Detected);
}
