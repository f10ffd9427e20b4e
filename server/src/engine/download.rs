//! One download in memory ([`Op`]: its fixed spec, its progress hub and its mutable
//! [`OpState`]) and [`Core::transition`], the one function that changes a download's status.
//! Every status change goes through it: it refuses a move the state machine does not allow,
//! and keeps the run queue, the result-file claims, the transfer slots and the published
//! progress in step with the new status.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

mod unshown;

use super::queue::QueueKey;
use super::{Core, DownloadView, host};
use crate::operation::{
    DownloadSpec, Progress, ResponseInfo, Segment, Settings, Status, StatusReason, TransferError,
    Validators,
};
use crate::progress::{self, Bus, Hub};
use crate::sha256::Hasher;
use crate::store::Record;
use crate::store::shared::{Lease, StatusChange};

/// A download in memory.
#[derive(Debug)]
pub(super) struct Op {
    /// What is fixed for life; what can change lives in [`OpState::settings`].
    pub(super) spec: DownloadSpec,
    /// Where its progress is published to watchers.
    pub(super) hub: Arc<Hub>,
    state: Mutex<OpState>,
    /// Serialises store writes of this download (see the engine's module docs).
    pub(super) persist: tokio::sync::Mutex<()>,
}

/// What changes while a download lives. The status is written only by [`Core::transition`].
#[derive(Debug)]
pub(super) struct OpState {
    pub(super) settings: Settings,
    status: Status,
    pub(super) reason: StatusReason,
    /// The recoverable HTTP status that paused it.
    pub(super) web_error_status: Option<u16>,
    /// Position within its priority; see [`QueueKey`].
    pub(super) queue_order: i64,
    /// Body bytes received (may be ahead of the checkpoint).
    pub(super) bytes: u64,
    /// Bytes durably in the partial file: for a segmented download, the sum over its segments.
    pub(super) checkpoint: u64,
    /// The SHA-256 of the bytes written so far, as of the checkpoint, for a download that
    /// hashes as it writes; stored with the checkpoint. `None` when it does not hash, or when
    /// the stored state was missing or unusable (the next attempt then hashes the file's
    /// prefix once).
    pub(super) sha256: Option<Hasher>,
    /// The segments of a download fetched over several connections; empty when one stream
    /// fetches it and `checkpoint` is a prefix of the file.
    pub(super) segments: Vec<Segment>,
    pub(super) total: u64,
    pub(super) validators: Validators,
    pub(super) response: Option<ResponseInfo>,
    pub(super) error: Option<TransferError>,
    pub(super) responses: u64,
    pub(super) restarts: u64,
    /// HTTP attempts made over the download's life.
    pub(super) attempts: u32,
    /// Set while a transfer task owns the partial file (and holds a transfer slot).
    pub(super) task: Option<TaskHandle>,
    /// Set while its transfer task moves the verified file to its result path: the commit has
    /// been claimed while RUNNING, and no status change but the task's own may happen until it
    /// is known whether the file is in place (see [`Core::transition`]).
    pub(super) committing: bool,
    /// When it reached its terminal status; set only by [`Core::transition`].
    finished_at: Option<SystemTime>,
    /// With a shared store: the lease this replica holds on it, while it runs here or a control
    /// call changes it here (see `engine/cluster.rs`). Always `None` with one transferd.
    pub(super) lease: Option<Lease>,
    /// With a shared store: the holders of the lease here (its transfer task, control calls in
    /// progress); the last one to let go gives the lease back.
    pub(super) holds: u32,
    /// With a shared store: status changes not yet written, announced with the next write.
    pub(super) unsent: Vec<StatusChange>,
    /// With a shared store: the epoch whose name its partial file has here (see
    /// `paths::partial_path_at`); `None` with one transferd.
    pub(super) partial_epoch: Option<i64>,
    /// With a shared store: the epoch of a lease another replica took over while this one
    /// held it. The partial file of that epoch's name is this replica's to remove once its
    /// transfer has stopped (the new holder works in a copy).
    pub(super) fenced: Option<i64>,
    /// Changes being stored before watchers may see them (see [`unshown`]); nothing is
    /// published while it is above zero.
    unshown: u32,
    /// While `unshown` is above zero: the reason, error and web error status that go with the
    /// status watchers still see, so that GetDownload shows them together.
    shown: Option<unshown::Shown>,
}

/// The handles of a running transfer task.
#[derive(Debug)]
pub(super) struct TaskHandle {
    /// Cancelling it stops the attempt (the HTTP request is dropped).
    pub(super) stop: CancellationToken,
    /// Cancelled by the task once it has let go: data flushed, fsynced and checkpointed, or
    /// the partial file removed.
    pub(super) done: CancellationToken,
}

impl TaskHandle {
    /// Asks the task to stop and returns what to wait on.
    pub(super) fn stop(&self) -> CancellationToken {
        self.stop.cancel();
        self.done.clone()
    }
}

/// A status change the state machine does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IllegalMove {
    /// The status the download was in.
    pub(super) from: Status,
}

/// Whether the state machine allows a download in `from` to move to `to`. A terminal status
/// never changes; RUNNING is entered only from IDLE by the scheduler, and only a running
/// transfer completes, fails or meets a recoverable web error. An automatic pause may move to
/// another one (conditions changed) or to itself with a new reason; a client's pause moves to
/// one when it is resumed while conditions hold downloads back.
pub(super) fn legal(from: Status, to: Status) -> bool {
    use Status as S;
    if from.is_terminal() {
        return false;
    }
    match to {
        S::Idle => from == S::Running || client_owned_pause(from) || host::is_automatic_pause(from),
        S::Running => from == S::Idle,
        S::PausedByApplication => from != S::PausedByApplication,
        S::Completed | S::Error | S::PausedRecoverableWebErrorStatus => from == S::Running,
        S::Canceled => true,
        S::PausedCostedNetwork | S::PausedNoNetwork | S::PausedSystemPolicy => {
            from == S::Idle
                || from == S::Running
                || host::is_automatic_pause(from)
                || client_owned_pause(from)
        }
    }
}

/// The pauses a client owns: ResumeDownload continues them and SetRequestedUri may re-point
/// them. Conditions never lift them by themselves.
pub(super) fn client_owned_pause(status: Status) -> bool {
    matches!(
        status,
        Status::PausedByApplication | Status::PausedRecoverableWebErrorStatus
    )
}

impl Core {
    /// Moves a download to `to` for `reason`, if the state machine allows it, and keeps
    /// everything that follows from a status in step: a download is in the run queue exactly
    /// while it is IDLE, holds its result-file claim and its place in the live index until it
    /// is terminal, takes a transfer slot when it starts RUNNING (the slot is given back when
    /// its task lets go, see [`Core::let_go`]), and watchers see every change. While the
    /// download is committing, every move is refused: the task clears the flag and moves it to
    /// what the commit left; callers that must not fail wait for that
    /// (`OpState::commit_in_progress`).
    pub(super) fn transition(
        &mut self,
        op: &Op,
        st: &mut OpState,
        to: Status,
        reason: StatusReason,
    ) -> Result<(), IllegalMove> {
        let from = st.status;
        if st.committing {
            return Err(IllegalMove { from });
        }
        if !legal(from, to) {
            debug_assert!(
                !(to == Status::Running || to == Status::Completed),
                "illegal internal move {from:?} -> {to:?}"
            );
            return Err(IllegalMove { from });
        }
        if from == Status::Idle {
            self.queue.remove(&op.spec.guid);
        }
        st.status = to;
        crate::metrics::global().download_moved(from, to);
        st.reason = reason;
        if st.lease.is_some() {
            st.unsent.push(StatusChange::new(to, reason));
        }
        match to {
            Status::Idle => self.queue.push(op.queue_key(st)),
            Status::Running => self.slots.acquire(&op.spec),
            s if s.is_terminal() => {
                st.finished_at = Some(SystemTime::now());
                self.registry.retire(&op.spec);
            }
            _ => {}
        }
        op.publish(st);
        Ok(())
    }

    /// Sets a download's status to what another replica stored, without the state machine's
    /// checks: the move happened there. Keeps the run queue and the live index in step as
    /// [`Core::transition`] does, and publishes.
    pub(super) fn mirror(&mut self, op: &Op, st: &mut OpState, to: Status, reason: StatusReason) {
        let from = st.status;
        if from == to && st.reason == reason {
            return;
        }
        if from == Status::Idle {
            self.queue.remove(&op.spec.guid);
        }
        st.status = to;
        st.reason = reason;
        if to == Status::Idle {
            self.queue.push(op.queue_key(st));
        }
        if to.is_terminal() && !from.is_terminal() {
            self.registry.retire(&op.spec);
        }
        op.publish(st);
    }

    /// Records that a download's transfer task has let go of it: the task handle is gone and
    /// its transfer slot is free. Unless it completed, only what reached the disk counts.
    pub(super) fn let_go(&mut self, op: &Op, st: &mut OpState) {
        if st.task.take().is_some() {
            self.slots.release(&op.spec);
        }
        st.bytes = st.checkpoint;
    }
}

impl OpState {
    /// Takes what another replica stored about the download, all but its status (which
    /// [`Core::mirror`] sets, so the queue follows). Counters only a running replica knows
    /// (responses, restarts) and bytes are left to the notices that carry them.
    pub(super) fn adopt(&mut self, record: Record) {
        let Record {
            spec: _,
            settings,
            status: _,
            checkpoint_bytes,
            segments,
            total_bytes,
            sha256_state,
            validators,
            response,
            error,
            attempts,
            web_error_status,
            queue_order,
            finished_at,
        } = record;
        self.sha256 = sha256_state.as_deref().and_then(|s| Hasher::decode(s).ok());
        self.settings = settings;
        self.checkpoint = checkpoint_bytes;
        self.bytes = self.bytes.max(checkpoint_bytes);
        self.segments = segments;
        self.total = total_bytes;
        self.validators = validators;
        self.response = response;
        self.error = error;
        self.attempts = attempts;
        self.web_error_status = web_error_status;
        self.queue_order = queue_order;
        self.finished_at = finished_at;
    }

    /// The current status (changed only by [`Core::transition`]).
    pub(super) fn status(&self) -> Status {
        self.status
    }

    /// While its transfer task commits the finished file, what fires once the commit's outcome
    /// is the download's status.
    pub(super) fn commit_in_progress(&self) -> Option<CancellationToken> {
        self.task
            .as_ref()
            .filter(|_| self.committing)
            .map(|task| task.done.clone())
    }

    /// When it finished (set by [`Core::transition`]); `None` while unfinished.
    pub(super) fn finished_at(&self) -> Option<SystemTime> {
        self.finished_at
    }
}

/// The SHA-256 state stored with a download's checkpoint, if it can be continued. One that
/// cannot is dropped here, never trusted: the next attempt hashes the partial file's prefix.
fn saved_hash(guid: &str, uri: &str, stored: Option<&[u8]>) -> Option<Hasher> {
    match Hasher::decode(stored?) {
        Ok(hasher) => Some(hasher),
        Err(e) => {
            let host = crate::logging::host_of(uri);
            tracing::debug!(%guid, %host, error = %e, "the stored SHA-256 state is dropped; the partial file's prefix will be hashed at resume");
            None
        }
    }
}

impl Op {
    /// A download in memory, in the state a stored record describes.
    pub(super) fn from_record(record: Record, bus: &Bus) -> Arc<Op> {
        let Record {
            spec,
            settings,
            status,
            checkpoint_bytes,
            segments,
            total_bytes,
            sha256_state,
            validators,
            response,
            error,
            attempts,
            web_error_status,
            queue_order,
            finished_at,
        } = record;
        let progress = Progress {
            bytes_received: if status == Status::Completed {
                total_bytes.max(checkpoint_bytes)
            } else {
                checkpoint_bytes
            },
            total_bytes_to_receive: total_bytes,
            status,
        };
        let reason = match status {
            Status::PausedByApplication => StatusReason::PausedByClient,
            Status::PausedRecoverableWebErrorStatus => StatusReason::RecoverableWebError,
            Status::Idle => StatusReason::WaitingForSlot,
            _ => StatusReason::Unspecified,
        };
        let hub = Hub::new(
            &spec.guid,
            &spec.tenant,
            &spec.transfer_group,
            progress,
            bus.clone(),
        );
        Arc::new(Op {
            hub: Arc::new(hub),
            state: Mutex::new(OpState {
                sha256: saved_hash(&spec.guid, &settings.requested_uri, sha256_state.as_deref()),
                settings,
                status,
                reason,
                web_error_status,
                queue_order,
                bytes: progress.bytes_received,
                checkpoint: checkpoint_bytes,
                segments,
                total: total_bytes,
                validators,
                response,
                error,
                responses: 0,
                restarts: 0,
                attempts,
                task: None,
                committing: false,
                finished_at,
                lease: None,
                holds: 0,
                unsent: Vec::new(),
                partial_epoch: None,
                fenced: None,
                unshown: 0,
                shown: None,
            }),
            persist: tokio::sync::Mutex::new(()),
            spec,
        })
    }

    /// The host of its URI, as log lines show it (see [`crate::logging::host_of`]). Takes the
    /// download's lock: call it with none held.
    pub(super) fn log_host(&self) -> String {
        crate::logging::host_of(&self.lock().settings.requested_uri)
    }

    /// The download's state lock (see the engine's module docs for the lock order).
    pub(super) fn lock(&self) -> MutexGuard<'_, OpState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its place in the run queue.
    pub(super) fn queue_key(&self, st: &OpState) -> QueueKey {
        QueueKey::new(
            st.settings.priority,
            st.queue_order,
            self.spec.seq,
            self.spec.guid.clone(),
        )
    }

    /// Everything to store about it now.
    pub(super) fn record(&self) -> Record {
        self.record_of(&self.lock())
    }

    /// Everything to store about it, from its locked state.
    pub(super) fn record_of(&self, st: &OpState) -> Record {
        Record {
            spec: self.spec.clone(),
            settings: st.settings.clone(),
            status: st.status,
            checkpoint_bytes: st.checkpoint,
            segments: st.segments.clone(),
            total_bytes: st.total,
            sha256_state: st.sha256.as_ref().map(Hasher::encode),
            validators: st.validators.clone(),
            response: st.response.clone(),
            error: st.error.clone(),
            attempts: st.attempts,
            web_error_status: st.web_error_status,
            queue_order: st.queue_order,
            finished_at: st.finished_at,
        }
    }

    /// Its view, as far as the download alone knows it (see `Core::view`).
    pub(super) fn view(&self) -> DownloadView {
        let snapshot = self.hub.current();
        let st = self.lock();
        // The status is the one published; a change not shown yet keeps its details back too.
        let (reason, error, web_error_status) = match &st.shown {
            Some(shown) => (shown.reason, shown.error.clone(), shown.web_error_status),
            None => (st.reason, st.error.clone(), st.web_error_status),
        };
        DownloadView {
            spec: self.spec.clone(),
            settings: st.settings.clone(),
            reason,
            web_error_status,
            progress: progress::FlagCursor::first(&snapshot).1,
            error,
            attempts: st.attempts,
        }
    }

    /// Publishes the current state; call with the state lock held so publications stay in order.
    /// While a change is being stored (see [`unshown`]), nothing is published: watchers go on
    /// seeing the last state they were shown until the change is stored.
    pub(super) fn publish(&self, st: &OpState) {
        if st.unshown > 0 {
            return;
        }
        self.hub.publish(
            Progress {
                bytes_received: st.bytes,
                total_bytes_to_receive: st.total,
                status: st.status,
            },
            st.responses,
            st.restarts,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status as S;

    /// Every move the engine makes, and nothing else, is legal.
    #[test]
    fn transition_table() {
        let allowed: &[(Status, &[Status])] = &[
            (
                S::Idle,
                &[
                    S::Running,
                    S::PausedByApplication,
                    S::Canceled,
                    S::PausedCostedNetwork,
                    S::PausedNoNetwork,
                    S::PausedSystemPolicy,
                ],
            ),
            (
                S::Running,
                &[
                    S::Idle,
                    S::PausedByApplication,
                    S::PausedCostedNetwork,
                    S::PausedNoNetwork,
                    S::Completed,
                    S::Canceled,
                    S::Error,
                    S::PausedRecoverableWebErrorStatus,
                    S::PausedSystemPolicy,
                ],
            ),
            (
                S::PausedByApplication,
                &[
                    S::Idle,
                    S::Canceled,
                    S::PausedCostedNetwork,
                    S::PausedNoNetwork,
                    S::PausedSystemPolicy,
                ],
            ),
            (
                S::PausedRecoverableWebErrorStatus,
                &[
                    S::Idle,
                    S::PausedByApplication,
                    S::Canceled,
                    S::PausedCostedNetwork,
                    S::PausedNoNetwork,
                    S::PausedSystemPolicy,
                ],
            ),
            (S::Completed, &[]),
            (S::Canceled, &[]),
            (S::Error, &[]),
        ];
        let automatic = [
            S::PausedCostedNetwork,
            S::PausedNoNetwork,
            S::PausedSystemPolicy,
        ];
        for from in Status::ALL {
            let expected: Vec<Status> = match allowed.iter().find(|(f, _)| *f == from) {
                Some((_, to)) => to.to_vec(),
                None => {
                    assert!(
                        automatic.contains(&from),
                        "{from:?} is missing from the table"
                    );
                    let mut to = vec![S::Idle, S::PausedByApplication, S::Canceled];
                    to.extend(automatic);
                    to
                }
            };
            for to in Status::ALL {
                assert_eq!(
                    legal(from, to),
                    expected.contains(&to),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }

    #[test]
    fn clients_own_only_their_pauses_and_recoverable_web_errors() {
        let owned: Vec<Status> = Status::ALL
            .into_iter()
            .filter(|s| client_owned_pause(*s))
            .collect();
        assert_eq!(
            owned,
            [S::PausedByApplication, S::PausedRecoverableWebErrorStatus]
        );
        for s in owned {
            assert!(!host::is_automatic_pause(s));
        }
    }
}

#[cfg(test)]
mod transition_tests {
    use super::super::fixtures::{core, op};
    use super::*;
    use crate::operation::Priority;

    #[test]
    fn the_queue_holds_exactly_the_idle_downloads() {
        let a = op(1, "", Priority::Default, Status::Idle);
        let mut core = core(&[], std::slice::from_ref(&a));
        assert_eq!(core.queue.len(), 1);
        let mut st = a.lock();
        core.transition(
            &a,
            &mut st,
            Status::PausedByApplication,
            StatusReason::PausedByClient,
        )
        .unwrap();
        assert_eq!(core.queue.len(), 0);
        assert_eq!(st.reason, StatusReason::PausedByClient);
        core.transition(&a, &mut st, Status::Idle, StatusReason::WaitingForSlot)
            .unwrap();
        assert_eq!(core.queue.len(), 1);
        drop(st);
        assert_eq!(a.hub.current().progress.status, Status::Idle);
    }

    #[test]
    fn a_terminal_status_gives_the_result_file_back_and_never_changes() {
        let a = op(1, "", Priority::Default, Status::Idle);
        let mut core = core(&[], std::slice::from_ref(&a));
        assert_eq!(core.registry.holder("f1"), Some(&"g1".to_string()));
        let mut st = a.lock();
        core.transition(&a, &mut st, Status::Canceled, StatusReason::Unspecified)
            .unwrap();
        assert_eq!(core.registry.holder("f1"), None);
        assert_eq!(core.queue.len(), 0);
        let err = core
            .transition(&a, &mut st, Status::Idle, StatusReason::WaitingForSlot)
            .unwrap_err();
        assert_eq!(err.from, Status::Canceled);
        assert_eq!(st.status(), Status::Canceled);
        assert_eq!(core.queue.len(), 0);
    }

    #[test]
    fn running_takes_a_slot_until_the_task_lets_go() {
        let a = op(1, "g", Priority::Default, Status::Idle);
        let mut core = core(&[], std::slice::from_ref(&a));
        let mut st = a.lock();
        st.task = Some(TaskHandle {
            stop: CancellationToken::new(),
            done: CancellationToken::new(),
        });
        core.transition(&a, &mut st, Status::Running, StatusReason::Unspecified)
            .unwrap();
        assert_eq!(core.slots.active(), 1);
        // A pause changes the status at once; the slot is held until the task has let go.
        core.transition(
            &a,
            &mut st,
            Status::PausedByApplication,
            StatusReason::PausedByClient,
        )
        .unwrap();
        assert_eq!(core.slots.active(), 1);
        core.let_go(&a, &mut st);
        assert_eq!(core.slots.active(), 0);
        assert!(st.task.is_none());
    }
}
