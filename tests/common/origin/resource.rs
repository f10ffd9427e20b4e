//! What the origin serves at a path: a [`Resource`] built with small builder methods, the
//! per-request [`Fault`]s it injects, its [`Throttle`], and [`test_bytes`] for bodies.

use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::HeaderValue;

/// `Last-Modified` that [`Resource::new`] uses; any fixed valid HTTP date works because tests
/// compare validators by string.
const DEFAULT_LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

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
    /// Sent as `Location`; with a 3xx [`Resource::status`] this makes the path a redirect.
    pub location: Option<String>,
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
    /// Whatever was asked (a Range or none), answer `206` with `Content-Range: bytes
    /// start-end/len` (or `/*` when `unknown_total`) and exactly those bytes of the file: a
    /// 206 nobody asked for, or a shorter range than asked.
    Partial {
        /// First byte sent.
        start: u64,
        /// Last byte sent, inclusive.
        end: u64,
        /// Send `*` instead of the entity length.
        unknown_total: bool,
    },
    /// Send this response's body paced like [`Resource::throttle`]: `chunk` bytes, then `delay`.
    Trickle(Throttle),
    /// A `200` with a chunked body that never ends (the file's bytes over and over), as a
    /// runaway or hostile origin would send.
    Endless,
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
            location: None,
            faults: Vec::new(),
        }
    }

    /// A redirect: `status` (a 3xx) with `Location: location`, sent verbatim.
    pub fn redirect(status: u16, location: &str) -> Resource {
        let mut r = Resource::new(Bytes::new()).status(status);
        r.location = Some(location.to_owned());
        r
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
