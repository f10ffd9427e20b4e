//! The HTTP fetcher: one attempt at transferring a download's body into its partial file. It
//! owns the rules of resuming: `Range: bytes=N-` guarded by `If-Range` (a strong ETag, else
//! Last-Modified), a 206 whose `Content-Range` must start exactly at N (0 when no Range was
//! sent: a 206 nobody asked for is never written at offset 0), and a clean restart from byte 0
//! whenever the server cannot or will not continue (200, 416, a mismatched range, a changed
//! entity length, or no validator to guard the resume). The entity length, once known, is
//! kept: a 206 that ends short of it is continued with another ranged request, and only
//! exactly that many bytes complete the body. It also enforces the size limit, the low-speed
//! rule, and which redirects are followed.
//!
//! It reports to the engine through [`Observer`] and knows nothing of queues, stores or gRPC.
//!
//! # Layout
//! - `mod.rs`: the [`Fetcher`] and the course of one attempt; what goes in ([`Job`]) and comes
//!   out ([`Outcome`], [`Failure`]), and the [`Observer`] the engine follows it with.
//! - `request.rs`: building the request; the headers transferd manages itself; the redirects
//!   it follows, and the egress check of a literal address, before the request and at every
//!   redirect.
//! - `resolve.rs`: name resolution under the egress policy, so a name is checked by the
//!   address it resolves to, at every connection.
//! - `response.rs`: reading a response: does a 206 fit, resumability, validators, error
//!   statuses and redirects that were not followed.
//! - `position.rs`: where an attempt stands in the entity across its requests (offset, length,
//!   validators, running hash), and opening the partial file to go on from there.
//! - `body.rs`: streaming the body into the partial file and making it durable, within its announced length, the size limit, the stall and
//!   low-speed rules and the bandwidth limit; `writer.rs` its writes (and hashing, when asked)
//!   on a blocking thread; `direct.rs` how each write goes to the disk (whole blocks past the
//!   page cache, `--write-mode`).
//! - `segments.rs`: segmented downloads: one download over several connections, each filling
//!   its part of the partial file, adding connections while they raise the throughput;
//!   `spans.rs` is the bookkeeping of the parts, `piece.rs` one segment's ranged requests,
//!   `hosts.rs` the count of connections per origin (`--max-connections-per-host`),
//!   `prefix.rs` the SHA-256 of a segmented download's bytes as its file fills from byte 0.
//! - `throttle.rs`: the bandwidth limits: the server-wide budget, fair shares of it, and each
//!   download's own limit, as one token bucket per running attempt.

mod body;
mod direct;
pub mod hosts;
mod piece;
mod position;
mod prefix;
mod ramp;
mod request;
mod resolve;
mod response;
pub mod segments;
mod spans;
pub mod throttle;
mod writer;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::egress::EgressPolicy;
use crate::operation::{ErrorReason, ResponseInfo, Segment, Settings, TransferError, Validators};
use crate::sha256::Hasher;
use position::Position;
use response::Resume;

pub use body::WRITE_BUFFER_SIZE;
pub use direct::WriteMode;
pub use request::check_user_header;
pub use resolve::PinnedName;

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
    /// The partial file holds `bytes` durably (fsynced): the engine may checkpoint them, and
    /// with them `sha256`, the state of exactly those bytes when the attempt hashes (see
    /// [`Hashing`]).
    fn durable(&self, bytes: u64, sha256: Option<&Hasher>) -> impl Future<Output = ()> + Send;
    /// The download is fetched in `segments`, each holding its own durable bytes: the engine
    /// may checkpoint them (their sum is the download's checkpoint). An empty list: the
    /// download left segmenting and starts over from byte 0 as one stream. With them comes
    /// `sha256` when the download hashes: the state of the file's first bytes, never more
    /// than the segments hold durably from byte 0 (see `spans::PrefixHash`).
    fn durable_segments(
        &self,
        segments: Vec<Segment>,
        sha256: Option<&Hasher>,
    ) -> impl Future<Output = ()> + Send;
}

/// What to transfer.
#[derive(Clone, Copy, Debug)]
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
    /// Largest entity accepted, in bytes: a longer one fails for good before or while writing.
    pub max_bytes: u64,
    /// The download's share of the bandwidth limits; every read waits for it (all of its
    /// connections together).
    pub lane: &'a throttle::Lane,
    /// Whether the bytes written are hashed, and from what saved state.
    pub hashing: &'a Hashing,
    /// Set by the segmenting fetcher on a download's first connection: the part of the entity
    /// it fills, whose end moves closer when its tail is split off. `None` from the engine.
    pub span: Option<&'a spans::Span>,
}

/// Whether an attempt hashes the bytes it writes (SHA-256, in file order), so the finished
/// file's digest is known without reading it again.
#[derive(Debug)]
pub enum Hashing {
    /// Nothing is hashed.
    Off,
    /// Every byte written is hashed. The state is the one saved with the checkpoint, if any: a
    /// resume from exactly its byte count continues it; a resume from anywhere else (or
    /// without one) hashes the partial file's prefix once first; a restart from 0 starts anew.
    On(Option<Hasher>),
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
    /// How long the server asked us to wait (Retry-After), bounded by [`response::MAX_RETRY_AFTER`].
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

    /// A connection failure, marked as "network down" when the host has no route. A refused
    /// redirect and a rejected TLS certificate are permanent: trying again meets them again.
    fn network(what: &str, e: &reqwest::Error) -> Failure {
        if let Some(refused) = find_cause::<request::RedirectRefused>(e) {
            return Failure::fatal(TransferError {
                message: refused.message.clone(),
                http_status: Some(refused.status),
                reason: if refused.by_policy {
                    ErrorReason::Policy
                } else {
                    ErrorReason::HttpStatus
                },
            });
        }
        if let Some(denied) = find_cause::<resolve::NameDenied>(e) {
            return Failure::policy(format!("{what}: {denied}"));
        }
        if let Some(tls) = find_cause::<rustls::Error>(e) {
            if matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            ) {
                return Failure::fatal(TransferError {
                    message: format!("{what}: the server's TLS certificate was rejected: {tls}"),
                    http_status: None,
                    reason: ErrorReason::Network,
                });
            }
        }
        Failure {
            network_down: is_unreachable(e),
            ..Failure::transient(network_error(what, e))
        }
    }

    /// A connection the egress policy forbids; none was attempted.
    fn policy(message: String) -> Failure {
        Failure::fatal(TransferError {
            message: format!("{message}; no connection was attempted"),
            http_status: None,
            reason: ErrorReason::Policy,
        })
    }

    /// A body that grew, or was declared, larger than `max_bytes`.
    fn too_large(what: String, max_bytes: u64) -> Failure {
        Failure::fatal(TransferError {
            message: format!(
                "{what}, more than the {max_bytes} bytes allowed (--max-file-size or the \
                 download's max_bytes); nothing was written to the result file"
            ),
            http_status: None,
            reason: ErrorReason::TooLarge,
        })
    }

    /// A disk failure, marked when the disk is full.
    pub fn disk(what: &str, e: &std::io::Error) -> Failure {
        Failure {
            disk_full: e.kind() == std::io::ErrorKind::StorageFull,
            ..Failure::fatal(disk_error(what, e))
        }
    }
}

/// The first error of type `T` in `e`'s chain, looking inside I/O errors too (their `source`
/// skips the error they wrap).
fn find_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            if let Some(found) = find_cause::<T>(inner) {
                return Some(found);
            }
        }
        source = err.source();
    }
    None
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
    /// Lowest average body speed in bytes/s over each `stall` window; slower is a stalled,
    /// failed attempt. 0: no such rule.
    pub min_speed: u64,
}

/// Issues the HTTP requests of downloads.
#[derive(Clone, Debug)]
pub struct Fetcher {
    client: reqwest::Client,
    timeouts: Timeouts,
    egress: Arc<EgressPolicy>,
    /// Most connections one download uses; 1: never segment.
    per_download: usize,
    /// Connections per origin, over every download.
    hosts: Arc<hosts::HostConnections>,
    /// How partial files are written.
    write_mode: WriteMode,
}

impl Fetcher {
    /// A fetcher with these timeouts, using rustls, that connects only where `egress` allows,
    /// resolving the `pinned` names to their given addresses instead of asking DNS.
    pub fn new(
        timeouts: Timeouts,
        egress: Arc<EgressPolicy>,
        pinned: &[PinnedName],
    ) -> Result<Fetcher, reqwest::Error> {
        // reqwest is built without a bundled crypto provider; install ring once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(concat!("transferd/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeouts.connect)
            // No read timeout here: reqwest's would also count the time the bandwidth limit
            // holds a body's reads back. The stall timeout is kept by `request` (waiting for a
            // response) and `body` (waiting for body bytes) instead.
            .redirect(request::redirect_policy(egress.clone()))
            .dns_resolver(resolve::PolicyResolver::new(egress.clone(), pinned))
            // A proxy from the environment (HTTP_PROXY and the like) would resolve and connect
            // on transferd's behalf, out of the egress policy's sight.
            .no_proxy()
            .build()?;
        Ok(Fetcher {
            client,
            timeouts,
            egress,
            per_download: 1,
            hosts: Arc::new(hosts::HostConnections::new(1)),
            write_mode: WriteMode::default(),
        })
    }

    /// Lets downloads use up to `per_download` connections each, and at most `per_host` to
    /// one origin over all segmenting downloads. Without this, every download is one stream.
    pub fn with_connections(mut self, per_download: usize, per_host: usize) -> Fetcher {
        self.per_download = per_download.max(1);
        self.hosts = Arc::new(hosts::HostConnections::new(per_host.max(1)));
        self
    }

    /// Writes partial files as `mode` says (direct by default).
    pub fn with_write_mode(mut self, mode: WriteMode) -> Fetcher {
        self.write_mode = mode;
        self
    }

    /// How `job`'s partial file is written: through the page cache when the download hashes,
    /// as `--write-mode` says otherwise. A segmented download that hashes reads its later
    /// connections' bytes back right after they are written, to hash them in order (see
    /// `prefix.rs`); direct writes would send those reads to the disk. A single stream hashes
    /// its bytes from the buffer and could write directly, but follows the same rule, so that
    /// one download's bytes take one path whichever way it is fetched.
    fn write_mode_for(&self, job: &Job<'_>) -> WriteMode {
        match job.hashing {
            Hashing::On(_) => WriteMode::Buffered,
            Hashing::Off => self.write_mode,
        }
    }

    /// Whether downloads may be fetched over several connections.
    pub fn segmenting(&self) -> bool {
        self.per_download > 1
    }

    /// Where this fetcher may connect.
    pub fn egress(&self) -> &EgressPolicy {
        &self.egress
    }

    /// Runs one attempt: request, then stream the body into the partial file until it is
    /// complete, fails, or `stop` fires.
    pub async fn run<O: Observer>(
        &self,
        job: Job<'_>,
        observer: &O,
        stop: &CancellationToken,
    ) -> Outcome {
        redacted(self.attempt(&job, observer, stop).await)
    }

    async fn attempt<O: Observer>(
        &self,
        job: &Job<'_>,
        observer: &O,
        stop: &CancellationToken,
    ) -> Result<Outcome, Failure> {
        // One statx of a local file, asked for directly: a trip to a blocking thread would
        // cost more than the call (and every small download makes it).
        let file_len = std::fs::metadata(job.partial).map_or(0, |m| m.len());
        let mut at = Position::start(job, file_len);
        // One retry from zero covers every "cannot continue" answer; a second would loop.
        let mut asked_again = false;
        loop {
            let ranged = at.offset > 0;
            let Some(response) = self
                .request(job, &at.validators, at.offset, None, stop)
                .await?
            else {
                return Ok(Outcome::Stopped);
            };
            // A first connection whose tail went to other connections may only continue its
            // own range: starting over would write over theirs. It fails instead, and its
            // segment is retried as a segment.
            let shared = job.span.is_some_and(|span| span.end() < at.total);
            let part = match response::check_resume(&response, at.offset, at.total) {
                Resume::Continue(part) => Some(part),
                Resume::Whole if shared && response.status().is_success() => {
                    return Err(unusable_range(&response, "not the rest of the range"));
                }
                Resume::Whole => None,
                Resume::RequestAgain(reason) if ranged && !asked_again && !shared => {
                    tracing::info!(reason, "resume refused; starting over");
                    at.restart();
                    asked_again = true;
                    continue;
                }
                Resume::RequestAgain(reason) => return Err(unusable_range(&response, reason)),
            };
            let end = self
                .receive(job, response, part, &mut at, observer, stop)
                .await?;
            match end {
                body::Streamed::Complete(bytes) => return Ok(Outcome::Complete { bytes }),
                body::Streamed::Stopped => return Ok(Outcome::Stopped),
                body::Streamed::RangeEnded(received) => at.continue_range(received)?,
            }
        }
    }

    /// Writes one successful response to a request ranged from `at.offset` (0: no Range) into
    /// the partial file, from there or from 0 for a 200, after checking its status and its
    /// size; `part` is what a fitting 206 carries.
    async fn receive<O: Observer>(
        &self,
        job: &Job<'_>,
        response: reqwest::Response,
        part: Option<response::Part>,
        at: &mut Position,
        observer: &O,
        stop: &CancellationToken,
    ) -> Result<body::Streamed, Failure> {
        let ranged = at.offset > 0;
        let status = response.status();
        let (info, validators) = response::describe(&response, ranged);
        if let Some(failure) = response::unfollowed_redirect(&response) {
            observer.error_response(info);
            return Err(failure);
        }
        if !status.is_success() {
            let retry_after = response::retry_after(response.headers());
            observer.error_response(info);
            return Err(response::http_failure(status, retry_after));
        }
        let end = match &part {
            Some(part) => {
                at.total = part.total;
                part.end
            }
            None => {
                if ranged {
                    tracing::info!(
                        %status,
                        "the server sent the whole entity (changed since, or no ranges); starting over"
                    );
                    at.discarded = true;
                }
                at.offset = 0;
                at.total = response::entity_length(&response);
                at.total
            }
        };
        if at.total > job.max_bytes || end > job.max_bytes {
            observer.error_response(info);
            return Err(Failure::too_large(
                format!("the server declared {} bytes", at.total.max(end)),
                job.max_bytes,
            ));
        }
        at.validators = validators.clone();
        let file = at.open(job.partial, part.is_some(), end).await?;
        observer.response(ResponseStart {
            info,
            validators,
            total: at.total,
            offset: at.offset,
            restarted: std::mem::take(&mut at.discarded),
        });
        if at.offset < at.durable {
            // The old checkpoint no longer describes the file; say so before writing anew.
            observer.durable(at.offset, at.hasher.as_ref()).await;
            at.durable = at.offset;
        }
        let expect = body::Expect {
            offset: at.offset,
            end: (end > 0).then_some(end),
            total: at.total,
            max_bytes: job.max_bytes,
            window: self.timeouts.stall,
            min_speed: self.timeouts.min_speed,
            span: job.span,
            sync_at_end: true,
            write: self.write_mode_for(job),
        };
        let hasher = &mut at.hasher;
        body::stream_body(response, file, hasher, expect, job.lane, observer, stop).await
    }
}

/// The outcome of an attempt, its failure's message cleaned: messages quote URLs (the HTTP
/// client's errors, redirect targets), whose userinfo must not reach logs, the store or
/// clients.
fn redacted(result: Result<Outcome, Failure>) -> Outcome {
    match result {
        Ok(outcome) => outcome,
        Err(failure) => Outcome::Failed(redacted_failure(failure)),
    }
}

fn redacted_failure(mut failure: Failure) -> Failure {
    let message = &mut failure.error.message;
    if let std::borrow::Cow::Owned(clean) = crate::redact::text(message) {
        *message = clean;
    }
    failure
}

/// A range answer that does not fit the request and cannot be helped by asking again: a failed
/// attempt, nothing written.
fn unusable_range(response: &reqwest::Response, reason: &str) -> Failure {
    let status = response.status();
    Failure::transient(TransferError {
        message: format!(
            "the server answered HTTP {} ({}), which does not fit the request: {reason}; nothing was written",
            status.as_u16(),
            response::content_range_text(response)
        ),
        http_status: Some(status.as_u16()),
        reason: ErrorReason::HttpStatus,
    })
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
