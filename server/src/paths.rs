//! Result-file paths: a client names a file relative to its tenant's directory (the download
//! directory itself for the default tenant, `<download-dir>/<tenant>/` for any other) and can
//! never write outside it. Partial data lives in a staging directory inside the download directory, so the
//! final rename stays on one filesystem and is atomic.
//!
//! Every directory, partial file and rename below the download directory is resolved from an
//! open handle of it with `openat2(RESOLVE_BENEATH)`: a symlink that points out of it (planted
//! or swapped in while a download commits) fails the operation instead of being followed, one
//! component at a time, so not even a parent directory is created outside. A named tenant's
//! result paths resolve beneath its own directory, so a symlink cannot lead one tenant into
//! another's files either. Symlinks that stay
//! inside still work. The commit renames with `RENAME_NOREPLACE` unless the download may replace
//! an existing file.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;

mod dirsync;

use crate::auth::Tenant;
use crate::error::Error;
use crate::operation::Guid;

mod read;

pub use read::{open_partial_for_reading, open_result};

/// Staging directory for partial files, inside the download directory. Clients cannot name
/// result files inside it.
pub const PARTIAL_DIR: &str = ".transferd-partial";

/// Longest accepted result path, in bytes: well inside PATH_MAX once joined to the download
/// directory.
const MAX_RESULT_FILE_LEN: usize = 1024;

/// Longest accepted path component, in bytes: the common filesystem limit (ext4, xfs, btrfs).
const MAX_COMPONENT_LEN: usize = 255;

/// Longest name the server picks itself, leaving room for a uniqueness suffix.
const MAX_PICKED_NAME_LEN: usize = 200;

/// Mode of the directories transferd creates, before the umask (as `mkdir -p` does).
const DIR_MODE: u32 = 0o777;

/// Mode of partial (and so result) files, before the umask (as `std::fs::File::create` does).
const FILE_MODE: u32 = 0o666;

/// How every path below the download directory is resolved: never out of it, whatever a symlink
/// says (an absolute target or `..` past the start fails with `EXDEV`), and never through a
/// `/proc` magic link.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

/// Why a finished file could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Something already exists at the result path and the download may not replace it.
    #[error("the result path already exists")]
    Exists,
    /// The filesystem refused, or the path leads outside the download directory.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Checks a client-supplied result path and returns it in normal form (components joined by
/// `/`). Rejects anything that could leave the download directory.
pub fn validate_result_file(path: &str) -> Result<String, Error> {
    let invalid = |reason: &str| Error::InvalidResultFile {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if path.len() > MAX_RESULT_FILE_LEN {
        return Err(invalid(&format!("longer than {MAX_RESULT_FILE_LEN} bytes")));
    }
    if path.chars().any(char::is_control) {
        return Err(invalid("contains control characters"));
    }
    if path.contains('\\') {
        return Err(invalid("use `/` to separate directories, not `\\`"));
    }
    if path.starts_with('/') {
        return Err(invalid(
            "absolute paths are not allowed; give a path relative to the download directory",
        ));
    }
    if path.ends_with('/') {
        return Err(invalid("names a directory; give a file name"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" => return Err(invalid("contains an empty path component (`//`)")),
            "." | ".." => {
                return Err(invalid(
                    "`.` and `..` components are not allowed; the file must stay inside the download directory",
                ));
            }
            p if p.len() > MAX_COMPONENT_LEN => {
                return Err(invalid(&format!(
                    "a component is longer than {MAX_COMPONENT_LEN} bytes"
                )));
            }
            p => parts.push(p),
        }
    }
    if parts.first() == Some(&PARTIAL_DIR) {
        return Err(invalid(&format!(
            "`{PARTIAL_DIR}` is reserved for partial downloads"
        )));
    }
    // Belt and braces: whatever the rules above missed, the path must be purely relative.
    if !Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(invalid("must be a plain relative path"));
    }
    Ok(parts.join("/"))
}

/// Where `result_file` of `tenant` lands, relative to the download directory.
pub fn resolved(tenant: &Tenant, result_file: &str) -> String {
    if tenant.is_default() {
        result_file.to_string()
    } else {
        format!("{}/{result_file}", tenant.name())
    }
}

/// Whether a tenant's name can be its directory: one plain path component that is not hidden
/// (so never the staging directory). The token file's reader checks names too; this guards the
/// filesystem whatever a stored row or a token file says.
pub fn check_tenant_dir(tenant: &Tenant) -> Result<(), String> {
    let name = tenant.name();
    let plain = name.is_empty()
        || (!name.contains('/')
            && !name.starts_with('.')
            && validate_result_file(name).is_ok_and(|n| n == name));
    if plain {
        Ok(())
    } else {
        Err(format!(
            "tenant `{}` cannot name a directory; a tenant name must be one path component not starting with `.`",
            crate::error::shorten(name)
        ))
    }
}

/// A file name for a download whose client left `result_file` empty: the last segment of the
/// URI path made safe, or `download` if there is none.
pub fn name_from_uri(uri: &url::Url) -> String {
    let last = uri
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or("");
    let mut name: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_PICKED_NAME_LEN)
        .collect();
    if name.trim_matches('.').is_empty() {
        name = "download".into();
    }
    if name.starts_with('.') {
        name.insert(0, '_');
    }
    name
}

/// `name` made unique with the guid's last 12 hex digits, keeping the extension: `model.bin`
/// becomes `model-9f8e7d6c5b4a.bin`. Guids are UUIDv7, whose leading digits are a timestamp
/// shared by every download created in the same minute; the last 48 bits are random.
pub fn with_guid_suffix(name: &str, guid: &Guid) -> String {
    let hex: Vec<char> = guid.chars().filter(|c| *c != '-').collect();
    let short: String = hex[hex.len().saturating_sub(12)..].iter().collect();
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}-{short}.{ext}"),
        _ => format!("{name}-{short}"),
    }
}

/// Where a download's partial file is kept by the holder of lease `epoch`, when replicas share
/// the download directory (`None`: one transferd owns the directory, and the name has no
/// epoch). Each holder writes its own name, so a replica that lost its lease can never write,
/// truncate or commit its successor's file (see `engine/cluster.rs`).
pub fn partial_path_at(download_dir: &Path, guid: &Guid, epoch: Option<i64>) -> PathBuf {
    download_dir
        .join(PARTIAL_DIR)
        .join(partial_name(guid, epoch))
}

/// Free bytes on the filesystem holding `dir`, as an unprivileged writer sees them.
pub fn free_space(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// SHA-256 of a file, in lower-case hex, read in large blocks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; crate::fetch::WRITE_BUFFER_SIZE];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Puts a download's complete, fsynced partial file at `result_file` of `tenant` atomically and
/// makes that durable by syncing the directory (one fsync shared by the commits into that
/// directory that wait at the same time, see `dirsync`). The tenant's directory and parent directories
/// are created beneath the download directory; a path that leads out of the tenant's directory
/// through a symlink is refused.
///
/// Unless `replace`, the file is hard-linked into place, which never replaces anything: an
/// existing file at the result path stays and the commit fails with [`CommitError::Exists`] —
/// unless that file *is* the partial file (same inode), committed by an earlier life of this
/// download that was killed before it could record COMPLETED. The partial name stays until the
/// engine has stored COMPLETED and calls [`remove_partial`], so a crash at any moment leaves a
/// way to tell. With `replace`, the partial file is renamed over whatever is there. Returns
/// whether this call placed the file (`false`: an earlier life already had).
pub fn commit(
    download_dir: &Path,
    tenant: &Tenant,
    guid: &Guid,
    result_file: &str,
    replace: bool,
    epoch: Option<i64>,
) -> Result<bool, CommitError> {
    let root = open_root(download_dir)?;
    let staging = open_dir_beneath(&root, PARTIAL_DIR)?;
    check_tenant_dir(tenant).map_err(io::Error::other)?;
    let (mut opened_home, mut opened_parent) = (None, None);
    let home = within(&root, tenant.name(), &mut opened_home)?;
    let (parent_path, name) = result_file.rsplit_once('/').unwrap_or(("", result_file));
    let parent = within(home, parent_path, &mut opened_parent)?;
    let partial = partial_name(guid, epoch);
    let placed = if replace {
        rustix::fs::renameat(&staging, &partial, parent, name)
    } else {
        link_no_replace(&staging, &partial, parent, name)
    };
    let placed = match placed {
        Ok(()) => true,
        Err(Errno::EXIST) if same_file(&staging, &partial, parent, name)? => false,
        Err(Errno::EXIST) => return Err(CommitError::Exists),
        Err(e) => return Err(CommitError::Io(e.into())),
    };
    dirsync::sync_dir(parent)?;
    Ok(placed)
}

/// Links `from` as `to` without ever replacing what is at the target. On a filesystem without
/// hard links, renames without replacing instead (the crash window between the rename and the
/// stored COMPLETED then ends the download in ERROR rather than losing bytes).
fn link_no_replace(
    from_dir: &OwnedFd,
    from: &str,
    to_dir: &OwnedFd,
    to: &str,
) -> rustix::io::Result<()> {
    match rustix::fs::linkat(from_dir, from, to_dir, to, AtFlags::empty()) {
        Err(Errno::PERM | Errno::NOTSUP) => {
            rustix::fs::renameat_with(from_dir, from, to_dir, to, RenameFlags::NOREPLACE)
        }
        linked => linked,
    }
}

/// Whether `a` in `a_dir` and `b` in `b_dir` are one file (same device and inode), neither
/// followed through a symlink.
fn same_file(a_dir: &OwnedFd, a: &str, b_dir: &OwnedFd, b: &str) -> io::Result<bool> {
    let a = rustix::fs::statat(a_dir, a, AtFlags::SYMLINK_NOFOLLOW)?;
    let b = rustix::fs::statat(b_dir, b, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(a.st_dev == b.st_dev && a.st_ino == b.st_ino)
}

/// Whether a download's partial file is also linked at its result path: committed by an
/// earlier life of the download that stopped before it recorded COMPLETED. Its bytes are then
/// whole and verified, and must never be written again.
pub fn partial_is_committed(partial: &Path) -> bool {
    partial_file(partial).is_some_and(|found| found.committed)
}

/// A download's partial file as one `lstat` finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartialFile {
    /// Its length in bytes.
    pub len: u64,
    /// Whether it is also linked at its result path (see [`partial_is_committed`]).
    pub committed: bool,
}

/// The partial file at `partial`, if there is one: a regular file, never a symlink (which no
/// partial file is, see [`open_partial`]).
pub fn partial_file(partial: &Path) -> Option<PartialFile> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(partial).ok()?;
    meta.is_file().then(|| PartialFile {
        len: meta.len(),
        committed: meta.nlink() > 1,
    })
}

/// Removes every partial file in the staging directory whose download `keep` does not name
/// (finished or forgotten downloads: a crash between storing COMPLETED and removing the partial
/// name leaves one), and returns how many went.
pub fn sweep_partials(download_dir: &Path, keep: impl Fn(&str) -> bool) -> io::Result<usize> {
    let staging = download_dir.join(PARTIAL_DIR);
    let entries = match std::fs::read_dir(&staging) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        entries => entries?,
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(guid) = name.to_str().and_then(guid_of_partial) else {
            continue;
        };
        if !keep(guid) && entry.file_type()?.is_file() {
            remove_partial(&entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes a download's partial file, if there is one. After a commit the result file keeps
/// the bytes (it is another name of the same file).
pub fn remove_partial(partial: &Path) -> io::Result<()> {
    let _one = staging_lock();
    match std::fs::remove_file(partial) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        removed => removed,
    }
}

/// Whether something (a file, a directory, a symlink) is at `result_file` in the directory of
/// `tenant`. `Err` says why the path leads outside it; other failures (the tenant's directory
/// not made yet among them) count as "nothing there" and are left for the commit to report.
pub fn result_exists(
    download_dir: &Path,
    tenant: &Tenant,
    result_file: &str,
) -> Result<bool, String> {
    check_tenant_dir(tenant)?;
    let Ok(root) = open_root(download_dir) else {
        return Ok(false);
    };
    // The default tenant's directory is the root: no second open of it on every create.
    let mut held = None;
    let home = match tenant.name() {
        "" => &root,
        name => match open_dir_beneath(&root, name) {
            Ok(home) => &*held.insert(home),
            Err(e) if e.kind() == io::ErrorKind::Other => return Err(e.to_string()),
            Err(_) => return Ok(false),
        },
    };
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat2(home, result_file, flags, Mode::empty(), BENEATH) {
        Ok(_) => Ok(true),
        Err(Errno::XDEV) => Err(escape(result_file).to_string()),
        Err(_) => Ok(false),
    }
}

/// Opens a download's partial file for writing, creating it and the staging directory if
/// needed, resolved beneath the download directory (`partial` is a [`partial_path_at`]) and never
/// through a symlink.
pub fn open_partial(partial: &Path) -> io::Result<File> {
    let not_partial = || io::Error::other(format!("{} is not a partial file", partial.display()));
    let name = partial.file_name().ok_or_else(not_partial)?;
    let download_dir = partial
        .parent()
        .and_then(Path::parent)
        .ok_or_else(not_partial)?;
    let staging = make_dirs(&open_root(download_dir)?, PARTIAL_DIR)?;
    // A partial file that is also a result file (a commit whose COMPLETED was never recorded)
    // is unlinked from the staging directory rather than written: the result keeps its bytes.
    if let Ok(stat) = rustix::fs::statat(&staging, name, AtFlags::SYMLINK_NOFOLLOW) {
        if stat.st_nlink > 1 {
            rustix::fs::unlinkat(&staging, name, AtFlags::empty())?;
        }
    }
    // Readable too: a resume without a saved SHA-256 state hashes the prefix through it.
    let flags = OFlags::CREATE | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = {
        let _one = staging_lock();
        rustix::fs::openat(&staging, name, flags, Mode::from_raw_mode(FILE_MODE))?
    };
    Ok(File::from(fd))
}

/// Held while a partial file is created or removed. The kernel does one of those at a time per
/// directory anyway (under the directory's lock), and with many small downloads starting and
/// ending at once its waiters spin on CPU for that lock (measured: a tenth of the server's CPU
/// time with 16 downloads at a time); waiters of this lock sleep instead.
fn staging_lock() -> std::sync::MutexGuard<'static, ()> {
    static STAGING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    STAGING.lock().unwrap_or_else(|e| e.into_inner())
}

/// The file name of a download's partial file inside [`PARTIAL_DIR`]: `GUID.part`, or
/// `GUID@EPOCH.part` for the holder of lease `epoch` in a directory replicas share.
fn partial_name(guid: &Guid, epoch: Option<i64>) -> String {
    match epoch {
        None => format!("{guid}.part"),
        Some(epoch) => format!("{guid}@{epoch}.part"),
    }
}

/// The guid whose partial file (of any epoch) has this name.
fn guid_of_partial(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".part")?;
    Some(stem.split_once('@').map_or(stem, |(guid, _)| guid))
}

/// The epochs of `guid`'s partial files in the staging directory, highest first: the files
/// of the lease holders that wrote them, in a directory replicas share.
pub fn partial_epochs(download_dir: &Path, guid: &str) -> io::Result<Vec<i64>> {
    let staging = download_dir.join(PARTIAL_DIR);
    let entries = match std::fs::read_dir(&staging) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        entries => entries?,
    };
    let prefix = format!("{guid}@");
    let mut epochs: Vec<i64> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let name = name.to_str()?;
            name.strip_prefix(&prefix)?
                .strip_suffix(".part")?
                .parse()
                .ok()
        })
        .collect();
    epochs.sort_unstable_by(|a, b| b.cmp(a));
    Ok(epochs)
}

/// The directory of `tenant` beneath the download directory `root`, made if missing: `root`
/// itself for the default tenant.
/// The directory `path` beneath `dir` (made if missing, see [`make_dirs`]), kept in `held`; or
/// `dir` itself for an empty path: the default tenant's directory is the root, and a top-level
/// result file's is its tenant's, so the common commit opens no directory twice.
fn within<'a>(
    dir: &'a OwnedFd,
    path: &str,
    held: &'a mut Option<OwnedFd>,
) -> io::Result<&'a OwnedFd> {
    if path.is_empty() {
        return Ok(dir);
    }
    Ok(held.insert(make_dirs(dir, path)?))
}

fn open_root(download_dir: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    Ok(rustix::fs::open(download_dir, flags, Mode::empty())?)
}

/// Opens the directory `path` (relative, `/`-separated; empty for the root itself) beneath the
/// root.
fn open_dir_beneath(root: &OwnedFd, path: &str) -> io::Result<OwnedFd> {
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let path = if path.is_empty() { "." } else { path };
    rustix::fs::openat2(root, path, flags, Mode::empty(), BENEATH).map_err(|e| match e {
        Errno::XDEV => escape(path),
        e => e.into(),
    })
}

/// Opens the directory `path` beneath the root, creating what is missing one component at a
/// time: each is made inside the handle of its parent, and the path so far is opened again
/// beneath the root, so a component swapped for a symlink out of the tree fails there.
fn make_dirs(root: &OwnedFd, path: &str) -> io::Result<OwnedFd> {
    // Most often every component is there already (the staging directory, a tenant's): one
    // open beneath the root finds it.
    match open_dir_beneath(root, path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        found => return found,
    }
    let mut dir = open_dir_beneath(root, "")?;
    let mut end = 0;
    for part in path.split('/') {
        match rustix::fs::mkdirat(&dir, part, Mode::from_raw_mode(DIR_MODE)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        end += part.len();
        dir = open_dir_beneath(root, &path[..end])?;
        end += 1;
    }
    Ok(dir)
}

/// The error of a path that a symlink leads out of the download directory.
fn escape(path: &str) -> io::Error {
    io::Error::other(format!(
        "`{path}` leads outside the download directory through a symlink; refused"
    ))
}

/// Removes a finished download's result file (`result_file` of `tenant`, a validated relative
/// path) for DeleteDownload. Returns whether a file was removed: nothing there, or something
/// other than a regular file (a symlink or a directory someone put in its place is not what
/// transferd committed), is left alone and is not an error. The file's directory is opened
/// beneath the tenant's directory (so a symlink out of it is refused, with no window between
/// check and use), and the file is unlinked by name inside that open directory, which never
/// follows a symlink in the last component.
pub fn remove_result_file(
    download_dir: &Path,
    tenant: &Tenant,
    result_file: &str,
) -> io::Result<bool> {
    check_tenant_dir(tenant).map_err(io::Error::other)?;
    let (parent, name) = match result_file.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None => ("", result_file),
    };
    if name.is_empty() {
        return Err(io::Error::other("result path has no file name"));
    }
    let root = open_root(download_dir)?;
    let dir = match open_dir_beneath(&root, tenant.name())
        .and_then(|home| open_dir_beneath(&home, parent))
    {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        opened => opened?,
    };
    match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile => {
            return Ok(false);
        }
        Ok(_) => {}
    }
    match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
        Err(Errno::NOENT) => return Ok(false),
        removed => removed?,
    }
    rustix::fs::fsync(&dir)?;
    Ok(true)
}

#[cfg(test)]
mod tests;
