//! Where one attempt stands in the entity across the requests it makes: the offset the next
//! body is written from, the entity length and validators known so far, the checkpoint the
//! engine holds, and the running SHA-256 of the bytes before the offset.

use std::path::Path;

use reqwest::StatusCode;

use super::segments::MIN_SEGMENT;
use super::{Failure, Hashing, Job, body};
use crate::operation::{ErrorReason, TransferError, Validators};
use crate::sha256::Hasher;

/// The largest body whose partial file is opened by its writer rather than before the body is
/// read. Opening cuts the file to the offset, so it must happen before another connection of a
/// segmented download writes past it: a connection with this little left of its entity is
/// never split (a split needs [`MIN_SEGMENT`] twice of what is left), so no other connection
/// writes there. Such a body also fits one write buffer, so its single trip opens, writes and
/// syncs.
pub(super) const DEFERRED_OPEN: u64 = body::WRITE_BUFFER_SIZE as u64;
const _: () = assert!(DEFERRED_OPEN < 2 * MIN_SEGMENT);

/// Where an attempt stands in the entity, across the requests it makes.
pub(super) struct Position {
    /// Where the next body is written: the resume offset, or 0.
    pub(super) offset: u64,
    /// The entity length known so far, 0 if unknown; a later answer may not forget it.
    pub(super) total: u64,
    /// Validators of the entity being written.
    pub(super) validators: Validators,
    /// Whether data was discarded since the last response was reported.
    pub(super) discarded: bool,
    /// The checkpoint the engine holds.
    pub(super) durable: u64,
    /// Whether the attempt hashes what it writes.
    pub(super) hashing: bool,
    /// The SHA-256 state of the file's first `offset` bytes, when hashing and known.
    pub(super) hasher: Option<Hasher>,
    /// The next request continues a range this attempt wrote up to `offset`.
    pub(super) continuing: bool,
}

impl Position {
    /// Start over from byte 0, of an entity not known yet.
    pub(super) fn restart(&mut self) {
        self.continuing = false;
        self.offset = 0;
        self.total = 0;
        self.discarded = true;
        self.hasher = None;
    }

    /// Takes the carried SHA-256 state if it is of exactly the bytes before `offset`; and
    /// whether, hashing without one, the partial file's prefix must be hashed first.
    fn resume_hash(&mut self) -> (Option<Hasher>, bool) {
        let carried = self.hasher.take();
        let resumed = carried.filter(|h| self.hashing && h.len() == self.offset);
        let hash_prefix = self.hashing && self.offset > 0 && resumed.is_none();
        if hash_prefix {
            tracing::debug!(
                offset = self.offset,
                "no SHA-256 state saved at the resume offset; hashing the partial file's prefix once"
            );
        }
        (resumed, hash_prefix)
    }
}

impl Position {
    /// Where an attempt starts: from the checkpoint if the file holds it (bytes beyond it are
    /// never trusted: they may not have reached the disk intact) and a validator can guard the
    /// resume; from byte 0 otherwise.
    pub(super) fn start(job: &Job<'_>, file_len: u64) -> Position {
        let mut at = Position {
            offset: job.checkpoint.min(file_len),
            total: job.total,
            validators: job.validators.clone(),
            discarded: job.checkpoint > file_len,
            durable: job.checkpoint,
            hashing: matches!(job.hashing, Hashing::On(_)),
            hasher: match job.hashing {
                Hashing::On(saved) => saved.clone(),
                Hashing::Off => None,
            },
            continuing: false,
        };
        if at.discarded {
            tracing::info!(
                file_len,
                "the partial file is shorter than its checkpoint; starting over"
            );
        }
        if at.offset > 0 && at.validators.if_range().is_none() {
            // Without a validator a Range request cannot detect a changed file: start over
            // rather than splice two versions together.
            tracing::info!(
                offset = at.offset,
                "no ETag or Last-Modified to resume safely with; starting over"
            );
            at.restart();
        }
        at
    }

    /// A 206 ended at `received`, short of the entity: the next request asks for the rest,
    /// guarded as any resume is.
    pub(super) fn continue_range(&mut self, received: u64) -> Result<(), Failure> {
        if self.validators.if_range().is_none() {
            return Err(Failure::transient(TransferError {
                message: format!(
                    "the server sent bytes up to {received} of {} without a validator to continue them safely",
                    self.total
                ),
                http_status: Some(StatusCode::PARTIAL_CONTENT.as_u16()),
                reason: ErrorReason::HttpStatus,
            }));
        }
        self.offset = received;
        self.continuing = true;
        Ok(())
    }

    /// Opens the partial file to write from `offset`, with the running hash of what lies
    /// before. Continuing a range (`ranged`), nothing lies past the offset but what other
    /// connections of a segmented download wrote there: it is kept, and the running hash goes
    /// on only if it covers exactly what lies before (otherwise the file is hashed at commit).
    /// A body of at most [`DEFERRED_OPEN`] bytes up to `end` leaves the opening to the body's
    /// writer, which opens the file, writes and syncs it in one trip to a blocking thread
    /// (unless the prefix must be hashed first).
    pub(super) async fn open(
        &mut self,
        partial: &Path,
        ranged: bool,
        end: u64,
    ) -> Result<body::Partial, Failure> {
        let (resumed, hash_prefix) = self.resume_hash();
        if std::mem::take(&mut self.continuing) && ranged {
            self.hasher = resumed;
            return body::open_segment(partial).await;
        }
        let defer = end > 0 && end.saturating_sub(self.offset) <= DEFERRED_OPEN;
        let (file, prefix) = body::open_partial(partial, self.offset, hash_prefix, defer).await?;
        self.hasher = resumed
            .or(prefix)
            .or_else(|| self.hashing.then(Hasher::new));
        Ok(file)
    }
}
