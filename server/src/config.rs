//! Service configuration: command-line flags, each also settable by a `TRANSFERD_*` environment
//! variable. Invalid values are rejected before the server binds anything.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Default gRPC address: loopback only, so a fresh install is not reachable from the network.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// Default number of downloads transferring at once: enough to fill a typical link with a few
/// slow origins, few enough not to overwhelm one origin or the disk.
pub const DEFAULT_MAX_ACTIVE: usize = 6;

/// Upper bound for `--max-active`: every active download holds a connection, a file and a write
/// buffer, so this keeps a typo from exhausting file descriptors and memory.
pub const MAX_MAX_ACTIVE: usize = 1024;

/// How transferd runs.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Address the gRPC server listens on. Port 0 picks a free port; the chosen address is
    /// printed as `listening on ADDR` on stdout once the server accepts connections.
    #[arg(long, env = "TRANSFERD_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Directory of the embedded database (SQLite, WAL mode). Created if missing.
    #[arg(long, env = "TRANSFERD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Directory result files are written under [default: <data-dir>/downloads]. Clients name
    /// result files relative to it and cannot escape it.
    #[arg(long, env = "TRANSFERD_DOWNLOAD_DIR")]
    pub download_dir: Option<PathBuf>,

    /// How many downloads may transfer at the same time; the rest wait as IDLE.
    #[arg(long, env = "TRANSFERD_MAX_ACTIVE", default_value_t = DEFAULT_MAX_ACTIVE,
          value_parser = parse_max_active)]
    pub max_active: usize,
}

impl Config {
    /// A configuration with every default, rooted at `data_dir`.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("default address parses"),
            data_dir: data_dir.into(),
            download_dir: None,
            max_active: DEFAULT_MAX_ACTIVE,
        }
    }

    /// The directory result files go to.
    pub fn download_dir(&self) -> PathBuf {
        self.download_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("downloads"))
    }
}

fn parse_max_active(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))?;
    if (1..=MAX_MAX_ACTIVE).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be between 1 and {MAX_MAX_ACTIVE}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_active_bounds() {
        assert_eq!(parse_max_active("1"), Ok(1));
        assert_eq!(parse_max_active("1024"), Ok(1024));
        assert!(parse_max_active("0").is_err());
        assert!(parse_max_active("1025").is_err());
        assert!(parse_max_active("six").is_err());
    }

    #[test]
    fn download_dir_defaults_under_data_dir() {
        let c = Config::with_data_dir("/var/lib/transferd");
        assert_eq!(
            c.download_dir(),
            PathBuf::from("/var/lib/transferd/downloads")
        );
    }
}
