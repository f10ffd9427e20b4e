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
//!
//! # Layout
//! - this module: the [`Origin`] handle, its shared state and the request log;
//! - `resource`: what a path serves ([`Resource`], [`Fault`], [`Throttle`]) and [`test_bytes`];
//! - `http`: the request handler: ranges, `If-Range`, status faults and response headers;
//! - `body`: streamed bodies with throttle, hold and the faults that cut a connection;
//! - `conn`: the accept loop and the socket wrapper that counts flushes and can reset;
//! - `blackhole`: [`Blackhole`];
//! - `tls`: [`SelfSignedTls`], a TLS address with a certificate no client trusts.

#![allow(dead_code)]

mod blackhole;
mod body;
mod conn;
mod http;
mod resource;
mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

// Each test binary uses a subset of these, like the rest of the harness.
#[allow(unused_imports)]
pub use blackhole::Blackhole;
#[allow(unused_imports)]
pub use resource::{Fault, Resource, Throttle, test_bytes};
#[allow(unused_imports)]
pub use tls::SelfSignedTls;

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

#[derive(Default)]
struct State {
    inner: Mutex<Inner>,
    /// Response bodies whose sending task is still running.
    open_bodies: AtomicUsize,
    /// Most response bodies ever being sent at once.
    peak_bodies: AtomicUsize,
    /// Connections accepted, whether or not a request followed.
    connections: AtomicUsize,
    /// Connections open now.
    open_connections: AtomicUsize,
    /// Most connections ever open at once.
    peak_connections: AtomicUsize,
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
        let accept_task = tokio::spawn(conn::accept_loop(listener, state.clone()));
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

    /// How many TCP connections the origin has accepted, whether or not a request followed:
    /// for tests that prove no connection was made at all.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The most TCP connections that were ever open at the same time, idle keep-alive ones
    /// included.
    pub fn peak_connections(&self) -> usize {
        self.state.peak_connections.load(Ordering::SeqCst)
    }

    /// The most response bodies that were ever being sent at the same time: connections busy
    /// with a request, for tests that prove a cap on connections per origin holds (an idle
    /// keep-alive connection in a client's pool costs the origin nothing and is not counted).
    pub fn peak_responses(&self) -> usize {
        self.state.peak_bodies.load(Ordering::SeqCst)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connections, so aborting it aborts those as well.
        self.accept_task.abort();
    }
}
