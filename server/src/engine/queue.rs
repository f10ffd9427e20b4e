//! The run queue: IDLE downloads waiting for a transfer slot, in the order they run. Its
//! ordering key and its index by guid live in one type, so no caller can update one and forget
//! the other.

use std::collections::{BTreeSet, HashMap};

use crate::operation::{Guid, Priority};

/// A download's place in the run queue: priority first, then queue order (creation order unless
/// MakeCurrentInTransferGroup moved it), then creation sequence to break ties.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct QueueKey {
    rank: u8,
    order: i64,
    seq: u64,
    /// The download.
    pub(super) guid: Guid,
}

impl QueueKey {
    /// The key of a download with this priority, queue order and creation sequence.
    pub(super) fn new(priority: Priority, order: i64, seq: u64, guid: Guid) -> QueueKey {
        QueueKey {
            rank: priority.rank(),
            order,
            seq,
            guid,
        }
    }
}

/// Downloads waiting for a slot, each at most once, in run order.
#[derive(Debug, Default)]
pub(super) struct RunQueue {
    order: BTreeSet<QueueKey>,
    index: HashMap<Guid, QueueKey>,
}

impl RunQueue {
    /// Queues a download at `key`, or moves it there if it is already queued.
    pub(super) fn push(&mut self, key: QueueKey) {
        if let Some(old) = self.index.insert(key.guid.clone(), key.clone()) {
            self.order.remove(&old);
        }
        self.order.insert(key);
    }

    /// Takes a download out of the queue; returns whether it was queued.
    pub(super) fn remove(&mut self, guid: &str) -> bool {
        match self.index.remove(guid) {
            Some(key) => self.order.remove(&key),
            None => false,
        }
    }

    /// Moves a queued download to `key` (its priority or queue order changed); a download that
    /// is not queued stays out.
    pub(super) fn reposition(&mut self, key: QueueKey) {
        if self.index.contains_key(&key.guid) {
            self.push(key);
        }
    }

    /// Takes the download that runs next.
    pub(super) fn pop_first(&mut self) -> Option<QueueKey> {
        let key = self.order.pop_first()?;
        self.index.remove(&key.guid);
        Some(key)
    }

    /// Downloads waiting.
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(priority: Priority, order: i64, seq: u64) -> QueueKey {
        QueueKey::new(priority, order, seq, format!("g{seq}"))
    }

    fn drain(queue: &mut RunQueue) -> Vec<Guid> {
        std::iter::from_fn(|| queue.pop_first().map(|k| k.guid)).collect()
    }

    #[test]
    fn priority_first_then_creation_order() {
        let mut q = RunQueue::default();
        q.push(key(Priority::Low, 1, 1));
        q.push(key(Priority::Default, 2, 2));
        q.push(key(Priority::High, 4, 4));
        q.push(key(Priority::Default, 3, 3));
        q.push(key(Priority::High, 5, 5));
        assert_eq!(q.len(), 5);
        assert_eq!(drain(&mut q), ["g4", "g5", "g2", "g3", "g1"]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_download_is_queued_at_most_once() {
        let mut q = RunQueue::default();
        q.push(key(Priority::Default, 1, 1));
        q.push(key(Priority::Default, 2, 2));
        // A priority change while queued moves it instead of adding it twice.
        q.push(key(Priority::High, 1, 1));
        assert_eq!(q.len(), 2);
        assert!(q.remove("g1"));
        assert!(!q.remove("g1"));
        assert_eq!(drain(&mut q), ["g2"]);
    }

    #[test]
    fn reposition_moves_only_queued_downloads() {
        let mut q = RunQueue::default();
        q.push(key(Priority::Default, 1, 1));
        q.push(key(Priority::Default, 2, 2));
        q.reposition(key(Priority::Default, 3, 3)); // not queued: stays out
        // MakeCurrent gives a later download an earlier queue order.
        q.reposition(key(Priority::Default, 0, 2));
        assert_eq!(drain(&mut q), ["g2", "g1"]);
    }

    #[test]
    fn popped_downloads_can_be_queued_again() {
        let mut q = RunQueue::default();
        q.push(key(Priority::Default, 1, 1));
        let first = q.pop_first().unwrap();
        assert!(!q.remove("g1"));
        q.push(first);
        assert_eq!(q.len(), 1);
        assert!(q.remove("g1"));
    }
}
