//! The scheduler: starts queued downloads while transfer slots are free, highest priority
//! first, and at most one at a time in a serialized transfer group.

use std::collections::{HashMap, HashSet};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use std::sync::Arc;

use super::download::{Op, TaskHandle};
use super::queue::QueueKey;
use super::{Core, Engine};
use crate::auth::Tenant;
use crate::operation::{Behavior, DownloadSpec, Status, StatusReason};
use crate::store::StoredGroup;

/// Transfer tasks alive per transfer group, and which groups run one download at a time.
/// Groups are per tenant: two tenants' groups of one name are two groups, so they are keyed by
/// tenant first. A slot is held from the start of a transfer until its task has let go, which
/// may be a little after a pause or cancel changed its status. A finished download lets go once
/// its file is committed and its final status published, before that status is stored: the
/// slot covers everything a client sees as RUNNING (so at most `max_active` are), and the next
/// download does not wait for a store commit that changes nothing it needs.
#[derive(Debug, Default)]
pub(super) struct Slots {
    /// Tasks alive per tenant and group ("" for downloads without one); the total is their sum.
    in_group: HashMap<Tenant, HashMap<String, usize>>,
    /// Groups whose behavior is SERIALIZED, per tenant.
    serialized: HashMap<Tenant, HashSet<String>>,
}

impl Slots {
    /// Slots with these stored group behaviors and no task running.
    pub(super) fn new(groups: impl IntoIterator<Item = StoredGroup>) -> Slots {
        let mut slots = Slots::default();
        for group in groups {
            slots.set_behavior(&group.tenant, &group.name, group.behavior);
        }
        slots
    }

    /// Transfer tasks alive.
    pub(super) fn active(&self) -> usize {
        self.in_group.values().flat_map(HashMap::values).sum()
    }

    /// Whether the download's group must wait: it is serialized and one of its downloads holds
    /// a slot.
    pub(super) fn busy(&self, spec: &DownloadSpec) -> bool {
        let (tenant, group) = (&spec.tenant, spec.transfer_group.as_str());
        self.serialized
            .get(tenant)
            .is_some_and(|s| s.contains(group))
            && self
                .in_group
                .get(tenant)
                .is_some_and(|g| g.contains_key(group))
    }

    /// Sets how `group` of `tenant` runs its downloads.
    pub(super) fn set_behavior(&mut self, tenant: &Tenant, group: &str, behavior: Behavior) {
        match behavior {
            Behavior::Parallel => {
                if let Some(groups) = self.serialized.get_mut(tenant) {
                    groups.remove(group);
                    if groups.is_empty() {
                        self.serialized.remove(tenant);
                    }
                }
            }
            Behavior::Serialized => {
                let groups = self.serialized.entry(tenant.clone()).or_default();
                groups.insert(group.to_string());
            }
        }
    }

    /// A task of the download's group started.
    pub(super) fn acquire(&mut self, spec: &DownloadSpec) {
        let groups = self.in_group.entry(spec.tenant.clone()).or_default();
        *groups.entry(spec.transfer_group.clone()).or_default() += 1;
    }

    /// A task of the download's group let go.
    pub(super) fn release(&mut self, spec: &DownloadSpec) {
        let Some(groups) = self.in_group.get_mut(&spec.tenant) else {
            return;
        };
        if let Some(n) = groups.get_mut(&spec.transfer_group) {
            *n -= 1;
            if *n == 0 {
                groups.remove(&spec.transfer_group);
            }
        }
        if groups.is_empty() {
            self.in_group.remove(&spec.tenant);
        }
    }
}

impl Core {
    /// Takes the downloads that may start now, while fewer than `max_active` tasks hold a slot,
    /// highest priority first, skipping serialized groups that are busy (they keep their
    /// places). Each one is RUNNING with a task handle of `stop` tokens made by `token` when
    /// this returns.
    pub(super) fn start_next(
        &mut self,
        max_active: usize,
        token: impl Fn() -> CancellationToken,
    ) -> Vec<(Arc<Op>, TaskHandle)> {
        let mut started = Vec::new();
        let mut held: Vec<QueueKey> = Vec::new();
        while self.slots.active() < max_active {
            let Some(key) = self.queue.pop_first() else {
                break;
            };
            let Some(op) = self.registry.get(&key.guid) else {
                continue;
            };
            if self.slots.busy(&op.spec) {
                held.push(key);
                continue;
            }
            let mut st = op.lock();
            if st.task.is_some() {
                // Its previous task is still letting go of the partial file; it schedules again
                // when it has.
                held.push(key);
                continue;
            }
            let (stop, done) = (token(), CancellationToken::new());
            st.task = Some(TaskHandle {
                stop: stop.clone(),
                done: done.clone(),
            });
            if let Err(e) =
                self.transition(&op, &mut st, Status::Running, StatusReason::Unspecified)
            {
                // Only IDLE downloads are queued; a broken invariant must not start one.
                tracing::error!(
                    guid = %op.spec.guid,
                    host = %crate::logging::host_of(&st.settings.requested_uri),
                    status = e.from.name(),
                    "a queued download was not IDLE"
                );
                st.task = None;
                continue;
            }
            drop(st);
            started.push((op, TaskHandle { stop, done }));
        }
        for key in held {
            self.queue.push(key);
        }
        started
    }
}

impl Engine {
    /// Starts queued downloads while slots are free, one at a time per serialized group.
    pub(super) fn schedule(&self) {
        if self.inner.shutdown.is_cancelled() {
            return;
        }
        if self.inner.cluster.is_some() {
            // Replicas share one queue, in the store: slots are filled by claims from it.
            self.claim_soon();
            return;
        }
        let shutdown = &self.inner.shutdown;
        let started = self
            .lock()
            .start_next(self.inner.config.max_active, || shutdown.child_token());
        for (op, TaskHandle { stop, done }) in started {
            let engine = self.clone();
            // A root span: schedule often runs inside the span of the transfer that just ended,
            // and a child of it would nest every later transfer in the one before.
            let host = crate::logging::host_of(&op.lock().settings.requested_uri);
            let span = tracing::info_span!(parent: None, "transfer", guid = %op.spec.guid, %host);
            self.inner
                .tasks
                .spawn(async move { engine.transfer(op, stop, done).await }.instrument(span));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tenant: &str, group: &str) -> DownloadSpec {
        let mut record = crate::store::conformance::record("g", 1);
        record.spec.tenant = Tenant::new(tenant);
        record.spec.transfer_group = group.into();
        record.spec
    }

    fn stored(tenant: &str, name: &str, behavior: Behavior) -> StoredGroup {
        StoredGroup {
            tenant: Tenant::new(tenant),
            name: name.into(),
            behavior,
        }
    }

    #[test]
    fn serialized_groups_are_busy_while_a_task_holds_a_slot() {
        let mut slots = Slots::new([
            stored("", "s", Behavior::Serialized),
            stored("", "p", Behavior::Parallel),
        ]);
        let (s, p, none) = (spec("", "s"), spec("", "p"), spec("", ""));
        assert!(!slots.busy(&s));
        slots.acquire(&s);
        slots.acquire(&p);
        slots.acquire(&p);
        slots.acquire(&none);
        assert!(slots.busy(&s));
        assert!(!slots.busy(&p));
        assert!(!slots.busy(&none));
        assert_eq!(slots.active(), 4);
        slots.release(&s);
        assert!(!slots.busy(&s));
        assert_eq!(slots.active(), 3);
        // A group made parallel while busy no longer holds its downloads back.
        slots.acquire(&s);
        slots.set_behavior(&Tenant::default(), "s", Behavior::Parallel);
        assert!(!slots.busy(&s));
        slots.set_behavior(&Tenant::default(), "p", Behavior::Serialized);
        assert!(slots.busy(&p));
    }

    #[test]
    fn one_group_name_in_two_tenants_is_two_groups() {
        let mut slots = Slots::new([stored("media", "nightly", Behavior::Serialized)]);
        let (media, ml) = (spec("media", "nightly"), spec("ml", "nightly"));
        slots.acquire(&media);
        slots.acquire(&ml);
        assert!(slots.busy(&media));
        // ml's nightly is parallel, and media's busy group does not hold it back.
        assert!(!slots.busy(&ml));
        slots.set_behavior(&Tenant::new("ml"), "nightly", Behavior::Serialized);
        assert!(slots.busy(&ml));
        slots.release(&media);
        assert!(!slots.busy(&media) && slots.busy(&ml));
        assert_eq!(slots.active(), 1);
    }

    #[test]
    fn releasing_more_than_acquired_never_underflows() {
        let mut slots = Slots::default();
        slots.release(&spec("", "g"));
        assert_eq!(slots.active(), 0);
    }
}

#[cfg(test)]
mod start_tests {
    use super::super::fixtures::{core, op};
    use super::*;
    use crate::operation::Priority;

    fn started(core: &mut Core, max_active: usize) -> Vec<String> {
        core.start_next(max_active, CancellationToken::new)
            .into_iter()
            .map(|(op, _)| op.spec.guid.clone())
            .collect()
    }

    #[test]
    fn starts_by_priority_within_the_slots() {
        let ops = [
            op(1, "", Priority::Low, Status::Idle),
            op(2, "", Priority::Default, Status::Idle),
            op(3, "", Priority::High, Status::Idle),
            op(4, "", Priority::Default, Status::Idle),
        ];
        let mut core = core(&[], &ops);
        assert_eq!(started(&mut core, 2), ["g3", "g2"]);
        assert_eq!(core.slots.active(), 2);
        assert_eq!(core.queue.len(), 2);
        for op in &ops[1..3] {
            assert_eq!(op.lock().status(), Status::Running);
        }
        // No slot is free until a task lets go.
        assert!(started(&mut core, 2).is_empty());
        let mut st = ops[2].lock();
        core.let_go(&ops[2], &mut st);
        drop(st);
        assert_eq!(started(&mut core, 2), ["g4"]);
        assert_eq!(started(&mut core, 3), ["g1"]);
    }

    #[test]
    fn a_serialized_group_runs_one_at_a_time_and_keeps_its_places() {
        let ops = [
            op(1, "s", Priority::Default, Status::Idle),
            op(2, "s", Priority::High, Status::Idle),
            op(3, "p", Priority::Default, Status::Idle),
            op(4, "", Priority::Low, Status::Idle),
        ];
        let mut core = core(&[("s", Behavior::Serialized)], &ops);
        assert_eq!(started(&mut core, 10), ["g2", "g3", "g4"]);
        // g1 waits for its group, not for a slot.
        assert_eq!(core.view(&ops[0]).reason, StatusReason::WaitingForGroup);
        let mut st = ops[1].lock();
        core.let_go(&ops[1], &mut st);
        drop(st);
        assert_eq!(core.view(&ops[0]).reason, StatusReason::WaitingForSlot);
        assert_eq!(started(&mut core, 10), ["g1"]);
    }

    #[test]
    fn only_idle_downloads_start() {
        let ops = [
            op(1, "", Priority::High, Status::PausedByApplication),
            op(2, "", Priority::Default, Status::Completed),
            op(3, "", Priority::Low, Status::Idle),
        ];
        let mut core = core(&[], &ops);
        assert_eq!(started(&mut core, 10), ["g3"]);
    }
}
