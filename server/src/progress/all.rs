//! The WatchDownloads stream: the first snapshot, walked lazily from a [`Catalog`], then every
//! event of the server-wide bus, each download's changes once and in order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::broadcast;

use super::{Closing, Event, FlagCursor, Lagged, Message, Shutdown, Snapshot};
use crate::auth::Tenant;

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

/// Which downloads a WatchDownloads stream follows: those of one tenant or of all (an admin's
/// view), and of one group or all.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// The tenant whose downloads it follows; `None` follows every tenant's.
    pub tenant: Option<Tenant>,
    /// The transfer group whose downloads it follows; `None` follows every group's.
    pub group: Option<String>,
}

impl Filter {
    /// Whether a download of `tenant` in `group` passes.
    pub fn passes(&self, tenant: &Tenant, group: &str) -> bool {
        self.tenant.as_ref().is_none_or(|t| t == tenant)
            && self.group.as_deref().is_none_or(|g| g == group)
    }
}

/// Streams the progress of every download `filter` passes: the current state of each, then every
/// change, until the server shuts down.
///
/// `events` subscribed before `catalog` fixed its scope, so nothing published meanwhile is
/// lost; the snapshot is sent first and the events after it. An event that raced the walk is
/// recognised by its version and not sent twice. Only downloads that can still change are
/// remembered: a download the walk found finished publishes nothing newer, so any event of a
/// walked download the watcher does not remember is one it already has.
pub fn watch_all(
    events: broadcast::Receiver<Event>,
    catalog: impl Catalog,
    filter: Filter,
    closing: Closing,
) -> impl Stream<Item = Result<(Arc<str>, Message), Lagged>> + Send + 'static {
    let state = WatchAll {
        events,
        catalog,
        walk_after: Some(0),
        seen: HashMap::new(),
        pending: VecDeque::new(),
        done: false,
        filter,
        shutdown: Shutdown::new(closing),
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.pending.pop_front() {
                return Some((item, st));
            }
            if st.done {
                return None;
            }
            if let Some(after) = st.walk_after {
                st.walk(after);
                continue;
            }
            let event = tokio::select! {
                biased;
                () = std::future::poll_fn(|cx| st.shutdown.poll(cx)) => return None,
                e = st.events.recv() => e,
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
    filter: Filter,
    shutdown: Shutdown,
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
        if !self.filter.passes(&event.tenant, &event.group) {
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
    use super::super::tests::p;
    use super::super::{Bus, Hub};
    use super::*;
    use crate::operation::Status;
    use futures_util::StreamExt;
    use tokio_util::sync::CancellationToken;

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
            &Tenant::default(),
            "g1",
            p(0, Status::Idle),
            bus.clone(),
        ));
        let b = Hub::new(
            &"b".to_string(),
            &Tenant::default(),
            "g2",
            p(0, Status::Idle),
            bus.clone(),
        );
        let events = bus.subscribe();
        // Published after subscribing but before the current states were read: the version
        // tells the watcher it already has it.
        a.publish(p(0, Status::Running), 1, 0);
        let mut stream = Box::pin(watch_all(
            events,
            hubs(vec![a.clone()], 10),
            Filter {
                tenant: None,
                group: Some("g1".into()),
            },
            Closing::new(&CancellationToken::new()),
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
                let hub = Hub::new(
                    &format!("d{i}"),
                    &Tenant::default(),
                    "",
                    p(0, Status::Idle),
                    bus.clone(),
                );
                Arc::new(hub)
            })
            .collect();
        // Finished before the watch: it publishes nothing newer, but its state can still be
        // announced again (a duplicate the watcher must recognise).
        all[3].publish(p(100, Status::Completed), 1, 0);
        let events = bus.subscribe();
        let catalog = hubs(all.clone(), PAGE);
        let pages_read = catalog.pages_read.clone();
        let mut stream = Box::pin(watch_all(
            events,
            catalog,
            Filter::default(),
            Closing::new(&CancellationToken::new()),
        ));
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
        let late = Hub::new(
            &"late".to_string(),
            &Tenant::default(),
            "",
            p(0, Status::Idle),
            bus.clone(),
        );
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
