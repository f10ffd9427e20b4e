//! The partial file's writer: a body's bytes are gathered in a buffer and written at their
//! offset (`pwrite`) on a blocking thread a buffer at a time, while the next buffer fills. A
//! sync writes what is buffered and fsyncs it in the same trip to a blocking thread, so a
//! body that fits in one buffer (every small download) costs one trip for its bytes and its
//! durability together, where a buffered `tokio::fs::File` takes two (the write, then the
//! fsync), each a wake of a blocking thread and of the transfer's task. A file not opened yet
//! ([`Partial::ToOpen`]) is opened in the first of those trips, so a small download's open,
//! write and fsync are one trip.
//!
//! Each trip writes the buffer's whole blocks straight to the disk and the rest through the page
//! cache, unless `--write-mode buffered` (see `direct.rs`); the buffers keep their bytes aligned
//! in memory as in the file for that.
//!
//! A download with an expected SHA-256 hashes its bytes in those same trips, after writing
//! them and in file order (a writer's trips run one at a time). The hash then runs on the
//! blocking thread while the transfer's task receives the next buffer, instead of between
//! its reads: hashing and receiving overlap.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use tokio::task::JoinHandle;

use super::body::{Partial, WRITE_BUFFER_SIZE, open_at};
use super::direct::{self, Buffer, Direct, WriteMode};
use crate::sha256::Hasher;

/// A write of one full buffer, running on a blocking thread; it hands the buffer back, and
/// the running hash, which then covers the buffer if the write succeeded.
type Pending = JoinHandle<Trip>;

/// What a trip to a blocking thread hands back.
struct Trip {
    result: io::Result<()>,
    buf: Buffer,
    hasher: Option<Hasher>,
}

/// Writes `buf` at `at` and hashes it after a successful write. Blocks.
fn write_and_hash(
    file: &Target,
    buf: &[u8],
    at: u64,
    hasher: &mut Option<Hasher>,
) -> io::Result<()> {
    direct::write_at(file.get()?, &file.direct, buf, at)?;
    if let Some(hasher) = hasher.as_mut() {
        hasher.update(buf);
    }
    Ok(())
}

/// The partial file, opened by the first blocking trip that needs it. Only one trip of a
/// writer runs at a time, so it is opened once.
struct Target {
    file: OnceLock<File>,
    /// Where to open it, and the offset to cut it to, if it was not open from the start.
    open: Option<(PathBuf, u64)>,
    /// Whether its whole blocks are written directly.
    direct: Direct,
}

impl Target {
    /// The file, opening it first if it is not open yet. Blocks.
    fn get(&self) -> io::Result<&File> {
        if let Some(file) = self.file.get() {
            return Ok(file);
        }
        let Some((path, offset)) = &self.open else {
            return Err(io::Error::other(
                "the partial file is neither open nor to be opened",
            ));
        };
        let opened = open_at(path, *offset)?;
        Ok(self.file.get_or_init(|| opened))
    }
}

/// Writes a body into the partial file from `offset` on.
pub(super) struct PartialWriter {
    file: Arc<Target>,
    /// Where `buf`'s first byte goes in the file.
    at: u64,
    buf: Buffer,
    /// The previous full buffer's write, if it may still be running.
    pending: Option<Pending>,
    /// A write failed: bytes taken in are missing from the file, so no later sync may report
    /// anything durable.
    failed: bool,
    /// The SHA-256 state of the file's bytes before the next one to be written, when the
    /// download hashes; away with a trip while one runs.
    hasher: Option<Hasher>,
}

impl PartialWriter {
    /// A writer of `file` from `offset`, for a body of about `expected` bytes (0: unknown),
    /// whose buffer never grows past [`WRITE_BUFFER_SIZE`]. With a `hasher` (the state of the
    /// file's first `offset` bytes), every byte written is hashed too.
    pub(super) fn new(
        file: Partial,
        offset: u64,
        expected: u64,
        hasher: Option<Hasher>,
        mode: WriteMode,
    ) -> PartialWriter {
        let first = usize::try_from(expected).map_or(WRITE_BUFFER_SIZE, |n| {
            if n == 0 {
                64 * 1024
            } else {
                n.min(WRITE_BUFFER_SIZE)
            }
        });
        let target = match file {
            Partial::Open(file) => Target {
                file: OnceLock::from(file),
                open: None,
                direct: Direct::new(mode),
            },
            Partial::ToOpen { path, offset } => Target {
                file: OnceLock::new(),
                open: Some((path, offset)),
                direct: Direct::new(mode),
            },
        };
        PartialWriter {
            file: Arc::new(target),
            at: offset,
            buf: Buffer::new(first, offset),
            pending: None,
            failed: false,
            hasher,
        }
    }

    /// The SHA-256 state of every byte taken in, right after a [`sync`](Self::sync) that
    /// succeeded; `None` when not hashing, or once a write failed.
    pub(super) fn hasher(&self) -> Option<&Hasher> {
        self.hasher.as_ref()
    }

    /// Gives the running hash back (see [`hasher`](Self::hasher)).
    pub(super) fn into_hasher(self) -> Option<Hasher> {
        self.hasher
    }

    /// Takes `bytes` in; a full buffer goes to the disk while the next one fills (waiting for
    /// the buffer before it, so at most two are held).
    pub(super) async fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let room = WRITE_BUFFER_SIZE - self.buf.len();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.buf.extend_from_slice(now);
            bytes = later;
            if self.buf.len() == WRITE_BUFFER_SIZE {
                let next = self
                    .finish_pending(self.at + WRITE_BUFFER_SIZE as u64)
                    .await?;
                let full = std::mem::replace(&mut self.buf, next);
                let (file, at, mut hasher) = (self.file.clone(), self.at, self.hasher.take());
                self.at += full.len() as u64;
                self.pending = Some(tokio::task::spawn_blocking(move || {
                    let result = write_and_hash(&file, full.bytes(), at, &mut hasher);
                    Trip {
                        result,
                        buf: full,
                        hasher,
                    }
                }));
            }
        }
        Ok(())
    }

    /// Whether a write failed, so that the file lacks bytes taken in.
    pub(super) fn failed(&self) -> bool {
        self.failed
    }

    /// What a failure of this writer says: that the file could not be opened, if it is still
    /// not open, and `otherwise` if it is.
    pub(super) fn failed_at<'a>(&self, otherwise: &'a str) -> &'a str {
        if self.file.file.get().is_some() {
            otherwise
        } else {
            super::body::OPEN_FAILED
        }
    }

    /// Writes everything taken in and makes it durable (`fdatasync`): one trip to a blocking
    /// thread for both, after any full buffer still being written.
    pub(super) async fn sync(&mut self) -> io::Result<()> {
        self.write_out(true).await
    }

    /// Writes everything taken in, without making it durable: one trip to a blocking thread,
    /// after any full buffer still being written.
    pub(super) async fn flush(&mut self) -> io::Result<()> {
        self.write_out(false).await
    }

    /// Writes everything taken in, and with `sync` makes it durable.
    async fn write_out(&mut self, sync: bool) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(
                "an earlier write to the partial file failed",
            ));
        }
        let next = self.finish_pending(self.at + self.buf.len() as u64).await?;
        let rest = std::mem::replace(&mut self.buf, next);
        let (file, at, mut hasher) = (self.file.clone(), self.at, self.hasher.take());
        let len = rest.len() as u64;
        let synced = tokio::task::spawn_blocking(move || {
            let result = write_and_hash(&file, rest.bytes(), at, &mut hasher).and_then(|()| {
                if sync {
                    file.get().and_then(File::sync_data)
                } else {
                    Ok(())
                }
            });
            Trip {
                result,
                buf: rest,
                hasher,
            }
        })
        .await;
        let mut rest = self.returned(synced)?;
        self.at += len;
        if self.buf.capacity() < rest.capacity() {
            rest.reset(self.at);
            self.buf = rest;
        }
        Ok(())
    }

    /// Waits for the previous full buffer's write and returns an empty buffer to fill next,
    /// for bytes that go in the file from `at` (that one, reused, when there was one).
    async fn finish_pending(&mut self, at: u64) -> io::Result<Buffer> {
        let Some(pending) = self.pending.take() else {
            return Ok(Buffer::new(self.buf.capacity(), at));
        };
        let written = pending.await;
        let mut buf = self.returned(written)?;
        buf.reset(at);
        Ok(buf)
    }

    /// Takes back what a trip handed over: its buffer if it succeeded, and the running hash.
    fn returned(&mut self, trip: Result<Trip, tokio::task::JoinError>) -> io::Result<Buffer> {
        let result = trip.map_err(io::Error::other).and_then(|trip| {
            self.hasher = trip.hasher;
            trip.result.map(|()| trip.buf)
        });
        if result.is_err() {
            // The hash no longer follows the file: a resume hashes what is durable instead.
            self.hasher = None;
        }
        self.failing(result)
    }

    /// Passes `result` on, remembering a failure for good.
    fn failing<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        self.failed |= result.is_err();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_land_at_their_offsets_across_full_buffers_and_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial");
        std::fs::write(&path, b"0123456789").unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mut writer = PartialWriter::new(Partial::Open(file), 4, 0, None, WriteMode::Direct);
        // Two and a half buffers, in pieces that straddle the buffer's end, then a sync, then
        // more after it.
        let body: Vec<u8> = (0..WRITE_BUFFER_SIZE * 5 / 2)
            .map(|i| (i % 251) as u8)
            .collect();
        for piece in body.chunks(100_000) {
            writer.write(piece).await.unwrap();
        }
        writer.sync().await.unwrap();
        writer.write(b"tail").await.unwrap();
        writer.sync().await.unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[..4], b"0123");
        assert_eq!(&on_disk[4..4 + body.len()], &body[..]);
        assert_eq!(&on_disk[4 + body.len()..], b"tail");
    }

    #[tokio::test]
    async fn the_running_hash_follows_every_byte_written_across_buffers_and_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial");
        std::fs::write(&path, b"prefix").unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mut start = Hasher::new();
        start.update(b"prefix");
        let mut writer =
            PartialWriter::new(Partial::Open(file), 6, 0, Some(start), WriteMode::Direct);
        let body: Vec<u8> = (0..WRITE_BUFFER_SIZE * 3 + 17)
            .map(|i| (i % 253) as u8)
            .collect();
        let (first, second) = body.split_at(WRITE_BUFFER_SIZE + 5);
        for piece in first.chunks(70_000) {
            writer.write(piece).await.unwrap();
        }
        writer.sync().await.unwrap();
        let hashed = writer.hasher().expect("hashing").clone();
        assert_eq!(hashed.len(), 6 + first.len() as u64);
        let mut expected = Hasher::new();
        expected.update(b"prefix");
        expected.update(first);
        assert_eq!(
            hashed.hex(),
            expected.hex(),
            "the state at a sync covers what it made durable"
        );
        for piece in second.chunks(90_000) {
            writer.write(piece).await.unwrap();
        }
        writer.sync().await.unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        let digest = writer.into_hasher().expect("hashing");
        assert_eq!(digest.len(), on_disk.len() as u64);
        assert_eq!(digest.hex(), crate::paths::sha256_file(&path).unwrap());
    }

    #[tokio::test]
    async fn a_failed_write_drops_the_running_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial");
        std::fs::write(&path, b"").unwrap();
        // Opened read-only: every write fails, and the hash no longer follows the file.
        let file = std::fs::File::open(&path).unwrap();
        let mut writer = PartialWriter::new(
            Partial::Open(file),
            0,
            10,
            Some(Hasher::new()),
            WriteMode::Direct,
        );
        writer.write(b"0123456789").await.unwrap();
        assert!(writer.sync().await.is_err());
        assert!(writer.hasher().is_none());
    }

    #[tokio::test]
    async fn a_file_to_open_is_opened_and_cut_to_its_offset_by_the_first_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::paths::PARTIAL_DIR).join("a-guid");
        // Not there yet: the sync creates it (and its directory) with the bytes.
        let fresh = Partial::ToOpen {
            path: path.clone(),
            offset: 0,
        };
        let mut writer = PartialWriter::new(fresh, 0, 5, None, WriteMode::Direct);
        writer.write(b"hello").await.unwrap();
        assert!(
            !path.exists(),
            "nothing is opened before a trip needs the file"
        );
        writer.sync().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        // There, and longer than the offset: what lies past it is dropped, what lies before kept.
        std::fs::write(&path, b"0123456789").unwrap();
        let resumed = Partial::ToOpen {
            path: path.clone(),
            offset: 4,
        };
        let mut writer = PartialWriter::new(resumed, 4, 2, None, WriteMode::Direct);
        writer.write(b"ab").await.unwrap();
        writer.sync().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"0123ab");
        // A body that ends before its first byte still leaves the file, cut to the offset.
        std::fs::write(&path, b"0123456789").unwrap();
        let empty = Partial::ToOpen {
            path: path.clone(),
            offset: 3,
        };
        PartialWriter::new(empty, 3, 0, None, WriteMode::Direct)
            .sync()
            .await
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"012");
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_opened_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        // The staging directory's place is taken by a file: the open fails.
        std::fs::write(dir.path().join(crate::paths::PARTIAL_DIR), b"").unwrap();
        let path = dir.path().join(crate::paths::PARTIAL_DIR).join("a-guid");
        let mut writer = PartialWriter::new(
            Partial::ToOpen { path, offset: 0 },
            0,
            3,
            None,
            WriteMode::Direct,
        );
        writer.write(b"abc").await.unwrap();
        assert!(writer.sync().await.is_err());
        assert_eq!(writer.failed_at("syncing"), super::super::body::OPEN_FAILED);
        // An open file's failure says what failed.
        let path = dir.path().join("read-only");
        std::fs::write(&path, b"").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut writer = PartialWriter::new(Partial::Open(file), 0, 3, None, WriteMode::Direct);
        writer.write(b"abc").await.unwrap();
        assert!(writer.sync().await.is_err());
        assert_eq!(writer.failed_at("syncing"), "syncing");
    }

    #[tokio::test]
    async fn after_a_buffer_failed_to_be_written_no_sync_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial");
        let file = std::fs::File::create(&path).unwrap();
        let mut writer = PartialWriter::new(Partial::Open(file), 0, 0, None, WriteMode::Direct);
        // A full buffer whose write failed in the background (as a full disk fails it); the
        // file itself still takes writes.
        writer.at = WRITE_BUFFER_SIZE as u64;
        writer.pending = Some(tokio::spawn(async {
            Trip {
                result: Err(io::Error::other("no space left")),
                buf: Buffer::new(0, 0),
                hasher: None,
            }
        }));
        writer.write(b"after").await.unwrap();
        assert!(writer.sync().await.is_err(), "the failure surfaces");
        // Its bytes are missing from the file: nothing after may be reported durable.
        writer.write(b"more").await.unwrap();
        assert!(writer.sync().await.is_err());
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_by_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial");
        std::fs::write(&path, b"").unwrap();
        // Opened read-only: every write fails.
        let file = std::fs::File::open(&path).unwrap();
        let mut writer = PartialWriter::new(Partial::Open(file), 0, 10, None, WriteMode::Direct);
        writer.write(b"0123456789").await.unwrap();
        assert!(writer.sync().await.is_err());
    }
}
