//! The Debian packages the benchmark runs: installed with apt-get when missing and running as
//! root (as `.ci/run` does), otherwise a clear error naming what to install.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Each command the benchmark runs, and the Debian package that provides it.
const NEEDED: [(&str, &str); 5] = [
    ("nginx", "nginx"),
    ("h2load", "nghttp2-client"),
    ("curl", "curl"),
    ("aria2c", "aria2"),
    ("sync", "coreutils"),
];

/// Makes sure every command in [`NEEDED`] can be found.
pub fn ensure() -> anyhow::Result<()> {
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(command, _)| find(command).is_none())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!("apt-get install {}", missing.join(" "));
    if !rustix::process::geteuid().is_root() {
        bail!("missing packages; as root, run `{install}` (or run this benchmark as root)");
    }
    eprintln!("installing: {}", missing.join(" "));
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)?;
    if let Some((command, _)) = NEEDED.iter().find(|(command, _)| find(command).is_none()) {
        bail!("`{install}` succeeded but `{command}` is still not on PATH");
    }
    Ok(())
}

fn apt(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        // stdout is for the results table.
        .stdout(std::io::stderr())
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// The path of `command` on PATH, or in the sbin directories where Debian puts nginx (a
/// non-login root shell may not have them on PATH).
pub fn find(command: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .map(|dir| dir.join(command))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
