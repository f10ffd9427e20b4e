//! The partial file's writer: a body's bytes are gathered in a buffer and written at their
//! offset (`pwrite`) on a blocking thread a buffer at a time, while the next buffer fills. A
//! sync writes what is buffered and fsyncs it in the same trip to a blocking thread, so a
//! body that fits in one buffer (every small download) costs one trip for its bytes and its
//! durability together, where a buffered `tokio::fs::File` takes two (the write, then the
//! fsync), each a wake of a blocking thread and of the transfer's task.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::body::WRITE_BUFFER_SIZE;

/// A write of one full buffer, running on a blocking thread; it hands the buffer back.
type Pending = JoinHandle<(io::Result<()>, Vec<u8>)>;

/// Writes a body into the partial file from `offset` on.
pub(super) struct PartialWriter {
    file: Arc<File>,
    /// Where `buf`'s first byte goes in the file.
    at: u64,
    buf: Vec<u8>,
    /// The previous full buffer's write, if it may still be running.
    pending: Option<Pending>,
    /// A write failed: bytes taken in are missing from the file, so no later sync may report
    /// anything durable.
    failed: bool,
}

impl PartialWriter {
    /// A writer of `file` from `offset`, for a body of about `expected` bytes (0: unknown),
    /// whose buffer never grows past [`WRITE_BUFFER_SIZE`].
    pub(super) fn new(file: File, offset: u64, expected: u64) -> PartialWriter {
        let first = usize::try_from(expected).map_or(WRITE_BUFFER_SIZE, |n| {
            if n == 0 {
                64 * 1024
            } else {
                n.min(WRITE_BUFFER_SIZE)
            }
        });
        PartialWriter {
            file: Arc::new(file),
            at: offset,
            buf: Vec::with_capacity(first),
            pending: None,
            failed: false,
        }
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
                let next = self.finish_pending().await?;
                let full = std::mem::replace(&mut self.buf, next);
                let (file, at) = (self.file.clone(), self.at);
                self.at += full.len() as u64;
                self.pending = Some(tokio::task::spawn_blocking(move || {
                    (file.write_all_at(&full, at), full)
                }));
            }
        }
        Ok(())
    }

    /// Whether a write failed, so that the file lacks bytes taken in.
    pub(super) fn failed(&self) -> bool {
        self.failed
    }

    /// Writes everything taken in and makes it durable (`fdatasync`): one trip to a blocking
    /// thread for both, after any full buffer still being written.
    pub(super) async fn sync(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(
                "an earlier write to the partial file failed",
            ));
        }
        let next = self.finish_pending().await?;
        let rest = std::mem::replace(&mut self.buf, next);
        let (file, at) = (self.file.clone(), self.at);
        let len = rest.len() as u64;
        let synced = tokio::task::spawn_blocking(move || {
            let synced = file.write_all_at(&rest, at).and_then(|()| file.sync_data());
            (synced, rest)
        })
        .await
        .map_err(io::Error::other)
        .and_then(|(synced, rest)| synced.map(|()| rest));
        let mut rest = self.failing(synced)?;
        self.at += len;
        if self.buf.capacity() < rest.capacity() {
            rest.clear();
            self.buf = rest;
        }
        Ok(())
    }

    /// Waits for the previous full buffer's write and returns an empty buffer to fill next
    /// (that one, reused, when there was one).
    async fn finish_pending(&mut self) -> io::Result<Vec<u8>> {
        let Some(pending) = self.pending.take() else {
            return Ok(Vec::with_capacity(self.buf.capacity()));
        };
        let written = pending
            .await
            .map_err(io::Error::other)
            .and_then(|(written, buf)| written.map(|()| buf));
        let mut buf = self.failing(written)?;
        buf.clear();
        Ok(buf)
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
        let mut writer = PartialWriter::new(file, 4, 0);
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
    async fn after_a_buffer_failed_to_be_written_no_sync_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial");
        let file = std::fs::File::create(&path).unwrap();
        let mut writer = PartialWriter::new(file, 0, 0);
        // A full buffer whose write failed in the background (as a full disk fails it); the
        // file itself still takes writes.
        writer.at = WRITE_BUFFER_SIZE as u64;
        writer.pending = Some(tokio::spawn(async {
            (Err(io::Error::other("no space left")), Vec::new())
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
        let mut writer = PartialWriter::new(file, 0, 10);
        writer.write(b"0123456789").await.unwrap();
        assert!(writer.sync().await.is_err());
    }
}
