//! Opening a download's bytes for reading (ReadResult): the result file of a COMPLETED download,
//! or the partial file of one still being written, each resolved beneath the download directory
//! as everything else here is, and never through a symlink in the last component.

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::{BENEATH, check_tenant_dir, escape, open_dir_beneath, open_root};
use crate::auth::Tenant;

/// How files are opened for reading: read-only, never a symlink, never a FIFO that would block.
const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC);

/// Opens `result_file` of `tenant` for reading. Something other than a regular file there (a
/// directory, a device someone put in its place) is refused: it is not what transferd committed.
pub fn open_result(download_dir: &Path, tenant: &Tenant, result_file: &str) -> io::Result<File> {
    check_tenant_dir(tenant).map_err(io::Error::other)?;
    let root = open_root(download_dir)?;
    let home = open_dir_beneath(&root, tenant.name())?;
    let fd = rustix::fs::openat2(&home, result_file, READ_FLAGS, Mode::empty(), BENEATH).map_err(
        |e| match e {
            Errno::XDEV => escape(result_file),
            Errno::LOOP => io::Error::other("a symlink is in its place"),
            e => e.into(),
        },
    )?;
    regular(File::from(fd))
}

/// Opens a download's partial file (a [`super::partial_path_at`]) for reading.
pub fn open_partial_for_reading(partial: &Path) -> io::Result<File> {
    let not_partial = || io::Error::other(format!("{} is not a partial file", partial.display()));
    let name = partial.file_name().ok_or_else(not_partial)?;
    let staging = partial.parent().ok_or_else(not_partial)?;
    let download_dir = staging.parent().ok_or_else(not_partial)?;
    let root = open_root(download_dir)?;
    let dir = open_dir_beneath(&root, super::PARTIAL_DIR)?;
    let fd = rustix::fs::openat(&dir, name, READ_FLAGS, Mode::empty())?;
    regular(File::from(fd))
}

fn regular(file: File) -> io::Result<File> {
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(io::Error::other("it is not a regular file"))
    }
}
