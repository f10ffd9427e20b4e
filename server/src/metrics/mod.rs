//! Every Prometheus metric transferd exports, defined in this one place; the rest of the crate
//! only reports events (a retry, a status change, a finished call) through [`global`].
//!
//! # Layout
//! - `mod.rs`: the metrics, their names, labels and buckets, and the events that move them.
//! - `http.rs`: the small HTTP server of `--metrics-listen` that answers `GET /metrics`.
//! - `store.rs`: a [`Store`](crate::store::Store) wrapper that times every store call.
//!
//! The gRPC side (calls by method and code, open watch streams) is measured by a tower layer
//! in `grpc/measure.rs`, composed with the other layers where the server is built.
//!
//! The metrics are process-wide: a transferd process serves one data directory (its lock sees
//! to that), and reporting through one static keeps each hook in the engine, the fetcher and
//! the store a single line instead of a handle threaded through every constructor. Recording
//! is a few atomic operations and never blocks a transfer.
//!
//! Labels are bounded by construction: statuses, error reasons, store operations and the
//! methods of the contract are fixed sets (an unknown gRPC path is one label value), and there
//! is no guid, URI or tenant label, so the metrics port reveals volumes, not who or what.

mod http;
mod store;

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::operation::{ErrorReason, Status};

pub use http::{MetricsServer, bind};
pub(crate) use store::TimedStore;

/// The service whose methods are watch streams.
const TRANSFER_SERVICE: &str =
    crate::pb::backgroundtransfer::v1::background_transfer_service_server::SERVICE_NAME;

/// The methods whose streams count as watch streams.
const WATCH_METHODS: [&str; 2] = ["WatchDownload", "WatchDownloads"];

/// The `mode` labels of the bytes written.
const DIRECT: &str = "direct";
const BUFFERED: &str = "buffered";

/// Every metric's name starts with this, so transferd's series are easy to find.
const PREFIX: &str = "transferd";

/// Buckets of how long a completed transfer ran: 10 ms (a small file on a fast link) up to
/// about 12 h (a large file on a slow one), each 4× the one before.
fn transfer_seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.01, 4.0, 12)
}

/// Buckets of a completed transfer's throughput: 1 KiB/s (a trickle) up to 4 GiB/s (beyond
/// any link this serves), each 4× the one before.
fn throughput_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1024.0, 4.0, 12)
}

/// Buckets of a gRPC call's duration: 100 µs (a read answered from memory) up to about 15 s
/// (a call stuck behind a slow store), each 2.5× the one before. A stream's duration is how
/// long it stayed open, so long watches land in the top buckets.
fn rpc_seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.5, 14)
}

/// Buckets of a store call's duration: 50 µs (a cached read) up to about 7 s (a write waiting
/// on a saturated disk), each 2.5× the one before.
fn store_seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.00005, 2.5, 14)
}

/// The label of a download status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

/// The label of why a failed attempt is retried.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The labels of a gRPC method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: &'static str,
    method: &'static str,
}

/// The labels of a finished gRPC call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: &'static str,
    method: &'static str,
    code: &'static str,
}

/// How bytes were written to a partial file: `direct` (past the page cache) or `buffered`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabel {
    mode: &'static str,
}

/// The label of a store call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

/// A histogram family whose buckets are fixed by a plain function.
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// A gRPC method as the metrics label it: one of the contract's, or `unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rpc {
    /// The service, e.g. `backgroundtransfer.v1.BackgroundTransferService`.
    pub service: &'static str,
    /// The method, e.g. `CreateDownload`.
    pub method: &'static str,
}

impl Rpc {
    fn labels(self) -> MethodLabels {
        MethodLabels {
            service: self.service,
            method: self.method,
        }
    }
}

/// The metrics and the registry that encodes them.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    downloads: Family<StatusLabel, Gauge>,
    received: Counter,
    written: Family<WriteLabel, Counter>,
    attempts: Counter,
    retries: Family<ReasonLabel, Counter>,
    restarts: Counter,
    transfer_seconds: Histogram,
    throughput: Histogram,
    calls: Family<CallLabels, Counter>,
    call_seconds: Histograms<MethodLabels>,
    watch_streams: Family<MethodLabels, Gauge>,
    store_seconds: Histograms<OperationLabel>,
}

/// The process's metrics.
pub(crate) fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

impl Metrics {
    /// Every metric registered, the fixed label sets present at zero (so a dashboard shows a
    /// status or reason that never happened as 0, not as missing).
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::with_prefix(PREFIX),
            downloads: Family::default(),
            received: Counter::default(),
            written: Family::default(),
            attempts: Counter::default(),
            retries: Family::default(),
            restarts: Counter::default(),
            transfer_seconds: Histogram::new(transfer_seconds_buckets()),
            throughput: Histogram::new(throughput_buckets()),
            calls: Family::default(),
            call_seconds: Family::new_with_constructor(|| Histogram::new(rpc_seconds_buckets())),
            watch_streams: Family::default(),
            store_seconds: Family::new_with_constructor(|| Histogram::new(store_seconds_buckets())),
        };
        for status in Status::ALL {
            let _ = m.downloads.get_or_create(&status_label(status));
        }
        for reason in ErrorReason::ALL {
            let _ = m.retries.get_or_create(&reason_label(reason));
        }
        for mode in [DIRECT, BUFFERED] {
            let _ = m.written.get_or_create(&WriteLabel { mode });
        }
        for method in WATCH_METHODS {
            let _ = (m.watch_streams).get_or_create(&MethodLabels {
                service: TRANSFER_SERVICE,
                method,
            });
        }
        m.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "downloads",
            "Downloads the server holds, by status",
            self.downloads.clone(),
        );
        r.register_with_unit(
            "received",
            "Body bytes received from origins, over all downloads and attempts",
            Unit::Bytes,
            self.received.clone(),
        );
        r.register_with_unit(
            "written",
            "Bytes written to partial files, by how: `direct` past the page cache (whole blocks, \
             --write-mode direct) or `buffered` through it",
            Unit::Bytes,
            self.written.clone(),
        );
        r.register(
            "attempts",
            "HTTP requests made for downloads (first tries and retries)",
            self.attempts.clone(),
        );
        r.register(
            "retries",
            "Failed attempts that are retried after a backoff, by the failure's reason",
            self.retries.clone(),
        );
        r.register(
            "restarts",
            "Times a download started over from byte 0 because the origin could not resume it",
            self.restarts.clone(),
        );
        r.register_with_unit(
            "transfer_duration",
            "How long the transfer that completed a download ran, from its start to the commit",
            Unit::Seconds,
            self.transfer_seconds.clone(),
        );
        r.register_with_unit(
            "transfer_throughput",
            "Bytes a completing transfer added to the file, per second of its duration",
            Unit::Other("bytes_per_second".into()),
            self.throughput.clone(),
        );
        r.register(
            "grpc_calls",
            "Finished gRPC calls, by method and status code (CANCELLED: the client went away)",
            self.calls.clone(),
        );
        r.register_with_unit(
            "grpc_call_duration",
            "gRPC call duration until its status was sent; for a stream, how long it was open",
            Unit::Seconds,
            self.call_seconds.clone(),
        );
        r.register(
            "watch_streams",
            "Open WatchDownload and WatchDownloads streams",
            self.watch_streams.clone(),
        );
        r.register_with_unit(
            "store_operation_duration",
            "Duration of calls to the store, by operation",
            Unit::Seconds,
            self.store_seconds.clone(),
        );
        self
    }

    /// The metrics in the text exposition format (OpenMetrics, which Prometheus reads).
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// A download with status `status` is now held (created, or loaded at start).
    pub(crate) fn download_added(&self, status: Status) {
        self.downloads.get_or_create(&status_label(status)).inc();
    }

    /// A download moved from `from` to `to`.
    pub(crate) fn download_moved(&self, from: Status, to: Status) {
        self.downloads.get_or_create(&status_label(from)).dec();
        self.downloads.get_or_create(&status_label(to)).inc();
    }

    /// A download in `status` was forgotten (DeleteDownload, `--retain-finished`).
    pub(crate) fn download_removed(&self, status: Status) {
        self.downloads.get_or_create(&status_label(status)).dec();
    }

    /// `bytes` body bytes arrived from an origin.
    pub(crate) fn received(&self, bytes: u64) {
        self.received.inc_by(bytes);
    }

    /// `direct` bytes were written to a partial file past the page cache, and `buffered`
    /// through it.
    pub(crate) fn written(&self, direct: u64, buffered: u64) {
        if direct > 0 {
            self.written
                .get_or_create(&WriteLabel { mode: DIRECT })
                .inc_by(direct);
        }
        if buffered > 0 {
            (self.written.get_or_create(&WriteLabel { mode: BUFFERED })).inc_by(buffered);
        }
    }

    /// An HTTP attempt is being made.
    pub(crate) fn attempt(&self) {
        self.attempts.inc();
    }

    /// A failed attempt will be retried.
    pub(crate) fn retry(&self, reason: ErrorReason) {
        self.retries.get_or_create(&reason_label(reason)).inc();
    }

    /// A download started over from byte 0.
    pub(crate) fn restart(&self) {
        self.restarts.inc();
    }

    /// A transfer that ran for `elapsed` and added `bytes` to the file completed its download.
    pub(crate) fn transfer_completed(&self, bytes: u64, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        self.transfer_seconds.observe(seconds);
        // A transfer that only committed what an earlier run left whole on disk moved no bytes,
        // and one shorter than the clock's resolution has no meaningful rate.
        if bytes > 0 && seconds > 0.0 {
            self.throughput.observe(bytes as f64 / seconds);
        }
    }

    /// A gRPC call to `rpc` finished with `code` after `elapsed`.
    pub(crate) fn call_finished(&self, rpc: Rpc, code: tonic::Code, elapsed: Duration) {
        let labels = CallLabels {
            service: rpc.service,
            method: rpc.method,
            code: code_name(code),
        };
        self.calls.get_or_create(&labels).inc();
        (self.call_seconds.get_or_create(&rpc.labels())).observe(elapsed.as_secs_f64());
    }

    /// A watch stream of `rpc` opened (`+1`) or closed (`-1`).
    pub(crate) fn watch_streams(&self, rpc: Rpc, change: i64) {
        self.watch_streams
            .get_or_create(&rpc.labels())
            .inc_by(change);
    }

    /// A store call `operation` took `elapsed`.
    pub(crate) fn store_call(&self, operation: &'static str, elapsed: Duration) {
        (self
            .store_seconds
            .get_or_create(&OperationLabel { operation }))
        .observe(elapsed.as_secs_f64());
    }
}

/// Whether calls to `rpc` are watch streams.
pub(crate) fn is_watch(rpc: Rpc) -> bool {
    rpc.service == TRANSFER_SERVICE && WATCH_METHODS.contains(&rpc.method)
}

/// The status as the API names it.
fn status_label(status: Status) -> StatusLabel {
    StatusLabel {
        status: status.name(),
    }
}

fn reason_label(reason: ErrorReason) -> ReasonLabel {
    let reason = match reason {
        ErrorReason::HttpStatus => "http_status",
        ErrorReason::Network => "network",
        ErrorReason::Disk => "disk",
        ErrorReason::Integrity => "integrity",
        ErrorReason::TooLarge => "too_large",
        ErrorReason::Policy => "policy",
    };
    ReasonLabel { reason }
}

/// The canonical name of a gRPC status code, as grpc-go and the gRPC docs spell it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `series` (name and labels as printed) in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn names_carry_the_prefix_units_and_fixed_labels_start_at_zero() {
        let m = Metrics::new();
        m.download_added(Status::Idle);
        m.download_moved(Status::Idle, Status::Running);
        m.received(10);
        m.retry(ErrorReason::HttpStatus);
        m.transfer_completed(1024, Duration::from_secs(2));
        let text = m.encode();
        assert_eq!(
            sample(&text, r#"transferd_downloads{status="RUNNING"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"transferd_downloads{status="IDLE"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, r#"transferd_downloads{status="ERROR"}"#),
            Some(0.0)
        );
        assert_eq!(sample(&text, "transferd_received_bytes_total"), Some(10.0));
        assert_eq!(
            sample(&text, r#"transferd_retries_total{reason="http_status"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"transferd_retries_total{reason="network"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "transferd_transfer_throughput_bytes_per_second_sum"),
            Some(512.0)
        );
        assert_eq!(
            sample(&text, "transferd_transfer_duration_seconds_count"),
            Some(1.0)
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn every_code_has_its_canonical_name() {
        for (number, name) in [(0, "OK"), (5, "NOT_FOUND"), (16, "UNAUTHENTICATED")] {
            assert_eq!(code_name(tonic::Code::from_i32(number)), name);
        }
    }
}
