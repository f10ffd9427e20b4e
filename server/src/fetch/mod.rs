//! The HTTP fetcher: one attempt at transferring a download's body into its partial file. It
//! owns the rules of resuming: `Range: bytes=N-` guarded by `If-Range` (a strong ETag, else
//! Last-Modified), a 206 whose `Content-Range` must start exactly at N, and a clean restart from
//! byte 0 whenever the server cannot or will not continue (200, 416, a mismatched range, a
//! changed entity length, or no validator to guard the resume).
//!
//! It reports to the engine through [`Observer`] and knows nothing of queues, stores or gRPC.
//!
//! # Layout
//! - `mod.rs`: the [`Fetcher`] and the course of one attempt; what goes in ([`Job`]) and comes
//!   out ([`Outcome`], [`Failure`]), and the [`Observer`] the engine follows it with.
//! - `request.rs`: building the request; the headers transferd manages itself.
//! - `response.rs`: reading a response: resumability, validators, error statuses.
//! - `body.rs`: streaming the body into the partial file and making it durable.

mod body;
mod request;
mod response;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

use crate::operation::{ErrorReason, ResponseInfo, Settings, TransferError, Validators};
use response::Resume;

pub use body::{CHECKPOINT_INTERVAL, PROGRESS_INTERVAL, WRITE_BUFFER_SIZE};
pub use request::{RESERVED_HEADERS, check_user_header};
pub use response::MAX_RETRY_AFTER;

/// Redirects followed before giving up, as browsers and curl's default do.
const MAX_REDIRECTS: usize = 10;

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
            match response::check_resume(&response, offset, job.total) {
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
        let (info, validators) = response::describe(&response);
        if !status.is_success() {
            let retry_after = response::retry_after(response.headers());
            observer.error_response(info);
            return Err(response::http_failure(status, retry_after));
        }
        let restarted = discarded || (ranged && status == StatusCode::OK);
        if status == StatusCode::OK {
            offset = 0;
        }
        let total = response::entity_length(&response);
        let file = body::open_partial(job.partial, offset).await?;
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
        body::stream_body(response, file, offset, total, observer, stop).await
    }
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
