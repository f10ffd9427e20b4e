//! End-to-end: segmented downloads. A large file from an origin that caps each connection
//! arrives over several connections (never more to one origin than `--max-connections-per-host`)
//! with exactly the origin's bytes, verified against `expected_sha256` at commit; a kill -9
//! resumes every segment from its stored checkpoint; a changed entity or an origin that stops
//! serving ranges starts the download over as one stream; `--max-connections-per-download 1`
//! keeps one connection. Progress stays truthful throughout: `bytes_received` never exceeds the
//! total and only falls when the download restarts.

mod common;

use std::time::Duration;

use common::origin::{Fault, RecordedRequest, Resource, test_bytes};
use common::*;

/// Large enough to be split several times (the minimum segment is 4 MiB).
const SIZE: usize = 24 << 20;

/// Each connection of the origin sends this much, then waits [`PACE`]: about 6.5 MB/s per
/// connection, so more connections bring more throughput, as behind a `limit_rate` origin.
const CHUNK: usize = 64 << 10;
const PACE: Duration = Duration::from_millis(10);

fn capped(body: &bytes::Bytes) -> Resource {
    Resource::new(body.clone()).throttle(CHUNK, PACE)
}

/// Where each ranged request began (`Range: bytes=START-...`); `None` for a request without
/// a Range.
fn range_starts(requests: &[RecordedRequest]) -> Vec<Option<u64>> {
    requests
        .iter()
        .map(|r| {
            let range = r.header("range")?;
            let start = range.strip_prefix("bytes=")?.split('-').next()?;
            Some(start.parse().expect("a numeric range start"))
        })
        .collect()
}

/// Checks what watchers saw: never more bytes than the total, and never fewer than before
/// except where the download said it restarted.
fn assert_truthful(messages: &[pb::BackgroundDownloadProgress]) {
    let mut last = 0;
    for m in messages {
        let p = m;
        if p.total_bytes_to_receive > 0 {
            assert!(
                p.bytes_received <= p.total_bytes_to_receive,
                "{} of {} bytes",
                p.bytes_received,
                p.total_bytes_to_receive
            );
        }
        assert!(
            p.bytes_received >= last || m.has_restarted,
            "bytes_received fell from {last} to {} without a restart",
            p.bytes_received
        );
        last = p.bytes_received;
    }
}

fn with_sha(uri: &str, file: &str, body: &[u8]) -> pb::CreateDownloadRequest {
    pb::CreateDownloadRequest {
        expected_sha256: sha256(body),
        ..create_request(uri, file)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_arrive_over_several_connections_within_the_host_cap() {
    let flags = [
        "--max-connections-per-download",
        "8",
        "--max-connections-per-host",
        "3",
    ];
    let h = Harness::start(&flags).await;
    let (a, b) = (test_bytes(SIZE, 1), test_bytes(SIZE, 2));
    h.origin.put("/a", capped(&a));
    h.origin.put("/b", capped(&b));
    let first = h
        .create_with(with_sha(&h.origin.url("/a"), "a.bin", &a))
        .await;
    let watch = h.watch(&first.guid).await;
    let second = h
        .create_with(with_sha(&h.origin.url("/b"), "b.bin", &b))
        .await;

    let messages = read_to_end(watch).await;
    assert_eq!(status_of(&h.wait_finished(&first.guid).await), S::Completed);
    assert_eq!(
        status_of(&h.wait_finished(&second.guid).await),
        S::Completed
    );
    assert_eq!(sha256_file(&h.download_dir().join("a.bin")), sha256(&a));
    assert_eq!(sha256_file(&h.download_dir().join("b.bin")), sha256(&b));
    assert_truthful(&messages);
    let last = messages.last().unwrap();
    assert_eq!(last.bytes_received, SIZE as u64);

    let ranged = |path| {
        range_starts(&h.origin.requests_for(path))
            .iter()
            .filter(|start| start.is_some())
            .count()
    };
    assert!(
        ranged("/a") + ranged("/b") >= 2,
        "the downloads used more connections than their first: {:?} {:?}",
        range_starts(&h.origin.requests_for("/a")),
        range_starts(&h.origin.requests_for("/b")),
    );
    // Counted as the origin sees work: responses being sent. The HTTP client may keep an
    // idle keep-alive connection a moment longer than the request it served.
    assert!(
        h.origin.peak_responses() <= 3,
        "{} requests to one origin at once, above --max-connections-per-host 3",
        h.origin.peak_responses()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_per_download_when_segmenting_is_off() {
    let h = Harness::start(&["--max-connections-per-download", "1"]).await;
    let body = test_bytes(SIZE / 2, 3);
    h.origin.put("/one", capped(&body));
    let op = h
        .create_with(with_sha(&h.origin.url("/one"), "one.bin", &body))
        .await;
    let messages = h.watch_to_end(&op.guid).await;
    assert_eq!(status_of(&h.get(&op.guid).await), S::Completed);
    h.assert_file("one.bin", &body);
    assert_truthful(&messages);
    assert_eq!(range_starts(&h.origin.requests_for("/one")), vec![None]);
    assert_eq!(h.origin.peak_connections(), 1);
}

/// The segments stored for `guid`, as `(start, end, durable)`, read from the store's file.
fn stored_segments(data_dir: &std::path::Path, guid: &str) -> Vec<[u64; 3]> {
    let db = rusqlite::Connection::open_with_flags(
        data_dir.join("transferd.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the store read-only");
    let json: String = db
        .query_row(
            "SELECT segments FROM downloads WHERE guid = ?1",
            [guid],
            |r| r.get(0),
        )
        .expect("the download's row");
    serde_json::from_str(&json).expect("segments are JSON triples")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_resumes_every_segment_from_its_checkpoint() {
    let flags = ["--max-connections-per-download", "4"];
    let mut h = Harness::start(&flags).await;
    let body = test_bytes(SIZE, 4);
    // Slow enough that every segment checkpoints (every few seconds) several times before its
    // end: a segment that ends checkpoints too, but the download completes soon after and its
    // segments are cleared, so at a quicker pace the test could miss every moment at which
    // two segments held stored checkpoints.
    h.origin.put(
        "/big",
        Resource::new(body.clone()).throttle(CHUNK, 16 * PACE),
    );
    // Without an expected SHA-256, so the spans are halves that run side by side (a download
    // that hashes fills its file in order: tests/hashing.rs resumes one).
    let op = h.create(&h.origin.url("/big"), "big.bin").await;
    let data_dir = h.server.data_dir.clone();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let segments = stored_segments(&data_dir, &op.guid);
        if segments.len() >= 2 && segments.iter().filter(|s| s[2] > 0).count() >= 2 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let now = h.get(&op.guid).await;
            panic!(
                "no segment checkpoints stored: {segments:?}; the download: {:?} at {} bytes, {} requests: {:?}",
                status_of(&now),
                now.progress.map_or(0, |p| p.bytes_received),
                h.origin.requests_for("/big").len(),
                range_starts(&h.origin.requests_for("/big")),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.server.kill().await;
    // What the store holds after the kill is what the restart resumes from.
    let segments = stored_segments(&data_dir, &op.guid);
    let before = h.origin.requests_for("/big").len();
    // The same entity (same validators), served quicker, so the rest does not take long.
    h.origin.put(
        "/big",
        Resource::new(body.clone()).throttle(CHUNK, 4 * PACE),
    );
    h.restart(&flags).await;
    assert_eq!(status_of(&h.wait_finished(&op.guid).await), S::Completed);
    h.assert_file("big.bin", &body);

    let after = range_starts(&h.origin.requests_for("/big")[before..]);
    assert!(
        after.iter().all(Option::is_some),
        "every request after the restart is ranged: {after:?}"
    );
    for [start, end, durable] in &segments {
        if start + durable < *end {
            assert!(
                after.contains(&Some(start + durable)),
                "segment {start}..{end} resumed from its checkpoint {}: {after:?}",
                start + durable
            );
        }
    }
    let first_resume = segments.iter().map(|s| s[0] + s[2]).min().unwrap();
    assert!(
        after.iter().all(|s| s.unwrap() >= first_resume),
        "nothing before the checkpoints was fetched again: {after:?} {segments:?}"
    );
}

/// Starts a capped download of `body` at `path` and waits until it runs on several connections.
async fn segmented(h: &Harness, path: &str, body: &bytes::Bytes) -> pb::DownloadOperation {
    h.origin.put(path, capped(body));
    let op = h
        .create(&h.origin.url(path), path.trim_start_matches('/'))
        .await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while range_starts(&h.origin.requests_for(path))
        .iter()
        .filter(|s| s.is_some())
        .count()
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the download never added connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    op
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_entity_restarts_the_whole_download_from_zero() {
    let h = Harness::start(&["--max-connections-per-download", "4"]).await;
    let (old, new) = (test_bytes(SIZE, 5), test_bytes(SIZE - 1000, 6));
    let op = segmented(&h, "/v", &old).await;
    let watch = h.watch(&op.guid).await;
    let before = h.origin.requests_for("/v").len();
    // A new version with a new ETag: the next ranged request's If-Range fails.
    h.origin.put("/v", Resource::new(new.clone()));
    let messages = read_to_end(watch).await;
    assert_eq!(status_of(&h.get(&op.guid).await), S::Completed);
    h.assert_file("v", &new);
    assert_truthful(&messages);
    assert!(restarts(&messages) >= 1, "{messages:?}");
    let starts = range_starts(&h.origin.requests_for("/v")[before..]);
    assert_eq!(
        starts.last(),
        Some(&None),
        "the new entity is fetched from byte 0 as one stream: {starts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_stops_serving_ranges_gets_one_stream_from_zero() {
    let h = Harness::start(&["--max-connections-per-download", "4"]).await;
    let body = test_bytes(SIZE, 7);
    let op = segmented(&h, "/r", &body).await;
    let before = h.origin.requests_for("/r").len();
    // Same bytes and validators, but every Range is ignored from now on: 200s.
    h.origin
        .put("/r", Resource::new(body.clone()).ignore_range());
    assert_eq!(status_of(&h.wait_finished(&op.guid).await), S::Completed);
    h.assert_file("r", &body);
    let starts = range_starts(&h.origin.requests_for("/r")[before..]);
    assert_eq!(starts.last(), Some(&None), "{starts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_segment_is_retried_alone_from_its_checkpoint() {
    let h = Harness::start(&[
        "--max-connections-per-download",
        "4",
        "--retry-base-delay",
        "50ms",
    ])
    .await;
    let body = test_bytes(SIZE, 8);
    // The first request runs; the second (the first extra connection) is reset after 1 MiB,
    // the third answered 503.
    let faults = vec![
        None,
        Some(Fault::ResetAfter(1 << 20)),
        Some(Fault::Status {
            code: 503,
            retry_after: None,
        }),
    ];
    h.origin.put("/f", capped(&body).faults(faults));
    let op = h
        .create_with(with_sha(&h.origin.url("/f"), "f.bin", &body))
        .await;
    let messages = h.watch_to_end(&op.guid).await;
    assert_eq!(status_of(&h.get(&op.guid).await), S::Completed);
    h.assert_file("f.bin", &body);
    assert_truthful(&messages);
    assert_eq!(
        restarts(&messages),
        0,
        "a segment's failure is not a restart"
    );
    let starts = range_starts(&h.origin.requests_for("/f"));
    assert_eq!(starts[0], None, "{starts:?}");
    // The reset segment was asked for again, from where its durable bytes end or earlier
    // (its start), never from 0.
    let reset_at = starts[1].expect("the second request is a segment");
    assert!(
        starts[2..]
            .iter()
            .flatten()
            .any(|&s| (reset_at..=reset_at + (1 << 20)).contains(&s)),
        "{starts:?}"
    );
    assert!(
        starts[1..].iter().all(|s| s.is_some_and(|s| s > 0)),
        "{starts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_is_checkpointed_at_its_end_and_every_few_seconds_not_every_request() {
    let flags = [
        "--max-connections-per-download",
        "2",
        "--max-connections-per-host",
        "2",
    ];
    let h = Harness::start(&flags).await;
    // 96 MiB at about 26 MB/s per connection: each connection asks for its span 4 MiB at a
    // time, so the download takes a few seconds and a few dozen ranged requests.
    let body = test_bytes(96 << 20, 9);
    h.origin.put(
        "/long",
        Resource::new(body.clone()).throttle(4 * CHUNK, PACE),
    );
    let op = h.create(&h.origin.url("/long"), "long.bin").await;
    assert_eq!(status_of(&h.wait_finished(&op.guid).await), S::Completed);
    h.assert_file("long.bin", &body);
    let ranged = range_starts(&h.origin.requests_for("/long"))
        .iter()
        .filter(|s| s.is_some())
        .count();
    let log = h.server.log();
    let checkpoints = log.matches("segments checkpointed").count();
    assert!(ranged >= 8, "{ranged} ranged requests");
    // A request that ends inside its span is only written; the span checkpoints at its end and
    // every few seconds. (Each request used to end with an fsync and a checkpoint.)
    assert!(
        checkpoints * 2 <= ranged,
        "{checkpoints} segment checkpoints for {ranged} ranged requests; log:\n{log}"
    );
}

/// Every ranged request's range, `(first, last)` byte, in the order the origin got them.
fn ranges_asked(requests: &[RecordedRequest]) -> Vec<(u64, u64)> {
    requests
        .iter()
        .filter_map(|r| {
            let (first, last) = r.header("range")?.strip_prefix("bytes=")?.split_once('-')?;
            Some((first.parse().ok()?, last.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_between_checkpoints_keeps_every_request_a_connection_finished() {
    let flags = [
        "--max-connections-per-download",
        "2",
        "--max-connections-per-host",
        "2",
    ];
    let mut h = Harness::start(&flags).await;
    let body = test_bytes(96 << 20, 10);
    h.origin.put(
        "/stop",
        Resource::new(body.clone()).throttle(4 * CHUNK, PACE),
    );
    let op = h.create(&h.origin.url("/stop"), "stop.bin").await;
    // Stop once a connection has finished a ranged request and gone on to the next: that
    // request ended inside its span, written but neither fsynced nor checkpointed.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let finished = loop {
        let asked = ranges_asked(&h.origin.requests_for("/stop"));
        let finished: Vec<(u64, u64)> = asked
            .iter()
            .copied()
            .filter(|(_, last)| asked.iter().any(|(next, _)| *next == last + 1))
            .collect();
        if !finished.is_empty() {
            break finished;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection went on to a next request: {asked:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // A graceful stop: every connection stops, and what it wrote is made durable and stored.
    assert_eq!(h.server.terminate().await, Some(0));
    let segments = stored_segments(&h.server.data_dir, &op.guid);
    let partial = h
        .download_dir()
        .join(".transferd-partial")
        .join(format!("{}.part", op.guid));
    let on_disk = std::fs::read(&partial).expect("the partial file is kept");
    for [start, end, durable] in &segments {
        let (from, to) = (*start as usize, (*start + *durable) as usize);
        assert!(*end <= body.len() as u64);
        assert!(
            on_disk[from..to] == body[from..to],
            "segment {start}..{end}: its {durable} durable bytes are the origin's"
        );
    }
    for (first, last) in finished {
        assert!(
            segments
                .iter()
                .any(|[start, _, durable]| *start <= first && last < start + durable),
            "the finished request {first}-{last} is kept as durable: {segments:?}"
        );
    }
    h.restart(&flags).await;
    assert_eq!(status_of(&h.wait_finished(&op.guid).await), S::Completed);
    h.assert_file("stop.bin", &body);
}
