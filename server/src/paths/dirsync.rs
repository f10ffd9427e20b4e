//! Group fsync of directories. Many commits into one directory (thousands of small files into a
//! download directory) each need their new directory entry durable before COMPLETED is
//! published. One fsync of a directory makes durable every entry made in it before that fsync
//! started, so commits that arrive while one is running wait for it to end and then share the
//! next one, instead of queuing one fsync each: the group commit of the store, for directories.
//!
//! A caller's entry is covered only by an fsync that *started* after the caller linked it, so a
//! caller that arrives during an fsync never takes that one's result as its own.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard};

use rustix::io::Errno;

/// A directory, as the filesystem knows it: device and inode, so two paths (or two servers in
/// one process) naming one directory share its fsyncs.
type DirKey = (u64, u64);

/// The fsyncs of one directory.
#[derive(Debug, Default)]
struct Dir {
    /// Fsyncs started so far.
    started: u64,
    /// Fsyncs finished so far (`started - 1` while one runs, else `started`).
    finished: u64,
    /// The outcome of the latest finished fsync.
    last: Option<Errno>,
    /// Callers waiting on this directory, so its entry goes when the last leaves.
    callers: usize,
}

/// Every directory being synced, and the one condition its callers wait on.
#[derive(Default)]
struct Syncer {
    dirs: Mutex<HashMap<DirKey, Dir>>,
    finished: Condvar,
}

/// One syncer for the process: directories are shared by everything in it.
static SYNCER: LazyLock<Syncer> = LazyLock::new(Syncer::default);

/// Makes every entry made in the open directory `dir` so far durable, sharing an fsync with
/// other callers syncing the same directory at the same time. Blocks (run it off the async
/// workers, as the commit does).
pub fn sync_dir(dir: impl AsFd) -> io::Result<()> {
    let stat = rustix::fs::fstat(&dir)?;
    SYNCER.sync((stat.st_dev, stat.st_ino), || rustix::fs::fsync(&dir))
}

impl Syncer {
    fn lock(&self) -> MutexGuard<'_, HashMap<DirKey, Dir>> {
        self.dirs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for an fsync of `key` that starts after this call, running it (`fsync`) if no
    /// other caller does.
    fn sync(&self, key: DirKey, fsync: impl Fn() -> rustix::io::Result<()>) -> io::Result<()> {
        let mut dirs = self.lock();
        let dir = dirs.entry(key).or_default();
        dir.callers += 1;
        // The first fsync to start from now on: the next one, or the one after a running one.
        let ticket = dir.started + 1;
        let outcome = loop {
            let dir = dirs.get_mut(&key).expect("a directory with callers stays");
            if dir.finished >= ticket {
                // That fsync, or a later one (also started after this call), has ended.
                break dir.last;
            }
            if dir.started == dir.finished {
                dir.started += 1;
                drop(dirs);
                let result = fsync().err();
                dirs = self.lock();
                let dir = dirs.get_mut(&key).expect("a directory with callers stays");
                dir.finished = dir.started;
                dir.last = result;
                self.finished.notify_all();
                continue;
            }
            dirs = self.finished.wait(dirs).unwrap_or_else(|e| e.into_inner());
        };
        let dir = dirs.get_mut(&key).expect("a directory with callers stays");
        dir.callers -= 1;
        if dir.callers == 0 {
            dirs.remove(&key);
        }
        outcome.map_or(Ok(()), |e| Err(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Callers that arrive while an fsync runs share the next one: 16 callers that all arrive
    /// while the first caller's fsync is held open take exactly one more fsync between them,
    /// and none of them is answered by the fsync that was running when it arrived.
    #[test]
    fn callers_during_an_fsync_share_the_next_one() {
        const KEY: DirKey = (1, 1);
        let syncer = Arc::new(Syncer::default());
        let fsyncs = Arc::new(AtomicU64::new(0));
        let callers = |syncer: &Syncer| syncer.lock().get(&KEY).map_or(0, |d| d.callers);
        let first = {
            let (syncer, fsyncs) = (syncer.clone(), fsyncs.clone());
            std::thread::spawn(move || {
                syncer.sync(KEY, || {
                    fsyncs.fetch_add(1, Ordering::SeqCst);
                    // Held open until every other caller is waiting.
                    while callers(&syncer) < 17 {
                        std::thread::yield_now();
                    }
                    Ok(())
                })
            })
        };
        while callers(&syncer) < 1 {
            std::thread::yield_now();
        }
        let later: Vec<_> = (0..16)
            .map(|_| {
                let (syncer, fsyncs) = (syncer.clone(), fsyncs.clone());
                std::thread::spawn(move || {
                    syncer.sync(KEY, || {
                        fsyncs.fetch_add(1, Ordering::SeqCst);
                        Err(Errno::AGAIN)
                    })
                })
            })
            .collect();
        first.join().unwrap().unwrap();
        for thread in later {
            // Each got the outcome of the second fsync (which started after it arrived), not
            // the first one's success.
            let err = thread.join().unwrap().unwrap_err();
            assert_eq!(err.raw_os_error(), Some(Errno::AGAIN.raw_os_error()));
        }
        assert_eq!(fsyncs.load(Ordering::SeqCst), 2);
        assert!(syncer.lock().is_empty(), "idle directories are forgotten");
    }

    /// A failed fsync fails the callers it covers; the next caller gets a fresh fsync.
    #[test]
    fn a_failed_fsync_fails_its_callers_and_the_next_retries() {
        let syncer = Syncer::default();
        let err = syncer.sync((2, 2), || Err(Errno::IO)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::IO.raw_os_error()));
        syncer.sync((2, 2), || Ok(())).unwrap();
    }

    #[test]
    fn syncs_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        sync_dir(std::fs::File::open(dir.path()).unwrap()).unwrap();
    }
}
