//! Host conditions that pause downloads by themselves, and their monitor: whether the network
//! is connected and costed (detected, or overridden by an operator), the operator's constrained
//! mode, and free space on the download volume. [`Conditions::blocks`] is the one place that
//! decides which paused state, if any, a download is in because of them; the engine's
//! `reconcile` applies that decision to every download whenever a condition changes.

use std::sync::Arc;
use std::time::Duration;

use super::Core;
use super::download::Op;
use super::{Engine, SystemView};
use crate::operation::{CostPolicy, Status, StatusReason};
use crate::paths;

/// How often free disk space is measured and, while the network is down, routes to the
/// origins are probed: conditions are noticed within a second, at the cost of one statvfs and a
/// few route lookups.
const MONITOR_INTERVAL: Duration = Duration::from_secs(1);

/// After a write failed with a full disk, downloads stay paused until free space exceeds what
/// was free then by this much, so they do not bounce against a disk that is still full.
const DISK_FULL_HEADROOM: u64 = 4 * 1024 * 1024;

/// The current view of the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conditions {
    /// Connectivity as detected from failed connections and route probes.
    pub detected_connected: bool,
    /// An operator's override of connectivity.
    pub connected_override: Option<bool>,
    /// An operator's override of costed. transferd cannot detect a metered link by itself, so
    /// without an override the network counts as unrestricted.
    pub costed_override: Option<bool>,
    /// The operator's constrained mode.
    pub constrained: bool,
    /// Free bytes on the download volume at the last check.
    pub free_disk_bytes: u64,
    /// Below this many free bytes downloads pause.
    pub min_free_disk_bytes: u64,
    /// What DEFAULT cost policy means on this server.
    pub default_cost_policy: CostPolicy,
}

impl Conditions {
    /// A connected, unrestricted, unconstrained host with plenty of disk.
    pub fn new(min_free_disk_bytes: u64, default_cost_policy: CostPolicy) -> Conditions {
        Conditions {
            detected_connected: true,
            connected_override: None,
            costed_override: None,
            constrained: false,
            free_disk_bytes: u64::MAX,
            min_free_disk_bytes,
            default_cost_policy,
        }
    }

    /// Whether the network is usable.
    pub fn connected(&self) -> bool {
        self.connected_override.unwrap_or(self.detected_connected)
    }

    /// Whether the network is costed.
    pub fn costed(&self) -> bool {
        self.costed_override.unwrap_or(false)
    }

    /// Whether free space is below the minimum.
    pub fn low_disk_space(&self) -> bool {
        self.free_disk_bytes < self.min_free_disk_bytes
    }

    /// The paused state a download with `cost_policy` must be in now, or `None` if it may run.
    /// No network comes first (nothing can run), then system policy, then cost.
    pub fn blocks(&self, cost_policy: CostPolicy) -> Option<(Status, StatusReason)> {
        if !self.connected() {
            let reason = if self.connected_override.is_some() {
                StatusReason::NetworkDownByOperator
            } else {
                StatusReason::NetworkDownDetected
            };
            return Some((Status::PausedNoNetwork, reason));
        }
        if self.constrained {
            return Some((Status::PausedSystemPolicy, StatusReason::ConstrainedMode));
        }
        if self.low_disk_space() {
            return Some((Status::PausedSystemPolicy, StatusReason::LowDiskSpace));
        }
        let policy = match cost_policy {
            CostPolicy::Default => self.default_cost_policy,
            other => other,
        };
        if self.costed() && policy == CostPolicy::UnrestrictedOnly {
            return Some((Status::PausedCostedNetwork, StatusReason::CostedNetwork));
        }
        None
    }
}

/// Statuses that conditions put a download in and take it out of by themselves.
pub fn is_automatic_pause(status: Status) -> bool {
    matches!(
        status,
        Status::PausedNoNetwork | Status::PausedCostedNetwork | Status::PausedSystemPolicy
    )
}

/// What the engine tracks about the host besides [`Conditions`].
#[derive(Debug)]
pub(super) struct Host {
    /// Network, policy and disk conditions.
    pub(super) conditions: Conditions,
    /// Free space when a write last failed with a full disk; cleared once space returns.
    disk_full_at: Option<u64>,
    /// Origins (host, port) that were unreachable when the network was detected down; a route
    /// to any of them means it is back.
    probe_targets: Vec<(String, u16)>,
}

impl Host {
    /// A host in these conditions, with no failure seen yet.
    pub(super) fn new(conditions: Conditions) -> Host {
        Host {
            conditions,
            disk_full_at: None,
            probe_targets: Vec::new(),
        }
    }

    /// Whether disk space counts as low: below the minimum, or still full after a write failed.
    pub(super) fn low_disk_space(&self) -> bool {
        self.conditions.low_disk_space() || self.disk_full_at.is_some()
    }

    /// The paused state a download with `cost_policy` must be in now, or `None` if it may run.
    pub(super) fn blocks(&self, cost_policy: CostPolicy) -> Option<(Status, StatusReason)> {
        match self.conditions.blocks(cost_policy) {
            None if self.low_disk_space() => {
                Some((Status::PausedSystemPolicy, StatusReason::LowDiskSpace))
            }
            blocks => blocks,
        }
    }

    /// A transfer found no route to its origin: the network counts as down until a route to
    /// that origin (or another one found unreachable) is back.
    pub(super) fn network_down(&mut self, uri: &str) {
        self.conditions.detected_connected = false;
        if let Some(target) = probe_target(uri) {
            if !self.probe_targets.contains(&target) {
                self.probe_targets.push(target);
            }
        }
    }

    /// A write failed with a full disk while `free` bytes were free: downloads stay paused
    /// until space returns beyond that.
    pub(super) fn disk_full(&mut self, free: u64) {
        self.disk_full_at = Some(self.conditions.free_disk_bytes.min(free));
    }
}

impl Engine {
    /// Overrides network conditions (`Some`) or hands them back to detection (`None`).
    pub async fn set_network_conditions(
        &self,
        connected: Option<bool>,
        costed: Option<bool>,
    ) -> SystemView {
        {
            let mut core = self.lock();
            core.host.conditions.connected_override = connected;
            core.host.conditions.costed_override = costed;
        }
        // Unset means "as detected": shown in words, not as `None` / `Some(true)`.
        let said = |value: Option<bool>| value.map_or("detected", |v| if v { "yes" } else { "no" });
        tracing::info!(
            connected = said(connected),
            costed = said(costed),
            "network conditions set by operator"
        );
        self.conditions_changed().await;
        self.system()
    }

    /// Enters or leaves constrained mode.
    pub async fn set_constrained(&self, constrained: bool) -> SystemView {
        self.lock().host.conditions.constrained = constrained;
        tracing::info!(constrained, "system policy set by operator");
        self.conditions_changed().await;
        self.system()
    }

    /// The host as the engine sees it, with free space measured now.
    pub fn system(&self) -> SystemView {
        self.measure_disk();
        let core = self.lock();
        SystemView {
            conditions: core.host.conditions,
            low_disk_space: core.host.low_disk_space(),
            active: core.slots.active(),
            queued: core.queue.len(),
        }
    }

    /// Puts every live download in the state the current conditions call for: downloads that
    /// may not run pause (a running one drops its request and keeps its data), and downloads
    /// paused by conditions that no longer hold are queued again. Returns the downloads that
    /// changed.
    pub(super) fn reconcile(&self) -> Vec<Arc<Op>> {
        let mut core = self.lock();
        let ops: Vec<Arc<Op>> = core.registry.live().cloned().collect();
        ops.into_iter()
            .filter(|op| reconcile_one(&mut core, op))
            .collect()
    }

    /// Reconciles with the conditions, stores what changed, and schedules.
    pub(super) async fn conditions_changed(&self) {
        for op in self.reconcile() {
            if let Err(e) = self.persist(&op).await {
                tracing::warn!(error = %e, "could not store a change of conditions");
            }
        }
        self.schedule();
    }

    /// The paused state a download created now starts in, if the host's conditions hold it
    /// back (no network, constrained, low disk space, a costed network its policy refuses):
    /// it is stored paused by its create's one write, rather than stored IDLE and written
    /// again a moment later by [`Engine::settings_changed`]. See [`Core::held`].
    pub(super) fn held_from_start(
        &self,
        cost_policy: CostPolicy,
    ) -> Option<(Status, StatusReason)> {
        self.lock().held(cost_policy)
    }

    /// [`Engine::conditions_changed`] for one download whose own settings or status changed
    /// (created, resumed, edited) while the host's conditions did not: the others already
    /// follow them, so a create costs the same however long the queue is.
    pub(super) async fn settings_changed(&self, op: &Arc<Op>) {
        let changed = reconcile_one(&mut self.lock(), op);
        if changed {
            if let Err(e) = self.persist(op).await {
                tracing::warn!(error = %e, "could not store a change of conditions");
            }
        }
        self.schedule();
    }

    /// Measures free space on the download volume.
    pub(super) fn measure_disk(&self) {
        let free = paths::free_space(&self.inner.config.download_dir);
        let mut core = self.lock();
        let host = &mut core.host;
        match free {
            Ok(free) => {
                host.conditions.free_disk_bytes = free;
                if host
                    .disk_full_at
                    .is_some_and(|at| free > at + DISK_FULL_HEADROOM)
                {
                    host.disk_full_at = None;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot measure free disk space"),
        }
    }

    /// Watches the host: free disk space, and while the network is detected down, routes to
    /// the origins that were unreachable.
    pub(super) async fn monitor(self) {
        let mut tick = tokio::time::interval(MONITOR_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.inner.shutdown.cancelled() => return,
            }
            let (low_before, targets) = {
                let core = self.lock();
                let targets = if core.host.conditions.detected_connected {
                    Vec::new()
                } else {
                    core.host.probe_targets.clone()
                };
                (core.host.low_disk_space(), targets)
            };
            self.measure_disk();
            let mut changed = self.lock().host.low_disk_space() != low_before;
            if !targets.is_empty() && routable(&targets).await {
                tracing::info!("a route to the origins is back; the network counts as connected");
                let mut core = self.lock();
                core.host.conditions.detected_connected = true;
                core.host.probe_targets.clear();
                changed = true;
            }
            if changed {
                self.conditions_changed().await;
            }
        }
    }
}

/// The (host, port) whose route tells whether the network is back.
pub(super) fn probe_target(uri: &str) -> Option<(String, u16)> {
    let url = url::Url::parse(uri).ok()?;
    Some((url.host_str()?.to_string(), url.port_or_known_default()?))
}

/// Whether the host has a route to any of `targets`. A UDP `connect()` performs the route
/// lookup without sending a packet, so probing costs nothing on the wire.
pub(super) async fn routable(targets: &[(String, u16)]) -> bool {
    for (host, port) in targets {
        let Ok(addrs) = tokio::net::lookup_host((host.as_str(), *port)).await else {
            continue;
        };
        for addr in addrs {
            let local: std::net::SocketAddr = if addr.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            if let Ok(socket) = tokio::net::UdpSocket::bind(local).await {
                if socket.connect(addr).await.is_ok() {
                    return true;
                }
            }
        }
    }
    false
}

impl Core {
    /// The paused state the host's conditions hold a download with `cost_policy` in, if any,
    /// for a download that is created or resumed now. With replicas, whoever claims it applies
    /// its own conditions, so it goes IDLE.
    pub(super) fn held(&self, cost_policy: CostPolicy) -> Option<(Status, StatusReason)> {
        if self.clustered {
            return None;
        }
        self.host.blocks(cost_policy)
    }
}

/// Puts `op` in the state the current conditions call for (see [`Engine::reconcile`]); returns
/// whether it moved.
fn reconcile_one(core: &mut Core, op: &Arc<Op>) -> bool {
    let mut st = op.lock();
    if core.clustered && st.lease.is_none() {
        // Another replica's (or nobody's): its holder applies its own conditions, and this
        // replica's apply only to what it claims.
        return false;
    }
    let status = st.status();
    if !(status == Status::Idle || status == Status::Running || is_automatic_pause(status)) {
        return false;
    }
    if st.committing {
        // The commit decides; if it leaves the download unfinished, the transfer's end
        // reconciles again.
        return false;
    }
    let moved = match core.host.blocks(st.settings.cost_policy) {
        Some((to, reason)) if status != to || st.reason != reason => {
            if let Some(task) = &st.task {
                let _ = task.stop();
            }
            tracing::info!(
                guid = %op.spec.guid,
                host = %crate::logging::host_of(&st.settings.requested_uri),
                status = to.name(),
                "paused by {}",
                reason.cause()
            );
            core.transition(op, &mut st, to, reason)
        }
        None if is_automatic_pause(status) => {
            tracing::info!(
                guid = %op.spec.guid,
                host = %crate::logging::host_of(&st.settings.requested_uri),
                "resumed: {} no longer holds it; queued again",
                st.reason.cause()
            );
            core.transition(op, &mut st, Status::Idle, StatusReason::WaitingForSlot)
        }
        _ => return false,
    };
    debug_assert!(moved.is_ok(), "{status:?} could not follow conditions");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_cost_policies() {
        let mut c = Conditions::new(100, CostPolicy::Always);
        c.free_disk_bytes = 1000;
        assert_eq!(c.blocks(CostPolicy::UnrestrictedOnly), None);
        c.costed_override = Some(true);
        assert_eq!(
            c.blocks(CostPolicy::UnrestrictedOnly),
            Some((Status::PausedCostedNetwork, StatusReason::CostedNetwork))
        );
        assert_eq!(c.blocks(CostPolicy::Always), None);
        // DEFAULT follows the server's default.
        assert_eq!(c.blocks(CostPolicy::Default), None);
        c.default_cost_policy = CostPolicy::UnrestrictedOnly;
        assert!(c.blocks(CostPolicy::Default).is_some());
        c.free_disk_bytes = 10;
        assert_eq!(
            c.blocks(CostPolicy::Always),
            Some((Status::PausedSystemPolicy, StatusReason::LowDiskSpace))
        );
        c.constrained = true;
        assert_eq!(
            c.blocks(CostPolicy::Always),
            Some((Status::PausedSystemPolicy, StatusReason::ConstrainedMode))
        );
        c.detected_connected = false;
        assert_eq!(
            c.blocks(CostPolicy::Always),
            Some((Status::PausedNoNetwork, StatusReason::NetworkDownDetected))
        );
        c.connected_override = Some(true);
        assert_eq!(
            c.blocks(CostPolicy::Always),
            Some((Status::PausedSystemPolicy, StatusReason::ConstrainedMode))
        );
        c.connected_override = Some(false);
        assert_eq!(
            c.blocks(CostPolicy::Always),
            Some((Status::PausedNoNetwork, StatusReason::NetworkDownByOperator))
        );
    }
}
