//! Unit tests of result-file validation, naming, the commit and removal.

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
    let mut file = open_partial(&partial_path_at(dir.path(), &"g".to_string(), None)).unwrap();
    std::io::Write::write_all(&mut file, body).unwrap();
    dir
}

#[test]
fn commits_into_new_directories_and_never_replaces_unless_asked() {
    let dir = staged(b"new");
    let g = "g".to_string();
    commit(dir.path(), &dt(), &g, "a/b/c.bin", false, None).unwrap();
    assert_eq!(std::fs::read(dir.path().join("a/b/c.bin")).unwrap(), b"new");
    assert_eq!(result_exists(dir.path(), &dt(), "a/b/c.bin"), Ok(true));
    assert_eq!(result_exists(dir.path(), &dt(), "a/x"), Ok(false));

    let mut file = open_partial(&partial_path_at(dir.path(), &g, None)).unwrap();
    std::io::Write::write_all(&mut file, b"newer").unwrap();
    assert!(matches!(
        commit(dir.path(), &dt(), &g, "a/b/c.bin", false, None),
        Err(CommitError::Exists)
    ));
    assert_eq!(std::fs::read(dir.path().join("a/b/c.bin")).unwrap(), b"new");
    commit(dir.path(), &dt(), &g, "a/b/c.bin", true, None).unwrap();
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
    let partial = partial_path_at(dir.path(), &g, None);
    assert!(!partial_is_committed(&partial));
    commit(dir.path(), &dt(), &g, "r.bin", false, None).unwrap();
    assert!(
        partial_is_committed(&partial),
        "the partial name stays until COMPLETED"
    );
    let found = PartialFile {
        len: 5,
        committed: true,
    };
    assert_eq!(partial_file(&partial), Some(found));
    commit(dir.path(), &dt(), &g, "r.bin", false, None).expect("its own file is in place");
    assert_eq!(std::fs::read(dir.path().join("r.bin")).unwrap(), b"whole");

    let mut file = open_partial(&partial).unwrap();
    std::io::Write::write_all(&mut file, b"other").unwrap();
    assert_eq!(std::fs::read(dir.path().join("r.bin")).unwrap(), b"whole");
    assert!(!partial_is_committed(&partial));

    let other = partial_path_at(dir.path(), &"h".to_string(), None);
    // A symlink in a partial file's place is no partial file, whatever it points to.
    std::os::unix::fs::symlink(dir.path().join("r.bin"), &other).unwrap();
    assert_eq!(partial_file(&other), None);
    std::fs::remove_file(&other).unwrap();
    assert_eq!(partial_file(&other), None);
    std::fs::write(&other, b"left over").unwrap();
    let found = PartialFile {
        len: 9,
        committed: false,
    };
    assert_eq!(partial_file(&other), Some(found));
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
        let err = commit(dir.path(), &dt(), &g, escaping, false, None).unwrap_err();
        assert!(err.to_string().contains("outside"), "{escaping}: {err}");
    }
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    commit(dir.path(), &dt(), &g, "in/sub/x", false, None).unwrap();
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
    let g = "01a202c5-5fd0-711f-a020-9f8e7d6c5b4a".to_string();
    assert_eq!(with_guid_suffix("model.bin", &g), "model-9f8e7d6c5b4a.bin");
    assert_eq!(with_guid_suffix("download", &g), "download-9f8e7d6c5b4a");
    // Two guids of the same minute differ in their suffixes.
    let h = "01a202c5-5fd1-7000-b111-0123456789ab".to_string();
    assert_ne!(with_guid_suffix("x", &g), with_guid_suffix("x", &h));
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
    commit(dir.path(), &media, &g, "x", false, None).unwrap();
    assert_eq!(std::fs::read(dir.path().join("media/x")).unwrap(), b"media");
    assert_eq!(result_exists(dir.path(), &media, "x"), Ok(true));
    assert_eq!(result_exists(dir.path(), &ml, "x"), Ok(false));
    assert_eq!(result_exists(dir.path(), &dt(), "x"), Ok(false));
    // A symlink inside one tenant's directory does not lead into another's.
    std::fs::create_dir(dir.path().join("ml")).unwrap();
    std::fs::write(dir.path().join("ml/secret"), b"ml").unwrap();
    std::os::unix::fs::symlink("../ml", dir.path().join("media/peek")).unwrap();
    assert!(result_exists(dir.path(), &media, "peek/secret").is_err());
    let mut file = open_partial(&partial_path_at(dir.path(), &g, None)).unwrap();
    std::io::Write::write_all(&mut file, b"clobber").unwrap();
    assert!(commit(dir.path(), &media, &g, "peek/secret", true, None).is_err());
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
