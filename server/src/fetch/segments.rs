//! Segmented downloads: one download fetched over several connections at once, each filling
//! its own part of the one partial file at its offset (as aria2, pget and hf_transfer do).
//!
//! It starts as one stream: the download's first connection is an ordinary attempt (see
//! [`Fetcher::run`]), so a small file, an origin without ranges or one without a validator is
//! fetched exactly as before. Once that first response shows the origin serves byte ranges of
//! a known length guarded by a validator, and enough is left ([`MIN_SEGMENT`] twice), growth
//! begins: once the connections added last deliver, the download's throughput is measured
//! over a window ([`MEASURE_WINDOW`](super::ramp::MEASURE_WINDOW) or longer), and while the connections added last raised
//! it by at least [`MIN_GAIN`](super::ramp::MIN_GAIN) of what each connection brought before, [`GROWTH`] times as
//! many connections run next (each added one splitting the largest
//! remaining segment in half), up to `--max-connections-per-download` and while the origin
//! has room under `--max-connections-per-host`. A connection whose segment is done takes over
//! a segment left idle or the back half of the largest one, so all connections stay busy to
//! the end. A download given an expected SHA-256 splits differently: the new part is all that
//! follows the request in flight, so the file fills in order and is hashed as it fills (see
//! `spans.rs` and `prefix.rs`). Every segment reads under the download's one bandwidth [`Lane`](super::throttle::Lane).
//!
//! Each segment checkpoints its own durable bytes; the engine stores the list (see
//! [`Observer::durable_segments`]), whose sum is the download's checkpoint and what
//! `bytes_received` falls back to. A restart resumes every unfinished segment from there. A
//! segment's transient failure retries that segment alone, within the retry budget; a fatal
//! one fails the download. A 200 to a ranged request (the entity changed and If-Range failed,
//! or the origin stopped serving ranges), a changed validator or entity length ends every
//! segment and the download starts over from byte 0 as one stream.
//!
//! This file holds the run that starts, grows, retries and ends the connections; `spans.rs`
//! the bookkeeping of the parts they fill, `piece.rs` one segment's ranged request and body.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use super::hosts::{HostPermit, origin_of};
use super::ramp::{GROWTH, Ramp, TICK};
use super::spans::{Board, Entity, Restarted, Span, SpanObserver, lock, sound};
use super::{
    Failure, Fetcher, Hashing, Job, Observer, Outcome, prefix, redacted, redacted_failure,
};
use crate::operation::{Segment, Validators};
use crate::retry::RetryPolicy;

/// Smallest segment split off for another connection (aria2's `-k`, 20 MiB there). A new
/// connection costs a TCP (and TLS) handshake and a slow start, a few hundred milliseconds to a
/// far origin; 4 MiB keeps that a small share of a segment's time at the tens of MiB/s a capped
/// connection carries, while still letting a file of a few tens of MiB use several connections.
pub const MIN_SEGMENT: u64 = 4 << 20;

/// Most bytes one ranged request of a segment asks for; the connection asks again for the
/// next. No more than [`MIN_SEGMENT`]: a split leaves at least that much in front of what a
/// connection has claimed, so a split never cuts a request short, every request ends where
/// it said, and its connection is reused for the next instead of being closed and replaced
/// (which the origin would briefly see as one connection too many).
pub const PIECE_REQUEST: u64 = MIN_SEGMENT;

/// How long a connection cut at the end of its span waits before it is opened again (see
/// [`Crew::vacant`]).
const REOPEN_DELAY: Duration = Duration::from_millis(250);

/// What the engine hands a segmented run beyond the [`Job`].
#[derive(Clone, Copy, Debug)]
pub struct Plan<'a> {
    /// Its stored segments; empty to start (or go on) as one stream.
    pub segments: &'a [Segment],
    /// When a failed segment is tried again.
    pub retry: RetryPolicy,
    /// HTTP statuses the download's client handles itself: a segment meeting one is not
    /// retried, the download pauses.
    pub recoverable: &'a [u16],
}

/// How one connection's work ended.
#[derive(Debug)]
pub(super) enum Piece {
    /// Its span is complete (for the first connection before any split: the whole entity,
    /// this many bytes).
    Done(u64),
    Stopped,
    /// It gave its place at the origin to another download's first connection; its span is
    /// left for this download's other connections.
    Yielded,
    /// The segments cannot go on: start over as one stream.
    Restart(String),
}

/// A connection's work, done.
struct Finished {
    /// It was the download's first connection.
    first: bool,
    span: Arc<Span>,
    permit: HostPermit,
    end: Result<Piece, Failure>,
}

type Worker<'s> = Pin<Box<dyn Future<Output = Finished> + Send + 's>>;

/// How a segmented run ended.
enum Verdict {
    Complete(u64),
    Stopped,
    Failed(Failure),
    Restart(String),
}

/// The connections at work and what the run has decided.
#[derive(Default)]
struct Crew<'s> {
    workers: FuturesUnordered<Worker<'s>>,
    /// Failures in a row per span (by its start), and how far it had got at the first.
    failures: HashMap<u64, (u32, u64)>,
    /// Most connections that ran at once, for the log.
    peak: usize,
    /// Connections to open again after [`REOPEN_DELAY`]: the first connection's, cut at the end
    /// of its span (its socket closes only once its HTTP client notices; opening the next one
    /// at once would briefly show the origin one connection too many).
    vacant: Vec<(HostPermit, tokio::time::Instant)>,
    verdict: Option<Verdict>,
}

/// One segmented run of a download.
struct Run<'a, O> {
    fetcher: &'a Fetcher,
    job: Job<'a>,
    plan: Plan<'a>,
    observer: &'a O,
    board: Board,
    origin: String,
    /// Stops every connection: the caller's stop, or the run ending early.
    halt: CancellationToken,
    /// Connections at work (or waiting to retry).
    running: AtomicUsize,
}

impl Fetcher {
    /// Runs one attempt of a download over as many connections as pay off (see the module
    /// docs), resuming the stored `plan.segments` if there are any.
    pub async fn run_segmented<O: Observer>(
        &self,
        job: Job<'_>,
        plan: Plan<'_>,
        observer: &O,
        stop: &CancellationToken,
    ) -> Outcome {
        // A download that hashes fills its file in order, and hashes it as it fills.
        let hash = match job.hashing {
            Hashing::On(saved) => {
                let durable_from_zero = plan
                    .segments
                    .first()
                    .filter(|s| s.start == 0)
                    .map_or(0, |s| s.durable);
                Some(prefix::resumed(saved.as_ref(), durable_from_zero))
            }
            Hashing::Off => None,
        };
        let board = Board {
            in_order: hash.is_some(),
            hash,
            ..Board::default()
        };
        let run = Run {
            fetcher: self,
            job,
            plan,
            observer,
            board,
            origin: origin_of(&job.settings.requested_uri),
            halt: stop.child_token(),
            running: AtomicUsize::new(0),
        };
        let verdict = if plan.segments.is_empty()
            || sound(plan.segments, job.total, job.checkpoint)
                && job.validators.if_range().is_some()
        {
            run.drive_hashing().await
        } else {
            Verdict::Restart("the stored segments do not describe the partial file".into())
        };
        match verdict {
            Verdict::Complete(bytes) => Outcome::Complete { bytes },
            Verdict::Stopped => Outcome::Stopped,
            Verdict::Failed(failure) => Outcome::Failed(redacted_failure(failure)),
            Verdict::Restart(reason) => {
                tracing::info!(reason, "segments cannot go on; starting over as one stream");
                observer.durable_segments(Vec::new(), None).await;
                let fresh = Job {
                    checkpoint: 0,
                    validators: &Validators::default(),
                    total: 0,
                    span: None,
                    ..job
                };
                let _permit = tokio::select! {
                    permit = self.hosts.first(&run.origin) => permit,
                    () = stop.cancelled() => return Outcome::Stopped,
                };
                let observer = Restarted {
                    inner: observer,
                    reported: AtomicBool::new(false),
                };
                redacted(self.attempt(&fresh, &observer, stop).await)
            }
        }
    }
}

impl<O: Observer> Run<'_, O> {
    /// [`drive`](Self::drive), with the durable prefix hashed alongside (see `prefix.rs`) when
    /// the download hashes. A split download that completes reports the whole file durable
    /// with the SHA-256 of all of it, which the commit checks without reading the file.
    async fn drive_hashing(&self) -> Verdict {
        let Some(hash) = &self.board.hash else {
            return self.drive().await;
        };
        let follow = prefix::follow(&self.board, self.job.partial);
        tokio::pin!(follow);
        let drive = self.drive();
        tokio::pin!(drive);
        let mut following = true;
        let verdict = loop {
            tokio::select! {
                verdict = &mut drive => break verdict,
                followed = &mut follow, if following => {
                    following = false;
                    if let Err(e) = followed {
                        tracing::warn!(error = %e, "cannot hash the partial file as it fills; the commit will read it");
                    }
                }
            }
        };
        let Verdict::Complete(total) = verdict else {
            return verdict;
        };
        if !following || !self.board.split.load(Ordering::SeqCst) {
            // Unsplit, the first connection hashed it all and reported its state itself.
            return verdict;
        }
        // The last bytes to arrive, after the prefix hashed so far.
        if let Err(e) = follow.await {
            tracing::warn!(error = %e, "cannot hash the partial file's last bytes; the commit will read it");
            return verdict;
        }
        let state = hash.snapshot();
        if state.len() == total {
            let _turn = self.board.checkpointing.lock().await;
            self.observer.durable(total, Some(&state)).await;
        }
        verdict
    }

    async fn drive(&self) -> Verdict {
        let mut crew = Crew::default();
        // A download's first connection waits for a place at its origin.
        let permit = tokio::select! {
            permit = self.fetcher.hosts.first(&self.origin) => permit,
            () = self.halt.cancelled() => return Verdict::Stopped,
        };
        if self.plan.segments.is_empty() {
            let span = Arc::new(Span::new(0, u64::MAX, self.job.checkpoint));
            self.board.add(span.clone());
            crew.workers.push(self.first(span, permit));
        } else {
            self.resume(&mut crew, permit);
        }
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let working: Vec<Arc<Span>> = lock(&self.board.spans)
            .iter()
            .filter(|s| s.busy.load(Ordering::SeqCst))
            .cloned()
            .collect();
        let mut ramp = Ramp::new(working, tokio::time::Instant::now());
        loop {
            crew.peak = crew.peak.max(crew.workers.len());
            self.running.store(crew.workers.len(), Ordering::SeqCst);
            tokio::select! {
                finished = crew.workers.next() => match finished {
                    Some(finished) => self.finished(&mut crew, finished),
                    None => break,
                },
                _ = ticker.tick() => self.grow(&mut crew, &mut ramp),
            }
        }
        if self.board.split.load(Ordering::SeqCst) {
            tracing::info!(connections = crew.peak, "segmented transfer ended");
        }
        if let Some(verdict) = crew.verdict {
            return verdict;
        }
        let spans = lock(&self.board.spans).clone();
        if spans.iter().all(|s| s.complete()) && self.board.split.load(Ordering::SeqCst) {
            let total = spans.iter().map(|s| s.end()).max().unwrap_or(0);
            return Verdict::Complete(total);
        }
        if self.halt.is_cancelled() {
            return Verdict::Stopped;
        }
        // Every connection ended without finishing its span and none could be opened again:
        // a failed attempt, which the engine retries from the checkpoints.
        Verdict::Failed(Failure::transient(crate::operation::TransferError {
            message: "the download's connections ended with segments left to fetch".into(),
            http_status: None,
            reason: crate::operation::ErrorReason::Network,
        }))
    }

    /// Takes up stored segments: one connection for the first unfinished one, extra ones for
    /// the others as the origin has room; growth may add more.
    fn resume<'s>(&'s self, crew: &mut Crew<'s>, first: HostPermit) {
        *lock(&self.board.entity) = Some(Entity {
            total: self.job.total,
            validators: self.job.validators.clone(),
            resumable: true,
        });
        self.board.split.store(true, Ordering::SeqCst);
        for s in self.plan.segments {
            self.board
                .add(Arc::new(Span::new(s.start, s.end, s.resume())));
        }
        let mut first = Some(first);
        while crew.workers.len() < self.fetcher.per_download {
            let Some(span) = self.board.idle() else { break };
            let Some(permit) = first
                .take()
                .or_else(|| self.fetcher.hosts.extra(&self.origin))
            else {
                break;
            };
            crew.workers.push(self.piece(span, permit, Duration::ZERO));
        }
    }

    /// The download's first connection: an ordinary attempt, which fills the first span.
    fn first<'s>(&'s self, span: Arc<Span>, permit: HostPermit) -> Worker<'s> {
        span.busy.store(true, Ordering::SeqCst);
        if let Some(hash) = &self.board.hash {
            hash.first_hashing.store(true, Ordering::SeqCst);
        }
        Box::pin(async move {
            let job = Job {
                span: Some(&span),
                ..self.job
            };
            let observer = SpanObserver {
                board: &self.board,
                span: &span,
                inner: self.observer,
                first: true,
            };
            let end = match self.fetcher.attempt(&job, &observer, &self.halt).await {
                Ok(Outcome::Complete { bytes }) => Ok(Piece::Done(bytes)),
                Ok(Outcome::Stopped) => Ok(Piece::Stopped),
                Ok(Outcome::Failed(failure)) | Err(failure) => Err(failure),
            };
            if let Some(hash) = &self.board.hash {
                // Its last durable report carried its state; the prefix hasher goes on.
                hash.first_hashing.store(false, Ordering::SeqCst);
                hash.news.notify_one();
            }
            Finished {
                first: true,
                span,
                permit,
                end,
            }
        })
    }

    /// A ranged connection for `span`, after `delay`.
    fn piece<'s>(&'s self, span: Arc<Span>, permit: HostPermit, delay: Duration) -> Worker<'s> {
        span.busy.store(true, Ordering::SeqCst);
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.halt.cancelled() => {
                        let end = Ok(Piece::Stopped);
                        return Finished { first: false, span, permit, end };
                    }
                }
            }
            let entity = self
                .board
                .entity()
                .expect("pieces start once the entity is known");
            let observer = SpanObserver {
                board: &self.board,
                span: &span,
                inner: self.observer,
                first: false,
            };
            // Another download's first connection waits for a place: give this one back at the
            // next request boundary, unless it is this download's last.
            let make_way = || {
                permit.wanted()
                    && (self.running)
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                            (n > 1).then(|| n - 1)
                        })
                        .is_ok()
            };
            let end = self
                .fetcher
                .piece(&self.job, &span, &entity, &observer, &make_way, &self.halt)
                .await;
            Finished {
                first: false,
                span,
                permit,
                end,
            }
        })
    }

    fn finished<'s>(&'s self, crew: &mut Crew<'s>, finished: Finished) {
        let Finished {
            first,
            span,
            permit,
            end,
        } = finished;
        span.busy.store(false, Ordering::SeqCst);
        match end {
            Ok(Piece::Done(bytes)) if !self.board.split.load(Ordering::SeqCst) => {
                crew.verdict = Some(Verdict::Complete(bytes));
            }
            // With nothing else running, nobody is left to notice the vacancy.
            Ok(Piece::Done(_)) if first && !crew.workers.is_empty() => {
                crew.vacant.push((permit, tokio::time::Instant::now()));
            }
            Ok(Piece::Done(_)) => {
                crew.failures.remove(&span.start);
                if !self.halt.is_cancelled() {
                    self.reassign(crew, permit);
                }
            }
            Ok(Piece::Stopped | Piece::Yielded) => {}
            Ok(Piece::Restart(reason)) => self.end(crew, Verdict::Restart(reason)),
            Err(failure) => self.failed(crew, span, permit, failure),
        }
    }

    /// A connection whose span is done takes an idle span, or part of the largest (see
    /// [`Board::split_largest`]).
    fn reassign<'s>(&'s self, crew: &mut Crew<'s>, permit: HostPermit) {
        self.board.compact();
        if let Some(span) = self.board.idle().or_else(|| self.board.split_largest()) {
            crew.workers.push(self.piece(span, permit, Duration::ZERO));
        }
    }

    /// Ends the run with `verdict` (the first one decided stands): every connection stops and
    /// checkpoints.
    fn end(&self, crew: &mut Crew<'_>, verdict: Verdict) {
        crew.verdict.get_or_insert(verdict);
        self.halt.cancel();
    }

    /// A span's connection failed: retried after the backoff if it may be, within the retry
    /// budget (failures in a row that got no further); otherwise the download fails.
    fn failed<'s>(
        &'s self,
        crew: &mut Crew<'s>,
        span: Arc<Span>,
        permit: HostPermit,
        failure: Failure,
    ) {
        if self.halt.is_cancelled() {
            return;
        }
        let retriable = failure.transient
            && !failure.network_down
            && !failure.disk_full
            && !failure
                .error
                .http_status
                .is_some_and(|code| self.plan.recoverable.contains(&code));
        if !retriable || !self.board.split.load(Ordering::SeqCst) {
            // Before any split, the first connection fails as a one-stream attempt does, and
            // the engine retries it from its checkpoint.
            return self.end(crew, Verdict::Failed(failure));
        }
        let durable = span.durable();
        let (count, furthest) = crew.failures.entry(span.start).or_insert((0, durable));
        *count = if durable > *furthest { 1 } else { *count + 1 };
        *furthest = (*furthest).max(durable);
        let count = *count;
        if !self.plan.retry.allows_another(count) {
            let mut failure = failure;
            failure.error.message = format!(
                "gave up after {count} failed attempt{} in a row at bytes {}..{}; the last: {}",
                if count == 1 { "" } else { "s" },
                span.start,
                span.end(),
                failure.error.message
            );
            failure.transient = false;
            return self.end(crew, Verdict::Failed(failure));
        }
        let delay = self.plan.retry.delay(count, failure.retry_after);
        tracing::warn!(error = %failure.error.message, start = span.start, count, ?delay, "segment failed; retrying it");
        crew.workers.push(self.piece(span, permit, delay));
    }

    /// Reopens vacant connections, and at the end of each window measures it and adds
    /// connections while they pay off.
    fn grow<'s>(&'s self, crew: &mut Crew<'s>, ramp: &mut Ramp) {
        let now = tokio::time::Instant::now();
        while crew
            .vacant
            .first()
            .is_some_and(|(_, at)| now - *at >= REOPEN_DELAY)
        {
            let (permit, _) = crew.vacant.remove(0);
            if let Some(span) = self.board.idle().or_else(|| self.board.split_largest()) {
                crew.workers.push(self.piece(span, permit, Duration::ZERO));
            }
        }
        let running = crew.workers.len();
        if ramp.done || self.halt.is_cancelled() || running == 0 {
            return;
        }
        if !self.board.entity().is_some_and(|e| e.resumable) {
            return;
        }
        let bytes = self.board.received.load(Ordering::SeqCst);
        let Some(rate) = ramp.measure(now, bytes) else {
            return;
        };
        if !ramp.pays_off(rate, running) {
            return;
        }
        let room = self.fetcher.per_download.saturating_sub(running);
        let mut added = Vec::new();
        for _ in 0..(running * (GROWTH - 1)).min(room) {
            let Some(permit) = self.fetcher.hosts.extra(&self.origin) else {
                break;
            };
            let Some(span) = self.board.split_largest() else {
                break;
            };
            crew.workers
                .push(self.piece(span.clone(), permit, Duration::ZERO));
            added.push(span);
        }
        if !added.is_empty() {
            tracing::debug!(rate, running, added = added.len(), "adding connections");
            ramp.added(rate, running, added, now);
        } else if room == 0 {
            ramp.done = true;
        }
    }
}
