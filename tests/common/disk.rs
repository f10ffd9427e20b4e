//! Small tmpfs (and ramfs) filesystems that a disk test mounts for itself, to fill, to make
//! read-only, or to lack direct I/O.
//! Mounting needs root; where it is not allowed, [`Mount::tmpfs`] says so and the test skips,
//! or fails under CI (see [`super::cannot_set_up`]).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A filesystem mounted by the test, unmounted on drop.
pub struct Mount(PathBuf);

impl Mount {
    /// Mounts a tmpfs with `options` (e.g. `size=1m`) at `at`, creating the directory; `None`
    /// (after saying so) where this machine does not allow it.
    pub fn tmpfs(at: &Path, options: &str) -> Option<Mount> {
        Mount::new("tmpfs", at, options)
    }

    /// Mounts a filesystem of type `fstype` that needs no device (tmpfs, ramfs) with `options`
    /// at `at`, creating the directory; `None` (after saying so) where this machine does not
    /// allow it.
    pub fn new(fstype: &str, at: &Path, options: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", fstype, "-o", options, fstype])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Some(Mount(at.to_path_buf()))
        } else {
            super::cannot_set_up(&format!(
                "cannot mount a {fstype} here (needs root); disk test not run"
            ));
            None
        }
    }

    /// Changes the mount's options in place, e.g. `size=16m` to give it space.
    pub fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "remount {} with {options}",
            self.0.display()
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
