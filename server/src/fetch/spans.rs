//! The bookkeeping of a segmented download (see [`super::segments`]): the [`Span`] each
//! connection fills, whose end a split moves closer without ever landing behind bytes already
//! claimed; the board of all spans, which sums their progress and turns them into the segment
//! list the engine checkpoints; and the observers that report a span's progress to the engine
//! as the download's.
//!
//! A download given an expected SHA-256 fills its file in order: a connection that is added, or
//! whose span is done, takes what lies right after the request in flight of the largest span
//! (see [`Span::split_front`]) rather than its back half, so the durable bytes from byte 0 grow
//! close behind the connections, and the SHA-256 of that prefix is hashed as it grows (see
//! `prefix.rs`) instead of the whole file being read again at commit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::body::CHECKPOINT_INTERVAL;
use super::segments::{MIN_SEGMENT, PIECE_REQUEST};
use super::{Observer, ResponseStart};
use crate::operation::{ResponseInfo, Segment, Validators};
use crate::sha256::Hasher;

/// The part of the entity one connection fills: from `start` up to an end that moves closer
/// when its tail is split off to another connection.
#[derive(Debug)]
pub struct Span {
    pub(super) start: u64,
    reach: Mutex<Reach>,
    /// Bytes up to here were received (absolute offset).
    pub(super) received: AtomicU64,
    /// Bytes up to here are durably in the file (absolute offset).
    pub(super) durable: AtomicU64,
    /// A connection (or its retry) is working on it.
    pub(super) busy: AtomicBool,
    /// When its bytes were last reported durable (or it was made).
    checkpointed: Mutex<tokio::time::Instant>,
}

/// Where a span's writer has claimed up to, and where it must stop: changed together, so a
/// split never lands behind bytes already claimed.
#[derive(Debug)]
struct Reach {
    claimed: u64,
    end: u64,
    /// Where the ranged request in flight ends (0: none, or an open-ended one).
    asked: u64,
}

impl Span {
    pub(super) fn new(start: u64, end: u64, durable: u64) -> Span {
        Span {
            start,
            reach: Mutex::new(Reach {
                claimed: durable,
                end,
                asked: 0,
            }),
            received: AtomicU64::new(durable),
            durable: AtomicU64::new(durable),
            busy: AtomicBool::new(false),
            checkpointed: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Whether its connection should make its bytes durable and checkpoint them at the end of
    /// the next request: [`CHECKPOINT_INTERVAL`] has passed since the last time.
    pub(super) fn checkpoint_due(&self) -> bool {
        lock(&self.checkpointed).elapsed() >= CHECKPOINT_INTERVAL
    }

    /// Claims up to `len` bytes written at `at`; returns how many fit before the end.
    pub(super) fn claim(&self, at: u64, len: u64) -> u64 {
        let mut reach = lock(&self.reach);
        let allowed = reach.end.saturating_sub(at).min(len);
        reach.claimed = at + allowed;
        allowed
    }

    pub(super) fn end(&self) -> u64 {
        lock(&self.reach).end
    }

    /// Notes that the request about to be sent ends at `upto`.
    pub(super) fn asking(&self, upto: u64) {
        lock(&self.reach).asked = upto;
    }

    pub(super) fn set_end(&self, end: u64) {
        lock(&self.reach).end = end;
    }

    pub(super) fn durable(&self) -> u64 {
        self.durable.load(Ordering::SeqCst)
    }

    /// Bytes not yet claimed by a writer, or durable.
    fn left(&self) -> u64 {
        let reach = lock(&self.reach);
        reach.end.saturating_sub(reach.claimed.max(self.durable()))
    }

    pub(super) fn complete(&self) -> bool {
        self.durable() >= self.end()
    }

    /// Gives the back half of what is left to a new span, if both halves are large enough.
    fn split(&self) -> Option<Span> {
        let mut reach = lock(&self.reach);
        let from = reach.claimed.max(self.durable());
        let left = reach.end.saturating_sub(from);
        if left < 2 * MIN_SEGMENT {
            return None;
        }
        let mid = from + left / 2;
        let end = std::mem::replace(&mut reach.end, mid);
        Some(Span::new(mid, end, mid))
    }

    /// Gives everything after the request in flight (or, with none, after the next one it
    /// would send) to a new span, if that leaves it at least [`MIN_SEGMENT`]. The request in
    /// flight is never cut short, and this span's connection is done once it ends.
    fn split_front(&self) -> Option<Span> {
        let mut reach = lock(&self.reach);
        let from = reach.claimed.max(self.durable());
        let cut = if reach.asked > from {
            reach.asked
        } else {
            from + PIECE_REQUEST
        };
        if reach.end.saturating_sub(cut) < MIN_SEGMENT {
            return None;
        }
        let end = std::mem::replace(&mut reach.end, cut);
        Some(Span::new(cut, end, cut))
    }

    fn segment(&self) -> Segment {
        Segment {
            start: self.start,
            end: self.end(),
            durable: self.durable() - self.start,
        }
    }
}

/// What every segment fetches: the entity the first response (or the stored checkpoint)
/// described.
#[derive(Clone, Debug)]
pub(super) struct Entity {
    /// Its length.
    pub(super) total: u64,
    /// What guards every ranged request for it.
    pub(super) validators: Validators,
    /// The origin serves ranges of it, guarded by a validator.
    pub(super) resumable: bool,
}

/// The spans of one download and what they add up to.
#[derive(Debug, Default)]
pub(super) struct Board {
    pub(super) spans: Mutex<Vec<Arc<Span>>>,
    /// Bytes received over every span.
    pub(super) received: AtomicU64,
    /// The download has more than one span: checkpoints are segment lists.
    pub(super) split: AtomicBool,
    pub(super) entity: Mutex<Option<Entity>>,
    /// Serialises checkpoints, so a later list is never overtaken by an earlier one.
    pub(super) checkpointing: tokio::sync::Mutex<()>,
    /// Splits take the front of a span, not its back half: the file fills in order.
    pub(super) in_order: bool,
    /// The SHA-256 of the file's durable prefix, as far as it is known, when the download
    /// hashes (see `prefix.rs`).
    pub(super) hash: Option<PrefixHash>,
}

/// The SHA-256 of a segmented download's durable prefix, which grows as the spans before it
/// complete: the download's first connection hashes its span as it writes it, and the
/// prefix hasher reads on from there.
#[derive(Debug)]
pub(super) struct PrefixHash {
    /// The state of the longest durable prefix hashed so far.
    pub(super) state: Mutex<Hasher>,
    /// The first connection is at work and hashes its span itself.
    pub(super) first_hashing: AtomicBool,
    /// Wakes the prefix hasher: the prefix grew, or the first connection stopped.
    pub(super) news: tokio::sync::Notify,
}

impl PrefixHash {
    /// Hashing on from `state`, the SHA-256 of the file's first bytes.
    pub(super) fn new(state: Hasher) -> PrefixHash {
        PrefixHash {
            state: Mutex::new(state),
            first_hashing: AtomicBool::new(false),
            news: tokio::sync::Notify::new(),
        }
    }

    /// Takes `hasher` if it covers more than the state known.
    pub(super) fn offer(&self, hasher: &Hasher) {
        let mut state = lock(&self.state);
        if hasher.len() > state.len() {
            *state = hasher.clone();
        }
    }

    pub(super) fn snapshot(&self) -> Hasher {
        lock(&self.state).clone()
    }
}

impl Board {
    pub(super) fn add(&self, span: Arc<Span>) {
        self.received.fetch_add(
            span.received.load(Ordering::SeqCst) - span.start,
            Ordering::SeqCst,
        );
        lock(&self.spans).push(span);
    }

    pub(super) fn entity(&self) -> Option<Entity> {
        lock(&self.entity).clone()
    }

    /// Bytes durable in one run from byte 0.
    pub(super) fn prefix(&self) -> u64 {
        self.list()
            .first()
            .filter(|s| s.start == 0)
            .map_or(0, |s| s.durable)
    }

    /// The SHA-256 state of the durable prefix, as far as it is hashed, if the download hashes.
    pub(super) fn prefix_hash(&self) -> Option<Hasher> {
        self.hash.as_ref().map(PrefixHash::snapshot)
    }

    /// Drops complete spans no connection works on, merging each run of adjacent ones into
    /// one, so the board stays as short as the work in progress however many splits it saw.
    pub(super) fn compact(&self) {
        let mut spans = lock(&self.spans);
        spans.sort_by_key(|s| s.start);
        let mut kept: Vec<Arc<Span>> = Vec::with_capacity(spans.len());
        for span in spans.drain(..) {
            let idle_and_done = |s: &Span| !s.busy.load(Ordering::SeqCst) && s.complete();
            match kept.last() {
                Some(last)
                    if idle_and_done(last) && idle_and_done(&span) && last.end() == span.start =>
                {
                    let end = span.end();
                    let merged = Arc::new(Span::new(last.start, end, end));
                    *kept.last_mut().expect("a last span") = merged;
                }
                _ => kept.push(span),
            }
        }
        *spans = kept;
    }

    /// The segments to store, in entity order, a finished segment merged into the one after
    /// it (where the next still has to resume from is unchanged), so the list stays short.
    fn list(&self) -> Vec<Segment> {
        let mut all: Vec<Segment> = lock(&self.spans).iter().map(|s| s.segment()).collect();
        all.sort_by_key(|s| s.start);
        let mut merged: Vec<Segment> = Vec::with_capacity(all.len());
        for segment in all {
            match merged.last_mut() {
                Some(last)
                    if last.durable == last.end - last.start && last.end == segment.start =>
                {
                    last.end = segment.end;
                    last.durable += segment.durable;
                }
                _ => merged.push(segment),
            }
        }
        merged
    }

    /// Splits the largest span with enough left (its back half, or with `in_order` all after
    /// its request in flight), and adds the new one.
    pub(super) fn split_largest(&self) -> Option<Arc<Span>> {
        let largest = lock(&self.spans).iter().max_by_key(|s| s.left()).cloned()?;
        let span = if self.in_order {
            largest.split_front()?
        } else {
            largest.split()?
        };
        let span = Arc::new(span);
        self.split.store(true, Ordering::SeqCst);
        self.add(span.clone());
        Some(span)
    }

    /// An unfinished span no connection works on.
    pub(super) fn idle(&self) -> Option<Arc<Span>> {
        lock(&self.spans)
            .iter()
            .find(|s| !s.busy.load(Ordering::SeqCst) && !s.complete())
            .cloned()
    }
}

/// Whether stored segments describe the partial file of a download of `total` bytes with
/// `checkpoint` durable bytes: in order, without gaps or overlaps, covering the entity.
pub fn sound(segments: &[Segment], total: u64, checkpoint: u64) -> bool {
    let mut next = 0;
    let mut sum = 0u64;
    for s in segments {
        if s.start != next || s.end <= s.start || s.durable > s.end - s.start {
            return false;
        }
        next = s.end;
        sum += s.durable;
    }
    total > 0 && next == total && sum == checkpoint
}

/// The engine's observer, told about one span: progress and checkpoints as sums over all.
pub(super) struct SpanObserver<'a, O> {
    pub(super) board: &'a Board,
    pub(super) span: &'a Span,
    pub(super) inner: &'a O,
    /// The download's first connection, an ordinary attempt.
    pub(super) first: bool,
}

impl<O: Observer> Observer for SpanObserver<'_, O> {
    fn response(&self, start: ResponseStart) {
        if self.first && !self.board.split.load(Ordering::SeqCst) {
            let resumable = start.info.is_resumable && start.total > 0;
            self.span.set_end(if start.total > 0 {
                start.total
            } else {
                u64::MAX
            });
            *lock(&self.board.entity) = Some(Entity {
                total: start.total,
                validators: start.validators.clone(),
                resumable,
            });
            self.inner.response(start);
            return;
        }
        self.inner.response(ResponseStart {
            offset: self.board.received.load(Ordering::SeqCst),
            restarted: false,
            ..start
        });
    }

    fn error_response(&self, info: ResponseInfo) {
        self.inner.error_response(info);
    }

    fn progress(&self, bytes_received: u64) {
        let before = self.span.received.swap(bytes_received, Ordering::SeqCst);
        let total = &self.board.received;
        let now = if bytes_received >= before {
            total.fetch_add(bytes_received - before, Ordering::SeqCst) + (bytes_received - before)
        } else {
            total.fetch_sub(before - bytes_received, Ordering::SeqCst) - (before - bytes_received)
        };
        self.inner.progress(now);
    }

    fn tick(&self) {
        self.inner.tick();
    }

    async fn durable(&self, bytes: u64, sha256: Option<&Hasher>) {
        self.span.durable.store(bytes, Ordering::SeqCst);
        *lock(&self.span.checkpointed) = tokio::time::Instant::now();
        if let (Some(hash), Some(hasher)) = (&self.board.hash, sha256) {
            // The first connection's running hash: the prefix up to its durable bytes.
            hash.offer(hasher);
        }
        if let Some(hash) = &self.board.hash {
            hash.news.notify_one();
        }
        let _turn = self.board.checkpointing.lock().await;
        if self.board.split.load(Ordering::SeqCst) {
            let prefix = self.board.prefix_hash();
            self.inner
                .durable_segments(self.board.list(), prefix.as_ref())
                .await;
        } else {
            self.inner.durable(bytes, sha256).await;
        }
    }

    async fn durable_segments(&self, segments: Vec<Segment>, sha256: Option<&Hasher>) {
        self.inner.durable_segments(segments, sha256).await;
    }
}

/// The engine's observer for a download that starts over as one stream: its first response
/// is reported as a restart.
pub(super) struct Restarted<'a, O> {
    pub(super) inner: &'a O,
    pub(super) reported: AtomicBool,
}

impl<O: Observer> Observer for Restarted<'_, O> {
    fn response(&self, start: ResponseStart) {
        let first = !self.reported.swap(true, Ordering::SeqCst);
        self.inner.response(ResponseStart {
            restarted: start.restarted || first,
            ..start
        });
    }
    fn error_response(&self, info: ResponseInfo) {
        self.inner.error_response(info);
    }
    fn progress(&self, bytes_received: u64) {
        self.inner.progress(bytes_received);
    }
    fn tick(&self) {
        self.inner.tick();
    }
    async fn durable(&self, bytes: u64, sha256: Option<&Hasher>) {
        self.inner.durable(bytes, sha256).await;
    }
    async fn durable_segments(&self, segments: Vec<Segment>, sha256: Option<&Hasher>) {
        self.inner.durable_segments(segments, sha256).await;
    }
}

/// A span's lock: held for a few comparisons, never across an await.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = MIN_SEGMENT;

    #[test]
    fn a_split_never_lands_behind_claimed_bytes_and_writers_stop_at_the_new_end() {
        let span = Span::new(0, 10 * M, 0);
        assert_eq!(span.claim(0, 2 * M), 2 * M);
        let back = span.split().expect("8 M left");
        assert_eq!((span.end(), back.start, back.end()), (6 * M, 6 * M, 10 * M));
        // The writer's next read runs past the new end: it gets only what fits.
        assert_eq!(span.claim(2 * M, 5 * M), 4 * M);
        assert!(span.split().is_none(), "nothing left to split");
        let small = Span::new(0, 2 * M - 1, 0);
        assert!(small.split().is_none(), "halves below the minimum");
    }

    #[test]
    fn an_in_order_split_takes_what_follows_the_request_in_flight() {
        const P: u64 = PIECE_REQUEST;
        let span = Span::new(0, 20 * M, 0);
        // A request in flight up to P, a quarter of it written: the new span starts where it
        // ends.
        span.asking(P);
        assert_eq!(span.claim(0, P / 4), P / 4);
        let next = span.split_front().expect("plenty after the request");
        assert_eq!((span.end(), next.start, next.end()), (P, P, 20 * M));
        // No request in flight on the new one: it keeps the next it would send.
        let after = next.split_front().expect("plenty after its first request");
        assert_eq!((next.end(), after.start), (2 * P, 2 * P));
        // Less than a segment behind the cut: no split.
        let short = Span::new(0, P + M / 2, 0);
        assert!(short.split_front().is_none());
        // An open-ended first request (nothing asked): one request past what is written.
        let first = Span::new(0, 20 * M, 0);
        assert_eq!(first.claim(0, 3 * M), 3 * M);
        let cut = first.split_front().expect("a long way left");
        assert_eq!(cut.start, 3 * M + P);
    }

    #[test]
    fn an_in_order_board_fills_from_the_front_and_its_prefix_follows() {
        const P: u64 = PIECE_REQUEST;
        let board = Board {
            in_order: true,
            ..Board::default()
        };
        let first = Arc::new(Span::new(0, 40 * M, 0));
        board.add(first.clone());
        first.asking(P);
        let starts: Vec<u64> = (0..3)
            .map(|_| board.split_largest().expect("room").start)
            .collect();
        assert_eq!(
            starts,
            vec![P, 2 * P, 3 * P],
            "each added span follows the last"
        );
        assert_eq!(board.prefix(), 0);
        first.durable.store(P, Ordering::SeqCst);
        assert_eq!(board.prefix(), P);
        // The second span half done: the prefix runs into it, not past it.
        let second = lock(&board.spans)[1].clone();
        second.durable.store(P + P / 2, Ordering::SeqCst);
        assert_eq!(board.prefix(), P + P / 2);
        // The third done too: the prefix waits for the second.
        lock(&board.spans)[2].durable.store(3 * P, Ordering::SeqCst);
        assert_eq!(board.prefix(), P + P / 2);
        second.durable.store(2 * P, Ordering::SeqCst);
        assert_eq!(board.prefix(), 3 * P);
    }

    #[test]
    fn compacting_merges_finished_idle_spans_and_keeps_the_rest() {
        let board = Board::default();
        for (start, end, durable, busy) in [
            (0, 4 * M, 4 * M, false),
            (4 * M, 8 * M, 8 * M, false),
            (8 * M, 12 * M, 12 * M, true),
            (12 * M, 16 * M, 16 * M, false),
            (16 * M, 20 * M, 17 * M, false),
        ] {
            let span = Arc::new(Span::new(start, end, durable));
            span.busy.store(busy, Ordering::SeqCst);
            board.add(span);
        }
        let before = board.list();
        let received = board.received.load(Ordering::SeqCst);
        board.compact();
        let kept: Vec<(u64, u64)> = lock(&board.spans)
            .iter()
            .map(|s| (s.start, s.end()))
            .collect();
        assert_eq!(
            kept,
            vec![
                (0, 8 * M),
                (8 * M, 12 * M),
                (12 * M, 16 * M),
                (16 * M, 20 * M)
            ],
            "only the two idle finished spans in a row merge; a busy one stays"
        );
        assert_eq!(board.list(), before, "the checkpoint is unchanged");
        assert_eq!(board.received.load(Ordering::SeqCst), received);
    }

    #[test]
    fn finished_segments_merge_into_the_next_and_stored_lists_are_checked() {
        let board = Board::default();
        let first = Arc::new(Span::new(0, 4 * M, 0));
        board.add(first.clone());
        first.durable.store(4 * M, Ordering::SeqCst);
        board.add(Arc::new(Span::new(4 * M, 8 * M, 5 * M)));
        board.add(Arc::new(Span::new(8 * M, 12 * M, 8 * M)));
        let list = board.list();
        assert_eq!(
            list,
            vec![
                Segment {
                    start: 0,
                    end: 8 * M,
                    durable: 5 * M
                },
                Segment {
                    start: 8 * M,
                    end: 12 * M,
                    durable: 0
                },
            ]
        );
        assert!(sound(&list, 12 * M, 5 * M));
        assert!(
            !sound(&list, 12 * M, 4 * M),
            "the sum must be the checkpoint"
        );
        assert!(!sound(&list, 13 * M, 5 * M), "must cover the entity");
        assert!(!sound(&list[1..], 12 * M, 0), "must start at 0");
        assert_eq!(list[0].resume(), 5 * M);
    }
}
