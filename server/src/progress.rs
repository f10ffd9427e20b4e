//! Progress fan-out: every download publishes [`Snapshot`]s to its own [`Hub`], and every hub
//! also feeds one server-wide [`Bus`] for WatchDownloads.
//!
//! Publishing never waits for a watcher. A hub keeps only the latest snapshot plus a short log
//! of recent status changes, so a slow watcher costs nothing while it is slow, and when it
//! catches up it still gets every status change in order, then the latest bytes. The one-shot
//! flags `has_response_changed` and `has_restarted` are not stored as booleans that coalescing
//! could lose: the hub publishes monotonic response and restart counters, and each watcher
//! derives the flags from the counters it has already seen.
//!
//! `all` holds the WatchDownloads stream: a lazy walk of the first snapshot, then bus events.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_util::Stream;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::auth::Tenant;
use crate::operation::{Guid, Progress};

mod all;

pub use all::{Catalog, Filter, watch_all};

/// Status changes a hub remembers for watchers that fell behind. Downloads change status a
/// handful of times; a watcher more than this many changes behind is told so and its stream
/// ends, rather than silently skipping one.
const STATUS_LOG_CAPACITY: usize = 256;

/// Events the server-wide bus buffers per WatchDownloads watcher. Byte progress is coalesced at
/// the source to a few events per second per running download, so this covers many seconds of
/// a stuck client on a busy server; past it the watcher is told it fell behind.
pub const BUS_CAPACITY: usize = 16 * 1024;

/// What a download published at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Bytes, total and status.
    pub progress: Progress,
    /// HTTP responses received so far in this process (a new request makes a new response).
    pub responses: u64,
    /// Times the download had to start over because the server could not resume.
    pub restarts: u64,
    /// Status changes published so far; orders status changes for lagging watchers.
    pub status_seq: u64,
    /// Publications so far; lets a watcher skip what it has already seen.
    pub version: u64,
    /// Whether this publication is the first after a new response (the flag as a client that
    /// saw every publication would see it; used for unary reads and a watcher's first message).
    pub has_response_changed: bool,
    /// Whether this publication is the first after a restart (as above).
    pub has_restarted: bool,
}

/// One progress message to a watcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    /// Bytes, total and status.
    pub progress: Progress,
    /// True in the first message after a new HTTP response.
    pub has_response_changed: bool,
    /// True in the first message after a restart.
    pub has_restarted: bool,
}

/// A watcher fell so far behind that a status change it has not seen was discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this watcher fell too far behind and missed updates; watch again to get the current state"
)]
pub struct Lagged;

/// One server-wide event: a download published a snapshot.
#[derive(Clone, Debug)]
pub struct Event {
    /// The download.
    pub guid: Arc<str>,
    /// Its tenant, which (with admins) alone may see the event.
    pub tenant: Tenant,
    /// Its transfer group.
    pub group: Arc<str>,
    /// What it published.
    pub snapshot: Snapshot,
}

/// The server-wide event stream that every hub feeds.
#[derive(Clone, Debug)]
pub struct Bus {
    tx: broadcast::Sender<Event>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus {
            tx: broadcast::channel(BUS_CAPACITY).0,
        }
    }
}

impl Bus {
    /// Subscribes before reading current states, so no event between the two is lost.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

/// The progress publisher of one download.
#[derive(Debug)]
pub struct Hub {
    guid: Arc<str>,
    tenant: Tenant,
    group: Arc<str>,
    /// The latest snapshot for unary reads and for readers that follow the download
    /// ([`Hub::changes`]).
    tx: watch::Sender<Snapshot>,
    /// What WatchDownload streams read and wait on.
    shared: Mutex<Shared>,
    bus: Bus,
}

/// What a download's WatchDownload streams share, under one lock: the latest snapshot, the
/// recent status changes, and the wakers of the streams waiting for the next publication.
///
/// The waiting streams are a plain list that each publication takes whole, rather than a
/// tokio `watch` receiver per stream: that receiver waits through a boxed future and a waiter
/// node linked into the channel, two more heap objects per stream that a publication and the
/// woken stream each touch, cold, for every one of thousands of watchers. Here a publication
/// walks one array of wakers and a woken stream reads its own state and this.
#[derive(Debug)]
struct Shared {
    latest: Snapshot,
    status_log: VecDeque<Snapshot>,
    /// Streams waiting for a publication after `latest`; a stream that ends while waiting
    /// empties its slot and lists it in `free` for the next stream to wait.
    waiting: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Hub {
    /// A hub of a download of `tenant` whose first snapshot is `progress`.
    pub fn new(guid: &Guid, tenant: &Tenant, group: &str, progress: Progress, bus: Bus) -> Hub {
        let first = Snapshot {
            progress,
            responses: 0,
            restarts: 0,
            status_seq: 0,
            version: 0,
            has_response_changed: false,
            has_restarted: false,
        };
        Hub {
            guid: guid.as_str().into(),
            tenant: tenant.clone(),
            group: group.into(),
            tx: watch::Sender::new(first),
            shared: Mutex::new(Shared {
                latest: first,
                status_log: VecDeque::from([first]),
                waiting: Vec::new(),
                free: Vec::new(),
            }),
            bus,
        }
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest snapshot.
    pub fn current(&self) -> Snapshot {
        *self.tx.borrow()
    }

    /// A receiver that wakes at every publication, for readers that follow a download without
    /// needing each message (ReadResult with follow).
    pub fn changes(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }

    /// Tells WatchDownloads watchers that this download exists (called once it is stored).
    pub fn announce(&self) {
        let _ = self.bus.tx.send(Event {
            guid: self.guid.clone(),
            tenant: self.tenant.clone(),
            group: self.group.clone(),
            snapshot: self.current(),
        });
    }

    /// Publishes a new state. The caller serialises publications of one download (it holds the
    /// download's state lock), which is what keeps every watcher's view in order.
    pub fn publish(&self, progress: Progress, responses: u64, restarts: u64) {
        let prev = self.current();
        if prev.progress == progress && prev.responses == responses && prev.restarts == restarts {
            return;
        }
        let status_changed = prev.progress.status != progress.status;
        let snapshot = Snapshot {
            progress,
            responses,
            restarts,
            status_seq: prev.status_seq + u64::from(status_changed),
            version: prev.version + 1,
            has_response_changed: responses > prev.responses,
            has_restarted: restarts > prev.restarts,
        };
        let mut waiting = {
            let mut shared = self.shared();
            if status_changed {
                if shared.status_log.len() == STATUS_LOG_CAPACITY {
                    shared.status_log.pop_front();
                }
                shared.status_log.push_back(snapshot);
            }
            shared.latest = snapshot;
            shared.free.clear();
            std::mem::take(&mut shared.waiting)
        };
        self.tx.send_replace(snapshot);
        for waker in waiting.drain(..).flatten() {
            waker.wake();
        }
        // The list's memory serves the next publication, unless streams are already waiting
        // in a new one.
        let mut shared = self.shared();
        if shared.waiting.is_empty() && shared.waiting.capacity() < waiting.capacity() {
            shared.waiting = waiting;
        }
        drop(shared);
        // No receivers is normal: nobody is running WatchDownloads.
        let _ = self.bus.tx.send(Event {
            guid: self.guid.clone(),
            tenant: self.tenant.clone(),
            group: self.group.clone(),
            snapshot,
        });
    }
}

impl Shared {
    /// Status-change snapshots with `after < status_seq < before`, oldest first, or `Lagged` if
    /// some of them were already discarded.
    fn status_changes_between(&self, after: u64, before: u64) -> Result<Vec<Snapshot>, Lagged> {
        let missed: Vec<Snapshot> = self
            .status_log
            .iter()
            .filter(|s| s.status_seq > after && s.status_seq < before)
            .copied()
            .collect();
        if missed.len() as u64 == before.saturating_sub(after + 1) {
            Ok(missed)
        } else {
            Err(Lagged)
        }
    }
}

/// Derives the one-shot flags for one watcher from the counters it has already seen.
#[derive(Clone, Copy, Debug)]
pub struct FlagCursor {
    responses: u64,
    restarts: u64,
}

impl FlagCursor {
    /// The first message a watcher gets is the snapshot with the flags it was published with;
    /// the cursor starts there.
    pub fn first(snapshot: &Snapshot) -> (FlagCursor, Message) {
        let cursor = FlagCursor {
            responses: snapshot.responses,
            restarts: snapshot.restarts,
        };
        let message = Message {
            progress: snapshot.progress,
            has_response_changed: snapshot.has_response_changed,
            has_restarted: snapshot.has_restarted,
        };
        (cursor, message)
    }

    /// The message for the next snapshot this watcher sends: a flag is true when its counter
    /// moved since the previous message, however many publications were coalesced between.
    pub fn next(&mut self, snapshot: &Snapshot) -> Message {
        let message = Message {
            progress: snapshot.progress,
            has_response_changed: snapshot.responses > self.responses,
            has_restarted: snapshot.restarts > self.restarts,
        };
        self.responses = snapshot.responses;
        self.restarts = snapshot.restarts;
        message
    }
}

/// Streams one download's progress: the current state, then every status change in order and
/// the latest bytes, until a terminal status, a lag too far behind the status log, or `shutdown`.
///
/// Written by hand rather than as an `unfold` with a `select!`: with thousands of watchers of
/// one download every status change wakes each of them once, and this poll is the only work a
/// watcher adds to what gRPC costs. It registers with `shutdown` once per task (see
/// [`Shutdown`]), waits in the hub's own list of wakers (see [`Shared`]), and keeps its next
/// message inline: a stream allocates nothing per message unless it fell behind.
pub fn watch_one(hub: Arc<Hub>, closing: Closing) -> WatchOne {
    // The first message is the state when the watch was asked for, not when the stream is
    // first polled: a change in between is then delivered as a change.
    let first = hub.shared().latest;
    let (cursor, message) = FlagCursor::first(&first);
    WatchOne {
        hub,
        cursor,
        seen_version: first.version,
        seen_status_seq: first.status_seq,
        missed: VecDeque::new(),
        next: Some(Ok(message)),
        waiting: None,
        done: first.progress.status.is_terminal(),
        shutdown: Shutdown::new(closing),
    }
}

/// One WatchDownload stream.
pub struct WatchOne {
    hub: Arc<Hub>,
    cursor: FlagCursor,
    /// The version of the last snapshot taken from the hub.
    seen_version: u64,
    seen_status_seq: u64,
    /// Status changes the stream skipped, to send before `next` (empty, and so not allocated,
    /// unless the stream fell behind).
    missed: VecDeque<Message>,
    /// The message to send next.
    next: Option<Result<Message, Lagged>>,
    /// Where this stream's waker is in the hub's waiting list, and the version it waits to see
    /// change; the slot is the stream's only while the hub's latest is still that version.
    waiting: Option<(u64, usize)>,
    done: bool,
    shutdown: Shutdown,
}

impl WatchOne {
    /// Queues what `snapshot` tells the watcher: the status changes it skipped (`missed`, from
    /// the log, when it skipped any), then itself.
    fn on_snapshot(&mut self, snapshot: Snapshot, missed: Option<Result<Vec<Snapshot>, Lagged>>) {
        self.seen_version = snapshot.version;
        match missed {
            Some(Ok(missed)) => {
                for s in missed {
                    let message = self.cursor.next(&s);
                    self.missed.push_back(message);
                }
            }
            Some(Err(lagged)) => {
                self.next = Some(Err(lagged));
                self.done = true;
                return;
            }
            None => {}
        }
        self.seen_status_seq = snapshot.status_seq;
        self.next = Some(Ok(self.cursor.next(&snapshot)));
        self.done = snapshot.progress.status.is_terminal();
    }

    /// Takes the hub's latest snapshot if this stream has not seen it; otherwise leaves the
    /// task's waker in the hub's waiting list (once per publication) and returns false. (It
    /// borrows the hub rather than cloning its `Arc`: thousands of streams bumping one shared
    /// counter on every poll would pass its cache line from core to core.)
    fn take_latest(&mut self, cx: &mut Context<'_>) -> bool {
        let (snapshot, missed) = {
            let mut shared = self.hub.shared();
            if shared.latest.version == self.seen_version {
                wait(&mut self.waiting, self.seen_version, &mut shared, cx);
                return false;
            }
            let snapshot = shared.latest;
            let missed = (snapshot.status_seq > self.seen_status_seq + 1)
                .then(|| shared.status_changes_between(self.seen_status_seq, snapshot.status_seq));
            (snapshot, missed)
        };
        self.on_snapshot(snapshot, missed);
        true
    }
}

/// Leaves the task's waker in `shared`'s waiting list for the publication after
/// `seen_version`, unless it is there already; `waiting` is where the stream's waker is.
fn wait(
    waiting: &mut Option<(u64, usize)>,
    seen_version: u64,
    shared: &mut Shared,
    cx: &mut Context<'_>,
) {
    match *waiting {
        Some((version, slot)) if version == seen_version => {
            let registered = &mut shared.waiting[slot];
            if !registered
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()))
            {
                *registered = Some(cx.waker().clone());
            }
        }
        _ => {
            let waker = Some(cx.waker().clone());
            let slot = match shared.free.pop() {
                Some(slot) => {
                    shared.waiting[slot] = waker;
                    slot
                }
                None => {
                    shared.waiting.push(waker);
                    shared.waiting.len() - 1
                }
            };
            *waiting = Some((seen_version, slot));
        }
    }
}

impl Stream for WatchOne {
    type Item = Result<Message, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(message) = this.missed.pop_front() {
                return Poll::Ready(Some(Ok(message)));
            }
            if let Some(item) = this.next.take() {
                return Poll::Ready(Some(item));
            }
            if this.done || this.shutdown.poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            if !this.take_latest(cx) {
                return Poll::Pending;
            }
        }
    }
}

impl Drop for WatchOne {
    /// A stream that ends while it waits gives its slot in the hub's waiting list back, so a
    /// download that is watched and left again and again without changing keeps neither
    /// wakers (each keeps a finished task's memory alive) nor a growing list.
    fn drop(&mut self) {
        if let Some((version, slot)) = self.waiting {
            let mut shared = self.hub.shared();
            if shared.latest.version == version {
                shared.waiting[slot] = None;
                shared.free.push(slot);
            }
        }
    }
}

/// The server's shutdown as progress streams see it: closed once the engine's shutdown token
/// fires. A [`CancellationToken`] takes a lock shared by every holder both to check it and to
/// wait on it, and a stream that looked at it for every item made that lock the hottest in a
/// fan-out to thousands of watchers; this is checked with one atomic load.
#[derive(Clone, Debug)]
pub struct Closing {
    /// Its sender is dropped when the token fires; nothing is ever sent.
    rx: watch::Receiver<()>,
}

impl Closing {
    /// Closes when `token` fires. Spawns the task that waits for it, so call it in the runtime.
    pub fn new(token: &CancellationToken) -> Closing {
        let (tx, rx) = watch::channel(());
        let token = token.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            drop(tx);
        });
        Closing { rx }
    }

    fn is_closed(&self) -> bool {
        self.rx.has_changed().is_err()
    }
}

/// A stream's wait for [`Closing`]: registered with the polling task's waker once, then checked
/// with one atomic load per poll, and registered again only if a different task polls.
pub(crate) struct Shutdown {
    closing: Closing,
    wait: Pin<Box<dyn Future<Output = ()> + Send>>,
    registered: Option<Waker>,
}

impl Shutdown {
    pub(crate) fn new(closing: Closing) -> Shutdown {
        let mut rx = closing.rx.clone();
        Shutdown {
            closing,
            wait: Box::pin(async move { while rx.changed().await.is_ok() {} }),
            registered: None,
        }
    }

    /// Ready once the server is shutting down; otherwise the task is woken when it does.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.closing.is_closed() {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let poll = self.wait.as_mut().poll(cx);
        if poll.is_pending() {
            self.registered = Some(cx.waker().clone());
        }
        poll
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::operation::Status;
    use futures_util::StreamExt;

    /// Progress of `bytes` out of 100 in `status`.
    pub(super) fn p(bytes: u64, status: Status) -> Progress {
        Progress {
            bytes_received: bytes,
            total_bytes_to_receive: 100,
            status,
        }
    }

    /// A shutdown that never comes: nobody can cancel its token (the waiting task holds the
    /// only handle left).
    fn never() -> Closing {
        Closing::new(&CancellationToken::new())
    }

    fn hub() -> Arc<Hub> {
        Arc::new(Hub::new(
            &"g".to_string(),
            &Tenant::default(),
            "",
            p(0, Status::Idle),
            Bus::default(),
        ))
    }

    #[tokio::test]
    async fn a_slow_watcher_gets_every_status_change_in_order_then_the_latest() {
        let hub = hub();
        let mut stream = Box::pin(watch_one(hub.clone(), never()));
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.progress.status, Status::Idle);
        // Many publications while the watcher does not read.
        hub.publish(p(0, Status::Running), 1, 0);
        for b in 1..50 {
            hub.publish(p(b, Status::Running), 1, 0);
        }
        hub.publish(p(50, Status::PausedByApplication), 1, 0);
        hub.publish(p(50, Status::Idle), 1, 0);
        hub.publish(p(50, Status::Running), 2, 1);
        hub.publish(p(10, Status::Running), 2, 1);
        hub.publish(p(100, Status::Completed), 2, 1);
        let rest: Vec<Message> = stream.map(|m| m.unwrap()).collect().await;
        let statuses: Vec<Status> = rest.iter().map(|m| m.progress.status).collect();
        assert_eq!(
            statuses,
            [
                Status::Running,
                Status::PausedByApplication,
                Status::Idle,
                Status::Running,
                Status::Completed
            ]
        );
        // Flags are derived from counters: each edge shows exactly once.
        assert_eq!(
            rest.iter()
                .map(|m| m.has_response_changed)
                .collect::<Vec<_>>(),
            [true, false, false, true, false]
        );
        assert_eq!(
            rest.iter().map(|m| m.has_restarted).collect::<Vec<_>>(),
            [false, false, false, true, false]
        );
        assert_eq!(rest.last().unwrap().progress.bytes_received, 100);
    }

    #[tokio::test]
    async fn coalesced_byte_updates_never_lose_a_flag() {
        let hub = hub();
        let mut stream = Box::pin(watch_one(hub.clone(), never()));
        stream.next().await.unwrap().unwrap();
        hub.publish(p(0, Status::Running), 0, 0);
        assert!(!stream.next().await.unwrap().unwrap().has_response_changed);
        // A response and many byte updates land between two reads.
        hub.publish(p(0, Status::Running), 1, 1);
        for b in 1..20 {
            hub.publish(p(b, Status::Running), 1, 1);
        }
        let m = stream.next().await.unwrap().unwrap();
        assert_eq!(m.progress.bytes_received, 19);
        assert!(m.has_response_changed && m.has_restarted);
        hub.publish(p(20, Status::Running), 1, 1);
        let m = stream.next().await.unwrap().unwrap();
        assert!(!m.has_response_changed && !m.has_restarted);
    }

    #[tokio::test]
    async fn a_watcher_too_far_behind_is_told_so() {
        let hub = hub();
        let mut stream = Box::pin(watch_one(hub.clone(), never()));
        stream.next().await.unwrap().unwrap();
        for i in 0..=STATUS_LOG_CAPACITY {
            let s = if i % 2 == 0 {
                Status::Running
            } else {
                Status::PausedByApplication
            };
            hub.publish(p(0, s), 0, 0);
        }
        assert_eq!(stream.next().await.unwrap(), Err(Lagged));
        assert!(stream.next().await.is_none());
    }

    /// Polls `stream` once with a waker that does nothing.
    fn poll_once(stream: &mut WatchOne) -> Poll<Option<Result<Message, Lagged>>> {
        Pin::new(stream).poll_next(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn a_waiting_watcher_is_listed_once_and_leaves_no_trace() {
        let hub = hub();
        let mut stream = watch_one(hub.clone(), never());
        assert!(poll_once(&mut stream).is_ready());
        // Polled again and again without a publication: one slot.
        for _ in 0..3 {
            assert!(poll_once(&mut stream).is_pending());
        }
        assert_eq!(hub.shared().waiting.len(), 1);
        drop(stream);
        // Watchers that come and go while nothing changes reuse that slot.
        for _ in 0..100 {
            let mut stream = watch_one(hub.clone(), never());
            assert!(poll_once(&mut stream).is_ready());
            assert!(poll_once(&mut stream).is_pending());
        }
        let shared = hub.shared();
        assert_eq!(shared.waiting.len(), 1);
        assert!(shared.waiting[0].is_none());
        drop(shared);
        // A publication wakes every waiting watcher, and each sees it.
        let mut streams: Vec<WatchOne> = (0..3).map(|_| watch_one(hub.clone(), never())).collect();
        for stream in &mut streams {
            assert!(poll_once(stream).is_ready());
            assert!(poll_once(stream).is_pending());
        }
        assert_eq!(hub.shared().waiting.iter().flatten().count(), 3);
        hub.publish(p(1, Status::Running), 1, 0);
        assert_eq!(hub.shared().waiting.iter().flatten().count(), 0);
        for stream in &mut streams {
            let Poll::Ready(Some(Ok(message))) = poll_once(stream) else {
                panic!("the publication was not delivered");
            };
            assert_eq!(message.progress, p(1, Status::Running));
        }
    }

    #[tokio::test]
    async fn the_stream_ends_after_a_terminal_status_and_on_shutdown() {
        let hub = hub();
        hub.publish(p(100, Status::Completed), 1, 0);
        let all: Vec<_> = watch_one(hub, never()).collect().await;
        assert_eq!(all.len(), 1);
        let shutdown = CancellationToken::new();
        let mut stream = Box::pin(watch_one(self::hub(), Closing::new(&shutdown)));
        stream.next().await.unwrap().unwrap();
        shutdown.cancel();
        assert!(stream.next().await.is_none());
    }
}
