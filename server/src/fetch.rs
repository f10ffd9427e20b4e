//! The HTTP fetcher: one attempt at transferring a download's body into its partial file. It
//! owns the rules of resuming: `Range: bytes=N-` guarded by `If-Range` (a strong ETag, else
//! Last-Modified), a 206 whose `Content-Range` must start exactly at N, and a clean restart from
//! byte 0 whenever the server cannot or will not continue (200, 416, a mismatched range, a
//! changed entity length, or no validator to guard the resume).
//!
//! It reports to the engine through [`Observer`] and knows nothing of queues, stores or gRPC.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::SeekFrom;
use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};
use tokio_util::sync::CancellationToken;

use crate::operation::{ErrorReason, ResponseInfo, Settings, TransferError, Validators};

/// Size of the write buffer between the socket and the partial file. Large writes keep the
/// disk and the blocking pool efficient; memory per active download is bounded by it.
pub const WRITE_BUFFER_SIZE: usize = 1024 * 1024;

/// How often the fetcher fsyncs the partial file and lets the engine checkpoint the byte
/// count. A crash loses at most this much progress (the download resumes from the checkpoint),
/// and the store is written a few times a minute per download, never per read.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(3);

/// How often byte progress is published while data flows: a few messages a second, as BITS
/// (500 ms) and Android (2 s) do, not one per socket read.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Longest Retry-After transferd honours. A server asking for more is retried after this long
/// instead, so one bad header cannot park a download for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Redirects followed before giving up, as browsers and curl's default do.
const MAX_REDIRECTS: usize = 10;

/// Request headers the fetcher manages itself; clients may not set them.
pub const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "range",
    "if-range",
    "accept-encoding",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
];

/// A new HTTP response the engine should know about.
#[derive(Clone, Debug)]
pub struct ResponseStart {
    /// What the server said.
    pub info: ResponseInfo,
    /// Validators of the entity now being written.
    pub validators: Validators,
    /// Entity length, 0 if unknown.
    pub total: u64,
    /// Where the body is written from: the resume offset, or 0.
    pub offset: u64,
    /// Whether data already received was discarded: the download started over.
    pub restarted: bool,
}

/// How the engine follows an attempt.
pub trait Observer: Send + Sync {
    /// A response arrived and its body is about to be written.
    fn response(&self, start: ResponseStart);
    /// A response with an error status arrived; its body is not the entity and is not written.
    fn error_response(&self, info: ResponseInfo);
    /// `bytes_received` body bytes are now received (written or buffered).
    fn progress(&self, bytes_received: u64);
    /// Time to publish byte progress, if it changed.
    fn tick(&self);
    /// The partial file holds `bytes` durably (fsynced): the engine may checkpoint them.
    fn durable(&self, bytes: u64) -> impl Future<Output = ()> + Send;
}

/// What to transfer.
#[derive(Debug)]
pub struct Job<'a> {
    /// The URI and headers to request.
    pub settings: &'a Settings,
    /// Its partial file.
    pub partial: &'a Path,
    /// Bytes the engine holds as checkpointed; the attempt resumes from there if it can.
    pub checkpoint: u64,
    /// Validators recorded with that checkpoint.
    pub validators: &'a Validators,
    /// Entity length recorded with that checkpoint, 0 if unknown.
    pub total: u64,
}

/// How an attempt ended.
#[derive(Debug)]
pub enum Outcome {
    /// The whole body is in the partial file, flushed and fsynced.
    Complete {
        /// Its length.
        bytes: u64,
    },
    /// The attempt failed; what was durably written is checkpointed.
    Failed(Failure),
    /// `stop` fired; what was durably written is checkpointed.
    Stopped,
}

/// A failed attempt.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: TransferError,
    /// Whether trying again may succeed (network trouble, 5xx, 429) or not (404, disk errors).
    pub transient: bool,
    /// How long the server asked us to wait (Retry-After), bounded by [`MAX_RETRY_AFTER`].
    pub retry_after: Option<Duration>,
    /// The host has no route to the origin: the network is down, not the origin.
    pub network_down: bool,
    /// A write failed because the disk is full.
    pub disk_full: bool,
}

impl Failure {
    /// A failure that retrying cannot fix.
    pub fn fatal(error: TransferError) -> Failure {
        Failure {
            error,
            transient: false,
            retry_after: None,
            network_down: false,
            disk_full: false,
        }
    }

    fn transient(error: TransferError) -> Failure {
        Failure {
            transient: true,
            ..Failure::fatal(error)
        }
    }

    /// A connection failure, marked as "network down" when the host has no route.
    fn network(what: &str, e: &reqwest::Error) -> Failure {
        Failure {
            network_down: is_unreachable(e),
            ..Failure::transient(network_error(what, e))
        }
    }

    /// A disk failure, marked when the disk is full.
    pub fn disk(what: &str, e: &std::io::Error) -> Failure {
        Failure {
            disk_full: e.kind() == std::io::ErrorKind::StorageFull,
            ..Failure::fatal(disk_error(what, e))
        }
    }
}

/// Whether a connection failed because the host has no route to the origin (no interface, no
/// route, network unreachable), as opposed to the origin refusing or misbehaving.
fn is_unreachable(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::NetworkUnreachable | std::io::ErrorKind::HostUnreachable
            ) {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// Time limits of HTTP requests.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Time allowed to resolve the host and open a connection.
    pub connect: Duration,
    /// A response or body that sends nothing for this long is a stalled, failed attempt.
    pub stall: Duration,
}

/// Issues the HTTP requests of downloads.
#[derive(Clone, Debug)]
pub struct Fetcher {
    client: reqwest::Client,
}

impl Fetcher {
    /// A fetcher with these timeouts, using rustls.
    pub fn new(timeouts: Timeouts) -> Result<Fetcher, reqwest::Error> {
        // reqwest is built without a bundled crypto provider; install ring once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(concat!("transferd/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.stall)
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .build()?;
        Ok(Fetcher { client })
    }

    /// Runs one attempt: request, then stream the body into the partial file until it is
    /// complete, fails, or `stop` fires.
    pub async fn run<O: Observer>(
        &self,
        job: Job<'_>,
        observer: &O,
        stop: &CancellationToken,
    ) -> Outcome {
        match self.attempt(&job, observer, stop).await {
            Ok(outcome) => outcome,
            Err(failure) => Outcome::Failed(failure),
        }
    }

    async fn attempt<O: Observer>(
        &self,
        job: &Job<'_>,
        observer: &O,
        stop: &CancellationToken,
    ) -> Result<Outcome, Failure> {
        let file_len = match tokio::fs::metadata(job.partial).await {
            Ok(m) => m.len(),
            Err(_) => 0,
        };
        // Never trust bytes beyond the checkpoint: they may not have reached the disk intact.
        let mut offset = job.checkpoint.min(file_len);
        let mut discarded = offset < job.checkpoint;
        if offset > 0 && job.validators.if_range().is_none() {
            // Without a validator a Range request cannot detect a changed file: start over
            // rather than splice two versions together.
            offset = 0;
            discarded = true;
        }
        // One retry from zero covers every "cannot continue" answer; a second would loop.
        let mut ranged = offset > 0;
        let response = loop {
            let response = self.request(job, offset, stop).await?;
            let Some(response) = response else {
                return Ok(Outcome::Stopped);
            };
            if !ranged {
                break response;
            }
            match check_resume(&response, offset, job.total) {
                Resume::Continue => break response,
                Resume::StartOver => break response,
                Resume::RequestAgain(reason) => {
                    tracing::info!(reason, "resume refused; starting over");
                    offset = 0;
                    discarded = true;
                    ranged = false;
                }
            }
        };
        let status = response.status();
        let headers = response.headers();
        let validators = validators_of(headers);
        let info = ResponseInfo {
            is_resumable: is_resumable(headers, &validators),
            actual_uri: response.url().to_string(),
            status_code: status.as_u16(),
            headers: header_map(headers),
        };
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            observer.error_response(info);
            return Err(http_failure(status, retry_after));
        }
        let restarted = discarded || (ranged && status == StatusCode::OK);
        if status == StatusCode::OK {
            offset = 0;
        }
        let total = if status == StatusCode::PARTIAL_CONTENT {
            content_range(headers).and_then(|r| r.total).unwrap_or(0)
        } else {
            content_length(headers).unwrap_or(0)
        };
        let file = open_partial(job.partial, offset).await?;
        observer.response(ResponseStart {
            info,
            validators,
            total,
            offset,
            restarted,
        });
        if offset < job.checkpoint {
            // The old checkpoint no longer describes the file; say so before writing anew.
            observer.durable(offset).await;
        }
        self.stream_body(response, file, offset, total, observer, stop)
            .await
    }

    /// Sends the request; `None` if `stop` fired first.
    async fn request(
        &self,
        job: &Job<'_>,
        offset: u64,
        stop: &CancellationToken,
    ) -> Result<Option<reqwest::Response>, Failure> {
        let mut request = self
            .client
            .get(&job.settings.requested_uri)
            .headers(user_headers(&job.settings.request_headers))
            // The entity bytes exactly as served: no transparent decompression that would make
            // byte offsets and lengths disagree with the server's.
            .header(header::ACCEPT_ENCODING, "identity");
        if offset > 0 {
            request = request.header(header::RANGE, format!("bytes={offset}-"));
            if let Some(v) = job.validators.if_range() {
                request = request.header(header::IF_RANGE, v);
            }
        }
        tokio::select! {
            r = request.send() => r
                .map(Some)
                .map_err(|e| Failure::network("request failed", &e)),
            () = stop.cancelled() => Ok(None),
        }
    }

    async fn stream_body<O: Observer>(
        &self,
        mut response: reqwest::Response,
        file: tokio::fs::File,
        offset: u64,
        total: u64,
        observer: &O,
        stop: &CancellationToken,
    ) -> Result<Outcome, Failure> {
        let mut out = BufWriter::with_capacity(WRITE_BUFFER_SIZE, file);
        let mut received = offset;
        let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_checkpoint = tokio::time::Instant::now();
        let end = loop {
            let chunk = tokio::select! {
                chunk = response.chunk() => chunk,
                _ = ticker.tick() => {
                    observer.tick();
                    continue;
                }
                () = stop.cancelled() => break End::Stopped,
            };
            match chunk {
                Ok(Some(bytes)) => {
                    if let Err(e) = out.write_all(&bytes).await {
                        break End::Failed(Failure::disk("writing the partial file failed", &e));
                    }
                    received += bytes.len() as u64;
                    observer.progress(received);
                    if last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
                        if let Err(e) = sync(&mut out).await {
                            break End::Failed(Failure::disk(
                                "syncing the partial file failed",
                                &e,
                            ));
                        }
                        observer.durable(received).await;
                        last_checkpoint = tokio::time::Instant::now();
                    }
                }
                Ok(None) => break End::Done,
                Err(e) => {
                    break End::Failed(Failure::network(
                        &format!("receiving the body failed after {received} bytes"),
                        &e,
                    ));
                }
            }
        };
        // Whatever ended the attempt, keep what arrived: flush, fsync, checkpoint.
        if let Err(e) = sync(&mut out).await {
            return Err(Failure::disk("syncing the partial file failed", &e));
        }
        observer.progress(received);
        observer.durable(received).await;
        match end {
            End::Stopped => Ok(Outcome::Stopped),
            End::Failed(e) => Err(e),
            End::Done if total > 0 && received != total => Err(Failure::transient(TransferError {
                message: format!("the server closed the body after {received} of {total} bytes"),
                http_status: None,
                reason: ErrorReason::Network,
            })),
            End::Done => Ok(Outcome::Complete { bytes: received }),
        }
    }
}

enum End {
    Done,
    Stopped,
    Failed(Failure),
}

/// What a response to a Range request means for the download.
#[derive(Debug, PartialEq, Eq)]
enum Resume {
    /// A 206 that continues exactly where the partial file ends.
    Continue,
    /// A 200: the server sent the whole entity (Range ignored or If-Range failed).
    StartOver,
    /// The server cannot continue (416, a range that does not start at the offset, a changed
    /// entity length): ask again without Range.
    RequestAgain(&'static str),
}

fn check_resume(response: &reqwest::Response, offset: u64, known_total: u64) -> Resume {
    match response.status() {
        StatusCode::PARTIAL_CONTENT => match content_range(response.headers()) {
            Some(r) if r.start != offset => {
                Resume::RequestAgain("206 range does not start at the requested offset")
            }
            Some(r) if known_total > 0 && r.total.is_some_and(|t| t != known_total) => {
                Resume::RequestAgain("entity length changed since the last request")
            }
            Some(_) => Resume::Continue,
            None => Resume::RequestAgain("206 without a usable Content-Range"),
        },
        StatusCode::RANGE_NOT_SATISFIABLE => {
            Resume::RequestAgain("416: the saved offset is beyond the entity")
        }
        _ => Resume::StartOver,
    }
}

/// A parsed `Content-Range: bytes start-end/total`.
#[derive(Debug, PartialEq, Eq)]
struct ContentRange {
    start: u64,
    total: Option<u64>,
}

fn content_range(headers: &HeaderMap) -> Option<ContentRange> {
    let v = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    parse_content_range(v)
}

fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    if total.is_some_and(|t| end >= t) {
        return None;
    }
    Some(ContentRange { start, total })
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn validators_of(headers: &HeaderMap) -> Validators {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    Validators {
        // Weak ETags may not be used in If-Range (RFC 9110 13.1.5).
        etag: text(header::ETAG).filter(|e| e.starts_with('"')),
        last_modified: text(header::LAST_MODIFIED),
    }
}

fn is_resumable(headers: &HeaderMap, validators: &Validators) -> bool {
    let refuses = headers
        .get(header::ACCEPT_RANGES)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !refuses && validators.if_range().is_some()
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        map.entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    map
}

fn user_headers(headers: &BTreeMap<String, String>) -> HeaderMap {
    // Names and values were validated when the download was created.
    headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect()
}

/// Checks a client's extra request header; `Err` says why it is refused.
pub fn check_user_header(name: &str, value: &str) -> Result<(), String> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("request header name `{name}` is not a valid HTTP header name"))?;
    if RESERVED_HEADERS.contains(&parsed.as_str()) {
        return Err(format!(
            "request header `{name}` is managed by transferd and cannot be set"
        ));
    }
    HeaderValue::from_str(value)
        .map_err(|_| format!("request header `{name}` has a value that is not valid in HTTP"))?;
    Ok(())
}

async fn open_partial(path: &Path, offset: u64) -> Result<tokio::fs::File, Failure> {
    let open = async {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .await?;
        // Drop anything past the resume point: unverified bytes, or a restart's old data.
        file.set_len(offset).await?;
        file.seek(SeekFrom::Start(offset)).await?;
        if offset == 0 {
            file.sync_all().await?;
        }
        Ok::<_, std::io::Error>(file)
    };
    open.await
        .map_err(|e| Failure::disk("opening the partial file failed", &e))
}

async fn sync(out: &mut BufWriter<tokio::fs::File>) -> std::io::Result<()> {
    out.flush().await?;
    out.get_ref().sync_data().await
}

/// Statuses that say "try again later": timeouts, rate limits and server-side trouble.
const TRANSIENT_STATUSES: [u16; 6] = [408, 429, 500, 502, 503, 504];

fn http_failure(status: StatusCode, retry_after: Option<Duration>) -> Failure {
    let error = TransferError {
        message: format!(
            "the server answered HTTP {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .trim_end()
        .to_string(),
        http_status: Some(status.as_u16()),
        reason: ErrorReason::HttpStatus,
    };
    Failure {
        transient: TRANSIENT_STATUSES.contains(&status.as_u16()),
        retry_after,
        ..Failure::fatal(error)
    }
}

/// `Retry-After` as delay-seconds or an HTTP date, bounded by [`MAX_RETRY_AFTER`].
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

fn network_error(what: &str, e: &reqwest::Error) -> TransferError {
    // A plain summary first; the error chain after it is for whoever debugs the network.
    let summary = if e.is_connect() && e.is_timeout() {
        " (timed out connecting to the server; see --connect-timeout)"
    } else if e.is_timeout() {
        " (timed out: the server sent nothing for the stall timeout; see --stall-timeout)"
    } else if e.is_connect() {
        " (could not connect to the server)"
    } else {
        ""
    };
    let mut message = format!("{what}{summary}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    TransferError {
        message,
        http_status: None,
        reason: ErrorReason::Network,
    }
}

fn disk_error(what: &str, e: &std::io::Error) -> TransferError {
    TransferError {
        message: format!("{what}: {e}"),
        http_status: None,
        reason: ErrorReason::Disk,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some(ContentRange {
                start: 100,
                total: Some(1000)
            })
        );
        assert_eq!(
            parse_content_range("bytes 5-9/*"),
            Some(ContentRange {
                start: 5,
                total: None
            })
        );
        for bad in [
            "bytes */1000",
            "bytes 10-5/100",
            "bytes 0-100/100",
            "items 0-1/2",
            "bytes x-1/2",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_within_bounds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("99999999"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        h.insert(header::RETRY_AFTER, HeaderValue::from_str(&soon).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn only_retryable_statuses_are_transient() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(http_failure(StatusCode::from_u16(code).unwrap(), None).transient);
        }
        for code in [400, 401, 403, 404, 410, 501] {
            assert!(!http_failure(StatusCode::from_u16(code).unwrap(), None).transient);
        }
    }

    #[test]
    fn weak_etags_are_not_validators() {
        let mut h = HeaderMap::new();
        h.insert(header::ETAG, HeaderValue::from_static("W/\"x\""));
        assert_eq!(validators_of(&h).etag, None);
        h.insert(header::ETAG, HeaderValue::from_static("\"x\""));
        assert_eq!(validators_of(&h).etag.as_deref(), Some("\"x\""));
    }

    #[test]
    fn resumable_needs_a_validator_and_no_refusal() {
        let mut h = HeaderMap::new();
        assert!(!is_resumable(&h, &validators_of(&h)));
        h.insert(header::ETAG, HeaderValue::from_static("\"x\""));
        assert!(is_resumable(&h, &validators_of(&h)));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("none"));
        assert!(!is_resumable(&h, &validators_of(&h)));
    }

    #[test]
    fn user_headers_are_checked() {
        assert!(check_user_header("Authorization", "Bearer abc").is_ok());
        assert!(check_user_header("Range", "bytes=0-").is_err());
        assert!(check_user_header("bad header", "x").is_err());
        assert!(check_user_header("x-ok", "line\nbreak").is_err());
    }

    #[test]
    fn repeated_headers_are_joined() {
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        assert_eq!(header_map(&h).get("x-a").map(String::as_str), Some("1, 2"));
    }
}
