//! The host conditions that pause downloads by themselves: whether the network is connected
//! and costed (detected, or overridden by an operator), the operator's constrained mode, and
//! free space on the download volume. [`Conditions::blocks`] is the one place that decides which
//! paused state, if any, a download is in because of them.

use crate::operation::{CostPolicy, Status, StatusReason};

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
