//! ReadResult: a download's bytes for any client, so one that queued a download does not need to
//! share the server's volume to get what it fetched.
//!
//! A COMPLETED download's result file is read as committed: opened beneath the tenant's
//! directory, and refused if it is no longer the size transferd committed. With `follow`, a
//! download that has not completed is read from its partial file as far as its checkpoint (the
//! bytes fsynced there, which never change while the entity stays the same; for a download
//! fetched over several connections, the durable bytes up to the first gap), and the reader
//! waits for more; the commit links that same file to the result path, so an open reader reads
//! on to the end. If the download starts over (its origin's entity changed), fails, or is
//! canceled, the stream ends with [`Error::ReadAborted`]: what it sent is not a whole result.
//! With replicas, a replica that takes a download over from a lost holder goes on in a copy of
//! its partial file, under a new name: a reader that finds its file ending early opens the
//! download's current file once, and aborts only if that one ends early too.
//!
//! Each read runs as a task of its own that sends chunks into a small channel, so a slow client
//! holds at most a few chunks in memory, and a client that goes away ends the task.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Engine;
use super::download::{Op, OpState};
use crate::auth::Caller;
use crate::error::Error;
use crate::operation::Status;
use crate::paths;

/// Largest chunk sent: large enough that per-message costs vanish next to the copy, well under
/// gRPC's default 4 MiB message limit, and small enough that a slow client costs little memory.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Chunks read ahead of a client that has not taken them yet.
const READ_AHEAD: usize = 2;

/// How often a follower looks at the checkpoint when no progress is published (checkpoints
/// are not always published at once).
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// What to read.
#[derive(Clone, Copy, Debug)]
pub struct ReadRange {
    /// First byte.
    pub offset: u64,
    /// Bytes to read; 0 reads to the end.
    pub length: u64,
    /// Also read a download that has not completed, as its bytes become durable.
    pub follow: bool,
}

/// A piece of the result.
#[derive(Debug)]
pub struct Chunk {
    /// Where `data` starts in the result.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
}

/// The chunks of one read, ending early with the error that stopped it.
pub type Chunks = ReceiverStream<Result<Chunk, Error>>;

impl Engine {
    /// Streams the bytes `range` asks for of a download of the caller's tenant. Fails at once
    /// (nothing streamed) for a download that is not COMPLETED without `follow`, that ended
    /// without a result, or for an offset past the end of a result.
    pub fn read_result(
        &self,
        caller: &Caller,
        guid: &str,
        range: ReadRange,
    ) -> Result<Chunks, Error> {
        let op = self.op(caller, guid)?;
        let (status, size) = {
            let st = op.lock();
            (st.status(), st.checkpoint)
        };
        match status {
            Status::Completed if range.offset > size => {
                return Err(Error::ReadOutOfRange {
                    guid: guid.into(),
                    offset: range.offset,
                    size,
                });
            }
            Status::Completed => {}
            status if status.is_terminal() || !range.follow => {
                return Err(Error::NotReadable {
                    guid: guid.into(),
                    status,
                });
            }
            _ => {}
        }
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let reader = Reader {
            engine: self.clone(),
            op,
            end: (range.length > 0).then(|| range.offset.saturating_add(range.length)),
            at: range.offset,
            tx,
        };
        // Not one of the engine's tracked tasks: it holds nothing shutdown must wait for, and a
        // client that stops reading must not hold shutdown up.
        tokio::spawn(reader.run());
        Ok(ReceiverStream::new(rx))
    }
}

/// One ReadResult in progress.
struct Reader {
    engine: Engine,
    op: Arc<Op>,
    /// Where the read stops, if before the end of the result.
    end: Option<u64>,
    /// The next byte to send.
    at: u64,
    tx: mpsc::Sender<Result<Chunk, Error>>,
}

/// How far a download's file can be read from its start: every byte before it is durable and
/// belongs to the entity. For one stream that is its checkpoint; a segmented download's
/// checkpoint is the sum of its segments' durable bytes, so only its contiguous durable prefix
/// counts (what lies past the first gap is not there yet).
fn readable(st: &OpState) -> u64 {
    if st.segments.is_empty() || st.status() == Status::Completed {
        return st.checkpoint;
    }
    let mut segments = st.segments.clone();
    segments.sort_by_key(|s| s.start);
    let mut prefix = 0;
    for segment in segments {
        if segment.start != prefix {
            break;
        }
        prefix = segment.resume();
        if prefix < segment.end {
            break;
        }
    }
    prefix
}

/// Why a file could not be opened.
enum Opened {
    /// The result file of a COMPLETED download.
    Result(io::Error),
    /// The partial file is not there: the download may have completed meanwhile.
    PartialGone,
    /// The partial file.
    Partial(io::Error),
}

/// Where a follower stands after looking at the download.
enum Next {
    /// Bytes up to here can be read now.
    Read(u64),
    /// Nothing more to read yet.
    Wait,
    /// Everything asked for was sent.
    Done,
}

impl Reader {
    async fn run(mut self) {
        if let Err(e) = self.send_all().await {
            // The client may be gone; then there is no one to tell.
            let _ = self.tx.send(Err(e)).await;
        }
    }

    async fn send_all(&mut self) -> Result<(), Error> {
        let restarts = self.op.lock().restarts;
        let mut changes = self.op.hub.changes();
        let mut file = None;
        let mut reopened = false;
        loop {
            match self.next(restarts)? {
                Next::Done => return Ok(()),
                Next::Read(upto) => {
                    let file = match &mut file {
                        Some(file) => file,
                        None => file.insert(self.open().await?),
                    };
                    let data = match self.read(file, upto).await? {
                        Some(data) => data,
                        // The file ends early: with replicas, a replica that took the
                        // download over from a lost holder writes a copy of it under a new
                        // name. The copy is read from here on; if it too ends early, the bytes
                        // are not what was promised.
                        None if !reopened => {
                            reopened = true;
                            *file = self.open().await?;
                            continue;
                        }
                        None => {
                            return Err(self.aborted("the file was cut short while it was read"));
                        }
                    };
                    reopened = false;
                    // Bytes read while the download started over may be the new entity's: they
                    // are sent only if no restart happened before they were read (a restart is
                    // counted before anything new is written).
                    if self.op.lock().restarts != restarts {
                        return Err(self.aborted("the download started over"));
                    }
                    let len = data.len() as u64;
                    let chunk = Chunk {
                        offset: self.at,
                        data,
                    };
                    if self.tx.send(Ok(chunk)).await.is_err() {
                        return Ok(());
                    }
                    self.at += len;
                }
                Next::Wait => {
                    tokio::select! {
                        _ = changes.changed() => {}
                        () = tokio::time::sleep(FOLLOW_POLL) => {}
                        () = self.tx.closed() => return Ok(()),
                        () = self.engine.inner.shutdown.cancelled() => {
                            return Err(Error::ShuttingDown);
                        }
                    }
                }
            }
        }
    }

    /// What can be read now, from the download's status and checkpoint.
    fn next(&self, restarts: u64) -> Result<Next, Error> {
        let (status, durable, now_restarts) = {
            let st = self.op.lock();
            (st.status(), readable(&st), st.restarts)
        };
        if now_restarts != restarts || durable < self.at && status != Status::Completed {
            return Err(self.aborted("the download started over"));
        }
        let upto = self.end.map_or(durable, |end| end.min(durable));
        if self.at < upto {
            return Ok(Next::Read(upto));
        }
        if self.end.is_some_and(|end| self.at >= end) {
            return Ok(Next::Done);
        }
        match status {
            Status::Completed => Ok(Next::Done),
            Status::Canceled => Err(self.aborted("the download was canceled")),
            Status::Error => Err(self.aborted("the download failed")),
            _ => Ok(Next::Wait),
        }
    }

    /// Opens what holds the bytes now: the result file of a COMPLETED download (checked to be
    /// the size committed), else the partial file; if that is gone, the download may have
    /// completed meanwhile, so its result is tried.
    async fn open(&self) -> Result<tokio::fs::File, Error> {
        match self.try_open().await {
            Err(Opened::PartialGone) => match self.try_open().await {
                Err(Opened::PartialGone) => {
                    Err(self.aborted("its partial file is gone, and it has not completed"))
                }
                opened => opened.map_err(|e| self.open_error(e)),
            },
            opened => opened.map_err(|e| self.open_error(e)),
        }
    }

    fn open_error(&self, e: Opened) -> Error {
        match e {
            Opened::PartialGone => self.aborted("its partial file is gone"),
            Opened::Result(e) => self.unreadable(&e),
            Opened::Partial(e) => self.aborted(&format!("its partial file cannot be read: {e}")),
        }
    }

    async fn try_open(&self) -> Result<tokio::fs::File, Opened> {
        let spec = &self.op.spec;
        let download_dir = self.engine.inner.config.download_dir.clone();
        let (tenant, result_file) = (spec.tenant.clone(), spec.result_file.clone());
        let partial = self.engine.partial_of(&self.op);
        // With replicas, the download's current file is the one of its newest lease: the
        // holder may be another replica, and this one may not have heard which lease that is.
        let newest = self
            .engine
            .inner
            .cluster
            .is_some()
            .then(|| spec.guid.clone());
        let (completed, size) = {
            let st = self.op.lock();
            (st.status() == Status::Completed, st.checkpoint)
        };
        let opened = tokio::task::spawn_blocking(move || {
            if completed {
                let file = paths::open_result(&download_dir, &tenant, &result_file)?;
                let len = file.metadata()?.len();
                if len != size {
                    return Err(io::Error::other(format!(
                        "it has {len} bytes, not the {size} transferd committed: it was changed outside transferd"
                    )));
                }
                Ok(file)
            } else {
                let partial = match newest {
                    Some(guid) => paths::partial_epochs(&download_dir, &guid)?
                        .first()
                        .map_or(partial, |&epoch| {
                            paths::partial_path_at(&download_dir, &guid, Some(epoch))
                        }),
                    None => partial,
                };
                paths::open_partial_for_reading(&partial)
            }
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        match opened {
            Ok(file) => Ok(tokio::fs::File::from_std(file)),
            Err(e) if completed => Err(Opened::Result(e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Opened::PartialGone),
            Err(e) => Err(Opened::Partial(e)),
        }
    }

    /// Reads the next chunk: from `self.at`, at most [`CHUNK_SIZE`] bytes and no further than
    /// `upto`; `None` if the file ends before that.
    async fn read(&self, file: &mut tokio::fs::File, upto: u64) -> Result<Option<Bytes>, Error> {
        let want = usize::try_from(upto - self.at).map_or(CHUNK_SIZE, |n| n.min(CHUNK_SIZE));
        let mut buf = BytesMut::zeroed(want);
        let read = async {
            file.seek(io::SeekFrom::Start(self.at)).await?;
            file.read_exact(&mut buf).await?;
            Ok::<_, io::Error>(())
        };
        match read.await {
            Ok(()) => Ok(Some(buf.freeze())),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(self.unreadable(&e)),
        }
    }

    fn aborted(&self, reason: &str) -> Error {
        Error::ReadAborted {
            guid: self.op.spec.guid.clone(),
            reason: reason.into(),
        }
    }

    fn unreadable(&self, e: &io::Error) -> Error {
        let reason = match e.kind() {
            io::ErrorKind::NotFound => "it is no longer there (removed outside transferd)".into(),
            _ => e.to_string(),
        };
        Error::ResultUnreadable {
            guid: self.op.spec.guid.clone(),
            path: self.op.spec.result_file.clone(),
            reason,
        }
    }
}
