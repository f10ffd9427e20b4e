//! The engine's side of a running attempt: what the fetcher reports (responses, bytes,
//! durable checkpoints of one stream or of segments) lands in the download's state, its
//! watchers and the store. A checkpoint and its SHA-256 state are stored in one write.

use std::sync::Arc;

use super::Engine;
use super::download::Op;
use crate::fetch::{Observer, ResponseStart};
use crate::operation::{ResponseInfo, Segment};
use crate::sha256::Hasher;

/// The largest whole body whose checkpoint is not stored before its commit when no checkpoint
/// of it was stored yet: a small file arrives at once, and storing that checkpoint would cost
/// every small download a store write to save a crash in the next milliseconds from fetching
/// at most this much again.
const UNSTORED_WHOLE_BODY: u64 = 8 * 1024 * 1024;

/// The engine's side of a running attempt.
pub(super) struct Progressor<'a> {
    pub(super) engine: &'a Engine,
    pub(super) op: &'a Arc<Op>,
}

impl Observer for Progressor<'_> {
    fn response(&self, start: ResponseStart) {
        let ResponseStart {
            info,
            validators,
            total,
            offset,
            restarted,
        } = start;
        let mut st = self.op.lock();
        st.responses += 1;
        let status = info.status_code;
        if restarted {
            st.restarts += 1;
            crate::metrics::global().restart();
            // The fetcher logged why it could not continue.
            tracing::info!(status, total, "restarted from byte 0");
        } else if offset > 0 {
            tracing::info!(status, offset, total, "resumed from byte {offset}");
        } else {
            tracing::info!(status, total, "started from byte 0");
        }
        st.bytes = offset;
        st.total = total;
        st.validators = validators;
        st.response = Some(info);
        self.op.publish(&st);
    }

    fn error_response(&self, info: ResponseInfo) {
        let mut st = self.op.lock();
        st.responses += 1;
        st.response = Some(info);
        self.op.publish(&st);
    }

    fn progress(&self, bytes_received: u64) {
        self.op.lock().bytes = bytes_received;
    }

    fn tick(&self) {
        let st = self.op.lock();
        self.op.publish(&st);
    }

    async fn durable(&self, bytes: u64, sha256: Option<&Hasher>) {
        let (whole, from_zero) = {
            // One store write carries both, so the saved state always describes the
            // checkpointed bytes.
            let mut st = self.op.lock();
            let from_zero = st.checkpoint == 0;
            st.checkpoint = bytes;
            st.sha256 = sha256.cloned();
            st.segments.clear();
            // Every few seconds of a long transfer: at DEBUG the log shows it moving.
            tracing::debug!(bytes, total = st.total, "checkpoint");
            (bytes > 0 && bytes == st.total, from_zero)
        };
        if whole && from_zero && bytes <= UNSTORED_WHOLE_BODY {
            // The end of the transfer stores it, with its status, a moment later; a crash
            // before that starts it again from byte 0, as the stored checkpoint says.
            return;
        }
        let (engine, op) = (self.engine.clone(), self.op.clone());
        let store = async move {
            if let Err(e) = engine.persist(&op).await {
                tracing::warn!(error = %e, "checkpoint not stored; the previous one stands");
            }
        };
        if whole {
            // The whole body is durable: verify and commit go on while this is stored, and
            // the write at the end of the transfer follows it (writes of one download are
            // serialised and each stores the latest state). Waiting would hold the slot for a
            // store commit that a crash does not need: a committed file is recognised by its
            // second name, an uncommitted one resumes from the last stored checkpoint.
            self.engine.inner.tasks.spawn(store);
        } else {
            store.await;
        }
    }

    async fn durable_segments(&self, segments: Vec<Segment>, sha256: Option<&Hasher>) {
        {
            let mut st = self.op.lock();
            st.checkpoint = segments.iter().map(|s| s.durable).sum();
            tracing::debug!(
                bytes = st.checkpoint,
                segments = segments.len(),
                "segments checkpointed"
            );
            st.segments = segments;
            // The state of the durable prefix: a resume goes on hashing from there.
            st.sha256 = sha256.cloned();
        }
        if let Err(e) = self.engine.persist(self.op).await {
            tracing::warn!(error = %e, "segment checkpoint not stored; the previous one stands");
        }
    }
}
