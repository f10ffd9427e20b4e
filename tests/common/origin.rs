//! A real HTTP/1.1 origin server for end-to-end tests.
//!
//! The downloader under test talks to this server over a genuine socket, so what it sees is what
//! a real web server would send: validators (`ETag`, `Last-Modified`), `Accept-Ranges`, single
//! byte ranges with `If-Range` (RFC 9110 §13.1.5, §14), `416` past the end, chunked bodies and
//! error statuses. Each path serves a [`Resource`] that a test can swap at any time to simulate
//! the file changing on the server, slow down with a [`Throttle`], or freeze mid-body with
//! [`Resource::hold_after`] until [`Origin::release`] so the test can act while a transfer is
//! provably in flight. Every request is recorded so tests can assert on exactly what the
//! downloader asked for (for example that a resume sent `Range` and `If-Range`).

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

/// `Last-Modified` that [`Resource::new`] uses; any fixed valid HTTP date works because tests
/// compare validators by string.
const DEFAULT_LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

/// Body piece size when no throttle is set: large enough that multi-MiB bodies are fast, small
/// enough that a hold or a disconnect is noticed promptly.
const UNTHROTTLED_CHUNK: usize = 64 * 1024;

/// A running origin server on `127.0.0.1`. Dropping it stops accepting connections and aborts
/// every open connection.
pub struct Origin {
    addr: SocketAddr,
    state: Arc<State>,
    accept_task: JoinHandle<()>,
}

/// What one request looked like when it reached the origin.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Request method, e.g. `GET`.
    pub method: String,
    /// Request target path, including the query string if there was one.
    pub path: String,
    /// Every header in arrival order; names are lower-case, values are lossily decoded UTF-8.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// The first value of header `name` (matched case-insensitively), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the origin serves at one path.
#[derive(Clone, Debug)]
pub struct Resource {
    /// Full content of the file. Ignored when `status` is not 200.
    pub body: Bytes,
    /// Sent verbatim as `ETag`, e.g. `"\"v1\""` or `"W/\"weak\""`.
    pub etag: Option<String>,
    /// Sent verbatim as `Last-Modified` (an HTTP date).
    pub last_modified: Option<String>,
    /// Response status. Anything other than 200 serves a short text body with this status and
    /// never honours `Range`.
    pub status: u16,
    /// Answer every request with 200 and the full body, like a server without range support.
    pub ignore_range: bool,
    /// Omit `Content-Length` and send the body with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// Send the body slowly.
    pub throttle: Option<Throttle>,
    /// After this many body bytes of a response (counted from the start of that response's body,
    /// not of the file), pause until [`Origin::release`] is called for the path.
    pub hold_after: Option<u64>,
    /// Send `Accept-Ranges: bytes`. Only the header: ranges are still honoured without it, as
    /// RFC 9110 allows.
    pub accept_ranges: bool,
}

/// Pacing for a slow body: send `chunk` bytes, sleep `delay`, repeat.
#[derive(Clone, Copy, Debug)]
pub struct Throttle {
    /// Bytes per write.
    pub chunk: usize,
    /// Pause between writes.
    pub delay: Duration,
}

impl Resource {
    /// A 200 resource serving `body` with a strong `ETag` derived from the content, a fixed
    /// `Last-Modified`, and `Accept-Ranges: bytes`; no throttle, hold, chunking or range quirks.
    pub fn new(body: impl Into<Bytes>) -> Resource {
        let body = body.into();
        let etag = format!("\"{}-{:016x}\"", body.len(), fnv1a(&body));
        Resource {
            body,
            etag: Some(etag),
            last_modified: Some(DEFAULT_LAST_MODIFIED.to_owned()),
            status: 200,
            ignore_range: false,
            chunked: false,
            throttle: None,
            hold_after: None,
            accept_ranges: true,
        }
    }

    /// Replace the `ETag` (`None` sends none).
    pub fn etag(mut self, v: Option<&str>) -> Self {
        self.etag = v.map(str::to_owned);
        self
    }

    /// Replace the `Last-Modified` (`None` sends none).
    pub fn last_modified(mut self, v: Option<&str>) -> Self {
        self.last_modified = v.map(str::to_owned);
        self
    }

    /// Serve this status instead of 200. Panics if `code` is not a valid status code.
    pub fn status(mut self, code: u16) -> Self {
        assert!(
            StatusCode::from_u16(code).is_ok(),
            "invalid HTTP status code {code}"
        );
        self.status = code;
        self
    }

    /// Behave like a server without range support: always 200 with the full body.
    pub fn ignore_range(mut self) -> Self {
        self.ignore_range = true;
        self
    }

    /// Send the body chunked, without `Content-Length`.
    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    /// Send `chunk` bytes, sleep `delay`, repeat. Panics if `chunk` is 0.
    pub fn throttle(mut self, chunk: usize, delay: Duration) -> Self {
        assert!(chunk > 0, "throttle chunk must be at least one byte");
        self.throttle = Some(Throttle { chunk, delay });
        self
    }

    /// Pause every response body after `bytes` bytes until [`Origin::release`].
    pub fn hold_after(mut self, bytes: u64) -> Self {
        self.hold_after = Some(bytes);
        self
    }

    /// Do not send `Accept-Ranges: bytes`.
    pub fn no_accept_ranges(mut self) -> Self {
        self.accept_ranges = false;
        self
    }
}

/// `len` deterministic pseudo-random bytes; different seeds give unrelated content, so tests can
/// build distinct multi-MiB bodies cheaply and detect spliced or misplaced ranges.
pub fn test_bytes(len: usize, seed: u64) -> Bytes {
    // splitmix64: every seed, including 0, yields a full-period stream.
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[derive(Default)]
struct State {
    inner: Mutex<Inner>,
    /// Response bodies whose sending task is still running.
    open_bodies: AtomicUsize,
}

#[derive(Default)]
struct Inner {
    resources: HashMap<String, Resource>,
    /// Per-path release flag. Kept across `put` (which only resets it) so bodies already waiting
    /// at a hold are woken by a later `release` of the same path.
    released: HashMap<String, watch::Sender<bool>>,
    requests: Vec<RecordedRequest>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not turn every later assertion into a poison error.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Origin {
    /// Start serving on `127.0.0.1` with an OS-assigned port. No paths are served until
    /// [`Origin::put`].
    pub async fn start() -> Origin {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind origin listener");
        let addr = listener.local_addr().expect("origin local addr");
        let state = Arc::new(State::default());
        let accept_task = tokio::spawn(accept_loop(listener, state.clone()));
        Origin {
            addr,
            state,
            accept_task,
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Absolute URL for `path` (which must start with `/`) on this server.
    pub fn url(&self, path: &str) -> String {
        debug_assert!(path.starts_with('/'), "path must start with '/': {path}");
        format!("http://{}{}", self.addr, path)
    }

    /// Serve `resource` at `path` from now on, replacing what was there. Also re-arms the hold
    /// for `path` (see [`Origin::release`]). Responses already streaming keep the old content.
    pub fn put(&self, path: &str, resource: Resource) {
        let mut inner = self.state.lock();
        inner.resources.insert(path.to_owned(), resource);
        inner
            .released
            .entry(path.to_owned())
            .or_insert_with(|| watch::channel(false).0)
            .send_replace(false);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().requests.clone()
    }

    /// The requests received so far for exactly `path` (including any query string).
    pub fn requests_for(&self, path: &str) -> Vec<RecordedRequest> {
        self.state
            .lock()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Let every response for `path` continue past its [`Resource::hold_after`] point, both those
    /// waiting now and those that reach it later, until the next [`Origin::put`] of `path`.
    pub fn release(&self, path: &str) {
        self.state
            .lock()
            .released
            .entry(path.to_owned())
            .or_insert_with(|| watch::channel(false).0)
            .send_replace(true);
    }

    /// How many response bodies are still being sent. A body stops counting once it has been fully
    /// handed to the connection or the client has disconnected, so a test can check that a
    /// cancelled download really closed its connection. After a disconnect it settles shortly
    /// afterwards (when the server notices the closed socket), so poll it rather than reading it
    /// once.
    pub fn open_responses(&self) -> usize {
        self.state.open_bodies.load(Ordering::SeqCst)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connections, so aborting it aborts those as well.
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, state.clone()));
                }
                // Usually fd exhaustion; back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow for the life of the test.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req)) }
    });
    // Errors here are clients going away mid-response, which tests do on purpose.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

type ResponseBody = BoxBody<Bytes, Infallible>;

fn handle(state: &Arc<State>, req: Request<Incoming>) -> Response<ResponseBody> {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();

    let (resource, release) = {
        let mut inner = state.lock();
        inner.requests.push(RecordedRequest {
            method: req.method().as_str().to_owned(),
            path: path.clone(),
            headers,
        });
        let resource = inner.resources.get(&path).cloned();
        let release = inner.released.get(&path).map(watch::Sender::subscribe);
        (resource, release)
    };

    let is_head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut resp = text_response(StatusCode::METHOD_NOT_ALLOWED, false);
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
    };
    let (Some(resource), Some(release)) = (resource, release) else {
        return text_response(StatusCode::NOT_FOUND, is_head);
    };

    let status = StatusCode::from_u16(resource.status).expect("status validated by setter");
    if status != StatusCode::OK {
        let mut resp = text_response(status, is_head);
        add_resource_headers(resp.headers_mut(), &resource);
        return resp;
    }

    let len = resource.body.len() as u64;
    let mut resp_status = StatusCode::OK;
    let mut content_range = None;
    let mut slice = resource.body.clone();
    if !resource.ignore_range {
        if let Some((start, end)) = requested_range(req.headers(), &resource) {
            if start >= len {
                let mut resp = empty_response(StatusCode::RANGE_NOT_SATISFIABLE);
                add_resource_headers(resp.headers_mut(), &resource);
                resp.headers_mut()
                    .insert(header::CONTENT_RANGE, hv(format!("bytes */{len}")));
                return resp;
            }
            let last = end.map_or(len - 1, |e| e.min(len - 1));
            resp_status = StatusCode::PARTIAL_CONTENT;
            content_range = Some(format!("bytes {start}-{last}/{len}"));
            slice = resource.body.slice(start as usize..=last as usize);
        }
    }

    let body = if is_head {
        Empty::new().boxed()
    } else {
        stream_body(state, slice.clone(), &resource, release)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = resp_status;
    let headers = resp.headers_mut();
    add_resource_headers(headers, &resource);
    if let Some(cr) = content_range {
        headers.insert(header::CONTENT_RANGE, hv(cr));
    }
    if !resource.chunked {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(slice.len()));
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// The byte range to serve, if the request asks for one that should be honoured: a single
/// `bytes=N-` or `bytes=N-M` whose `If-Range` (if any) still matches. Returns `(start, end)`
/// with `end` inclusive and not yet clamped to the body. Malformed or unsupported ranges are
/// ignored (a full 200), which RFC 9110 §14.2 permits.
fn requested_range(headers: &HeaderMap, resource: &Resource) -> Option<(u64, Option<u64>)> {
    let range = headers.get(header::RANGE)?.to_str().ok()?;
    if let Some(if_range) = headers.get(header::IF_RANGE) {
        let if_range = if_range.to_str().ok()?;
        if !if_range_matches(if_range, resource) {
            return None;
        }
    }
    let spec = range.trim().strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end = end.trim();
    if end.is_empty() {
        return Some((start, None));
    }
    let end: u64 = end.parse().ok()?;
    (end >= start).then_some((start, Some(end)))
}

/// RFC 9110 §13.1.5: an entity-tag `If-Range` needs a strong, byte-identical match; a date
/// needs to equal `Last-Modified` exactly.
fn if_range_matches(if_range: &str, resource: &Resource) -> bool {
    let if_range = if_range.trim();
    if if_range.starts_with('"') || if_range.starts_with("W/") {
        match &resource.etag {
            Some(etag) => {
                !etag.starts_with("W/") && !if_range.starts_with("W/") && etag == if_range
            }
            None => false,
        }
    } else {
        resource.last_modified.as_deref() == Some(if_range)
    }
}

fn add_resource_headers(headers: &mut HeaderMap, resource: &Resource) {
    if let Some(etag) = &resource.etag {
        headers.insert(header::ETAG, hv(etag.clone()));
    }
    if let Some(lm) = &resource.last_modified {
        headers.insert(header::LAST_MODIFIED, hv(lm.clone()));
    }
    if resource.accept_ranges {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
}

fn hv(value: String) -> HeaderValue {
    HeaderValue::try_from(value).expect("test supplied a header value that is not valid HTTP")
}

fn text_response(status: StatusCode, is_head: bool) -> Response<ResponseBody> {
    // 204 and 304 must not carry a body.
    if matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
        return empty_response(status);
    }
    let text = format!(
        "{} {}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    let len = text.len();
    let body = if is_head {
        Empty::new().boxed()
    } else {
        Full::new(Bytes::from(text)).boxed()
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

fn empty_response(status: StatusCode) -> Response<ResponseBody> {
    let mut resp = Response::new(Empty::new().boxed());
    *resp.status_mut() = status;
    resp
}

/// Spawn a task that feeds `data` into the response body with the resource's pacing and hold.
/// The channel has room for one piece so the task never runs ahead of the socket by more than
/// that, which keeps the hold point exact and makes throttling observable on the wire.
fn stream_body(
    state: &Arc<State>,
    data: Bytes,
    resource: &Resource,
    release: watch::Receiver<bool>,
) -> ResponseBody {
    let (tx, rx) = mpsc::channel(1);
    let guard = OpenBody::new(state.clone());
    tokio::spawn(pump(
        data,
        resource.throttle,
        resource.hold_after,
        release,
        tx,
        guard,
    ));
    ChannelBody { rx }.boxed()
}

/// Counts a sending task in [`Origin::open_responses`] for exactly as long as it lives.
struct OpenBody(Arc<State>);

impl OpenBody {
    fn new(state: Arc<State>) -> Self {
        state.open_bodies.fetch_add(1, Ordering::SeqCst);
        OpenBody(state)
    }
}

impl Drop for OpenBody {
    fn drop(&mut self) {
        self.0.open_bodies.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn pump(
    data: Bytes,
    throttle: Option<Throttle>,
    hold_after: Option<u64>,
    release: watch::Receiver<bool>,
    tx: mpsc::Sender<Bytes>,
    guard: OpenBody,
) {
    send_pieces(data, throttle, hold_after, release, &tx).await;
    // Uncount before the body can end (which happens when `tx` drops), so a client that has seen
    // the end of a response also sees the counter down.
    drop(guard);
    drop(tx);
}

async fn send_pieces(
    data: Bytes,
    throttle: Option<Throttle>,
    hold_after: Option<u64>,
    mut release: watch::Receiver<bool>,
    tx: &mpsc::Sender<Bytes>,
) {
    let len = data.len() as u64;
    let piece = throttle.map_or(UNTHROTTLED_CHUNK, |t| t.chunk.max(1)) as u64;
    let mut sent = 0u64;
    while sent < len {
        if hold_after == Some(sent) {
            // Waiting on the hold must also end when the client hangs up (the receiver is
            // dropped), or the task would outlive the connection.
            tokio::select! {
                r = release.wait_for(|released| *released) => {
                    // The sender lives in the shared state, so this only fails if that is gone.
                    if r.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
        let mut end = (sent + piece).min(len);
        if let Some(hold) = hold_after {
            if sent < hold && end > hold {
                end = hold;
            }
        }
        if tx
            .send(data.slice(sent as usize..end as usize))
            .await
            .is_err()
        {
            return;
        }
        sent = end;
        if let Some(t) = throttle {
            if sent < len && !t.delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(t.delay) => {}
                    _ = tx.closed() => return,
                }
            }
        }
    }
}

/// Response body fed by [`pump`]. Its size is unknown to hyper, which then frames it by our
/// `Content-Length` header or, without one, chunked.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|piece| piece.map(|b| Ok(Frame::data(b))))
    }
}
