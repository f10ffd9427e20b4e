//! End-to-end: transient faults recover by themselves, and origin misbehaviour is caught. A
//! fault-injecting origin (real sockets: resets, truncation, stalls, error statuses, shifted
//! ranges, a connect blackhole) misbehaves on chosen requests; every test checks the final bytes
//! by hash, the requests the downloader made, and the attempt count.

mod common;

use common::origin::{Blackhole, Fault, Origin, Resource, test_bytes};
use common::*;
use transferd::pb::backgroundtransfer::v1 as pb;

/// Fast retries so the tests spend their time on behaviour, not on waiting.
const FAST: [&str; 2] = ["--retry-base-delay", "20ms"];

async fn start(dir: &std::path::Path, extra: &[&str]) -> (Server, Client) {
    let args: Vec<&str> = FAST.iter().chain(extra).copied().collect();
    let server = Server::start(dir, &args).await;
    let client = server.client().await;
    (server, client)
}

/// Runs a download of `body` whose first request suffers `fault`, and checks that it recovers
/// with a Range request from exactly `resume_at`.
async fn recovers_from(fault: Fault, resume_at: u64, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let body = test_bytes(600_000, 7);
    origin.put(
        "/f",
        Resource::new(body.clone()).faults(vec![Some(fault.clone())]),
    );
    let (server, mut client) = start(dir.path(), extra).await;
    let op = create(&mut client, &origin.url("/f"), "f.bin").await;
    let done = wait_until(&mut client, &op.guid, "a final status", |op| {
        matches!(status_of(op), S::Completed | S::Error)
    })
    .await;
    assert_eq!(
        status_of(&done),
        S::Completed,
        "{fault:?}: {done:?}\n{}",
        server.log()
    );
    assert_eq!(done.attempt_count, 2, "{fault:?}");
    assert_eq!(
        sha256_file(&server.download_dir().join("f.bin")),
        sha256(&body)
    );
    let requests = origin.requests_for("/f");
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].header("range"),
        Some(&*format!("bytes={resume_at}-")),
        "{fault:?}"
    );
    assert!(requests[1].header("if-range").is_some());
}

#[tokio::test]
async fn connection_reset_mid_body_resumes_with_range() {
    recovers_from(Fault::ResetAfter(200_000), 200_000, &[]).await;
}

#[tokio::test]
async fn truncated_body_resumes_with_range() {
    recovers_from(Fault::TruncateAfter(123_456), 123_456, &[]).await;
}

#[tokio::test]
async fn stalled_body_is_detected_and_resumed() {
    recovers_from(
        Fault::StallAfter(65_536),
        65_536,
        &["--stall-timeout", "300ms"],
    )
    .await;
}

#[tokio::test]
async fn retry_after_is_honoured_on_503() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let body = test_bytes(10_000, 8);
    let fault = Fault::Status {
        code: 503,
        retry_after: Some("1".into()),
    };
    origin.put(
        "/busy",
        Resource::new(body.clone()).faults(vec![Some(fault)]),
    );
    let (server, mut client) = start(dir.path(), &[]).await;
    let started = std::time::Instant::now();
    let op = create(&mut client, &origin.url("/busy"), "busy.bin").await;
    let done = wait_status(&mut client, &op.guid, S::Completed).await;
    // Without Retry-After the retry would come after about 20 ms; the server asked for 1 s.
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    assert_eq!(done.attempt_count, 2);
    assert_eq!(origin.hits("/busy"), 2);
    assert_eq!(
        sha256_file(&server.download_dir().join("busy.bin")),
        sha256(&body)
    );
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let body = test_bytes(10_000, 9);
    let status = |code| {
        Some(Fault::Status {
            code,
            retry_after: None,
        })
    };
    origin.put(
        "/flaky",
        Resource::new(body.clone()).faults(vec![
            status(429),
            status(500),
            status(502),
            status(504),
        ]),
    );
    let (server, mut client) = start(dir.path(), &[]).await;
    let op = create(&mut client, &origin.url("/flaky"), "flaky.bin").await;
    let done = wait_status(&mut client, &op.guid, S::Completed).await;
    assert_eq!(done.attempt_count, 5);
    assert_eq!(
        sha256_file(&server.download_dir().join("flaky.bin")),
        sha256(&body)
    );
}

#[tokio::test]
async fn a_spent_retry_budget_ends_in_error_saying_what_and_how_often() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let fault = Some(Fault::Status {
        code: 500,
        retry_after: None,
    });
    origin.put(
        "/down",
        Resource::new(test_bytes(100, 1)).faults(vec![fault; 10]),
    );
    let (server, mut client) = start(dir.path(), &["--max-attempts", "3"]).await;
    let op = create(&mut client, &origin.url("/down"), "down.bin").await;
    let failed = wait_status(&mut client, &op.guid, S::Error).await;
    let error = failed.error.unwrap();
    assert_eq!(error.reason(), pb::TransferErrorReason::HttpStatus);
    assert_eq!(error.http_status_code, 500);
    assert!(
        error
            .message
            .contains("gave up after 3 failed attempts in a row")
            && error.message.contains("500"),
        "{}",
        error.message
    );
    assert_eq!(failed.attempt_count, 3);
    assert_eq!(origin.hits("/down"), 3);
    assert!(files_under(&server.download_dir()).is_empty());
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    origin.put("/gone", Resource::new(test_bytes(100, 2)).status(410));
    let (_server, mut client) = start(dir.path(), &[]).await;
    let op = create(&mut client, &origin.url("/gone"), "gone.bin").await;
    let failed = wait_status(&mut client, &op.guid, S::Error).await;
    assert_eq!(failed.error.unwrap().http_status_code, 410);
    assert_eq!(failed.attempt_count, 1);
    assert_eq!(origin.hits("/gone"), 1);
}

#[tokio::test]
async fn connect_timeouts_are_retried_then_reported() {
    let dir = tempfile::tempdir().unwrap();
    let hole = Blackhole::start().await;
    let (_server, mut client) = start(
        dir.path(),
        &["--connect-timeout", "200ms", "--max-attempts", "2"],
    )
    .await;
    let op = create(&mut client, &hole.url("/never"), "never.bin").await;
    let failed = wait_status(&mut client, &op.guid, S::Error).await;
    let error = failed.error.unwrap();
    assert_eq!(error.reason(), pb::TransferErrorReason::Network);
    assert_eq!(error.http_status_code, 0);
    assert!(
        error.message.contains("gave up after 2 failed attempts"),
        "{}",
        error.message
    );
    assert!(error.message.contains("timed out"), "{}", error.message);
    assert_eq!(failed.attempt_count, 2);
}

#[tokio::test]
async fn attempts_that_make_progress_never_exhaust_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let body = test_bytes(500_000, 3);
    // Every request resets after 100 kB: five attempts, each bringing bytes.
    let faults = vec![Some(Fault::ResetAfter(100_000)); 4];
    origin.put("/slow", Resource::new(body.clone()).faults(faults));
    let (server, mut client) = start(dir.path(), &["--max-attempts", "2"]).await;
    let op = create(&mut client, &origin.url("/slow"), "slow.bin").await;
    let done = wait_until(&mut client, &op.guid, "a final status", |op| {
        matches!(status_of(op), S::Completed | S::Error)
    })
    .await;
    assert_eq!(status_of(&done), S::Completed, "{done:?}");
    assert_eq!(done.attempt_count, 5);
    let ranges: Vec<Option<String>> = origin
        .requests_for("/slow")
        .iter()
        .map(|r| r.header("range").map(str::to_string))
        .collect();
    assert_eq!(
        ranges,
        [
            None,
            Some("bytes=100000-".into()),
            Some("bytes=200000-".into()),
            Some("bytes=300000-".into()),
            Some("bytes=400000-".into()),
        ]
    );
    assert_eq!(
        sha256_file(&server.download_dir().join("slow.bin")),
        sha256(&body)
    );
}

/// Pauses a download held at `held` bytes, lets `change` alter the origin, resumes, and returns
/// the watcher's messages and the final operation.
async fn resume_after(
    client: &mut Client,
    origin: &Origin,
    held: u64,
    change: impl FnOnce(),
) -> (Vec<pb::BackgroundDownloadProgress>, pb::DownloadOperation) {
    let op = create(client, &origin.url("/r"), "r.bin").await;
    wait_bytes(client, &op.guid, held).await;
    pause(client, &op.guid).await;
    change();
    let mut watch = client
        .watch_download(pb::WatchDownloadRequest {
            guid: op.guid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    resume(client, &op.guid).await;
    let mut messages = Vec::new();
    while let Some(m) = watch.message().await.unwrap() {
        messages.push(m);
    }
    (messages, get(client, &op.guid).await)
}

fn restarted_once(messages: &[pb::BackgroundDownloadProgress]) {
    assert_eq!(
        messages.iter().filter(|m| m.has_restarted).count(),
        1,
        "{messages:?}"
    );
    assert_eq!(messages.last().unwrap().status(), S::Completed);
}

#[tokio::test]
async fn misbehaving_resumes_restart_cleanly() {
    let body = test_bytes(400_000, 4);
    let etag = Resource::new(body.clone()).etag.unwrap();
    let held = 150_000u64;
    // (what the origin does on the resume, the body the download must end with)
    let longer = test_bytes(450_000, 5);
    let shorter = test_bytes(100_000, 6);
    let cases: Vec<(&str, Resource, bytes::Bytes)> = vec![
        (
            "206 at the wrong offset",
            Resource::new(body.clone()).faults(vec![Some(Fault::ShiftRange(10))]),
            body.clone(),
        ),
        (
            "entity length changed under the same ETag",
            Resource::new(longer.clone()).etag(Some(&etag)),
            longer.clone(),
        ),
        (
            "416: the file shrank under the same ETag",
            Resource::new(shorter.clone()).etag(Some(&etag)),
            shorter.clone(),
        ),
        (
            "ETag changed",
            Resource::new(longer.clone()),
            longer.clone(),
        ),
    ];
    for (case, on_resume, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let origin = Origin::start().await;
        origin.put("/r", Resource::new(body.clone()).hold_after(held));
        let (server, mut client) = start(dir.path(), &[]).await;
        let (messages, done) = resume_after(&mut client, &origin, held, || {
            origin.put("/r", on_resume);
        })
        .await;
        restarted_once(&messages);
        assert_eq!(
            sha256_file(&server.download_dir().join("r.bin")),
            sha256(&expected),
            "{case}"
        );
        assert_eq!(
            messages.last().unwrap().bytes_received,
            expected.len() as u64,
            "{case}"
        );
        // The first request had no Range; the resume asked for the rest, guarded by If-Range.
        let requests = origin.requests_for("/r");
        assert_eq!(requests[0].header("range"), None, "{case}");
        assert_eq!(
            requests[1].header("range"),
            Some(&*format!("bytes={held}-")),
            "{case}"
        );
        assert!(requests[1].header("if-range").is_some(), "{case}");
        if case == "ETag changed" {
            // If-Range did its job: the origin itself answered 200 with the new file.
            assert_eq!(requests.len(), 2, "{case}");
        } else {
            // transferd refused the answer and asked again from byte 0, without Range.
            assert_eq!(requests.len(), 3, "{case}");
            assert_eq!(requests[2].header("range"), None, "{case}");
        }
        assert_eq!(done.attempt_count, 2, "{case}");
    }
}

#[tokio::test]
async fn dns_timeouts_are_retried_then_reported() {
    // The server runs in a namespace whose only resolver is a UDP socket on its own loopback
    // that never answers: every lookup times out, and no query leaves the namespace.
    let Some(ns) =
        common::netns::Netns::create("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    else {
        return;
    };
    let mut resolver = ns
        .command("python3")
        .args([
            "-c",
            "import socket,sys\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.bind(('127.0.0.1',53))\n\
             print('ready',flush=True)\n\
             while True:\n s.recvfrom(512); print('query',flush=True)",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut queries = tokio::io::BufReader::new(resolver.stdout.take().unwrap()).lines();
    use tokio::io::AsyncBufReadExt;
    assert_eq!(queries.next_line().await.unwrap().as_deref(), Some("ready"));

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(
        &ns,
        dir.path(),
        &[
            "--max-attempts",
            "2",
            "--retry-base-delay",
            "20ms",
            "--connect-timeout",
            "10s",
        ],
    )
    .await;
    let mut client = server.client().await;
    let op = create(&mut client, "http://files.transferd.test/a.bin", "a.bin").await;
    let failed = wait_status(&mut client, &op.guid, S::Error).await;
    let error = failed.error.unwrap();
    assert_eq!(error.reason(), pb::TransferErrorReason::Network);
    assert!(
        error.message.contains("gave up after 2 failed attempts"),
        "{}",
        error.message
    );
    assert!(error.message.contains("dns error"), "{}", error.message);
    assert_eq!(failed.attempt_count, 2);
    // The lookups really went to the silent resolver.
    let first = tokio::time::timeout(DEADLINE, queries.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.as_deref(), Some("query"));
}
