//! End-to-end: overload is answered, not absorbed. Beyond `--max-streams-per-tenant` or
//! `--max-streams` a new watch stream is RESOURCE_EXHAUSTED at once and the slot comes back when
//! a stream closes; beyond `--max-inflight-calls` a call is RESOURCE_EXHAUSTED and stores
//! nothing; health checks and unary calls keep working while the stream caps are reached.

mod common;

use std::time::Instant;

use common::origin::{Resource, test_bytes};
use common::*;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Polls until a new WatchDownload of `guid` is accepted; panics after [`DEADLINE`].
async fn wait_watch_accepted(
    h: &Harness,
    guid: &str,
) -> tonic::Streaming<pb::BackgroundDownloadProgress> {
    let start = Instant::now();
    loop {
        match h.client.watch(guid).await {
            Ok(stream) => return stream,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    start.elapsed() < DEADLINE,
                    "the closed stream's slot never came back"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn streams_beyond_the_caps_are_refused_and_their_slots_come_back() {
    let h = Harness::start(&["--max-streams", "3", "--max-streams-per-tenant", "2"]).await;
    let op = h
        .start_held("/held.bin", Resource::new(test_bytes(50_000, 1)), 1000)
        .await;

    let first = h.client.watch(&op.guid).await.expect("first stream");
    let _second = h.client.watch_all(None).await.expect("second stream");
    let refused = h.client.watch(&op.guid).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("2 open streams")
            && refused.message().contains("--max-streams-per-tenant"),
        "{refused:?}"
    );
    let refused_all = h.client.watch_all(None).await.unwrap_err();
    assert_eq!(
        refused_all.code(),
        Code::ResourceExhausted,
        "{refused_all:?}"
    );

    // Unary calls and health checks are not streams and go on working.
    h.get(&op.guid).await;
    let mut health = HealthClient::new(h.server.channel().await);
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health is answered while the stream caps are reached");

    // Closing a stream gives its slot back.
    drop(first);
    let mut again = wait_watch_accepted(&h, &op.guid).await;
    let message = next_message(&mut again).await;
    assert_eq!(message.status(), S::Running);
}

#[tokio::test]
async fn a_flood_of_creates_beyond_the_in_flight_cap_is_refused_and_stores_nothing() {
    /// Creates sent at once on one connection, as a load generator does.
    const FLOOD: usize = 200;
    let h = Harness::start(&["--max-inflight-calls", "1", "--max-active", "1"]).await;
    h.origin
        .put("/small.bin", Resource::new(test_bytes(100, 2)));
    let uri = h.origin.url("/small.bin");

    let calls = (0..FLOOD).map(|i| {
        let client = h.client.clone();
        let request = pb::CreateDownloadRequest {
            result_file: format!("flood/{i}.bin"),
            ..create_request(&uri, "")
        };
        tokio::spawn(async move { client.create(request).await })
    });
    let (mut created, mut refused) = (Vec::new(), 0);
    for call in calls.collect::<Vec<_>>() {
        match call.await.expect("the call task ran") {
            Ok(op) => created.push(op.guid),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.message().contains("--max-inflight-calls"),
                    "{status:?}"
                );
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "{FLOOD} creates at once never met a cap of 1");
    assert!(!created.is_empty(), "no create got through");

    // Exactly the acknowledged creates are stored, and each completes.
    let mut stored: Vec<String> = h
        .client
        .list_all(None)
        .await
        .expect("ListDownloads")
        .into_iter()
        .map(|op| op.guid)
        .collect();
    stored.sort();
    created.sort();
    assert_eq!(stored, created);
    for guid in &created {
        h.wait_status(guid, S::Completed).await;
    }
}
