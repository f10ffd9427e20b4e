//! The scheduler: starts queued downloads while transfer slots are free, highest priority
//! first, and at most one at a time in a serialized transfer group.

use std::collections::{HashMap, HashSet};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Engine;
use super::download::TaskHandle;
use super::queue::QueueKey;
use crate::operation::{Behavior, Status, StatusReason};

/// Transfer tasks alive per transfer group, and which groups run one download at a time. A
/// slot is held from the start of a transfer until its task has let go, which may be a little
/// after a pause or cancel changed its status.
#[derive(Debug, Default)]
pub(super) struct Slots {
    /// Tasks alive per group ("" for downloads without one); the total is their sum.
    in_group: HashMap<String, usize>,
    /// Groups whose behavior is SERIALIZED.
    serialized: HashSet<String>,
}

impl Slots {
    /// Slots with these stored group behaviors and no task running.
    pub(super) fn new(groups: impl IntoIterator<Item = (String, Behavior)>) -> Slots {
        let mut slots = Slots::default();
        for (group, behavior) in groups {
            slots.set_behavior(&group, behavior);
        }
        slots
    }

    /// Transfer tasks alive.
    pub(super) fn active(&self) -> usize {
        self.in_group.values().sum()
    }

    /// Whether `group` must wait: it is serialized and one of its downloads holds a slot.
    pub(super) fn busy(&self, group: &str) -> bool {
        self.serialized.contains(group) && self.in_group.contains_key(group)
    }

    /// Sets how `group` runs its downloads.
    pub(super) fn set_behavior(&mut self, group: &str, behavior: Behavior) {
        match behavior {
            Behavior::Parallel => self.serialized.remove(group),
            Behavior::Serialized => self.serialized.insert(group.to_string()),
        };
    }

    /// A task of `group` started.
    pub(super) fn acquire(&mut self, group: &str) {
        *self.in_group.entry(group.to_string()).or_default() += 1;
    }

    /// A task of `group` let go.
    pub(super) fn release(&mut self, group: &str) {
        if let Some(n) = self.in_group.get_mut(group) {
            *n -= 1;
            if *n == 0 {
                self.in_group.remove(group);
            }
        }
    }
}

impl Engine {
    /// Starts queued downloads while slots are free, one at a time per serialized group.
    pub(super) fn schedule(&self) {
        if self.inner.shutdown.is_cancelled() {
            return;
        }
        let mut core = self.lock();
        let mut held: Vec<QueueKey> = Vec::new();
        while core.slots.active() < self.inner.config.max_active {
            let Some(key) = core.queue.pop_first() else {
                break;
            };
            let Some(op) = core.registry.get(&key.guid) else {
                continue;
            };
            if core.slots.busy(&op.spec.transfer_group) {
                held.push(key);
                continue;
            }
            let stop = self.inner.shutdown.child_token();
            let done = CancellationToken::new();
            {
                let mut st = op.lock();
                if st.task.is_some() {
                    // Its previous task is still letting go of the partial file; it schedules
                    // again when it has.
                    held.push(key);
                    continue;
                }
                st.task = Some(TaskHandle {
                    stop: stop.clone(),
                    done: done.clone(),
                });
                if core
                    .transition(&op, &mut st, Status::Running, StatusReason::Unspecified)
                    .is_err()
                {
                    // Only IDLE downloads are queued; a broken invariant must not start one.
                    tracing::error!(guid = %op.spec.guid, status = st.status().name(), "a queued download was not IDLE");
                    st.task = None;
                    continue;
                }
            }
            let engine = self.clone();
            // A root span: schedule often runs inside the span of the transfer that just ended,
            // and a child of it would nest every later transfer in the one before.
            let span = tracing::info_span!(parent: None, "transfer", guid = %op.spec.guid);
            self.inner
                .tasks
                .spawn(async move { engine.transfer(op, stop, done).await }.instrument(span));
        }
        for key in held {
            core.queue.push(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_groups_are_busy_while_a_task_holds_a_slot() {
        let mut slots = Slots::new([
            ("s".to_string(), Behavior::Serialized),
            ("p".to_string(), Behavior::Parallel),
        ]);
        assert!(!slots.busy("s"));
        slots.acquire("s");
        slots.acquire("p");
        slots.acquire("p");
        slots.acquire("");
        assert!(slots.busy("s"));
        assert!(!slots.busy("p"));
        assert!(!slots.busy(""));
        assert_eq!(slots.active(), 4);
        slots.release("s");
        assert!(!slots.busy("s"));
        assert_eq!(slots.active(), 3);
        // A group made parallel while busy no longer holds its downloads back.
        slots.acquire("s");
        slots.set_behavior("s", Behavior::Parallel);
        assert!(!slots.busy("s"));
        slots.set_behavior("p", Behavior::Serialized);
        assert!(slots.busy("p"));
    }

    #[test]
    fn releasing_more_than_acquired_never_underflows() {
        let mut slots = Slots::default();
        slots.release("g");
        assert_eq!(slots.active(), 0);
    }
}
