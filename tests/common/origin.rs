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
//!
//! [`Resource::faults`] makes individual requests go wrong the way real networks and servers do
//! (error statuses, a connection reset or truncated or stalled mid-body, a wrong `Content-Range`;
//! see [`Fault`]), so tests can prove the downloader recovers from transient faults and catches
//! misbehaviour; [`Origin::hits`] counts the attempts. [`Blackhole`] is an address whose
//! connection attempts hang, for connect timeouts.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use std::{fmt, io};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// `Last-Modified` that [`Resource::new`] uses; any fixed valid HTTP date works because tests
/// compare validators by string.
const DEFAULT_LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

/// Body piece size when no throttle is set: large enough that multi-MiB bodies are fast, small
/// enough that a hold or a disconnect is noticed promptly.
const UNTHROTTLED_CHUNK: usize = 64 * 1024;

/// Listen backlog of a [`Blackhole`]. Linux counts an accept queue as full once it holds more
/// than this many connections, so a small value needs only a couple of filler connections.
const BLACKHOLE_BACKLOG: u32 = 1;

/// How long a [`Blackhole`] filler connection may take before the queue counts as full. A
/// loopback handshake takes microseconds and a dropped SYN is only retried after a second, so
/// anything in between tells the two apart.
const BLACKHOLE_PROBE: Duration = Duration::from_millis(50);

/// Filler connections after which [`Blackhole::start`] gives up: a kernel that accepts this many
/// into a queue of [`BLACKHOLE_BACKLOG`] does not drop SYNs for a full queue at all.
const BLACKHOLE_MAX_FILL: usize = 32;

/// Longest a [`Fault::ResetAfter`] waits for the client to acknowledge the bytes before the
/// reset; only a client that has stopped reading makes it wait that long.
const RESET_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Poll interval while waiting for those acknowledgements.
const RESET_DRAIN_POLL: Duration = Duration::from_millis(2);

/// A running origin server on `127.0.0.1` (or the address given to [`Origin::start_on`]).
/// Dropping it stops accepting connections and aborts every open connection.
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
    /// What goes wrong on each request since the last [`Origin::put`] of this resource: the n-th
    /// request (counting every method, see [`Origin::hits`]) gets entry n; `None` entries and
    /// requests past the end are served normally.
    pub faults: Vec<Option<Fault>>,
}

/// What the origin does wrong on one request (see [`Resource::faults`]).
///
/// The body faults (`ResetAfter`, `TruncateAfter`, `StallAfter`) count bytes of this response's
/// body (after any range), apply to `GET` only (a `HEAD` is answered normally) and only when the
/// count is below the body's length; otherwise the response is complete before the fault point
/// and is served normally. Bytes before the fault point still obey throttle and hold.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and a short text body instead of the resource (e.g. 500, 503,
    /// 429), with an optional `Retry-After` header value sent verbatim. No validators or
    /// `Accept-Ranges` are sent, as for an error page. Applies to `HEAD` as well (without body).
    Status {
        /// The status code.
        code: u16,
        /// `Retry-After` value, e.g. `"1"` or an HTTP date.
        retry_after: Option<String>,
    },
    /// Send the normal response headers (status, `Content-Length`, ...) and this many body
    /// bytes, then reset the TCP connection (RST, via `SO_LINGER` 0 then close), as a crashed
    /// peer or middlebox would. A reset discards whatever the client's kernel has not yet
    /// acknowledged, so the origin first waits until it has acknowledged every byte (read from
    /// `/proc/net/tcp`, at most 2 s, i.e. unless the client stopped reading): a client that keeps
    /// reading receives exactly this many bytes and then `ECONNRESET`.
    ResetAfter(u64),
    /// Send the normal headers (with the full `Content-Length`) and this many body bytes, then
    /// close the connection cleanly (FIN): a truncated body.
    TruncateAfter(u64),
    /// Send the normal headers and this many body bytes, then send nothing more and keep the
    /// connection open until the client goes away or the origin is dropped: a stalled body.
    /// Unlike [`Resource::hold_after`], [`Origin::release`] does not end it. The response counts
    /// in [`Origin::open_responses`] while it is stalled.
    StallAfter(u64),
    /// For a request whose `Range` would be honoured and is satisfiable, answer 206 with a
    /// `Content-Range` and body starting `by` bytes later than requested (negative = earlier),
    /// a misbehaving server. The shifted range keeps its length where the file allows and is
    /// clamped to the file (start at least 0 and at most the last byte). Any other request
    /// (no `Range`, `If-Range` mismatch, [`Resource::ignore_range`], 416) is served normally.
    ShiftRange(i64),
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
            faults: Vec::new(),
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

    /// Faults for the next requests to this path, in order: the first request after
    /// [`Origin::put`] gets `faults[0]`, the second `faults[1]`, ...; requests past the end are
    /// served normally. `None` entries mean "serve this request normally". Panics on an invalid
    /// status code or `Retry-After` value, so a typo fails where it was made.
    pub fn faults(mut self, faults: Vec<Option<Fault>>) -> Self {
        for fault in faults.iter().flatten() {
            if let Fault::Status { code, retry_after } = fault {
                assert!(
                    StatusCode::from_u16(*code).is_ok(),
                    "invalid HTTP status code {code}"
                );
                if let Some(v) = retry_after {
                    assert!(
                        HeaderValue::from_str(v).is_ok(),
                        "invalid Retry-After value {v:?}"
                    );
                }
            }
        }
        self.faults = faults;
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
    /// Requests per path since its last `put`; also picks the entry of [`Resource::faults`].
    hits: HashMap<String, usize>,
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
        Origin::start_on(Ipv4Addr::LOCALHOST.into()).await
    }

    /// Start serving on `ip` (an address of this host, e.g. the test's end of a
    /// [`super::netns::Link`]) with an OS-assigned port.
    pub async fn start_on(ip: IpAddr) -> Origin {
        let listener = TcpListener::bind((ip, 0))
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
        inner.hits.insert(path.to_owned(), 0);
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

    /// How many requests `path` (exactly, including any query string) has received since the
    /// last [`Origin::put`] of it, or since start if it was never put; faulted requests and every
    /// method count.
    pub fn hits(&self, path: &str) -> usize {
        self.state.lock().hits.get(path).copied().unwrap_or(0)
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

/// A TCP address on `127.0.0.1` that accepts no connections in time: a listener whose accept
/// queue is full, so new connection attempts hang (the kernel drops their SYN) until the client's
/// connect timeout, rather than being refused. Dropping it frees the port. This relies on Linux
/// dropping SYNs for a full accept queue (`net.ipv4.tcp_abort_on_overflow` = 0, the default).
pub struct Blackhole {
    addr: SocketAddr,
    /// Never accepted from: its full accept queue is what makes new connections hang.
    _listener: TcpListener,
    /// The connections that fill the accept queue.
    _filler: Vec<TcpStream>,
}

impl Blackhole {
    /// Listen on an OS-assigned port and fill the accept queue. Takes about 50 ms: the last
    /// filler attempt must time out to prove the queue is full. Panics if the kernel refuses the
    /// filler connections or never drops one.
    pub async fn start() -> Blackhole {
        let socket = TcpSocket::new_v4().expect("create blackhole socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind blackhole socket");
        let listener = socket
            .listen(BLACKHOLE_BACKLOG)
            .expect("listen on blackhole socket");
        let addr = listener.local_addr().expect("blackhole local addr");
        // Connect until an attempt hangs rather than trusting the kernel's queue arithmetic.
        // Connections that completed stay queued (nobody accepts them) for as long as we hold
        // them; the hanging attempt is abandoned when its timeout drops it.
        let mut filler = Vec::new();
        loop {
            assert!(
                filler.len() < BLACKHOLE_MAX_FILL,
                "the kernel completed {} connections to a listener with backlog {} that never \
                 accepts; it does not drop SYNs when the accept queue is full",
                filler.len(),
                BLACKHOLE_BACKLOG
            );
            match tokio::time::timeout(BLACKHOLE_PROBE, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => filler.push(stream),
                Ok(Err(e)) => panic!("filler connection to blackhole {addr} failed: {e}"),
                Err(_) => break,
            }
        }
        Blackhole {
            addr,
            _listener: listener,
            _filler: filler,
        }
    }

    /// The address connection attempts hang on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Absolute `http` URL for `path` (which must start with `/`) on this address.
    pub fn url(&self, path: &str) -> String {
        debug_assert!(path.starts_with('/'), "path must start with '/': {path}");
        format!("http://{}{}", self.addr, path)
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
    let conn = Arc::new(ConnCtl {
        addrs: stream.local_addr().ok().zip(stream.peer_addr().ok()),
        flushes: AtomicU64::new(0),
        flush_waiter: Mutex::new(None),
        reset_on_close: AtomicBool::new(false),
    });
    let io = ConnIo {
        stream,
        conn: conn.clone(),
    };
    let service = service_fn(move |req| {
        let state = state.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(&state, &conn, req)) }
    });
    // Errors here are clients going away mid-response, which tests do on purpose, and the body
    // errors that cut a connection for a fault.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Shared between one connection's socket ([`ConnIo`]) and the response bodies sent on it
/// ([`ChannelBody`]), for the faults that must know when body bytes have really reached the
/// socket and that choose how the socket closes.
struct ConnCtl {
    /// Local and peer address, to find the connection in `/proc/net/tcp`.
    addrs: Option<(SocketAddr, SocketAddr)>,
    /// Completed flushes of the socket. hyper flushes the socket only once its own write buffer
    /// is empty, so a flush that completes after a body piece was handed to hyper proves the
    /// piece is in the kernel: cutting the connection then loses none of it.
    flushes: AtomicU64,
    /// The body waiting for the next flush.
    flush_waiter: Mutex<Option<Waker>>,
    /// Close with `SO_LINGER` 0, which makes the kernel send RST instead of FIN.
    reset_on_close: AtomicBool,
}

impl ConnCtl {
    fn wait_for_flush(&self, waker: &Waker) {
        *self.flush_waiter.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
    }
}

/// The accepted socket as hyper sees it: passes everything through, but counts flushes and,
/// for [`Fault::ResetAfter`], closes with RST. hyper owns it, so the reset has to happen in its
/// `Drop`, which runs when hyper gives up on the connection after the body error.
struct ConnIo {
    stream: TcpStream,
    conn: Arc<ConnCtl>,
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_flush(cx);
        if let Poll::Ready(Ok(())) = result {
            self.conn.flushes.fetch_add(1, Ordering::SeqCst);
            let waiter = self
                .conn
                .flush_waiter
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(waker) = waiter {
                waker.wake();
            }
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A FIN before the RST would show the client a clean end of stream instead of a reset.
        if self.conn.reset_on_close.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.conn.reset_on_close.load(Ordering::SeqCst) {
            // Zero linger never blocks in close (unlike other linger values); if it fails the
            // client sees a FIN, which the reset test will report.
            let _ = self.stream.set_zero_linger();
        }
    }
}

/// Error a [`ChannelBody`] returns to make hyper drop the connection mid-body.
#[derive(Debug)]
struct CutConnection;

impl fmt::Display for CutConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("test origin cut the connection (fault injection)")
    }
}

impl std::error::Error for CutConnection {}

type ResponseBody = BoxBody<Bytes, CutConnection>;

fn handle(
    state: &Arc<State>,
    conn: &Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
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

    let (resource, release, fault) = {
        let mut inner = state.lock();
        inner.requests.push(RecordedRequest {
            method: req.method().as_str().to_owned(),
            path: path.clone(),
            headers,
        });
        let hits = inner.hits.entry(path.clone()).or_insert(0);
        let attempt = *hits;
        *hits += 1;
        let resource = inner.resources.get(&path).cloned();
        let fault = resource
            .as_ref()
            .and_then(|r| r.faults.get(attempt).cloned().flatten());
        let release = inner.released.get(&path).map(watch::Sender::subscribe);
        (resource, release, fault)
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

    if let Some(Fault::Status { code, retry_after }) = &fault {
        let status = StatusCode::from_u16(*code).expect("status validated by Resource::faults");
        let mut resp = text_response(status, is_head);
        if let Some(v) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, hv(v.clone()));
        }
        return resp;
    }

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
            let mut start = start;
            let mut last = end.map_or(len - 1, |e| e.min(len - 1));
            if let Some(Fault::ShiftRange(by)) = fault {
                // Shift both ends by what the start could actually move, so the range keeps its
                // length unless it runs past the end of the file.
                let shifted = (i128::from(start) + i128::from(by)).clamp(0, i128::from(len - 1));
                let shifted = u64::try_from(shifted).expect("clamped to the file");
                last = (last + shifted).saturating_sub(start).min(len - 1);
                start = shifted;
            }
            resp_status = StatusCode::PARTIAL_CONTENT;
            content_range = Some(format!("bytes {start}-{last}/{len}"));
            slice = resource.body.slice(start as usize..=last as usize);
        }
    }

    let cut = match fault {
        Some(Fault::ResetAfter(n)) => Some((n, Cut::Reset)),
        Some(Fault::TruncateAfter(n)) => Some((n, Cut::Truncate)),
        Some(Fault::StallAfter(n)) => Some((n, Cut::Stall)),
        _ => None,
    }
    .filter(|&(n, _)| n < slice.len() as u64);
    let body = if is_head {
        empty_body()
    } else {
        stream_body(state, conn, slice.clone(), &resource, cut, release)
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
        empty_body()
    } else {
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed()
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
    let mut resp = Response::new(empty_body());
    *resp.status_mut() = status;
    resp
}

fn empty_body() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// How a body fault ends a response once its bytes are out (see [`Fault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// Close with RST.
    Reset,
    /// Close with FIN.
    Truncate,
    /// Send nothing more and keep the connection open.
    Stall,
}

/// What [`pump`] hands to a [`ChannelBody`].
enum Piece {
    /// Body bytes.
    Data(Bytes),
    /// End the connection this way once every earlier piece has reached the socket.
    Cut(Cut),
}

/// Spawn a task that feeds `data` into the response body with the resource's pacing and hold,
/// and with `cut` (at most `data.len() - 1` bytes in) if a body fault applies.
/// The channel has room for one piece so the task never runs ahead of the socket by more than
/// that, which keeps the hold point exact and makes throttling observable on the wire.
fn stream_body(
    state: &Arc<State>,
    conn: &Arc<ConnCtl>,
    data: Bytes,
    resource: &Resource,
    cut: Option<(u64, Cut)>,
    release: watch::Receiver<bool>,
) -> ResponseBody {
    let (tx, rx) = mpsc::channel(1);
    let guard = OpenBody::new(state.clone());
    tokio::spawn(pump(
        data,
        resource.throttle,
        resource.hold_after,
        cut,
        release,
        tx,
        guard,
    ));
    ChannelBody {
        rx,
        conn: conn.clone(),
        cutting: None,
    }
    .boxed()
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
    cut: Option<(u64, Cut)>,
    release: watch::Receiver<bool>,
    tx: mpsc::Sender<Piece>,
    guard: OpenBody,
) {
    match cut {
        None => {
            send_pieces(data, throttle, hold_after, release, &tx).await;
        }
        Some((at, cut)) => {
            let head = data.slice(..at as usize);
            if send_pieces(head, throttle, hold_after, release, &tx).await {
                if cut == Cut::Stall {
                    // Keep the body open, and counted, until hyper drops it: the client went
                    // away or the origin was dropped.
                    tx.closed().await;
                } else {
                    // Fails only if the client already went away, when there is nothing to cut.
                    let _ = tx.send(Piece::Cut(cut)).await;
                }
            }
        }
    }
    // Uncount before the body can end (which happens when `tx` drops), so a client that has seen
    // the end of a response also sees the counter down.
    drop(guard);
    drop(tx);
}

/// Sends `data` as body pieces; returns false if the client went away first.
async fn send_pieces(
    data: Bytes,
    throttle: Option<Throttle>,
    hold_after: Option<u64>,
    mut release: watch::Receiver<bool>,
    tx: &mpsc::Sender<Piece>,
) -> bool {
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
                        return false;
                    }
                }
                _ = tx.closed() => return false,
            }
        }
        let mut end = (sent + piece).min(len);
        if let Some(hold) = hold_after {
            if sent < hold && end > hold {
                end = hold;
            }
        }
        if tx
            .send(Piece::Data(data.slice(sent as usize..end as usize)))
            .await
            .is_err()
        {
            return false;
        }
        sent = end;
        if let Some(t) = throttle {
            if sent < len && !t.delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(t.delay) => {}
                    _ = tx.closed() => return false,
                }
            }
        }
    }
    true
}

/// Response body fed by [`pump`]. Its size is unknown to hyper, which then frames it by our
/// `Content-Length` header or, without one, chunked.
struct ChannelBody {
    rx: mpsc::Receiver<Piece>,
    conn: Arc<ConnCtl>,
    /// How far a cut for a fault has got, once [`pump`] has asked for one.
    cutting: Option<Cutting>,
}

/// The waits between [`pump`] asking for a cut and the body failing.
enum Cutting {
    /// For hyper to flush the last piece to the socket; holds the flush count when the cut
    /// arrived, and any flush after that proves it.
    Flush { cut: Cut, flushes: u64 },
    /// For the client to acknowledge every byte, before a reset.
    Acked(oneshot::Receiver<()>),
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = CutConnection;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, CutConnection>>> {
        loop {
            match &mut self.cutting {
                None => {}
                Some(Cutting::Flush { cut, flushes }) => {
                    let (cut, flushes) = (*cut, *flushes);
                    // Register before checking, so a flush in between still wakes us.
                    self.conn.wait_for_flush(cx.waker());
                    // Failing the body right after its last piece would make hyper drop that
                    // piece unwritten. Pending instead lets hyper flush, and the flush wakes us.
                    if self.conn.flushes.load(Ordering::SeqCst) == flushes {
                        return Poll::Pending;
                    }
                    if cut == Cut::Truncate {
                        // The FIN queues behind the data, so nothing is lost: cut right away.
                        // hyper answers a body error by dropping the connection.
                        return Poll::Ready(Some(Err(CutConnection)));
                    }
                    let (tx, rx) = oneshot::channel();
                    tokio::spawn(signal_when_acked(self.conn.addrs, tx));
                    self.cutting = Some(Cutting::Acked(rx));
                    continue;
                }
                Some(Cutting::Acked(rx)) => {
                    // An error means the waiting task is gone, which only happens at runtime
                    // shutdown; resetting then is as good as anything.
                    let _ = std::task::ready!(Pin::new(rx).poll(cx));
                    self.conn.reset_on_close.store(true, Ordering::SeqCst);
                    return Poll::Ready(Some(Err(CutConnection)));
                }
            }
            match std::task::ready!(self.rx.poll_recv(cx)) {
                Some(Piece::Data(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                Some(Piece::Cut(cut)) => {
                    let flushes = self.conn.flushes.load(Ordering::SeqCst);
                    self.cutting = Some(Cutting::Flush { cut, flushes });
                }
                None => return Poll::Ready(None),
            }
        }
    }
}

/// Completes `done` once the client has acknowledged every byte sent on the connection
/// `addrs` (local, peer), or after [`RESET_DRAIN_LIMIT`], or at once where that cannot be
/// known (no `/proc/net/tcp`, connection gone from it). A reset throws away unacknowledged bytes,
/// including ones still in the origin's send buffer because the client's receive window was
/// full, so resetting before this would deliver fewer bytes than the fault promises.
async fn signal_when_acked(addrs: Option<(SocketAddr, SocketAddr)>, mut done: oneshot::Sender<()>) {
    let wait = async {
        let Some((SocketAddr::V4(local), SocketAddr::V4(peer))) = addrs else {
            return;
        };
        // `/proc/net/tcp` prints each address as its network-order bytes read as a native
        // integer, and the port in plain hex.
        let hex = |a: std::net::SocketAddrV4| {
            format!(
                "{:08X}:{:04X}",
                u32::from_ne_bytes(a.ip().octets()),
                a.port()
            )
        };
        let (local, peer) = (hex(local), hex(peer));
        let deadline = tokio::time::Instant::now() + RESET_DRAIN_LIMIT;
        while tokio::time::Instant::now() < deadline {
            match unacked_bytes(&local, &peer).await {
                Some(0) | None => return,
                Some(_) => tokio::time::sleep(RESET_DRAIN_POLL).await,
            }
        }
    };
    tokio::select! {
        _ = wait => {}
        // The connection is already gone.
        _ = done.closed() => return,
    }
    let _ = done.send(());
}

/// The `tx_queue` column (bytes sent but not yet acknowledged) of the `/proc/net/tcp` row for
/// the connection between `local` and `peer`, both formatted as in that file.
async fn unacked_bytes(local: &str, peer: &str) -> Option<u64> {
    let table = tokio::fs::read_to_string("/proc/net/tcp").await.ok()?;
    table.lines().skip(1).find_map(|line| {
        // sl local_address rem_address st tx_queue:rx_queue ...
        let mut fields = line.split_whitespace().skip(1);
        if fields.next()? != local || fields.next()? != peer {
            return None;
        }
        let (tx_queue, _) = fields.nth(1)?.split_once(':')?;
        u64::from_str_radix(tx_queue, 16).ok()
    })
}
