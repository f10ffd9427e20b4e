//! Prometheus metrics end to end: a real server with `--metrics-listen`, real downloads from the
//! test origin (one completes, one is answered 404, one is retried after a 503), gRPC calls and
//! a watch stream, each scraped over HTTP with a real client; the values must move by exactly
//! what happened. Without the flag, nothing serves metrics.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::disk::Mount;
use common::origin::{Fault, Resource, test_bytes};
use common::{DEADLINE, Harness, S, Server, assert_holds, pb};

/// Flags of the server under test: metrics on a free loopback port, and quick retries so the
/// 503 case does not wait a second.
const FLAGS: [&str; 4] = [
    "--metrics-listen",
    "127.0.0.1:0",
    "--retry-base-delay",
    "20ms",
];

/// The transfer service's name in the metrics' `service` label.
const TRANSFER: &str = "backgroundtransfer.v1.BackgroundTransferService";

/// A guid no download has.
const UNKNOWN_GUID: &str = "00000000-0000-4000-8000-000000000000";

/// The address the server logged as `metrics listening addr=ADDR`. The line is written before
/// the server announces its gRPC address, so it is in the log once the server has started.
fn metrics_addr(server: &Server) -> SocketAddr {
    let log = server.log();
    let line = log
        .lines()
        .find(|line| line.contains("metrics listening"))
        .unwrap_or_else(|| panic!("no `metrics listening` line; log:\n{log}"));
    let addr = line
        .split("addr=")
        .nth(1)
        .expect("the line names the address");
    addr.split_whitespace().next().unwrap().parse().unwrap()
}

/// An HTTP client. reqwest is built without a default TLS provider (the server picks ring), so
/// one is installed first, though only plain HTTP is spoken here.
fn http_client() -> reqwest::Client {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A `GET` of `path` on the metrics port: the status code, content type and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let response = http_client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

/// The metrics text of one scrape.
async fn scrape(addr: SocketAddr) -> Metrics {
    let (status, content_type, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    Metrics(text)
}

/// One scrape's text.
struct Metrics(String);

impl Metrics {
    /// The value of the series written exactly as `series` (name and labels), 0 if absent.
    fn value(&self, series: &str) -> f64 {
        self.0
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |value| value.parse().unwrap())
    }

    fn downloads(&self, status: &str) -> f64 {
        self.value(&format!(r#"transferd_downloads{{status="{status}"}}"#))
    }

    fn calls(&self, method: &str, code: &str) -> f64 {
        self.value(&format!(
            r#"transferd_grpc_calls_total{{service="{TRANSFER}",method="{method}",code="{code}"}}"#
        ))
    }

    fn watch_streams(&self, method: &str) -> f64 {
        self.value(&format!(
            r#"transferd_watch_streams{{service="{TRANSFER}",method="{method}"}}"#
        ))
    }
}

/// Scrapes until `pred` holds; panics after [`DEADLINE`] with the last scrape.
async fn scrape_until(addr: SocketAddr, what: &str, pred: impl Fn(&Metrics) -> bool) -> Metrics {
    let start = tokio::time::Instant::now();
    loop {
        let metrics = scrape(addr).await;
        if pred(&metrics) {
            return metrics;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}; last scrape:\n{}",
            metrics.0
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_move_by_exactly_what_downloads_and_calls_did() {
    let h = Harness::start(&FLAGS).await;
    let addr = metrics_addr(&h.server);
    let before = scrape(addr).await;
    assert_eq!(before.downloads("IDLE"), 0.0);
    assert_eq!(before.downloads("COMPLETED"), 0.0);
    assert_eq!(before.value("transferd_received_bytes_total"), 0.0);

    // One completes, one is answered 404.
    let ok_body = test_bytes(300_000, 1);
    h.origin.put("/ok", Resource::new(ok_body.clone()));
    let ok = h.create(&h.origin.url("/ok"), "ok.bin").await;
    let missing = h.create(&h.origin.url("/missing"), "missing.bin").await;
    h.wait_status(&ok.guid, S::Completed).await;
    h.wait_status(&missing.guid, S::Error).await;
    h.assert_file("ok.bin", &ok_body);
    let m = scrape(addr).await;
    assert_eq!(m.downloads("COMPLETED"), 1.0);
    assert_eq!(m.downloads("ERROR"), 1.0);
    assert_eq!(m.downloads("RUNNING"), 0.0);
    assert_eq!(m.downloads("IDLE"), 0.0);
    assert_eq!(
        m.value("transferd_received_bytes_total"),
        ok_body.len() as f64
    );
    assert_eq!(m.value("transferd_attempts_total"), 2.0);
    assert_eq!(m.value("transferd_transfer_duration_seconds_count"), 1.0);
    assert_eq!(
        m.value("transferd_transfer_throughput_bytes_per_second_count"),
        1.0
    );

    // One is answered 503 once, retried, and completes.
    let flaky_body = test_bytes(200_000, 2);
    let unavailable = Fault::Status {
        code: 503,
        retry_after: None,
    };
    h.origin.put(
        "/flaky",
        Resource::new(flaky_body.clone()).faults(vec![Some(unavailable)]),
    );
    let flaky = h.create(&h.origin.url("/flaky"), "flaky.bin").await;
    h.wait_status(&flaky.guid, S::Completed).await;
    h.assert_file("flaky.bin", &flaky_body);
    let m = scrape(addr).await;
    assert_eq!(m.downloads("COMPLETED"), 2.0);
    assert_eq!(
        m.value(r#"transferd_retries_total{reason="http_status"}"#),
        1.0
    );
    assert_eq!(m.value(r#"transferd_retries_total{reason="network"}"#), 0.0);
    assert_eq!(m.value("transferd_attempts_total"), 4.0);
    assert_eq!(m.value("transferd_restarts_total"), 0.0);
    assert_eq!(
        m.value("transferd_received_bytes_total"),
        (ok_body.len() + flaky_body.len()) as f64
    );
    assert_eq!(m.value("transferd_transfer_duration_seconds_count"), 2.0);

    // gRPC calls by method and code.
    let refused = h.client.get(UNKNOWN_GUID).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    let m = scrape(addr).await;
    assert_eq!(m.calls("CreateDownload", "OK"), 3.0);
    assert_eq!(m.calls("GetDownload", "NOT_FOUND"), 1.0);
    assert!(m.calls("GetDownload", "OK") >= 3.0, "the waits polled it");
    let create_durations = format!(
        r#"transferd_grpc_call_duration_seconds_count{{service="{TRANSFER}",method="CreateDownload"}}"#
    );
    assert_eq!(m.value(&create_durations), 3.0);
    // Every create was stored once, and every status change saved.
    assert_eq!(
        m.value(r#"transferd_store_operation_duration_seconds_count{operation="insert"}"#),
        3.0
    );
    assert!(m.value(r#"transferd_store_operation_duration_seconds_count{operation="save"}"#) > 0.0);

    // A watch stream counts while it is open; both kinds are present at zero before any.
    assert!(m.0.contains(&format!(
        r#"transferd_watch_streams{{service="{TRANSFER}",method="WatchDownload"}} 0"#
    )));
    assert_eq!(m.watch_streams("WatchDownloads"), 0.0);
    let watch = h.watch_all(None).await;
    let m = scrape(addr).await;
    assert_eq!(m.watch_streams("WatchDownloads"), 1.0);
    drop(watch);
    let m = scrape_until(addr, "the watch stream to close", |m| {
        m.watch_streams("WatchDownloads") == 0.0
    })
    .await;
    assert_eq!(m.calls("WatchDownloads", "CANCELLED"), 1.0);
}

#[tokio::test]
async fn creates_and_resumes_while_the_network_is_down_are_stored_paused_by_one_write() {
    let h = Harness::start(&FLAGS).await;
    let addr = metrics_addr(&h.server);
    let st = h.set_network(Some(false), None).await;
    assert!(!st.connected);
    let insert = r#"transferd_store_operation_duration_seconds_count{operation="insert"}"#;
    let save = r#"transferd_store_operation_duration_seconds_count{operation="save"}"#;
    let before = scrape(addr).await;
    h.origin.put("/held", Resource::new(test_bytes(1000, 9)));
    let mut ops = Vec::new();
    for i in 0..5 {
        let op = h
            .create(&h.origin.url("/held"), &format!("held-{i}.bin"))
            .await;
        assert_eq!(common::status_of(&op), S::PausedNoNetwork, "{op:?}");
        ops.push(op);
    }
    let after = scrape(addr).await;
    assert_eq!(after.downloads("PAUSED_NO_NETWORK"), 5.0);
    assert_eq!(after.downloads("IDLE"), 0.0);
    // Each create wrote its download once, already paused: no second write to pause it.
    assert_eq!(after.value(insert) - before.value(insert), 5.0);
    assert_eq!(after.value(save) - before.value(save), 0.0);

    // Paused by the client and resumed while the network is still down: the resume takes it
    // straight back to PAUSED_NO_NETWORK, in one write, and its watchers never see IDLE.
    let guid = &ops[0].guid;
    h.pause(guid).await;
    let mut watch = h.watch(guid).await;
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), S::PausedByApplication);
    let before = scrape(addr).await;
    let resumed = h.resume(guid).await;
    assert_eq!(common::status_of(&resumed), S::PausedNoNetwork);
    assert_eq!(
        resumed.status_reason(),
        pb::StatusReason::NetworkDownByOperator
    );
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status(), S::PausedNoNetwork);
    let after = scrape(addr).await;
    assert_eq!(after.value(save) - before.value(save), 1.0);
    assert!(h.origin.requests_for("/held").is_empty());
}

#[tokio::test]
async fn a_cut_body_that_cannot_resume_counts_a_network_retry_and_a_restart() {
    let h = Harness::start(&FLAGS).await;
    let addr = metrics_addr(&h.server);
    // The first body is cut after `cut` bytes; the retry asks for the rest, the origin ignores
    // the range and sends the whole file again, so the download starts over from byte 0.
    let (body, cut) = (test_bytes(100_000, 3), 40_000);
    let resource = Resource::new(body.clone())
        .ignore_range()
        .faults(vec![Some(Fault::TruncateAfter(cut))]);
    h.origin.put("/cut", resource);
    let op = h.create(&h.origin.url("/cut"), "cut.bin").await;
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("cut.bin", &body);
    let m = scrape(addr).await;
    assert_eq!(m.value(r#"transferd_retries_total{reason="network"}"#), 1.0);
    assert_eq!(m.value("transferd_restarts_total"), 1.0);
    assert_eq!(m.value("transferd_attempts_total"), 2.0);
    assert_eq!(
        m.value("transferd_received_bytes_total"),
        (cut + body.len() as u64) as f64,
        "the cut bytes and then the whole body"
    );
}

#[tokio::test]
async fn only_get_metrics_is_served() {
    let h = Harness::start(&FLAGS).await;
    let addr = metrics_addr(&h.server);
    let (status, _, _) = get(addr, "/").await;
    assert_eq!(status, 404);
    let (status, _, _) = get(addr, "/metrics/extra").await;
    assert_eq!(status, 404);
    let response = http_client()
        .post(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
}

#[tokio::test]
async fn without_the_flag_nothing_serves_metrics() {
    let h = Harness::start(&[]).await;
    let log = h.server.log();
    assert!(log.contains("metrics off"), "{log}");
    assert!(!log.contains("metrics listening"), "{log}");
}

#[tokio::test]
async fn a_postgresql_store_times_every_call_it_makes() {
    let Some(url) = common::postgres::fresh_database().await else {
        return;
    };
    let mut flags = FLAGS.to_vec();
    flags.extend(["--store", url.as_str(), "--node-id", "timed"]);
    let h = Harness::start(&flags).await;
    let addr = metrics_addr(&h.server);
    let body = test_bytes(200_000, 3);
    h.origin.put("/pg", Resource::new(body.clone()));
    let done = h.create(&h.origin.url("/pg"), "pg.bin").await;
    h.wait_status(&done.guid, S::Completed).await;
    h.assert_file("pg.bin", &body);
    let m = scrape(addr).await;
    let count = |operation: &str| {
        m.value(&format!(
            r#"transferd_store_operation_duration_seconds_count{{operation="{operation}"}}"#
        ))
    };
    // One create, checked and stored by the database in one call; it was claimed from the
    // queue, and its run's writes were fenced by its lease.
    assert_eq!(count("insert_new"), 1.0);
    assert_eq!(count("insert"), 0.0);
    assert!(count("claim_next") >= 1.0);
    assert!(count("save_fenced") >= 1.0);
    assert_eq!(count("expire_leases_of"), 1.0, "once, at start");
}

/// Downloads `body` (served without ranges, so one stream fetches it) to `file` and returns the
/// store writes it took: (inserts, saves), counted once its COMPLETED is stored.
async fn store_writes(h: &Harness, addr: SocketAddr, file: &str, body: &[u8]) -> (f64, f64) {
    let insert = r#"transferd_store_operation_duration_seconds_count{operation="insert"}"#;
    let save = r#"transferd_store_operation_duration_seconds_count{operation="save"}"#;
    let before = scrape(addr).await;
    let path = format!("/{file}");
    h.origin
        .put(&path, Resource::new(body.to_vec()).no_accept_ranges());
    let op = h.create(&h.origin.url(&path), file).await;
    h.wait_status(&op.guid, S::Completed).await;
    // COMPLETED is stored after it is shown, and after every earlier write of the download.
    let after = scrape_until(addr, "COMPLETED stored", |m| {
        h.stored_status(&op.guid) == S::Completed as i32 && m.value(save) > before.value(save)
    })
    .await;
    h.assert_file(file, body);
    (
        after.value(insert) - before.value(insert),
        after.value(save) - before.value(save),
    )
}

#[tokio::test]
async fn a_small_download_is_written_at_its_create_and_once_more_when_it_completes() {
    let h = Harness::start(&FLAGS).await;
    let addr = metrics_addr(&h.server);
    // No checkpoint write between the two: the body arrived at once, and a crash before its
    // commit would fetch 64 KiB again.
    let small = test_bytes(64 * 1024, 12);
    assert_eq!(
        store_writes(&h, addr, "small.bin", &small).await,
        (1.0, 1.0)
    );
    // A larger body has its checkpoint stored before the commit as well.
    let large = test_bytes(9 * 1024 * 1024, 13);
    let (inserts, saves) = store_writes(&h, addr, "large.bin", &large).await;
    assert_eq!(inserts, 1.0);
    assert!(saves >= 2.0, "{saves}");
}

/// Bytes written to partial files past the page cache and through it: (direct, buffered).
fn written(m: &Metrics) -> (f64, f64) {
    (
        m.value(r#"transferd_written_bytes_total{mode="direct"}"#),
        m.value(r#"transferd_written_bytes_total{mode="buffered"}"#),
    )
}

/// A download of `body`, served at `/<name>`, into `<name>.bin` under `dir`, with its expected
/// SHA-256 when `hashed`: completed and checked byte for byte.
async fn download(h: &Harness, dir: &Path, name: &str, body: &bytes::Bytes, hashed: bool) {
    let (path, file) = (format!("/{name}"), format!("{name}.bin"));
    h.origin.put(&path, Resource::new(body.clone()));
    let mut request = common::create_request(&h.origin.url(&path), &file);
    if hashed {
        request.expected_sha256 = common::sha256(body);
    }
    let op = h.create_with(request).await;
    h.wait_status(&op.guid, S::Completed).await;
    assert_holds(&dir.join(file), body);
}

#[tokio::test]
async fn whole_blocks_are_written_past_the_page_cache_and_the_edges_through_it() {
    // The test's temporary directory is on a disk filesystem that takes direct writes (ext4
    // here; tmpfs, xfs and btrfs do too).
    let h = Harness::start(&FLAGS).await;
    let addr = metrics_addr(&h.server);
    assert_eq!(written(&scrape(addr).await), (0.0, 0.0));
    // 200,000 bytes, written in one trip at the end: 48 whole 4 KiB blocks directly, the last
    // 3,392 bytes through the page cache.
    let dir = h.download_dir();
    download(&h, &dir, "one", &test_bytes(200_000, 7), false).await;
    assert_eq!(written(&scrape(addr).await), (196_608.0, 3_392.0));

    // Paused at 100,000 bytes, which is not on a block boundary, and resumed from there: the
    // first part is written directly up to its last whole block (98,304) and the rest of it
    // (1,696) through the page cache; the resumed part through the page cache up to the next
    // boundary (2,400), directly from there up to the last whole block (94,208), and its tail
    // (3,392) through the page cache again.
    let held = test_bytes(200_000, 8);
    h.origin
        .put("/held", Resource::new(held.clone()).hold_after(100_000));
    let op = h.create(&h.origin.url("/held"), "held.bin").await;
    h.wait_bytes(&op.guid, 100_000).await;
    h.pause(&op.guid).await;
    h.wait_status(&op.guid, S::PausedByApplication).await;
    h.origin.release("/held");
    h.resume(&op.guid).await;
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("held.bin", &held);
    let requests = h.origin.requests_for("/held");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].header("range"), Some("bytes=100000-"));
    let (direct, buffered) = written(&scrape(addr).await);
    assert_eq!(
        (direct - 196_608.0, buffered - 3_392.0),
        (98_304.0 + 94_208.0, 1_696.0 + 2_400.0 + 3_392.0)
    );
}

#[tokio::test]
async fn a_download_that_hashes_writes_through_the_page_cache() {
    // Its bytes are hashed right after they are written, or read back to be hashed (the later
    // connections of a segmented download): the page cache serves them.
    let h = Harness::start(&FLAGS).await;
    let addr = metrics_addr(&h.server);
    let dir = h.download_dir();
    download(&h, &dir, "hashed", &test_bytes(200_000, 12), true).await;
    assert_eq!(written(&scrape(addr).await), (0.0, 200_000.0));
    // The same server writes a download without a hash directly.
    download(&h, &dir, "plain", &test_bytes(200_000, 13), false).await;
    assert_eq!(written(&scrape(addr).await), (196_608.0, 203_392.0));
}

#[tokio::test]
async fn buffered_write_mode_writes_everything_through_the_page_cache() {
    let mut flags = FLAGS.to_vec();
    flags.extend(["--write-mode", "buffered"]);
    let h = Harness::start(&flags).await;
    let addr = metrics_addr(&h.server);
    download(&h, &h.download_dir(), "one", &test_bytes(200_000, 9), false).await;
    assert_eq!(written(&scrape(addr).await), (0.0, 200_000.0));
}

#[tokio::test]
async fn a_filesystem_without_direct_writes_gets_buffered_ones() {
    // ramfs has no direct I/O: it refuses O_DIRECT, and the download is written through the page
    // cache instead, byte for byte.
    let dir = tempfile::tempdir().unwrap();
    let downloads = dir.path().join("ramfs");
    let Some(_mount) = Mount::new("ramfs", &downloads, "mode=0700") else {
        return;
    };
    let dl = downloads.to_str().unwrap();
    let mut flags = FLAGS.to_vec();
    flags.extend(["--download-dir", dl, "--min-free-disk", "0"]);
    let h = Harness::start_at(&dir.path().join("data"), &flags).await;
    let addr = metrics_addr(&h.server);
    download(&h, &downloads, "one", &test_bytes(200_000, 10), false).await;
    download(&h, &downloads, "two", &test_bytes(300_000, 11), false).await;
    assert_eq!(written(&scrape(addr).await), (0.0, 500_000.0));
    let log = h.server.log();
    assert_eq!(
        log.matches("does not take direct writes").count(),
        1,
        "said once: {log}"
    );
}
