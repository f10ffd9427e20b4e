//! Progress fan-out: every download publishes [`Snapshot`]s to its own [`Hub`], and every hub
//! also feeds one server-wide [`Bus`] for WatchDownloads.
//!
//! Publishing never waits for a watcher. A hub keeps only the latest snapshot (a `watch`
//! channel) plus a short log of recent status changes, so a slow watcher costs nothing while it
//! is slow, and when it catches up it still gets every status change in order, then the latest
//! bytes. The one-shot flags `has_response_changed` and `has_restarted` are not stored as
//! booleans that coalescing could lose: the hub publishes monotonic response and restart
//! counters, and each watcher derives the flags from the counters it has already seen.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures_util::Stream;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::operation::{Guid, Progress};

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
    group: Arc<str>,
    tx: watch::Sender<Snapshot>,
    status_log: Mutex<VecDeque<Snapshot>>,
    bus: Bus,
}

impl Hub {
    /// A hub whose first snapshot is `progress`.
    pub fn new(guid: &Guid, group: &str, progress: Progress, bus: Bus) -> Hub {
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
            group: group.into(),
            tx: watch::Sender::new(first),
            status_log: Mutex::new(VecDeque::from([first])),
            bus,
        }
    }

    /// The latest snapshot.
    pub fn current(&self) -> Snapshot {
        *self.tx.borrow()
    }

    /// Tells WatchDownloads watchers that this download exists (called once it is stored).
    pub fn announce(&self) {
        let _ = self.bus.tx.send(Event {
            guid: self.guid.clone(),
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
        if status_changed {
            let mut log = self.status_log.lock().unwrap_or_else(|e| e.into_inner());
            if log.len() == STATUS_LOG_CAPACITY {
                log.pop_front();
            }
            log.push_back(snapshot);
        }
        self.tx.send_replace(snapshot);
        // No receivers is normal: nobody is running WatchDownloads.
        let _ = self.bus.tx.send(Event {
            guid: self.guid.clone(),
            group: self.group.clone(),
            snapshot,
        });
    }

    /// Status-change snapshots with `after < status_seq < before`, oldest first, or `Lagged` if
    /// some of them were already discarded.
    fn status_changes_between(&self, after: u64, before: u64) -> Result<Vec<Snapshot>, Lagged> {
        let log = self.status_log.lock().unwrap_or_else(|e| e.into_inner());
        let missed: Vec<Snapshot> = log
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

/// Streams one download's progress: the current state, then every change, ending after a
/// terminal status or when `shutdown` fires.
pub fn watch_one(
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<Message, Lagged>> + Send + 'static {
    struct State {
        hub: Arc<Hub>,
        rx: watch::Receiver<Snapshot>,
        cursor: (FlagCursor, u64),
        pending: VecDeque<Result<Message, Lagged>>,
        done: bool,
        shutdown: CancellationToken,
    }
    // The first message is the state when the watch was asked for, not when the stream is
    // first polled: a change in between is then delivered as a change.
    let mut rx = hub.tx.subscribe();
    let first = *rx.borrow_and_update();
    let (cursor, message) = FlagCursor::first(&first);
    let state = State {
        hub,
        rx,
        cursor: (cursor, first.status_seq),
        pending: VecDeque::from([Ok(message)]),
        done: first.progress.status.is_terminal(),
        shutdown,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.pending.pop_front() {
                return Some((item, st));
            }
            if st.done {
                return None;
            }
            tokio::select! {
                changed = st.rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                () = st.shutdown.cancelled() => return None,
            }
            let snapshot = *st.rx.borrow_and_update();
            let (cursor, seen_status_seq) = &mut st.cursor;
            if snapshot.status_seq > *seen_status_seq + 1 {
                match st
                    .hub
                    .status_changes_between(*seen_status_seq, snapshot.status_seq)
                {
                    Ok(missed) => {
                        for s in missed {
                            st.pending.push_back(Ok(cursor.next(&s)));
                        }
                    }
                    Err(lagged) => {
                        st.pending.push_back(Err(lagged));
                        st.done = true;
                        continue;
                    }
                }
            }
            *seen_status_seq = snapshot.status_seq;
            st.pending.push_back(Ok(cursor.next(&snapshot)));
            st.done = snapshot.progress.status.is_terminal();
        }
    })
}

/// Where WatchDownloads reads its first snapshot: the downloads in scope when the watcher
/// subscribed, a page at a time as the client reads, so an unread stream holds one page and
/// not a copy of every stored download.
pub trait Catalog: Send + 'static {
    /// The next downloads of the snapshot after position `after` (0 to start), in order, each
    /// with its position and its latest snapshot; empty once the walk is over.
    fn next_page(&mut self, after: u64) -> Vec<(u64, Arc<str>, Snapshot)>;

    /// Whether the download is one the walk covers (it existed when the watcher subscribed).
    fn walked(&self, guid: &str) -> bool;
}

/// Streams every download's progress (or one group's): the current state of each, then every
/// change, until `shutdown` fires.
///
/// `events` subscribed before `catalog` fixed its scope, so nothing published meanwhile is
/// lost; the snapshot is sent first and the events after it. An event that raced the walk is
/// recognised by its version and not sent twice. Only downloads that can still change are
/// remembered: a download the walk found finished publishes nothing newer, so any event of a
/// walked download the watcher does not remember is one it already has.
pub fn watch_all(
    events: broadcast::Receiver<Event>,
    catalog: impl Catalog,
    group: Option<String>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<(Arc<str>, Message), Lagged>> + Send + 'static {
    let state = WatchAll {
        events,
        catalog,
        walk_after: Some(0),
        seen: HashMap::new(),
        pending: VecDeque::new(),
        done: false,
        group,
        shutdown,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.pending.pop_front() {
                return Some((item, st));
            }
            if st.done || st.shutdown.is_cancelled() {
                return None;
            }
            if let Some(after) = st.walk_after {
                st.walk(after);
                continue;
            }
            let event = tokio::select! {
                e = st.events.recv() => e,
                () = st.shutdown.cancelled() => return None,
            };
            match event {
                Ok(event) => st.on_event(event),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    st.pending.push_back(Err(Lagged));
                    st.done = true;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// What one WatchDownloads watcher has sent, per download that may still change.
struct Seen {
    cursor: FlagCursor,
    version: u64,
}

/// One WatchDownloads stream.
struct WatchAll<C> {
    events: broadcast::Receiver<Event>,
    catalog: C,
    /// Where the snapshot walk continues; `None` once it is over and events flow.
    walk_after: Option<u64>,
    seen: HashMap<Arc<str>, Seen>,
    pending: VecDeque<Result<(Arc<str>, Message), Lagged>>,
    done: bool,
    group: Option<String>,
    shutdown: CancellationToken,
}

impl<C: Catalog> WatchAll<C> {
    /// Queues the next page of the snapshot, or ends the walk.
    fn walk(&mut self, after: u64) {
        let page = self.catalog.next_page(after);
        self.walk_after = page.last().map(|(pos, _, _)| *pos);
        for (_, guid, snapshot) in page {
            let (cursor, message) = FlagCursor::first(&snapshot);
            if !snapshot.progress.status.is_terminal() {
                let version = snapshot.version;
                self.seen.insert(guid.clone(), Seen { cursor, version });
            }
            self.pending.push_back(Ok((guid, message)));
        }
    }

    /// Queues what an event tells this watcher, if anything.
    fn on_event(&mut self, event: Event) {
        if self.group.as_deref().is_some_and(|g| *g != *event.group) {
            return;
        }
        let snapshot = event.snapshot;
        let message = match self.seen.get_mut(&event.guid) {
            Some(seen) if snapshot.version <= seen.version => return,
            Some(seen) => {
                seen.version = snapshot.version;
                seen.cursor.next(&snapshot)
            }
            None if self.catalog.walked(&event.guid) => return,
            None => {
                let (cursor, message) = FlagCursor::first(&snapshot);
                let version = snapshot.version;
                self.seen
                    .insert(event.guid.clone(), Seen { cursor, version });
                message
            }
        };
        self.pending.push_back(Ok((event.guid, message)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operation::Status;
    use futures_util::StreamExt;

    fn p(bytes: u64, status: Status) -> Progress {
        Progress {
            bytes_received: bytes,
            total_bytes_to_receive: 100,
            status,
        }
    }

    fn hub() -> Arc<Hub> {
        Arc::new(Hub::new(
            &"g".to_string(),
            "",
            p(0, Status::Idle),
            Bus::default(),
        ))
    }

    #[tokio::test]
    async fn a_slow_watcher_gets_every_status_change_in_order_then_the_latest() {
        let hub = hub();
        let mut stream = Box::pin(watch_one(hub.clone(), CancellationToken::new()));
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
        let mut stream = Box::pin(watch_one(hub.clone(), CancellationToken::new()));
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
        let mut stream = Box::pin(watch_one(hub.clone(), CancellationToken::new()));
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

    #[tokio::test]
    async fn the_stream_ends_after_a_terminal_status_and_on_shutdown() {
        let hub = hub();
        hub.publish(p(100, Status::Completed), 1, 0);
        let all: Vec<_> = watch_one(hub, CancellationToken::new()).collect().await;
        assert_eq!(all.len(), 1);
        let shutdown = CancellationToken::new();
        let mut stream = Box::pin(watch_one(self::hub(), shutdown.clone()));
        stream.next().await.unwrap().unwrap();
        shutdown.cancel();
        assert!(stream.next().await.is_none());
    }

    /// A snapshot walk over hubs, reading each hub's state only when its page is walked.
    struct Hubs {
        hubs: Vec<Arc<Hub>>,
        page_size: usize,
        pages_read: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Catalog for Hubs {
        fn next_page(&mut self, after: u64) -> Vec<(u64, Arc<str>, Snapshot)> {
            self.pages_read
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (after as usize..self.hubs.len())
                .take(self.page_size)
                .map(|i| {
                    (
                        (i + 1) as u64,
                        self.hubs[i].guid.clone(),
                        self.hubs[i].current(),
                    )
                })
                .collect()
        }

        fn walked(&self, guid: &str) -> bool {
            self.hubs.iter().any(|h| &*h.guid == guid)
        }
    }

    fn hubs(hubs: Vec<Arc<Hub>>, page_size: usize) -> Hubs {
        Hubs {
            hubs,
            page_size,
            pages_read: Default::default(),
        }
    }

    #[tokio::test]
    async fn watch_all_sends_current_states_then_changes_without_duplicates() {
        let bus = Bus::default();
        let a = Arc::new(Hub::new(
            &"a".to_string(),
            "g1",
            p(0, Status::Idle),
            bus.clone(),
        ));
        let b = Hub::new(&"b".to_string(), "g2", p(0, Status::Idle), bus.clone());
        let events = bus.subscribe();
        // Published after subscribing but before the current states were read: the version
        // tells the watcher it already has it.
        a.publish(p(0, Status::Running), 1, 0);
        let mut stream = Box::pin(watch_all(
            events,
            hubs(vec![a.clone()], 10),
            Some("g1".into()),
            CancellationToken::new(),
        ));
        let (guid, first) = stream.next().await.unwrap().unwrap();
        assert_eq!((&*guid, first.progress.status), ("a", Status::Running));
        b.publish(p(5, Status::Running), 1, 0);
        a.publish(p(100, Status::Completed), 1, 0);
        let (guid, next) = stream.next().await.unwrap().unwrap();
        assert_eq!((&*guid, next.progress.status), ("a", Status::Completed));
        assert!(!next.has_response_changed);
    }

    #[tokio::test]
    async fn watch_all_walks_the_snapshot_lazily_in_order_then_follows_events_once_each() {
        const DOWNLOADS: usize = 1000;
        const PAGE: usize = 100;
        let bus = Bus::default();
        let all: Vec<Arc<Hub>> = (0..DOWNLOADS)
            .map(|i| {
                let hub = Hub::new(&format!("d{i}"), "", p(0, Status::Idle), bus.clone());
                Arc::new(hub)
            })
            .collect();
        // Finished before the watch: it publishes nothing newer, but its state can still be
        // announced again (a duplicate the watcher must recognise).
        all[3].publish(p(100, Status::Completed), 1, 0);
        let events = bus.subscribe();
        let catalog = hubs(all.clone(), PAGE);
        let pages_read = catalog.pages_read.clone();
        let mut stream = Box::pin(watch_all(events, catalog, None, CancellationToken::new()));
        // Nothing is read before the client reads.
        assert_eq!(pages_read.load(std::sync::atomic::Ordering::SeqCst), 0);
        let (guid, _) = stream.next().await.unwrap().unwrap();
        assert_eq!(&*guid, "d0");
        assert_eq!(pages_read.load(std::sync::atomic::Ordering::SeqCst), 1);

        // While the walk is under way: a change to a download already sent, a change to one
        // not yet walked, a duplicate of a finished one, and a download added after the watch.
        all[0].publish(p(0, Status::Running), 1, 0);
        all[DOWNLOADS - 1].publish(p(0, Status::PausedByApplication), 0, 0);
        all[3].announce();
        all[DOWNLOADS - 1].announce();
        let late = Hub::new(&"late".to_string(), "", p(0, Status::Idle), bus.clone());
        late.announce();

        let mut rest = Vec::new();
        for _ in 0..DOWNLOADS - 1 + 2 {
            rest.push(stream.next().await.unwrap().unwrap());
        }
        let (snapshot, live) = rest.split_at(DOWNLOADS - 1);
        let walked: Vec<String> = snapshot.iter().map(|(g, _)| g.to_string()).collect();
        let expected: Vec<String> = (1..DOWNLOADS).map(|i| format!("d{i}")).collect();
        assert_eq!(walked, expected);
        // The download walked after its change shows it in the snapshot, once.
        assert_eq!(
            snapshot.last().unwrap().1.progress.status,
            Status::PausedByApplication
        );
        assert_eq!(&*live[0].0, "d0");
        assert_eq!(live[0].1.progress.status, Status::Running);
        assert!(live[0].1.has_response_changed);
        assert_eq!(&*live[1].0, "late");
        assert_eq!(
            pages_read.load(std::sync::atomic::Ordering::SeqCst),
            DOWNLOADS / PAGE + 1
        );
        // Nothing else was queued: the next message is the next change.
        all[5].publish(p(1, Status::Running), 1, 0);
        let (guid, next) = stream.next().await.unwrap().unwrap();
        assert_eq!((&*guid, next.progress.status), ("d5", Status::Running));
    }
}
