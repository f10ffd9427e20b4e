//! Service configuration: command-line flags, each also settable by a `TRANSFERD_*` environment
//! variable. Invalid values are rejected before the server binds anything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::operation::CostPolicy;

/// Default gRPC address: loopback only, so a fresh install is not reachable from the network.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// Default number of downloads transferring at once: enough to fill a typical link with a few
/// slow origins, few enough not to overwhelm one origin or the disk.
pub const DEFAULT_MAX_ACTIVE: usize = 6;

/// Upper bound for `--max-active`: every active download holds a connection, a file and a write
/// buffer, so this keeps a typo from exhausting file descriptors and memory.
pub const MAX_MAX_ACTIVE: usize = 1024;

/// Default connect timeout: generous for slow links, short enough that a dead origin is retried
/// within a minute rather than WinRT's five.
pub const DEFAULT_CONNECT_TIMEOUT: &str = "30s";

/// Default stall timeout: a response or body that sends nothing for this long is a failed
/// attempt, so a stalled server is noticed and retried instead of hanging silently.
pub const DEFAULT_STALL_TIMEOUT: &str = "60s";

/// Default retry budget: failed attempts in a row, without a byte of progress between them,
/// before a download ends in ERROR (Android retries 5 times).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Default first retry delay; it doubles with each failure in a row (Android starts at 30 s;
/// shorter here because most faults in a data centre clear quickly).
pub const DEFAULT_RETRY_BASE_DELAY: &str = "1s";

/// Default cap of the doubling retry delay.
pub const DEFAULT_RETRY_MAX_DELAY: &str = "5m";

/// Default free-space floor: enough headroom that a host does not fill its disk to the last
/// byte (logs, the database and other programs need room), small next to typical volumes.
pub const DEFAULT_MIN_FREE_DISK: &str = "256MiB";

/// What DEFAULT cost policy means on this server.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultCostPolicy {
    /// Run on costed networks too.
    Always,
    /// Pause on costed networks.
    UnrestrictedOnly,
}

impl From<DefaultCostPolicy> for CostPolicy {
    fn from(policy: DefaultCostPolicy) -> CostPolicy {
        match policy {
            DefaultCostPolicy::Always => CostPolicy::Always,
            DefaultCostPolicy::UnrestrictedOnly => CostPolicy::UnrestrictedOnly,
        }
    }
}

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

    /// Directory result files are written under [default: DATA_DIR/downloads]. Clients name
    /// result files relative to it and cannot escape it.
    #[arg(long, env = "TRANSFERD_DOWNLOAD_DIR")]
    pub download_dir: Option<PathBuf>,

    /// How many downloads may transfer at the same time; the rest wait as IDLE.
    #[arg(long, env = "TRANSFERD_MAX_ACTIVE", default_value_t = DEFAULT_MAX_ACTIVE,
          value_parser = parse_max_active)]
    pub max_active: usize,

    /// Time allowed to resolve an origin's host and connect to it (e.g. 500ms, 30s).
    #[arg(long, env = "TRANSFERD_CONNECT_TIMEOUT", default_value = DEFAULT_CONNECT_TIMEOUT,
          value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// A response or body that sends nothing for this long is a stalled attempt and is retried.
    #[arg(long, env = "TRANSFERD_STALL_TIMEOUT", default_value = DEFAULT_STALL_TIMEOUT,
          value_parser = parse_duration)]
    pub stall_timeout: Duration,

    /// Retry budget: a download ends in ERROR after this many failed attempts in a row with no
    /// progress between them. Connection faults, 5xx, 408 and 429 are retried; other HTTP
    /// errors (404, 403, ...) fail at once.
    #[arg(long, env = "TRANSFERD_MAX_ATTEMPTS", default_value_t = DEFAULT_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_attempts: u32,

    /// Delay before the first retry; it doubles with every failure in a row, with jitter, up to
    /// --retry-max-delay. A server's Retry-After (up to one hour) takes precedence.
    #[arg(long, env = "TRANSFERD_RETRY_BASE_DELAY", default_value = DEFAULT_RETRY_BASE_DELAY,
          value_parser = parse_duration)]
    pub retry_base_delay: Duration,

    /// Free space the download volume must keep: below it, downloads pause as
    /// PAUSED_SYSTEM_POLICY until space returns (e.g. 512MiB, 2GiB, or bytes).
    #[arg(long, env = "TRANSFERD_MIN_FREE_DISK", default_value = DEFAULT_MIN_FREE_DISK,
          value_parser = parse_bytes)]
    pub min_free_disk: u64,

    /// What a download's DEFAULT cost policy means: `always` runs on costed networks too,
    /// `unrestricted-only` pauses there as PAUSED_COSTED_NETWORK.
    #[arg(long, env = "TRANSFERD_DEFAULT_COST_POLICY", value_enum,
          default_value_t = DefaultCostPolicy::Always)]
    pub default_cost_policy: DefaultCostPolicy,

    /// Longest delay between retries, Retry-After aside.
    #[arg(long, env = "TRANSFERD_RETRY_MAX_DELAY", default_value = DEFAULT_RETRY_MAX_DELAY,
          value_parser = parse_duration)]
    pub retry_max_delay: Duration,

    /// Forget finished downloads (COMPLETED, CANCELED, ERROR) this long after they finished
    /// (e.g. 30m, 24h, 168h). Unset keeps them until DeleteDownload. Result files
    /// are never removed by this.
    #[arg(long, env = "TRANSFERD_RETAIN_FINISHED", value_parser = parse_duration)]
    pub retain_finished: Option<Duration>,
}

impl Config {
    /// The directory result files go to.
    pub fn download_dir(&self) -> PathBuf {
        self.download_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("downloads"))
    }
}

/// Parses `250ms`, `30s`, `5m` or `1h` (a bare number is seconds). Zero is refused: every
/// duration here is a timeout or a delay that must let time pass.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 500ms, 30s, 5m or 1h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("`{s}` has an unknown unit; use ms, s, m or h")),
    };
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// Parses a byte count: `0`, `1048576`, `64KiB`, `512MiB`, `2GiB`, `1TiB` (also KB/MB/GB/TB
/// as powers of ten).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 512MiB or 2GiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "`{other}` is not a size unit; use KiB, MiB, GiB or TiB"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{s}` is too large"))
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
    fn sizes() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
        for bad in ["", "1.5GiB", "10 parsecs", "-1", "99999999999TiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "0s", "-1s", "5 days", "ms", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    /// Parses `args` as the binary would, with the `TRANSFERD_*` environment variables switched
    /// off so the test sees only the command line.
    fn parse(args: &[&str]) -> Config {
        use clap::{CommandFactory, FromArgMatches, Parser};

        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            config: Config,
        }
        let matches = Cli::command()
            .mut_args(|arg| arg.env(None))
            .try_get_matches_from(std::iter::once("transferd").chain(args.iter().copied()))
            .expect("command line parses");
        Cli::from_arg_matches(&matches).expect("matches fit").config
    }

    /// The defaults are written once, in the clap attributes; an empty command line yields them
    /// (which also proves every default string parses).
    #[test]
    fn an_empty_command_line_gives_the_defaults() {
        let c = parse(&[]);
        assert_eq!(c.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.download_dir, None);
        assert_eq!(c.max_active, 6);
        assert_eq!(c.connect_timeout, Duration::from_secs(30));
        assert_eq!(c.stall_timeout, Duration::from_secs(60));
        assert_eq!(c.max_attempts, 5);
        assert_eq!(c.retry_base_delay, Duration::from_secs(1));
        assert_eq!(c.retry_max_delay, Duration::from_secs(300));
        assert_eq!(c.min_free_disk, 256 << 20);
        assert_eq!(CostPolicy::from(c.default_cost_policy), CostPolicy::Always);
    }

    #[test]
    fn download_dir_defaults_under_data_dir() {
        assert_eq!(parse(&[]).download_dir(), PathBuf::from("./data/downloads"));
        let c = parse(&["--data-dir", "/var/lib/transferd"]);
        assert_eq!(
            c.download_dir(),
            PathBuf::from("/var/lib/transferd/downloads")
        );
    }

    #[test]
    fn finished_downloads_are_kept_unless_a_retention_is_given() {
        assert_eq!(parse(&[]).retain_finished, None);
        let c = parse(&["--retain-finished", "24h"]);
        assert_eq!(c.retain_finished, Some(Duration::from_secs(86_400)));
    }
}
