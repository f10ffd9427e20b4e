//! Result-file paths: a client names a file relative to `--download-dir` and can never write
//! outside it. Partial data lives in a staging directory inside the download directory, so the
//! final rename stays on one filesystem and is atomic.

use std::path::{Component, Path, PathBuf};

use crate::error::Error;
use crate::operation::Guid;

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
    download_dir.join(PARTIAL_DIR).join(format!("{guid}.part"))
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

/// Moves a complete, fsynced partial file to `target` atomically (rename within one
/// filesystem) and makes the rename durable by syncing the directory. Refuses a target whose
/// directory resolves outside `download_dir`, e.g. through a symlink planted inside it.
pub fn commit(download_dir: &Path, partial: &Path, target: &Path) -> std::io::Result<()> {
    let parent = target
        .parent()
        .ok_or_else(|| std::io::Error::other("result path has no directory"))?;
    std::fs::create_dir_all(parent)?;
    let root = download_dir.canonicalize()?;
    if !parent.canonicalize()?.starts_with(&root) {
        return Err(std::io::Error::other(format!(
            "{} resolves outside the download directory",
            parent.display()
        )));
    }
    std::fs::rename(partial, target)?;
    std::fs::File::open(parent)?.sync_all()
}

/// Removes a finished download's result file (`result_file`, a validated relative path) for
/// DeleteDownload. Returns whether a file was removed: nothing there, or something other than a
/// regular file (a symlink or a directory someone put in its place is not what transferd
/// committed), is left alone and is not an error. Refuses a file whose directory resolves
/// outside `download_dir`, and never follows a symlink in the last component (`remove_file`
/// unlinks a link itself, and a link is skipped anyway). The checks and the removal are
/// separate system calls; hardening against a directory swapped in between belongs here.
pub fn remove_result_file(download_dir: &Path, result_file: &str) -> std::io::Result<bool> {
    let target = download_dir.join(result_file);
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(std::io::Error::other("result path has no file name"));
    };
    let parent = match parent.canonicalize() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        resolved => resolved?,
    };
    if !parent.starts_with(download_dir.canonicalize()?) {
        return Err(std::io::Error::other(format!(
            "{} resolves outside the download directory",
            target.display()
        )));
    }
    let target = parent.join(name);
    match std::fs::symlink_metadata(&target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
        Ok(meta) if !meta.file_type().is_file() => return Ok(false),
        Ok(_) => {}
    }
    std::fs::remove_file(&target)?;
    std::fs::File::open(&parent)?.sync_all()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(remove_result_file(&dir, "sub/a.bin").unwrap());
        assert!(!dir.join("sub/a.bin").exists());
        assert!(!remove_result_file(&dir, "sub/a.bin").unwrap());
        assert!(!remove_result_file(&dir, "missing/a.bin").unwrap());
        // A link in the file's place is left, and so is what it points to.
        std::fs::write(outside.path().join("victim"), b"v").unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), dir.join("link")).unwrap();
        assert!(!remove_result_file(&dir, "link").unwrap());
        assert!(outside.path().join("victim").exists());
        // A directory link out of the download dir is refused.
        std::os::unix::fs::symlink(outside.path(), dir.join("out")).unwrap();
        assert!(remove_result_file(&dir, "out/victim").is_err());
        assert!(outside.path().join("victim").exists());
    }
}
