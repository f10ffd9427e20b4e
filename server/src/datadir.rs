//! The data-directory lock: one transferd per `--data-dir`. Two processes on one directory
//! would run the same downloads into the same partial files and commit holes, so the second
//! refuses to start before it opens the store. The lock is an `flock` on
//! `<data-dir>/transferd.lock`, which the kernel releases when the process dies however it dies
//! (even SIGKILL), so a crash never leaves a stale lock behind; the file's content (the holder's
//! pid) only serves the message.
//!
//! The directory holds the store, and the store holds the downloads' secrets (their
//! credentials), so a directory transferd creates is private to its user ([`create_private`]).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "transferd.lock";

/// Mode of a data directory transferd creates: only its own user may list or enter it. A
/// directory that already exists keeps the mode its operator gave it.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents with [`PRIVATE_DIR_MODE`] (less the umask); an
/// existing directory is left as it is.
pub fn create_private(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "data directory {} is in use by another transferd{}; stop it or choose another --data-dir",
        dir.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held {
        /// The data directory.
        dir: PathBuf,
        /// The holder's pid, if it wrote one.
        pid: Option<u32>,
    },
    /// The lock file could not be created, locked or written.
    #[error("cannot lock data directory {}: {source}{}", dir.display(), permission_hint(source, dir))]
    Io {
        /// The data directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// For a permission error on `dir`: who transferd runs as and how to give it the directory,
/// since the usual cause is a volume or bind mount owned by another uid (the container image
/// runs as its own). Empty for any other error.
pub(crate) fn permission_hint(e: &std::io::Error, dir: &Path) -> String {
    if e.kind() != std::io::ErrorKind::PermissionDenied {
        return String::new();
    }
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    format!(
        "; transferd runs as uid {uid} (gid {gid}), which may not write there: \
         chown -R {uid}:{gid} {}",
        dir.display()
    )
}

/// The held lock; the directory stays locked until it is dropped (or the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Creates the data directory if needed and takes its lock without waiting, writing this
    /// process's pid into the lock file.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        create_private(dir).map_err(io)?;
        // Not truncated on open: the holder's pid must survive a failed attempt to read it.
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut content = String::new();
                let _ = file.read_to_string(&mut content);
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    pid: content.trim().parse().ok(),
                });
            }
            Err(e) => return Err(io(e.into())),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_data_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("new/data");
        let _held = DataDirLock::acquire(&dir).unwrap();
        for created in [dir.as_path(), dir.parent().unwrap()] {
            let mode = std::fs::metadata(created).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, PRIVATE_DIR_MODE, "{}", created.display());
        }
    }

    #[test]
    fn a_second_lock_on_one_directory_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        let pid = std::process::id();
        assert!(
            matches!(err, LockError::Held { pid: Some(p), .. } if p == pid),
            "{err:?}"
        );
        assert!(err.to_string().contains(&format!("pid {pid}")), "{err}");
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let hint = permission_hint(&denied, dir.path());
        let uid = rustix::process::getuid().as_raw();
        assert!(hint.contains(&format!("uid {uid}")), "{hint}");
        assert!(hint.contains(&dir.path().display().to_string()), "{hint}");
        drop(held);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
