//! Service configuration: command-line flags, each also settable by a `TRANSFERD_*` environment
//! variable. Invalid values are rejected before the server binds anything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::egress::Cidr;
use crate::fetch::{PinnedName, WriteMode};
use crate::operation::CostPolicy;

/// Default gRPC address: loopback only, so a fresh install is not reachable from the network.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// Default number of downloads transferring at once: enough to fill a typical link with a few
/// slow origins, few enough not to overwhelm one origin or the disk.
pub const DEFAULT_MAX_ACTIVE: usize = 6;

/// Default `--lease-ttl`: a dead replica's downloads wait this long before another replica
/// takes them over; a replica that cannot reach PostgreSQL for most of it stops its transfers.
pub const DEFAULT_LEASE_TTL: &str = "15s";

/// Longest `--lease-ttl`.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(600);

/// Upper bound for `--max-active`: every active download holds a connection, a file and a write
/// buffer, so this keeps a typo from exhausting file descriptors and memory.
pub const MAX_MAX_ACTIVE: usize = 1024;

/// Default connect timeout: generous for slow links, short enough that a dead origin is retried
/// within a minute rather than WinRT's five.
pub const DEFAULT_CONNECT_TIMEOUT: &str = "30s";

/// Default stall timeout: a response or body that sends nothing for this long is a failed
/// attempt, so a stalled server is noticed and retried instead of hanging silently.
pub const DEFAULT_STALL_TIMEOUT: &str = "60s";

/// Default retry budget: failed attempts in a row, none getting further into the file than any
/// before,
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

/// Default lowest average speed, in bytes/s, over a `--stall-timeout` window before an attempt
/// counts as stalled (curl's `--speed-limit`, aria2's `--lowest-speed-limit`). 100 B/s is far
/// below any link that is really moving data (a GPRS link shared by every active download
/// still carries kilobytes a second, and a single TCP segment every 10 s is above it), yet a
/// body trickling a byte a second is caught within one window instead of holding its slot
/// forever. 0 switches the rule off.
pub const DEFAULT_MIN_SPEED: &str = "100";

/// Default largest file a download may have. A runaway (an endless chunked body, a wrong
/// Content-Length) is stopped long before it fills a large volume, while no real download on a
/// host like this (OS images, datasets, model weights) comes near it; lower it for origins you
/// do not trust, and per download with `max_bytes`.
pub const DEFAULT_MAX_FILE_SIZE: &str = "1TiB";

/// Longest any duration flag may be: beyond a week a timeout or delay is a typo, and larger
/// values overflow the clocks of the HTTP client (a panic, not an error).
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Longest `--connect-timeout`: resolving and connecting that takes longer is not coming back.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(600);

/// Longest `--stall-timeout` and `--retry-base-delay`: a silent origin is retried within the hour.
pub const MAX_STALL_TIMEOUT: Duration = Duration::from_secs(3600);

/// Largest size flag: byte counts are stored as signed 64-bit integers.
pub const MAX_SIZE: u64 = i64::MAX as u64;

/// Default cap on calls being handled at once: far above what 2 cores serve concurrently (a
/// call is handled in well under a millisecond), low enough that a flood of creates waiting on
/// the store cannot pile up without bound.
pub const DEFAULT_MAX_INFLIGHT_CALLS: usize = 1024;

/// Default cap on open streams (WatchDownload, WatchDownloads, health Watch, reflection). A
/// stream costs about 6 KiB (measured with 10k open), one never read at most its HTTP/2 window
/// (64 KiB) more, so this bounds their memory to about 200 MiB typically and 2 GiB in the worst
/// case, while allowing tens of thousands of watchers (a fleet watching one rollout).
pub const DEFAULT_MAX_STREAMS: usize = 32_768;

/// Default cap on one tenant's open streams: half the total, so one tenant cannot take every
/// stream from the others.
pub const DEFAULT_MAX_STREAMS_PER_TENANT: usize = 16_384;

/// Default most connections one download opens: enough to fill a link behind an origin that
/// caps each connection at a few MiB/s many times over (pget and hf_transfer use a handful per
/// file too), while adaptive growth keeps it at one or two wherever one stream already gets
/// everything.
pub const DEFAULT_MAX_CONNECTIONS_PER_DOWNLOAD: u64 = 8;

/// Default most connections to one origin (host and port) over every download: aria2's own
/// ceiling per server, so no single origin sees more from transferd than it would from aria2,
/// and above the default `--max-active`, so downloads do not wait on each other for it.
pub const DEFAULT_MAX_CONNECTIONS_PER_HOST: u64 = 16;

/// Largest `--max-connections-per-download`: past this, connection setup and per-segment
/// checkpoints cost more than another share of a capped origin brings.
pub const MAX_CONNECTIONS_PER_DOWNLOAD: u64 = 64;

/// Largest `--max-connections-per-host`.
pub const MAX_CONNECTIONS_PER_HOST: u64 = 1024;

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

    /// Serve Prometheus metrics on this address at `GET /metrics` (plain HTTP, no token; port
    /// 0 picks a free port, logged as `metrics listening`). Unset: no metrics port. The
    /// metrics carry counts and volumes only, no guids, URIs or tenant names.
    #[arg(long, env = "TRANSFERD_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Serve TLS on the gRPC port with this PEM certificate chain (server certificate first);
    /// needs --tls-key. Without it the port speaks plaintext HTTP/2.
    #[arg(
        long,
        env = "TRANSFERD_TLS_CERT",
        requires = "tls_key",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1); needs --tls-cert.
    #[arg(
        long,
        env = "TRANSFERD_TLS_KEY",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,

    /// Require every client to present a certificate signed by a CA in this PEM file (mutual
    /// TLS); a client without one is refused at the handshake. Needs --tls-cert and --tls-key.
    #[arg(
        long,
        env = "TRANSFERD_TLS_CLIENT_CA",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Directory of the embedded database (SQLite, WAL mode). Created if missing.
    #[arg(long, env = "TRANSFERD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Where downloads are stored: `sqlite:` (the embedded database under --data-dir) or a
    /// PostgreSQL URL, `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`, which several
    /// replicas may share (see the README's "Running more than one replica").
    #[arg(long, env = "TRANSFERD_STORE", default_value = "sqlite:",
          value_parser = parse_store, hide_env_values = true)]
    pub store: StoreUrl,

    /// This replica's name among the replicas sharing a PostgreSQL store: it names the leases
    /// it holds, and must differ between replicas [default: HOSTNAME-PID].
    #[arg(long, env = "TRANSFERD_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,

    /// With a PostgreSQL store, how long a replica's lease on a download it runs lasts without
    /// renewal (renewed every third of it): how long the downloads of a replica that died wait
    /// before another replica takes them over (1s to 10m).
    #[arg(long, env = "TRANSFERD_LEASE_TTL", default_value = DEFAULT_LEASE_TTL,
          value_parser = parse_lease_ttl)]
    pub lease_ttl: Duration,

    /// Directory result files are written under [default: DATA_DIR/downloads]. Clients name
    /// result files relative to it and cannot escape it.
    #[arg(long, env = "TRANSFERD_DOWNLOAD_DIR")]
    pub download_dir: Option<PathBuf>,

    /// How many downloads may transfer at the same time; the rest wait as IDLE.
    #[arg(long, env = "TRANSFERD_MAX_ACTIVE", default_value_t = DEFAULT_MAX_ACTIVE,
          value_parser = parse_max_active)]
    pub max_active: usize,

    /// Time allowed to resolve an origin's host and connect to it (e.g. 500ms, 30s; at most
    /// 10m).
    #[arg(long, env = "TRANSFERD_CONNECT_TIMEOUT", default_value = DEFAULT_CONNECT_TIMEOUT,
          value_parser = parse_connect_timeout)]
    pub connect_timeout: Duration,

    /// A response or body that sends nothing for this long is a stalled attempt and is retried
    /// (at most 1h). It is also the window --min-speed is averaged over.
    #[arg(long, env = "TRANSFERD_STALL_TIMEOUT", default_value = DEFAULT_STALL_TIMEOUT,
          value_parser = parse_stall_timeout)]
    pub stall_timeout: Duration,

    /// Lowest average body speed in bytes/s over each --stall-timeout window; slower is a
    /// stalled attempt, retried and resumed like any other (e.g. 100, 4KiB; 0 switches it off).
    /// The default, 100 B/s, never trips a link that is really moving data but catches a
    /// trickle.
    #[arg(long, env = "TRANSFERD_MIN_SPEED", default_value = DEFAULT_MIN_SPEED,
          value_parser = parse_size)]
    pub min_speed: u64,

    /// Largest file any download may have (e.g. 10GiB; at least 1 byte). A declared length
    /// above it fails the download before anything is written; a body that grows past it is
    /// stopped and fails; nothing is committed. A download's own `max_bytes` can only lower it.
    #[arg(long, env = "TRANSFERD_MAX_FILE_SIZE", default_value = DEFAULT_MAX_FILE_SIZE,
          value_parser = parse_max_file_size)]
    pub max_file_size: u64,

    /// Most body bytes per second of all running downloads together (e.g. 10MiB; 1KiB to 1TiB;
    /// unset or 0: no limit), shared fairly: each running download gets an equal share, and
    /// what a download limited below its share leaves is split among the others.
    #[arg(long, env = "TRANSFERD_MAX_DOWNLOAD_RATE", value_parser = parse_rate)]
    pub max_download_rate: Option<u64>,

    /// Most connections one download uses (1 to 64; 1: never segment). A large file from an
    /// origin that serves byte ranges with a strong validator is split into segments fetched
    /// at once, adding connections only while each raises the download's throughput.
    #[arg(long, env = "TRANSFERD_MAX_CONNECTIONS_PER_DOWNLOAD",
          default_value_t = DEFAULT_MAX_CONNECTIONS_PER_DOWNLOAD,
          value_parser = clap::value_parser!(u64).range(1..=MAX_CONNECTIONS_PER_DOWNLOAD))]
    pub max_connections_per_download: u64,

    /// Most connections to one origin (host:port of the requested URI) over all segmenting
    /// downloads (1 to 1024). Extra segment connections are opened only below it and make way
    /// for other downloads' first connections, which wait only while extras hold the places.
    #[arg(long, env = "TRANSFERD_MAX_CONNECTIONS_PER_HOST",
          default_value_t = DEFAULT_MAX_CONNECTIONS_PER_HOST,
          value_parser = clap::value_parser!(u64).range(1..=MAX_CONNECTIONS_PER_HOST))]
    pub max_connections_per_host: u64,

    /// Retry budget: a download ends in ERROR after this many failed attempts in a row, none
    /// getting further into the file than any before. Connection faults, 5xx, 408 and 429 are retried; other HTTP
    /// errors (404, 403, ...) fail at once.
    #[arg(long, env = "TRANSFERD_MAX_ATTEMPTS", default_value_t = DEFAULT_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_attempts: u32,

    /// Delay before the first retry; it doubles with every failure in a row, with jitter, up to
    /// --retry-max-delay (at most 1h). A server's Retry-After (up to one hour) takes
    /// precedence.
    #[arg(long, env = "TRANSFERD_RETRY_BASE_DELAY", default_value = DEFAULT_RETRY_BASE_DELAY,
          value_parser = parse_stall_timeout)]
    pub retry_base_delay: Duration,

    /// Free space the download volume must keep: below it, downloads pause as
    /// PAUSED_SYSTEM_POLICY until space returns (e.g. 512MiB, 2GiB, or bytes).
    #[arg(long, env = "TRANSFERD_MIN_FREE_DISK", default_value = DEFAULT_MIN_FREE_DISK,
          value_parser = parse_size)]
    pub min_free_disk: u64,

    /// How downloads write their files: `direct` writes whole blocks straight to the disk
    /// (O_DIRECT), past the page cache, where the filesystem takes it (the bytes are fsynced
    /// before they count either way, so this saves a copy and keeps large downloads from
    /// evicting other programs' cached files); `buffered` writes through the page cache, which
    /// leaves a finished file cached for a program that reads it right away. Downloads with
    /// an expected SHA-256 are always written through the page cache (their bytes are hashed
    /// right after they are written).
    #[arg(long, env = "TRANSFERD_WRITE_MODE", value_enum, default_value_t = WriteMode::Direct)]
    pub write_mode: WriteMode,

    /// What a download's DEFAULT cost policy means: `always` runs on costed networks too,
    /// `unrestricted-only` pauses there as PAUSED_COSTED_NETWORK.
    #[arg(long, env = "TRANSFERD_DEFAULT_COST_POLICY", value_enum,
          default_value_t = DefaultCostPolicy::Always)]
    pub default_cost_policy: DefaultCostPolicy,

    /// Longest delay between retries, Retry-After aside (at most 7 days).
    #[arg(long, env = "TRANSFERD_RETRY_MAX_DELAY", default_value = DEFAULT_RETRY_MAX_DELAY,
          value_parser = parse_duration)]
    pub retry_max_delay: Duration,

    /// Forget finished downloads (COMPLETED, CANCELED, ERROR) this long after they finished
    /// (e.g. 30m, 24h, 168h). Unset keeps them until DeleteDownload. Result files
    /// are never removed by this.
    #[arg(long, env = "TRANSFERD_RETAIN_FINISHED", value_parser = parse_duration)]
    pub retain_finished: Option<Duration>,

    /// Most calls handled at once, over all connections; beyond it a call is answered
    /// RESOURCE_EXHAUSTED at once. Health checks are never refused.
    #[arg(long, env = "TRANSFERD_MAX_INFLIGHT_CALLS", default_value_t = DEFAULT_MAX_INFLIGHT_CALLS,
          value_parser = parse_positive)]
    pub max_inflight_calls: usize,

    /// Most open streams (WatchDownload, WatchDownloads, health Watch, reflection) in total;
    /// beyond it a new stream is answered RESOURCE_EXHAUSTED.
    #[arg(long, env = "TRANSFERD_MAX_STREAMS", default_value_t = DEFAULT_MAX_STREAMS,
          value_parser = parse_positive)]
    pub max_streams: usize,

    /// Most open streams of one tenant (without --auth-tokens, every caller is one tenant).
    #[arg(long, env = "TRANSFERD_MAX_STREAMS_PER_TENANT",
          default_value_t = DEFAULT_MAX_STREAMS_PER_TENANT, value_parser = parse_positive)]
    pub max_streams_per_tenant: usize,
    /// Never connect to addresses in CIDR (e.g. 10.0.0.0/8, fd00::/8, or one address);
    /// repeatable, or comma-separated in the variable. Added to the default deny list of
    /// link-local and cloud-metadata ranges; the most specific matching range decides.
    #[arg(
        long,
        env = "TRANSFERD_DENY_EGRESS",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub deny_egress: Vec<Cidr>,

    /// Allow connections to addresses in CIDR, overriding a less specific denied range (the
    /// default deny list included); repeatable, or comma-separated in the variable.
    #[arg(
        long,
        env = "TRANSFERD_ALLOW_EGRESS",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub allow_egress: Vec<Cidr>,

    /// Resolve HOST to ADDR instead of asking DNS (like curl's --resolve, without the port);
    /// repeatable, or comma-separated in the variable. The egress policy still applies to ADDR.
    #[arg(
        long,
        env = "TRANSFERD_RESOLVE",
        value_name = "HOST:ADDR",
        value_delimiter = ','
    )]
    pub resolve: Vec<PinnedName>,
    /// TOML file of bearer tokens (each a name, a tenant, a role and the token's SHA-256).
    /// Every call must then send `authorization: Bearer <token>`; health and reflection stay
    /// open. Re-read on SIGHUP. Unset: no authentication, and only loopback addresses serve.
    #[arg(long, env = "TRANSFERD_AUTH_TOKENS", value_name = "FILE")]
    pub auth_tokens: Option<PathBuf>,

    /// Serve without authentication on a non-loopback address, where anyone who can reach the
    /// port controls every download. Only for a network you trust; logged at WARN on start.
    #[arg(long, env = "TRANSFERD_ALLOW_UNAUTHENTICATED", conflicts_with = "auth_tokens",
          value_parser = clap::builder::BoolishValueParser::new(),
          action = clap::ArgAction::SetTrue)]
    pub allow_unauthenticated: bool,
}

/// Why a configuration may not serve: it would expose an unauthenticated server to the network.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to serve on {listen} without authentication: anyone who can reach it would \
     control every download. Either configure tokens with --auth-tokens FILE \
     (TRANSFERD_AUTH_TOKENS; `transferd hash-token` makes one), or pass \
     --allow-unauthenticated (TRANSFERD_ALLOW_UNAUTHENTICATED=true) if only trusted clients \
     can reach this address, or listen on a loopback address such as 127.0.0.1"
)]
pub struct ExposedError {
    /// The address asked for.
    pub listen: SocketAddr,
}

impl Config {
    /// Refuses to serve unauthenticated on an address other machines can reach: without
    /// `--auth-tokens`, only a loopback `--listen` is allowed, unless `--allow-unauthenticated`
    /// says the operator means it. Checked before anything is bound.
    pub fn check_exposure(&self) -> Result<(), ExposedError> {
        if self.auth_tokens.is_some() || self.allow_unauthenticated {
            return Ok(());
        }
        // `to_canonical` so that an IPv4-mapped loopback (::ffff:127.0.0.1) counts as one.
        if self.listen.ip().to_canonical().is_loopback() {
            return Ok(());
        }
        Err(ExposedError {
            listen: self.listen,
        })
    }

    /// The TLS configuration of the gRPC port, read and checked now; `None` for plaintext.
    pub fn tls(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, crate::tls::TlsError> {
        match (&self.tls_cert, &self.tls_key, &self.tls_client_ca) {
            (Some(cert), Some(key), ca) => {
                crate::tls::server_config(cert, key, ca.as_deref()).map(Some)
            }
            (None, None, None) => Ok(None),
            // clap refuses these already; a Config built by hand must not fall back to
            // plaintext when it asked for TLS.
            _ => Err(crate::tls::TlsError::Incomplete),
        }
    }

    /// The directory result files go to.
    pub fn download_dir(&self) -> PathBuf {
        self.download_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("downloads"))
    }
}

/// Parses `250ms`, `30s`, `5m` or `1h` (a bare number is seconds), at most [`MAX_DURATION`].
/// Zero is refused: every duration here is a timeout or a delay that must let time pass.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    duration_within(s, MAX_DURATION)
}

/// A duration as [`parse_duration`] reads it, of at most `max`.
fn duration_within(s: &str, max: Duration) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 500ms, 30s, 5m or 1h"))?;
    let scale_ms: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("`{s}` has an unknown unit; use ms, s, m or h")),
    };
    let d = n
        .checked_mul(scale_ms)
        .map(Duration::from_millis)
        .filter(|d| *d <= max)
        .ok_or_else(|| format!("`{s}` is too long; at most {}", show(max)))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

fn parse_lease_ttl(s: &str) -> Result<Duration, String> {
    let ttl = duration_within(s, MAX_LEASE_TTL)?;
    if ttl < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(ttl)
}

/// Where downloads are stored (`--store`).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// The embedded SQLite database under `--data-dir`.
    Sqlite,
    /// A PostgreSQL database, by URL.
    Postgres(String),
}

/// Never prints a password: the URL may hold one.
impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite => f.write_str("sqlite:"),
            StoreUrl::Postgres(_) => f.write_str("postgres://…"),
        }
    }
}

fn parse_store(s: &str) -> Result<StoreUrl, String> {
    if s == "sqlite:" || s == "sqlite" {
        return Ok(StoreUrl::Sqlite);
    }
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        s.parse::<tokio_postgres::Config>()
            .map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
        return Ok(StoreUrl::Postgres(s.to_string()));
    }
    Err("use `sqlite:` or a PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE)".into())
}

fn parse_node_id(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err("use 1 to 64 letters, digits, `-`, `_` or `.`".into());
    }
    Ok(s.to_string())
}

impl Config {
    /// This replica's `--node-id`, or HOSTNAME-PID.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "transferd".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

fn parse_connect_timeout(s: &str) -> Result<Duration, String> {
    duration_within(s, MAX_CONNECT_TIMEOUT)
}

fn parse_stall_timeout(s: &str) -> Result<Duration, String> {
    duration_within(s, MAX_STALL_TIMEOUT)
}

/// A bound as the flags spell it, for messages.
fn show(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s % 86_400 == 0 => format!("{}h ({} days)", s / 3600, s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A byte count of at most [`MAX_SIZE`].
fn parse_size(s: &str) -> Result<u64, String> {
    let n = parse_bytes(s)?;
    if n > MAX_SIZE {
        return Err(format!(
            "`{}` is too large; at most {MAX_SIZE} bytes",
            s.trim()
        ));
    }
    Ok(n)
}

/// A bandwidth limit in bytes/s: a size, 0 for none, else within [`crate::operation::RATE_LIMITS`].
fn parse_rate(s: &str) -> Result<u64, String> {
    crate::operation::rate_limit(parse_bytes(s)?).map(|limit| limit.unwrap_or(0))
}

fn parse_max_file_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err("must be at least 1 byte".into()),
        n => Ok(n),
    }
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

/// A count of at least 1, below the semaphore limit of tokio (which `usize::MAX` exceeds).
fn parse_positive(s: &str) -> Result<usize, String> {
    /// Far beyond any useful cap, and within tokio's semaphore limit.
    const MAX_CAP: usize = 1 << 24;
    let n: usize = s
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))?;
    if (1..=MAX_CAP).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be between 1 and {MAX_CAP}"))
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
mod tests;
