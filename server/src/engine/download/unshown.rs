//! Changes shown only once stored. A client's pause, resume or cancel, and a transfer's
//! failure, are held back from watchers (and from GetDownload, which shows what they see) while
//! they are being stored, then published: no watcher sees a status that a crash before the
//! write would take back, such as a pause or an ERROR that a restart finds still queued.
//! Conditions' pauses and the moves that are never stored (to RUNNING) are shown at once.

use std::sync::Arc;

use super::{Core, IllegalMove, Op, OpState};
use crate::operation::{Status, StatusReason, TransferError};

/// The details of the status watchers see, kept while a change to them is being stored.
#[derive(Debug)]
pub(super) struct Shown {
    pub(super) reason: StatusReason,
    pub(super) error: Option<TransferError>,
    pub(super) web_error_status: Option<u16>,
}

/// A download's changes held back from its watchers until they are stored. Dropping it
/// publishes the download's state as it is then: drop it after the store write (whether or
/// not it succeeded), with neither the engine's nor this download's lock held, as its drop
/// takes the download's lock. A write refused because another replica took the download over
/// has by then replaced the state with the stored one (see `Engine::persist_fenced`), so the
/// change is never shown.
#[must_use = "dropping it at once shows the change before it is stored"]
pub(in crate::engine) struct Unshown {
    op: Arc<Op>,
}

impl Drop for Unshown {
    fn drop(&mut self) {
        let mut st = self.op.lock();
        st.let_show();
        self.op.publish(&st);
    }
}

impl Op {
    /// Holds back from watchers every change made to `st` from now until the returned guard
    /// drops.
    pub(in crate::engine) fn unshown(self: &Arc<Self>, st: &mut OpState) -> Unshown {
        st.hold_back();
        Unshown { op: self.clone() }
    }
}

impl Core {
    /// [`Core::transition`], keeping the move from watchers until the returned guard drops:
    /// for a change that must be stored before anyone sees it.
    pub(in crate::engine) fn transition_unshown(
        &mut self,
        op: &Arc<Op>,
        st: &mut OpState,
        to: Status,
        reason: StatusReason,
    ) -> Result<Unshown, IllegalMove> {
        // Held back before the move, so that its publication is; the guard is made only once
        // the move is done (a guard dropped here would take the lock the caller holds).
        st.hold_back();
        match self.transition(op, st, to, reason) {
            Ok(()) => Ok(Unshown { op: op.clone() }),
            Err(e) => {
                st.let_show();
                Err(e)
            }
        }
    }
}

impl OpState {
    /// Starts holding changes back, noting the details of the status watchers see.
    fn hold_back(&mut self) {
        if self.unshown == 0 {
            self.shown = Some(Shown {
                reason: self.reason,
                error: self.error.clone(),
                web_error_status: self.web_error_status,
            });
        }
        self.unshown += 1;
    }

    /// Ends one [`OpState::hold_back`].
    fn let_show(&mut self) {
        self.unshown -= 1;
        if self.unshown == 0 {
            self.shown = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::fixtures::{core, op};
    use super::*;
    use crate::operation::Priority;

    #[test]
    fn a_held_back_move_is_published_with_its_details_only_when_the_guard_drops() {
        let a = op(1, "", Priority::Default, Status::Idle);
        let mut core = core(&[], std::slice::from_ref(&a));
        let mut st = a.lock();
        let guard = core
            .transition_unshown(
                &a,
                &mut st,
                Status::PausedByApplication,
                StatusReason::PausedByClient,
            )
            .unwrap();
        // The move is made (the queue follows it) but not shown, and nor is its reason.
        assert_eq!(st.status(), Status::PausedByApplication);
        assert_eq!(core.queue.len(), 0);
        drop(st);
        assert_eq!(a.hub.current().progress.status, Status::Idle);
        assert_eq!(a.view().reason, StatusReason::WaitingForSlot);
        drop(guard);
        assert_eq!(a.hub.current().progress.status, Status::PausedByApplication);
        assert_eq!(a.view().reason, StatusReason::PausedByClient);
    }

    #[test]
    fn a_refused_move_holds_nothing_back() {
        let a = op(1, "", Priority::Default, Status::Canceled);
        let mut core = core(&[], std::slice::from_ref(&a));
        let mut st = a.lock();
        let refused =
            core.transition_unshown(&a, &mut st, Status::Idle, StatusReason::WaitingForSlot);
        assert_eq!(refused.err().map(|e| e.from), Some(Status::Canceled));
        assert_eq!((st.unshown, st.shown.is_none()), (0, true));
    }
}
