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

/// `name` made unique with part of the guid, keeping the extension: `model.bin` becomes
/// `model-1a2b3c4d.bin`.
pub fn with_guid_suffix(name: &str, guid: &Guid) -> String {
    let short: String = guid.chars().filter(|c| *c != '-').take(8).collect();
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}-{short}.{ext}"),
        _ => format!("{name}-{short}"),
    }
}

/// Where the partial data of a download lives.
pub fn partial_path(download_dir: &Path, guid: &Guid) -> PathBuf {
    download_dir.join(PARTIAL_DIR).join(partial_name(guid))
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
/// way to tell. With `replace`, the partial file is renamed over whatever is there.
pub fn commit(
    download_dir: &Path,
    tenant: &Tenant,
    guid: &Guid,
    result_file: &str,
    replace: bool,
) -> Result<(), CommitError> {
    let root = open_root(download_dir)?;
    let staging = open_dir_beneath(&root, PARTIAL_DIR)?;
    let home = tenant_home(&root, tenant)?;
    let (parent_path, name) = result_file.rsplit_once('/').unwrap_or(("", result_file));
    let parent = make_dirs(&home, parent_path)?;
    let partial = partial_name(guid);
    let placed = if replace {
        rustix::fs::renameat(&staging, &partial, &parent, name)
    } else {
        link_no_replace(&staging, &partial, &parent, name)
    };
    match placed {
        Ok(()) => {}
        Err(Errno::EXIST) if same_file(&staging, &partial, &parent, name)? => {}
        Err(Errno::EXIST) => return Err(CommitError::Exists),
        Err(e) => return Err(CommitError::Io(e.into())),
    }
    dirsync::sync_dir(&parent)?;
    Ok(())
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
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(partial).is_ok_and(|meta| meta.is_file() && meta.nlink() > 1)
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
        let Some(guid) = name.to_str().and_then(|n| n.strip_suffix(".part")) else {
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
    let home = match open_dir_beneath(&root, tenant.name()) {
        Ok(home) => home,
        Err(e) if e.kind() == io::ErrorKind::Other => return Err(e.to_string()),
        Err(_) => return Ok(false),
    };
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat2(&home, result_file, flags, Mode::empty(), BENEATH) {
        Ok(_) => Ok(true),
        Err(Errno::XDEV) => Err(escape(result_file).to_string()),
        Err(_) => Ok(false),
    }
}

/// Opens a download's partial file for writing, creating it and the staging directory if
/// needed, resolved beneath the download directory (`partial` is a [`partial_path`]) and never
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

/// The file name of a download's partial file inside [`PARTIAL_DIR`].
fn partial_name(guid: &Guid) -> String {
    format!("{guid}.part")
}

/// The directory of `tenant` beneath the download directory `root`, made if missing: `root`
/// itself for the default tenant.
fn tenant_home(root: &OwnedFd, tenant: &Tenant) -> io::Result<OwnedFd> {
    check_tenant_dir(tenant).map_err(io::Error::other)?;
    make_dirs(root, tenant.name())
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
    let mut dir = open_dir_beneath(root, "")?;
    if path.is_empty() {
        return Ok(dir);
    }
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
mod tests {
    use super::*;

    /// The default tenant: paths exactly as before tenants existed.
    fn dt() -> Tenant {
        Tenant::default_tenant()
    }

    #[test]
    fn accepts_plain_relative_paths() {
        assert_eq!(validate_result_file("a.bin").unwrap(), "a.bin");
        assert_eq!(
            validate_result_file("models/v2/w.safetensors").unwrap(),
            "models/v2/w.safetensors"
        );
        assert_eq!(validate_result_file("..hidden").unwrap(), "..hidden");
    }

    #[test]
    fn rejects_escapes() {
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "dir/",
            "a\\..\\b",
            "a\0b",
            "a\nb",
            ".transferd-partial/x",
            "..",
            ".",
        ] {
            assert!(validate_result_file(bad).is_err(), "{bad:?} accepted");
        }
        let long = "x".repeat(MAX_COMPONENT_LEN + 1);
        assert!(validate_result_file(&long).is_err());
    }

    /// A download directory with a staged partial file for guid `g`.
    fn staged(body: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut file = open_partial(&partial_path(dir.path(), &"g".to_string())).unwrap();
        std::io::Write::write_all(&mut file, body).unwrap();
        dir
    }

    #[test]
    fn commits_into_new_directories_and_never_replaces_unless_asked() {
        let dir = staged(b"new");
        let g = "g".to_string();
        commit(dir.path(), &dt(), &g, "a/b/c.bin", false).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a/b/c.bin")).unwrap(), b"new");
        assert_eq!(result_exists(dir.path(), &dt(), "a/b/c.bin"), Ok(true));
        assert_eq!(result_exists(dir.path(), &dt(), "a/x"), Ok(false));

        let mut file = open_partial(&partial_path(dir.path(), &g)).unwrap();
        std::io::Write::write_all(&mut file, b"newer").unwrap();
        assert!(matches!(
            commit(dir.path(), &dt(), &g, "a/b/c.bin", false),
            Err(CommitError::Exists)
        ));
        assert_eq!(std::fs::read(dir.path().join("a/b/c.bin")).unwrap(), b"new");
        commit(dir.path(), &dt(), &g, "a/b/c.bin", true).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("a/b/c.bin")).unwrap(),
            b"newer"
        );
    }

    /// A commit whose COMPLETED was never stored (killed in between) is recognised by the next
    /// life of the download: the partial name is the committed file, the commit again finds its
    /// own file in place, a resume never writes into it, and the sweep removes the name.
    #[test]
    fn a_commit_interrupted_before_completed_is_recognised_and_never_written_again() {
        let dir = staged(b"whole");
        let g = "g".to_string();
        let partial = partial_path(dir.path(), &g);
        assert!(!partial_is_committed(&partial));
        commit(dir.path(), &dt(), &g, "r.bin", false).unwrap();
        assert!(
            partial_is_committed(&partial),
            "the partial name stays until COMPLETED"
        );
        commit(dir.path(), &dt(), &g, "r.bin", false).expect("its own file is in place");
        assert_eq!(std::fs::read(dir.path().join("r.bin")).unwrap(), b"whole");

        let mut file = open_partial(&partial).unwrap();
        std::io::Write::write_all(&mut file, b"other").unwrap();
        assert_eq!(std::fs::read(dir.path().join("r.bin")).unwrap(), b"whole");
        assert!(!partial_is_committed(&partial));

        let other = partial_path(dir.path(), &"h".to_string());
        std::fs::write(&other, b"left over").unwrap();
        assert_eq!(sweep_partials(dir.path(), |guid| guid == "g").unwrap(), 1);
        assert!(partial.exists() && !other.exists());
    }

    #[test]
    fn symlinks_lead_nowhere_outside_but_work_inside() {
        let outside = tempfile::tempdir().unwrap();
        let dir = staged(b"x");
        let g = "g".to_string();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink("..", dir.path().join("up")).unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("in")).unwrap();
        for escaping in ["out/x", "out/sub/x", "up/x"] {
            assert!(
                result_exists(dir.path(), &dt(), escaping).is_err(),
                "{escaping}"
            );
            let err = commit(dir.path(), &dt(), &g, escaping, false).unwrap_err();
            assert!(err.to_string().contains("outside"), "{escaping}: {err}");
        }
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        commit(dir.path(), &dt(), &g, "in/sub/x", false).unwrap();
        assert_eq!(std::fs::read(dir.path().join("real/sub/x")).unwrap(), b"x");
    }

    #[test]
    fn picks_safe_names() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert_eq!(name_from_uri(&u("http://h/a/b/model.bin?x=1")), "model.bin");
        assert_eq!(name_from_uri(&u("http://h/")), "download");
        assert_eq!(name_from_uri(&u("http://h/a/..")), "download");
        assert_eq!(name_from_uri(&u("http://h/a%20b")), "a_20b");
        assert_eq!(name_from_uri(&u("http://h/.env")), "_.env");
        let g = "1a2b3c4d-0000-0000-0000-000000000000".to_string();
        assert_eq!(with_guid_suffix("model.bin", &g), "model-1a2b3c4d.bin");
        assert_eq!(with_guid_suffix("download", &g), "download-1a2b3c4d");
    }

    #[test]
    fn removes_only_regular_files_inside_the_download_dir() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dir = root.path().join("dl");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a.bin"), b"a").unwrap();
        assert!(remove_result_file(&dir, &dt(), "sub/a.bin").unwrap());
        assert!(!dir.join("sub/a.bin").exists());
        assert!(!remove_result_file(&dir, &dt(), "sub/a.bin").unwrap());
        assert!(!remove_result_file(&dir, &dt(), "missing/a.bin").unwrap());
        // A link in the file's place is left, and so is what it points to.
        std::fs::write(outside.path().join("victim"), b"v").unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), dir.join("link")).unwrap();
        assert!(!remove_result_file(&dir, &dt(), "link").unwrap());
        assert!(outside.path().join("victim").exists());
        // A directory link out of the download dir is refused.
        std::os::unix::fs::symlink(outside.path(), dir.join("out")).unwrap();
        assert!(remove_result_file(&dir, &dt(), "out/victim").is_err());
        assert!(outside.path().join("victim").exists());
    }

    #[test]
    fn a_named_tenant_lives_in_its_own_directory_and_cannot_leave_it() {
        let dir = staged(b"media");
        let (media, ml) = (Tenant::new("media"), Tenant::new("ml"));
        let g = "g".to_string();
        assert_eq!(resolved(&media, "a/x"), "media/a/x");
        assert_eq!(resolved(&dt(), "a/x"), "a/x");
        assert_eq!(result_exists(dir.path(), &media, "x"), Ok(false));
        commit(dir.path(), &media, &g, "x", false).unwrap();
        assert_eq!(std::fs::read(dir.path().join("media/x")).unwrap(), b"media");
        assert_eq!(result_exists(dir.path(), &media, "x"), Ok(true));
        assert_eq!(result_exists(dir.path(), &ml, "x"), Ok(false));
        assert_eq!(result_exists(dir.path(), &dt(), "x"), Ok(false));
        // A symlink inside one tenant's directory does not lead into another's.
        std::fs::create_dir(dir.path().join("ml")).unwrap();
        std::fs::write(dir.path().join("ml/secret"), b"ml").unwrap();
        std::os::unix::fs::symlink("../ml", dir.path().join("media/peek")).unwrap();
        assert!(result_exists(dir.path(), &media, "peek/secret").is_err());
        let mut file = open_partial(&partial_path(dir.path(), &g)).unwrap();
        std::io::Write::write_all(&mut file, b"clobber").unwrap();
        assert!(commit(dir.path(), &media, &g, "peek/secret", true).is_err());
        assert!(remove_result_file(dir.path(), &media, "peek/secret").is_err());
        assert_eq!(std::fs::read(dir.path().join("ml/secret")).unwrap(), b"ml");
        assert!(remove_result_file(dir.path(), &media, "x").unwrap());
    }

    #[test]
    fn tenant_names_that_cannot_be_a_directory_are_refused() {
        for bad in [
            "..",
            ".",
            ".transferd-partial",
            ".hidden",
            "a/b",
            "a\0b",
            "/abs",
        ] {
            let tenant = Tenant::new(bad);
            assert!(check_tenant_dir(&tenant).is_err(), "{bad:?}");
            let dir = tempfile::tempdir().unwrap();
            assert!(result_exists(dir.path(), &tenant, "x").is_err(), "{bad:?}");
        }
        assert!(check_tenant_dir(&Tenant::new("media-2")).is_ok());
        assert!(check_tenant_dir(&dt()).is_ok());
    }
}
