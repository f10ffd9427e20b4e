//! End-to-end: transient faults recover by themselves, and origin misbehaviour is caught. A
//! fault-injecting origin (real sockets: resets, truncation, stalls, error statuses, shifted
//! ranges, a connect blackhole) misbehaves on chosen requests; every test checks the final bytes
//! by hash, the requests the downloader made, and the attempt count.

mod common;

use common::origin::{Blackhole, Fault, Origin, Resource, test_bytes};
use common::*;

/// Fast retries so the tests spend their time on behaviour, not on waiting.
const FAST: [&str; 2] = ["--retry-base-delay", "20ms"];

/// A harness whose server retries fast, with `extra` flags.
async fn start(extra: &[&str]) -> Harness {
    let flags: Vec<&str> = FAST.iter().chain(extra).copied().collect();
    Harness::start(&flags).await
}

/// A status fault without `Retry-After`.
fn status(code: u16) -> Option<Fault> {
    Some(Fault::Status {
        code,
        retry_after: None,
    })
}

/// Runs a download of `body` whose first request suffers `fault`, and checks that it recovers
/// with a Range request from exactly `resume_at`.
async fn recovers_from(fault: Fault, resume_at: u64, extra: &[&str]) {
    let h = start(extra).await;
    let body = test_bytes(600_000, 7);
    let faults = vec![Some(fault.clone())];
    h.origin
        .put("/f", Resource::new(body.clone()).faults(faults));
    let op = h.create(&h.origin.url("/f"), "f.bin").await;
    let done = h.wait_finished(&op.guid).await;
    assert_eq!(
        status_of(&done),
        S::Completed,
        "{fault:?}: {done:?}\n{}",
        h.server.log()
    );
    assert_eq!(done.attempt_count, 2, "{fault:?}");
    h.assert_file("f.bin", &body);
    let requests = h.origin.requests_for("/f");
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
    let h = start(&[]).await;
    let body = test_bytes(10_000, 8);
    let fault = Fault::Status {
        code: 503,
        retry_after: Some("1".into()),
    };
    h.origin.put(
        "/busy",
        Resource::new(body.clone()).faults(vec![Some(fault)]),
    );
    let started = std::time::Instant::now();
    let op = h.create(&h.origin.url("/busy"), "busy.bin").await;
    let done = h.wait_status(&op.guid, S::Completed).await;
    // Without Retry-After the retry would come after about 20 ms; the server asked for 1 s.
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    assert_eq!(done.attempt_count, 2);
    assert_eq!(h.origin.hits("/busy"), 2);
    h.assert_file("busy.bin", &body);
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried() {
    let h = start(&[]).await;
    let body = test_bytes(10_000, 9);
    let faults = vec![status(429), status(500), status(502), status(504)];
    h.origin
        .put("/flaky", Resource::new(body.clone()).faults(faults));
    let op = h.create(&h.origin.url("/flaky"), "flaky.bin").await;
    let done = h.wait_status(&op.guid, S::Completed).await;
    assert_eq!(done.attempt_count, 5);
    h.assert_file("flaky.bin", &body);
}

#[tokio::test]
async fn a_spent_retry_budget_ends_in_error_saying_what_and_how_often() {
    let h = start(&["--max-attempts", "3"]).await;
    let faults = vec![status(500); 10];
    h.origin
        .put("/down", Resource::new(test_bytes(100, 1)).faults(faults));
    let op = h.create(&h.origin.url("/down"), "down.bin").await;
    let failed = h.wait_status(&op.guid, S::Error).await;
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
    assert_eq!(h.origin.hits("/down"), 3);
    assert!(files_under(&h.download_dir()).is_empty());
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let h = start(&[]).await;
    h.origin
        .put("/gone", Resource::new(test_bytes(100, 2)).status(410));
    let op = h.create(&h.origin.url("/gone"), "gone.bin").await;
    let failed = h.wait_status(&op.guid, S::Error).await;
    assert_eq!(failed.error.unwrap().http_status_code, 410);
    assert_eq!(failed.attempt_count, 1);
    assert_eq!(h.origin.hits("/gone"), 1);
}

#[tokio::test]
async fn connect_timeouts_are_retried_then_reported() {
    let hole = Blackhole::start().await;
    let h = start(&["--connect-timeout", "200ms", "--max-attempts", "2"]).await;
    let op = h.create(&hole.url("/never"), "never.bin").await;
    let failed = h.wait_status(&op.guid, S::Error).await;
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
    let h = start(&["--max-attempts", "2"]).await;
    let body = test_bytes(500_000, 3);
    // Every request resets after 100 kB: five attempts, each bringing bytes.
    let faults = vec![Some(Fault::ResetAfter(100_000)); 4];
    h.origin
        .put("/slow", Resource::new(body.clone()).faults(faults));
    let op = h.create(&h.origin.url("/slow"), "slow.bin").await;
    let done = h.wait_finished(&op.guid).await;
    assert_eq!(status_of(&done), S::Completed, "{done:?}");
    assert_eq!(done.attempt_count, 5);
    let ranges: Vec<Option<String>> = h
        .origin
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
    h.assert_file("slow.bin", &body);
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
        let h = start(&[]).await;
        let op = h.start_held("/r", Resource::new(body.clone()), held).await;
        h.pause(&op.guid).await;
        h.origin.put("/r", on_resume);
        let watch = h.watch(&op.guid).await;
        h.resume(&op.guid).await;
        let messages = read_to_end(watch).await;
        assert_eq!(restarts(&messages), 1, "{case}: {messages:?}");
        let last = messages.last().unwrap();
        assert_eq!(last.status(), S::Completed, "{case}");
        assert_eq!(last.bytes_received, expected.len() as u64, "{case}");
        let result = sha256_file(&h.download_dir().join("r"));
        assert_eq!(result, sha256(&expected), "{case}");
        // The first request had no Range; the resume asked for the rest, guarded by If-Range.
        let requests = h.origin.requests_for("/r");
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
        assert_eq!(h.get(&op.guid).await.attempt_count, 2, "{case}");
    }
}

#[tokio::test]
async fn dns_timeouts_are_retried_then_reported() {
    use tokio::io::AsyncBufReadExt;
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
    assert_eq!(queries.next_line().await.unwrap().as_deref(), Some("ready"));

    let flags = [
        "--max-attempts",
        "2",
        "--retry-base-delay",
        "20ms",
        "--connect-timeout",
        "10s",
    ];
    // The origin is never asked: the name never resolves.
    let h = Harness::start_in(&ns, Origin::start().await, &flags).await;
    let op = h.create("http://files.transferd.test/a.bin", "a.bin").await;
    let failed = h.wait_status(&op.guid, S::Error).await;
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
