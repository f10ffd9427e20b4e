//! End-to-end: hostile or broken origins can neither corrupt a byte nor keep a download from
//! ending. Ranges nobody asked for, ranges with an unknown total, origins that keep losing the
//! same bytes, trickles, endless bodies, redirect tricks and untrusted certificates: each test
//! runs the real server against the real test origin and checks the bytes by SHA-256, the
//! requests made, and the exact status and error reason.

mod common;

use common::origin::{Fault, Resource, SelfSignedTls, test_bytes};
use common::*;

/// Fast retries so the tests spend their time on behaviour, not on waiting.
const FAST: [&str; 2] = ["--retry-base-delay", "20ms"];

/// A harness whose server retries fast, with `extra` flags.
async fn start(extra: &[&str]) -> Harness {
    let flags: Vec<&str> = FAST.iter().chain(extra).copied().collect();
    Harness::start(&flags).await
}

/// The Range header of every request for `path`, in order.
fn ranges(h: &Harness, path: &str) -> Vec<Option<String>> {
    h.origin
        .requests_for(path)
        .iter()
        .map(|r| r.header("range").map(str::to_string))
        .collect()
}

/// The error of a download that ended in ERROR.
async fn failed(h: &Harness, guid: &str) -> (pb::DownloadOperation, pb::TransferError) {
    let op = h.wait_finished(guid).await;
    assert_eq!(status_of(&op), S::Error, "{op:?}\n{}", h.server.log());
    let error = op.error.clone().expect("an ERROR carries its error");
    (op, error)
}

#[tokio::test]
async fn a_206_nobody_asked_for_is_never_written_at_offset_0() {
    let h = start(&["--max-attempts", "2"]).await;
    let body = test_bytes(1000, 21);
    let unasked = Some(Fault::Partial {
        start: 500,
        end: 999,
        unknown_total: false,
    });
    // Once: the attempt fails without writing, and the retry gets the whole file.
    h.origin.put(
        "/once",
        Resource::new(body.clone()).faults(vec![unasked.clone()]),
    );
    let op = h.create(&h.origin.url("/once"), "once.bin").await;
    let done = h.wait_finished(&op.guid).await;
    assert_eq!(status_of(&done), S::Completed, "{done:?}");
    assert_eq!(done.attempt_count, 2);
    assert_eq!(ranges(&h, "/once"), [None, None]);
    h.assert_file("once.bin", &body);

    // Every time: the budget runs out and nothing is committed.
    h.origin.put(
        "/always",
        Resource::new(body.clone()).faults(vec![unasked; 5]),
    );
    let op = h.create(&h.origin.url("/always"), "always.bin").await;
    let (op, error) = failed(&h, &op.guid).await;
    assert_eq!(error.reason(), pb::TransferErrorReason::HttpStatus);
    assert_eq!(error.http_status_code, 206);
    assert!(
        error.message.contains("gave up after 2 failed attempts")
            && error.message.contains("bytes 500-999/1000")
            && error.message.contains("not asked for"),
        "{}",
        error.message
    );
    assert_eq!(op.attempt_count, 2);
    assert!(!h.download_dir().join("always.bin").exists());
}

#[tokio::test]
async fn a_short_206_with_unknown_total_is_continued_to_the_known_length() {
    let h = start(&[]).await;
    let body = test_bytes(1000, 22);
    let faults = vec![
        // A 200 declaring 1000 bytes, cut after 400.
        Some(Fault::TruncateAfter(400)),
        // The resume is answered with only 400-599, total unknown.
        Some(Fault::Partial {
            start: 400,
            end: 599,
            unknown_total: true,
        }),
    ];
    h.origin
        .put("/short", Resource::new(body.clone()).faults(faults));
    let op = h.create(&h.origin.url("/short"), "short.bin").await;
    let done = h.wait_finished(&op.guid).await;
    assert_eq!(
        status_of(&done),
        S::Completed,
        "{done:?}\n{}",
        h.server.log()
    );
    let progress = done.progress.unwrap();
    assert_eq!(progress.bytes_received, 1000);
    assert_eq!(progress.total_bytes_to_receive, 1000);
    h.assert_file("short.bin", &body);
    assert_eq!(
        ranges(&h, "/short"),
        [None, Some("bytes=400-".into()), Some("bytes=600-".into())]
    );
    // The rest was asked for within the same attempt: a short range is not a failure.
    assert_eq!(done.attempt_count, 2);
    for request in &h.origin.requests_for("/short")[1..] {
        assert!(request.header("if-range").is_some());
    }
}

#[tokio::test]
async fn a_206_with_unknown_total_and_no_known_length_starts_over() {
    let h = start(&[]).await;
    let body = test_bytes(1000, 32);
    let faults = vec![
        // Chunked, so no length is known when it is cut after 400 bytes.
        Some(Fault::TruncateAfter(400)),
        Some(Fault::Partial {
            start: 400,
            end: 599,
            unknown_total: true,
        }),
    ];
    h.origin.put(
        "/nolen",
        Resource::new(body.clone()).chunked().faults(faults),
    );
    let op = h.create(&h.origin.url("/nolen"), "nolen.bin").await;
    let done = h.wait_finished(&op.guid).await;
    assert_eq!(status_of(&done), S::Completed, "{done:?}");
    // Nothing could say whether 600 bytes were all of it: asked again from byte 0.
    assert_eq!(
        ranges(&h, "/nolen"),
        [None, Some("bytes=400-".into()), None]
    );
    h.assert_file("nolen.bin", &body);
}

#[tokio::test]
async fn losing_the_same_bytes_again_and_again_spends_the_retry_budget() {
    let h = start(&["--max-attempts", "3"]).await;
    // No validator: every attempt starts over from byte 0 and loses the connection at 50 KiB.
    let resource = Resource::new(test_bytes(1 << 20, 23))
        .etag(None)
        .last_modified(None)
        .faults(vec![Some(Fault::ResetAfter(50 << 10)); 20]);
    h.origin.put("/drop", resource);
    let op = h.create(&h.origin.url("/drop"), "drop.bin").await;
    let (op, error) = failed(&h, &op.guid).await;
    assert_eq!(error.reason(), pb::TransferErrorReason::Network);
    assert!(
        error
            .message
            .contains("gave up after 3 failed attempts in a row"),
        "{}",
        error.message
    );
    assert_eq!(op.attempt_count, 3);
    assert_eq!(h.origin.hits("/drop"), 3);
    assert_eq!(ranges(&h, "/drop"), [None, None, None]);
    assert!(files_under(&h.download_dir()).is_empty());
}

#[tokio::test]
async fn a_trickle_below_min_speed_is_a_stalled_attempt_and_resumes() {
    let h = start(&["--stall-timeout", "1s", "--min-speed", "1KiB"]).await;
    let body = test_bytes(200_000, 24);
    // A byte every 100 ms never stays silent for the stall timeout, but is far below 1 KiB/s.
    let trickle = Fault::Trickle(common::origin::Throttle {
        chunk: 1,
        delay: std::time::Duration::from_millis(100),
    });
    h.origin.put(
        "/trickle",
        Resource::new(body.clone()).faults(vec![Some(trickle)]),
    );
    let op = h.create(&h.origin.url("/trickle"), "trickle.bin").await;
    let done = h.wait_finished(&op.guid).await;
    assert_eq!(status_of(&done), S::Completed, "{done:?}");
    assert_eq!(done.attempt_count, 2);
    h.assert_file("trickle.bin", &body);
    let ranges = ranges(&h, "/trickle");
    assert_eq!(ranges.len(), 2);
    let resumed_at: u64 = ranges[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .unwrap_or_else(|| panic!("the retry resumes with a Range: {ranges:?}"));
    assert!((1..1024).contains(&resumed_at), "{resumed_at}");
    assert!(
        h.server
            .log()
            .contains("slower than --min-speed 1024 bytes/s"),
        "{}",
        h.server.log()
    );
}

/// Waits for `guid` to fail as too large, and checks nothing was committed.
async fn too_large(h: &Harness, guid: &str, file: &str) -> String {
    let (op, error) = failed(h, guid).await;
    assert_eq!(
        error.reason(),
        pb::TransferErrorReason::TooLarge,
        "{error:?}"
    );
    assert_eq!(op.attempt_count, 1, "a size limit is not retried");
    assert!(!h.download_dir().join(file).exists());
    error.message
}

#[tokio::test]
async fn an_endless_body_stops_at_the_server_wide_limit() {
    let h = start(&["--max-file-size", "1MiB"]).await;
    h.origin.put(
        "/endless",
        Resource::new(test_bytes(64 << 10, 25)).faults(vec![Some(Fault::Endless)]),
    );
    let op = h.create(&h.origin.url("/endless"), "endless.bin").await;
    let message = too_large(&h, &op.guid, "endless.bin").await;
    assert!(
        message.contains("grew past 1048576 bytes")
            && message.contains("more than the 1048576 bytes allowed"),
        "{message}"
    );
    assert!(files_under(&h.download_dir()).is_empty());
}

#[tokio::test]
async fn max_bytes_refuses_a_declared_length_and_stops_a_growing_body() {
    let h = start(&[]).await;
    let limit = 100_000u64;
    let with_limit = |path: &str, file: &str| pb::CreateDownloadRequest {
        max_bytes: limit,
        ..create_request(&h.origin.url(path), file)
    };
    // Declared above the limit: refused before a byte is written.
    h.origin.put("/big", Resource::new(test_bytes(200_000, 26)));
    let op = h.create_with(with_limit("/big", "big.bin")).await;
    assert_eq!(op.max_bytes, limit);
    let message = too_large(&h, &op.guid, "big.bin").await;
    assert!(
        message.contains("declared 200000 bytes") && message.contains("100000 bytes allowed"),
        "{message}"
    );
    // Chunked, so only the body tells: stopped at the limit.
    h.origin
        .put("/grows", Resource::new(test_bytes(200_000, 27)).chunked());
    let op = h.create_with(with_limit("/grows", "grows.bin")).await;
    let message = too_large(&h, &op.guid, "grows.bin").await;
    assert!(message.contains("grew past 100000 bytes"), "{message}");
    // Within the limit: as usual.
    let small = test_bytes(100_000, 28);
    h.origin.put("/small", Resource::new(small.clone()));
    let op = h.create_with(with_limit("/small", "small.bin")).await;
    assert_eq!(h.wait_status(&op.guid, S::Completed).await.max_bytes, limit);
    h.assert_file("small.bin", &small);
}

#[tokio::test]
async fn refused_redirects_fail_at_once_saying_why() {
    let h = start(&[]).await;
    let o = &h.origin;
    o.put("/file", Resource::redirect(302, "file:///etc/passwd"));
    o.put("/self", Resource::redirect(301, "/self"));
    o.put("/ping", Resource::redirect(302, "/pong"));
    o.put("/pong", Resource::redirect(307, "/ping"));
    for i in 0..12 {
        o.put(
            &format!("/hop{i}"),
            Resource::redirect(302, &format!("/hop{}", i + 1)),
        );
    }
    o.put("/hop12", Resource::new(test_bytes(10, 29)));
    let cases = [
        (
            "/file",
            302,
            "redirect to file:///etc/passwd refused: only http and https",
        ),
        ("/self", 301, "redirect loop: HTTP 301 back to"),
        ("/ping", 307, "redirect loop: HTTP 307 back to"),
        ("/hop0", 302, "too many redirects: more than 10"),
    ];
    for (path, status, expected) in cases {
        let op = h.create(&o.url(path), "").await;
        let (op, error) = failed(&h, &op.guid).await;
        assert_eq!(
            error.reason(),
            pb::TransferErrorReason::HttpStatus,
            "{path}"
        );
        assert_eq!(error.http_status_code, status, "{path}");
        assert!(
            error.message.contains(expected),
            "{path}: {}",
            error.message
        );
        assert_eq!(op.attempt_count, 1, "{path}: not retried");
        assert_eq!(o.hits(path), 1, "{path}: not retried");
    }
    assert!(files_under(&h.download_dir()).is_empty());
}

#[tokio::test]
async fn an_untrusted_certificate_fails_at_once() {
    let tls = SelfSignedTls::start().await;
    let h = start(&[]).await;
    let op = h.create(&tls.url("/x.bin"), "x.bin").await;
    let (op, error) = failed(&h, &op.guid).await;
    assert_eq!(error.reason(), pb::TransferErrorReason::Network);
    assert!(
        error.message.contains("TLS certificate was rejected"),
        "{}",
        error.message
    );
    assert!(!error.message.contains("gave up"), "{}", error.message);
    assert_eq!(op.attempt_count, 1);
    assert_eq!(tls.connections(), 1);
}

#[tokio::test]
async fn is_resumable_says_whether_ranges_are_served() {
    let h = start(&[]).await;
    let body = test_bytes(300_000, 30);
    // A validator but no Accept-Ranges, and no range asked yet: nothing says ranges work.
    let quiet = Resource::new(body.clone()).no_accept_ranges();
    let op = h.start_held("/q.bin", quiet.clone(), 100_000).await;
    assert!(!h.response_information(&op.guid).await.is_resumable);
    // The resume is honoured with a 206: now it is known.
    h.pause(&op.guid).await;
    h.origin.put("/q.bin", quiet.hold_after(50_000));
    h.resume(&op.guid).await;
    h.wait_until(&op.guid, "the 206", |op| {
        op.progress.as_ref().unwrap().bytes_received >= 150_000
    })
    .await;
    let info = h.response_information(&op.guid).await;
    assert_eq!(info.status_code, 206);
    assert!(info.is_resumable);
    // Advertised: resumable from the first 200.
    let op = h
        .start_held("/a.bin", Resource::new(body.clone()), 100_000)
        .await;
    assert!(h.response_information(&op.guid).await.is_resumable);
    // A 200 to a ranged request ignored the range, whatever the headers say.
    h.pause(&op.guid).await;
    h.origin.put(
        "/a.bin",
        Resource::new(body.clone())
            .ignore_range()
            .hold_after(100_000),
    );
    let mut watch = h.watch(&op.guid).await;
    h.resume(&op.guid).await;
    read_until(&mut watch, "the new response", |m| m.has_response_changed).await;
    let info = h.response_information(&op.guid).await;
    assert_eq!(info.status_code, 200);
    assert!(info.headers.contains_key("accept-ranges"));
    assert!(!info.is_resumable);
    assert_eq!(ranges(&h, "/a.bin")[1].as_deref(), Some("bytes=100000-"));
    h.origin.release("/a.bin");
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("a.bin", &body);
}

#[tokio::test]
async fn out_of_range_flags_are_refused_and_flags_at_their_bounds_work() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let cases = [
        (
            ["--stall-timeout", "18446744073709551615s"],
            "too long; at most 1h",
        ),
        (["--stall-timeout", "2h"], "`2h` is too long; at most 1h"),
        (
            ["--connect-timeout", "11m"],
            "`11m` is too long; at most 10m",
        ),
        (["--retry-base-delay", "61m"], "at most 1h"),
        (["--retry-max-delay", "169h"], "at most 168h (7 days)"),
        (["--min-speed", "9223372036854775808"], "too large"),
        (["--max-file-size", "0"], "must be at least 1 byte"),
        (["--min-free-disk", "99999999TiB"], "too large"),
    ];
    for (args, expected) in cases {
        let out = run_transferd(args.iter().chain(&["--data-dir", data_dir]));
        assert!(!out.status.success(), "{args:?}");
        assert!(
            out.stdout.is_empty(),
            "{args:?} bound and announced an address"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(args[0]) && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
    }
    let h = start(&[
        "--stall-timeout",
        "1h",
        "--connect-timeout",
        "10m",
        "--retry-max-delay",
        "168h",
        "--max-file-size",
        "9223372036854775807",
        "--min-speed",
        "0",
    ])
    .await;
    let body = test_bytes(300_000, 31);
    h.origin.put("/ok", Resource::new(body.clone()));
    let op = h.create(&h.origin.url("/ok"), "ok.bin").await;
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("ok.bin", &body);
}
