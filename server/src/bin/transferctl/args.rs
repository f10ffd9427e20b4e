//! The command line: global flags (each with a `TRANSFERCTL_*` environment variable) and one
//! subcommand per thing a user does with downloads, parsed by clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use transferd::pb::backgroundtransfer::v1 as pb;

/// transferctl: queue, watch and control downloads of a transferd server.
///
/// Exit codes: 0 success (for get and watch: every download COMPLETED); 1 a download ended in
/// ERROR or CANCELED; 2 bad command line; 3 any other error (the server refused a call or could
/// not be reached); 130 interrupted (Ctrl-C), the downloads go on in the background.
#[derive(Parser, Debug)]
#[command(name = "transferctl", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes: where the server is, who the caller is, how to print.
#[derive(Args, Debug)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// The transferd to talk to: `http://HOST:PORT`, `https://HOST:PORT` (needs --ca-cert) or
    /// `HOST:PORT`.
    #[arg(long, global = true, env = "TRANSFERCTL_SERVER", value_name = "URL",
          default_value_t = format!("http://{}", transferd::config::DEFAULT_LISTEN))]
    pub server: String,
    /// Bearer token sent with every call, for a server started with --auth-tokens. Prefer the
    /// environment variable: a flag shows in the process list.
    #[arg(
        long,
        global = true,
        env = "TRANSFERCTL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Speak TLS, trusting the CA certificates in this PEM file (the CA that signed the
    /// server's --tls-cert).
    #[arg(long, global = true, env = "TRANSFERCTL_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Present this PEM client certificate, for a server started with --tls-client-ca; needs
    /// --client-key and --ca-cert.
    #[arg(long, global = true, env = "TRANSFERCTL_CLIENT_CERT", value_name = "FILE",
          requires_all = ["client_key", "ca_cert"])]
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(
        long,
        global = true,
        env = "TRANSFERCTL_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// The name the server's certificate must carry [default: the host of --server].
    #[arg(
        long,
        global = true,
        env = "TRANSFERCTL_SERVER_NAME",
        value_name = "NAME",
        requires = "ca_cert"
    )]
    pub server_name: Option<String>,
    /// Machine output: one JSON object per line, stable field names, byte counts as numbers.
    #[arg(long, global = true, env = "TRANSFERCTL_JSON")]
    pub json: bool,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Queue a download of URL and show its progress until it ends (exit 0 only if COMPLETED).
    /// Ctrl-C asks whether to leave it running in the background (without a terminal on
    /// standard input it just does).
    Get(GetArgs),
    /// List downloads, newest first.
    Ls {
        /// Only downloads in this status.
        #[arg(long, value_enum)]
        status: Option<StatusFilter>,
        /// Only downloads of this transfer group.
        #[arg(long, value_name = "G")]
        group: Option<String>,
    },
    /// Show the progress of downloads until they end [default: every live download].
    Watch {
        /// The downloads to watch.
        guids: Vec<String>,
        /// Without GUIDs: only the live downloads of this transfer group.
        #[arg(long, value_name = "G", conflicts_with = "guids")]
        group: Option<String>,
    },
    /// Pause downloads (PAUSED_BY_APPLICATION); their partial data is kept.
    Pause {
        #[arg(required = true)]
        guids: Vec<String>,
    },
    /// Queue paused downloads again.
    Resume {
        #[arg(required = true)]
        guids: Vec<String>,
    },
    /// Cancel downloads (terminal) and remove their partial data.
    Cancel {
        #[arg(required = true)]
        guids: Vec<String>,
    },
    /// Forget finished downloads (COMPLETED, CANCELED or ERROR).
    Rm {
        #[arg(required = true)]
        guids: Vec<String>,
        /// Also remove a completed download's result file.
        #[arg(long)]
        delete_file: bool,
    },
    /// Show one download and the last HTTP response it got.
    Info { guid: String },
    /// Write a download's result bytes to standard output (ReadResult).
    Cat {
        guid: String,
        /// First byte to write.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Bytes to write; 0 writes to the end.
        #[arg(long, default_value_t = 0)]
        length: u64,
        /// Also read a download that has not completed, as its bytes are written.
        #[arg(long, short)]
        follow: bool,
    },
    /// Operator controls of the host (admins only on a server with tokens).
    #[command(subcommand)]
    System(SystemCommand),
    /// Print a completion script for SHELL to standard output.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `transferctl get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// Absolute http:// or https:// URL to download.
    pub url: String,
    /// Result file, relative to the server's download directory [default: named by the
    /// server from the URL].
    #[arg(short = 'o', long = "output", value_name = "RESULT_FILE")]
    pub output: Option<String>,
    /// Transfer group of the download.
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// Queue position: high runs before every other, low after.
    #[arg(long, value_enum)]
    pub priority: Option<Priority>,
    /// The SHA-256 (64 hex digits) the file must have; a mismatch fails the download.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Queue it, print its guid and return at once.
    #[arg(long)]
    pub detach: bool,
}

/// `transferctl system ...`.
#[derive(Subcommand, Debug)]
pub enum SystemCommand {
    /// The server's view of the host: network, policy, disk, queue.
    Status,
    /// Override the detected network conditions; an omitted flag keeps its current setting.
    #[command(group = clap::ArgGroup::new("condition").required(true).multiple(true))]
    SetNetwork {
        /// Whether the network is usable.
        #[arg(long, value_enum, group = "condition")]
        connected: Option<Condition>,
        /// Whether the network is costed (metered).
        #[arg(long, value_enum, group = "condition")]
        costed: Option<Condition>,
    },
    /// Enter or leave constrained mode (every download pauses as PAUSED_SYSTEM_POLICY).
    SetPolicy {
        #[arg(value_enum)]
        policy: Policy,
    },
}

/// A download priority on the command line.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Priority {
    High,
    Low,
}

impl From<Priority> for pb::BackgroundTransferPriority {
    fn from(p: Priority) -> Self {
        match p {
            Priority::High => pb::BackgroundTransferPriority::High,
            Priority::Low => pb::BackgroundTransferPriority::Low,
        }
    }
}

/// A network condition: forced one way, or handed back to the server's detection.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Condition {
    Yes,
    No,
    Detect,
}

impl Condition {
    /// The request field: set overrides detection, unset follows it.
    pub fn wire(self) -> Option<bool> {
        match self {
            Condition::Yes => Some(true),
            Condition::No => Some(false),
            Condition::Detect => None,
        }
    }
}

/// The system policy.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Policy {
    /// Constrained mode: every download pauses.
    Constrained,
    /// Normal operation.
    Normal,
}

/// A status to list, named as in the protocol (lower case, dashes).
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum StatusFilter {
    Idle,
    Running,
    PausedByApplication,
    PausedCostedNetwork,
    PausedNoNetwork,
    Completed,
    Canceled,
    Error,
    PausedRecoverableWebErrorStatus,
    PausedSystemPolicy,
}

impl From<StatusFilter> for pb::BackgroundTransferStatus {
    fn from(s: StatusFilter) -> Self {
        use pb::BackgroundTransferStatus as S;
        match s {
            StatusFilter::Idle => S::Idle,
            StatusFilter::Running => S::Running,
            StatusFilter::PausedByApplication => S::PausedByApplication,
            StatusFilter::PausedCostedNetwork => S::PausedCostedNetwork,
            StatusFilter::PausedNoNetwork => S::PausedNoNetwork,
            StatusFilter::Completed => S::Completed,
            StatusFilter::Canceled => S::Canceled,
            StatusFilter::Error => S::Error,
            StatusFilter::PausedRecoverableWebErrorStatus => S::PausedRecoverableWebErrorStatus,
            StatusFilter::PausedSystemPolicy => S::PausedSystemPolicy,
        }
    }
}
