//! Direct writes: the whole blocks of each write go from the download's buffer straight to the
//! disk (`O_DIRECT`), past the page cache; only the partial blocks at its two ends are copied
//! into the page cache. A download's bytes count only once they are on the disk (every
//! checkpoint and the commit fsync them first), so the page cache's copy buys nothing on the
//! way there. Skipping it saves the copy, a fifth of the server's CPU on many small files
//! here, and keeps a large download from filling the page cache and pushing out what other
//! programs read. The fsyncs stay: a direct write may still sit in the disk's volatile cache,
//! and the file's size and block map are only made durable by the fsync.
//!
//! `O_DIRECT` needs the file offset, the length and the memory address aligned to the disk's
//! logical block size; [`ALIGN`] (4 KiB) is a multiple of every common one. A [`Buffer`] keeps
//! its bytes at the same offset modulo [`ALIGN`] in memory as in the file, so whole blocks are
//! written from where they were received, without a copy of our own either.
//!
//! A filesystem that does not take direct writes (ramfs, some FUSE and network filesystems)
//! refuses the flag or the write with EINVAL or EOPNOTSUPP; that file is then written through
//! the page cache, and the server says so once in its log. `--write-mode buffered` never tries.
//! The metrics count the bytes written each way.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::metrics;

/// The alignment of direct writes: of their file offset, their length and their memory.
pub(super) const ALIGN: usize = 4096;

/// How downloads write their partial files (`--write-mode`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// Whole blocks straight to the disk (O_DIRECT), past the page cache, where the
    /// filesystem takes it; the rest through the page cache.
    #[default]
    Direct,
    /// Everything through the page cache, which keeps a finished file's bytes cached for a
    /// program that reads it right away.
    Buffered,
}

/// A write buffer whose bytes sit in memory at the same offset modulo [`ALIGN`] as they go in
/// the file, so that its whole blocks can be written directly.
#[derive(Debug)]
pub(super) struct Buffer {
    /// `head` bytes of padding, then the bytes.
    vec: Vec<u8>,
    head: usize,
}

impl Buffer {
    /// An empty buffer for `capacity` bytes that go in the file from `at`.
    pub(super) fn new(capacity: usize, at: u64) -> Buffer {
        let mut buffer = Buffer {
            vec: Vec::with_capacity(capacity + ALIGN),
            head: 0,
        };
        buffer.reset(at);
        buffer
    }

    /// Empties it for bytes that go in the file from `at`.
    pub(super) fn reset(&mut self, at: u64) {
        self.head = padding(self.vec.as_ptr() as usize, at);
        self.vec.clear();
        self.vec.resize(self.head, 0);
    }

    /// The bytes it holds.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.vec[self.head..]
    }

    pub(super) fn len(&self) -> usize {
        self.vec.len() - self.head
    }

    /// Bytes it takes without growing, wherever they go in the file.
    pub(super) fn capacity(&self) -> usize {
        self.vec.capacity().saturating_sub(ALIGN)
    }

    /// Appends `bytes`. Growing moves what it holds to a larger buffer at the same offset
    /// modulo [`ALIGN`].
    pub(super) fn extend_from_slice(&mut self, bytes: &[u8]) {
        if self.vec.len() + bytes.len() > self.vec.capacity() {
            let wanted = (self.len() + bytes.len()).max(2 * self.capacity());
            let mut bigger = Vec::with_capacity(wanted + ALIGN);
            // Where the bytes sit now, modulo ALIGN, is where they go in the file.
            let phase = (self.vec.as_ptr() as usize + self.head) as u64;
            let head = padding(bigger.as_ptr() as usize, phase);
            bigger.resize(head, 0);
            bigger.extend_from_slice(self.bytes());
            self.vec = bigger;
            self.head = head;
        }
        self.vec.extend_from_slice(bytes);
    }
}

/// The bytes of padding after address `base` that put the next byte at the same offset modulo
/// [`ALIGN`] as file offset `at`.
fn padding(base: usize, at: u64) -> usize {
    let want = (at % ALIGN as u64) as usize;
    (want + ALIGN - base % ALIGN) % ALIGN
}

/// Whether one open file still takes direct writes, and whether its descriptor has `O_DIRECT`
/// set right now (writes through the page cache clear it first).
#[derive(Debug)]
pub(super) struct Direct {
    wanted: AtomicBool,
    on: AtomicBool,
}

impl Direct {
    pub(super) fn new(mode: WriteMode) -> Direct {
        Direct {
            wanted: AtomicBool::new(mode == WriteMode::Direct),
            on: AtomicBool::new(false),
        }
    }

    /// Direct writes are off for this file from now on, because the filesystem refused one.
    fn refused(&self, why: Errno) {
        self.wanted.store(false, Relaxed);
        static SAID: Once = Once::new();
        SAID.call_once(|| {
            tracing::info!(
                error = %io::Error::from(why),
                "the download directory's filesystem does not take direct writes (O_DIRECT); \
                 files there are written through the page cache"
            );
        });
    }

    /// Sets or clears `O_DIRECT` on `file` unless it is so already.
    fn set(&self, file: &File, on: bool) -> rustix::io::Result<()> {
        if self.on.load(Relaxed) == on {
            return Ok(());
        }
        let flags = rustix::fs::fcntl_getfl(file)?;
        let flags = if on {
            flags | OFlags::DIRECT
        } else {
            flags - OFlags::DIRECT
        };
        rustix::fs::fcntl_setfl(file, flags)?;
        self.on.store(on, Relaxed);
        Ok(())
    }
}

/// Whether `errno` is a filesystem saying it does not take a direct write (rather than a
/// failure of the disk or of the file).
fn not_taken(errno: Errno) -> bool {
    errno == Errno::INVAL || errno == Errno::NOTSUP
}

/// Writes all of `buf` at `at` in `file`: its whole blocks directly while `direct` allows and
/// `buf` lies in memory as it does in the file (a [`Buffer`]'s bytes do), the rest through the
/// page cache. Blocks.
pub(super) fn write_at(file: &File, direct: &Direct, buf: &[u8], at: u64) -> io::Result<()> {
    let (start, end) = whole_blocks(buf, at);
    let wrote = if start < end && direct.wanted.load(Relaxed) {
        write_direct(file, direct, &buf[start..end], at + start as u64)?
    } else {
        0
    };
    if wrote == 0 {
        write_buffered(file, direct, buf, at)?;
    } else {
        write_buffered(file, direct, &buf[..start], at)?;
        let rest = start + wrote;
        write_buffered(file, direct, &buf[rest..], at + rest as u64)?;
    }
    metrics::global().written(wrote as u64, (buf.len() - wrote) as u64);
    Ok(())
}

/// The part of `buf` (as indices) whose file offsets and memory addresses are both on the
/// [`ALIGN`] grid, in whole blocks; empty when there is none.
fn whole_blocks(buf: &[u8], at: u64) -> (usize, usize) {
    let addr = buf.as_ptr() as usize;
    if (addr % ALIGN) as u64 != at % ALIGN as u64 {
        return (0, 0);
    }
    // From `at` to the next multiple of ALIGN.
    let start = ((ALIGN - (at % ALIGN as u64) as usize) % ALIGN).min(buf.len());
    let end = start + (buf.len() - start) / ALIGN * ALIGN;
    (start, end)
}

/// Writes `blocks` (aligned in memory and in the file) at `at` with `O_DIRECT`; returns how many
/// bytes it wrote, fewer than all (down to none) where the filesystem stopped taking direct
/// writes. Blocks.
fn write_direct(file: &File, direct: &Direct, mut blocks: &[u8], mut at: u64) -> io::Result<usize> {
    let total = blocks.len();
    match direct.set(file, true) {
        Ok(()) => {}
        Err(errno) if not_taken(errno) => {
            direct.refused(errno);
            return Ok(0);
        }
        Err(errno) => return Err(errno.into()),
    }
    while !blocks.is_empty() {
        match file.write_at(blocks, at) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                blocks = &blocks[n..];
                at += n as u64;
                // A short write off the block grid: the rest goes through the page cache.
                if n % ALIGN != 0 {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => match e.raw_os_error().map(Errno::from_raw_os_error) {
                Some(errno) if not_taken(errno) => {
                    direct.refused(errno);
                    break;
                }
                _ => return Err(e),
            },
        }
    }
    Ok(total - blocks.len())
}

/// Writes `bytes` at `at` through the page cache. Blocks.
fn write_buffered(file: &File, direct: &Direct, bytes: &[u8], at: u64) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    direct.set(file, false)?;
    file.write_all_at(bytes, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn a_buffer_keeps_its_bytes_where_the_file_has_them_modulo_the_block() {
        for at in [0, 1, 511, 4095, 4096, 4097, 1 << 20, (1 << 20) + 12345] {
            let mut buffer = Buffer::new(10_000, at);
            buffer.extend_from_slice(&pattern(3, 1));
            let phase = |b: &Buffer| b.bytes().as_ptr() as usize % ALIGN;
            assert_eq!(phase(&buffer) as u64, at % ALIGN as u64, "at {at}");
            // Growing past the capacity moves the bytes and keeps the phase.
            let more = pattern(50_000, 2);
            buffer.extend_from_slice(&more);
            assert_eq!(phase(&buffer) as u64, at % ALIGN as u64, "grown, at {at}");
            assert_eq!(buffer.len(), 50_003);
            assert_eq!(&buffer.bytes()[..3], &pattern(3, 1)[..]);
            assert_eq!(&buffer.bytes()[3..], &more[..]);
            // Reset for another offset: empty, in that offset's phase.
            buffer.reset(at + 7);
            assert_eq!(buffer.len(), 0);
            assert_eq!(phase(&buffer) as u64, (at + 7) % ALIGN as u64);
            assert!(buffer.capacity() >= 50_003);
        }
    }

    #[test]
    fn whole_blocks_are_the_aligned_middle_of_a_write() {
        let buffer = |len: usize, at: u64| {
            let mut b = Buffer::new(len, at);
            b.extend_from_slice(&vec![7; len]);
            b
        };
        let b = buffer(64 * 1024, 0);
        assert_eq!(whole_blocks(b.bytes(), 0), (0, 64 * 1024));
        let b = buffer(10_000, 0);
        assert_eq!(whole_blocks(b.bytes(), 0), (0, 8192));
        let b = buffer(10_000, 100);
        assert_eq!(whole_blocks(b.bytes(), 100), (3996, 3996 + 4096));
        let b = buffer(3000, 100);
        let (start, end) = whole_blocks(b.bytes(), 100);
        assert_eq!(start, end, "no whole block in 100..3100");
        // Bytes whose memory is off the file's phase have no direct part.
        let b = buffer(10_000, 0);
        assert_eq!(whole_blocks(&b.bytes()[1..], 0), (0, 0));
    }

    /// Writes `body` into a fresh file at `offset` in pieces of `piece` bytes, each from its own
    /// [`Buffer`], and returns the file and the `Direct` state.
    fn write_in_pieces(path: &std::path::Path, body: &[u8], offset: u64, piece: usize) -> Direct {
        std::fs::write(path, vec![b'x'; offset as usize]).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let direct = Direct::new(WriteMode::Direct);
        let mut at = offset;
        for chunk in body.chunks(piece) {
            let mut buffer = Buffer::new(chunk.len(), at);
            buffer.extend_from_slice(chunk);
            write_at(&file, &direct, buffer.bytes(), at).unwrap();
            at += chunk.len() as u64;
        }
        file.sync_all().unwrap();
        direct
    }

    #[test]
    fn direct_and_buffered_parts_land_at_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let body = pattern(300_000, 9);
        for (offset, piece) in [
            (0, 65_536),
            (0, 100_000),
            (5, 4096),
            (4095, 70_001),
            (8192, 1),
        ] {
            let path = dir.path().join(format!("f-{offset}-{piece}"));
            let direct = write_in_pieces(&path, &body, offset, piece);
            let on_disk = std::fs::read(&path).unwrap();
            assert_eq!(on_disk.len(), offset as usize + body.len());
            assert!(on_disk[..offset as usize].iter().all(|&b| b == b'x'));
            assert!(
                on_disk[offset as usize..] == body[..],
                "offset {offset} piece {piece}"
            );
            // This test's directory is on a disk filesystem that takes direct writes (ext4,
            // tmpfs, xfs and btrfs all do): none was refused.
            assert!(direct.wanted.load(Relaxed), "offset {offset} piece {piece}");
        }
    }

    #[test]
    fn a_file_that_refuses_direct_writes_is_written_through_the_page_cache() {
        // /dev/null refuses O_DIRECT (EINVAL) and takes every ordinary write.
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        let direct = Direct::new(WriteMode::Direct);
        let mut buffer = Buffer::new(8192, 0);
        buffer.extend_from_slice(&pattern(8192, 3));
        write_at(&null, &direct, buffer.bytes(), 0).unwrap();
        assert!(
            !direct.wanted.load(Relaxed),
            "refused once, not tried again"
        );
        assert!(!direct.on.load(Relaxed));
        write_at(&null, &direct, buffer.bytes(), 8192).unwrap();
    }

    #[test]
    fn buffered_mode_never_sets_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let direct = Direct::new(WriteMode::Buffered);
        let mut buffer = Buffer::new(8192, 0);
        buffer.extend_from_slice(&pattern(8192, 4));
        write_at(&file, &direct, buffer.bytes(), 0).unwrap();
        let flags = rustix::fs::fcntl_getfl(&file).unwrap();
        assert!(!flags.contains(OFlags::DIRECT));
        assert_eq!(
            std::fs::read(dir.path().join("f")).unwrap(),
            pattern(8192, 4)
        );
    }

    #[test]
    fn the_flag_is_set_for_whole_blocks_and_cleared_for_the_edges() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let direct = Direct::new(WriteMode::Direct);
        let flagged = || {
            rustix::fs::fcntl_getfl(&file)
                .unwrap()
                .contains(OFlags::DIRECT)
        };
        // Whole blocks only: left set for the next write, which is likely whole blocks too.
        let mut buffer = Buffer::new(8192, 0);
        buffer.extend_from_slice(&pattern(8192, 5));
        write_at(&file, &direct, buffer.bytes(), 0).unwrap();
        assert!(flagged());
        // A tail: written through the page cache, the flag cleared first.
        buffer.reset(8192);
        buffer.extend_from_slice(&pattern(100, 6));
        write_at(&file, &direct, buffer.bytes(), 8192).unwrap();
        assert!(!flagged());
        let mut expected = pattern(8192, 5);
        expected.extend(pattern(100, 6));
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), expected);
    }
}
