//! The bookkeeping of a segmented download (see [`super::segments`]): the [`Span`] each
//! connection fills, whose end a split moves closer without ever landing behind bytes already
//! claimed; the board of all spans, which sums their progress and turns them into the segment
//! list the engine checkpoints; and the observers that report a span's progress to the engine
//! as the download's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::segments::MIN_SEGMENT;
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
}

/// Where a span's writer has claimed up to, and where it must stop: changed together, so a
/// split never lands behind bytes already claimed.
#[derive(Debug)]
struct Reach {
    claimed: u64,
    end: u64,
}

impl Span {
    pub(super) fn new(start: u64, end: u64, durable: u64) -> Span {
        Span {
            start,
            reach: Mutex::new(Reach {
                claimed: durable,
                end,
            }),
            received: AtomicU64::new(durable),
            durable: AtomicU64::new(durable),
            busy: AtomicBool::new(false),
        }
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
    checkpointing: tokio::sync::Mutex<()>,
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

    /// Splits the largest span with enough left, and adds the new one.
    pub(super) fn split_largest(&self) -> Option<Arc<Span>> {
        let largest = lock(&self.spans).iter().max_by_key(|s| s.left()).cloned()?;
        let span = Arc::new(largest.split()?);
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
        let _turn = self.board.checkpointing.lock().await;
        if self.board.split.load(Ordering::SeqCst) {
            self.inner.durable_segments(self.board.list()).await;
        } else {
            self.inner.durable(bytes, sha256).await;
        }
    }

    async fn durable_segments(&self, segments: Vec<Segment>) {
        self.inner.durable_segments(segments).await;
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
    async fn durable_segments(&self, segments: Vec<Segment>) {
        self.inner.durable_segments(segments).await;
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
