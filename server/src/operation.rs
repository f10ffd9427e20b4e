//! The domain model of a download: what was asked for ([`DownloadSpec`]), where it stands
//! ([`Status`], [`Progress`]), what the server last said ([`ResponseInfo`]) and why it failed
//! ([`TransferError`]), with the numbers each enum has on the wire and in the store. It names
//! the states and says which are terminal; which status may follow which is decided by the
//! engine's transition function, not here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::redact;

use crate::auth::Tenant;

/// Stable identifier of a download (a UUID in its hyphenated lower-case form).
pub type Guid = String;

/// Declares a domain enum whose variants carry fixed numbers, with `ALL`, `code()` and
/// `from_code()`. The numbers are WinRT's where WinRT has the enum; the store keeps them and the
/// gRPC layer checks they match the protobuf enums, so the rule lives once, here.
macro_rules! numbered_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident = $code:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant = $code, )+
        }

        impl $name {
            /// Every variant, in declaration order, for exhaustive checks.
            pub const ALL: [$name; [$($code),+].len()] = [$($name::$variant),+];

            /// This variant's number, as stored and as sent on the wire.
            pub fn code(self) -> i32 {
                self as i32
            }

            /// The variant with this number, if there is one.
            pub fn from_code(code: i32) -> Option<$name> {
                match code {
                    $( $code => Some($name::$variant), )+
                    _ => None,
                }
            }
        }
    };
}

numbered_enum! {
    /// Status of a download; the numbers are WinRT's `BackgroundTransferStatus`.
    // The variant names are WinRT's, PAUSED_RECOVERABLE_WEB_ERROR_STATUS included.
    #[allow(clippy::enum_variant_names)]
    pub enum Status {
        /// Created or queued, waiting for a transfer slot.
        Idle = 0,
        /// Transferring.
        Running = 1,
        /// Paused by the client.
        PausedByApplication = 2,
        /// Paused because the cost policy forbids the current network.
        PausedCostedNetwork = 3,
        /// Paused for lack of network connectivity.
        PausedNoNetwork = 4,
        /// Finished; the result file is at its final path.
        Completed = 5,
        /// Cancelled by the client.
        Canceled = 6,
        /// Failed.
        Error = 7,
        /// Paused on one of the client's recoverable HTTP statuses.
        PausedRecoverableWebErrorStatus = 8,
        /// Paused by host resource constraints.
        PausedSystemPolicy = 32,
    }
}

impl Status {
    /// A terminal status never changes again: the download is finished for good.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Canceled | Status::Error)
    }

    /// The WinRT name, for logs and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Status::Idle => "IDLE",
            Status::Running => "RUNNING",
            Status::PausedByApplication => "PAUSED_BY_APPLICATION",
            Status::PausedCostedNetwork => "PAUSED_COSTED_NETWORK",
            Status::PausedNoNetwork => "PAUSED_NO_NETWORK",
            Status::Completed => "COMPLETED",
            Status::Canceled => "CANCELED",
            Status::Error => "ERROR",
            Status::PausedRecoverableWebErrorStatus => "PAUSED_RECOVERABLE_WEB_ERROR_STATUS",
            Status::PausedSystemPolicy => "PAUSED_SYSTEM_POLICY",
        }
    }
}

numbered_enum! {
    /// Queue position class; the numbers are WinRT's `BackgroundTransferPriority`.
    #[derive(Default)]
    pub enum Priority {
        /// Between HIGH and LOW.
        #[default]
        Default = 0,
        /// Runs first.
        High = 1,
        /// Runs last.
        Low = 2,
    }
}

impl Priority {
    /// Order in the queue: lower runs first.
    pub fn rank(self) -> u8 {
        match self {
            Priority::High => 0,
            Priority::Default => 1,
            Priority::Low => 2,
        }
    }
}

numbered_enum! {
    /// Whether a download may use a metered network; the numbers are WinRT's
    /// `BackgroundTransferCostPolicy`.
    #[derive(Default)]
    pub enum CostPolicy {
        /// The server's default.
        #[default]
        Default = 0,
        /// Only unrestricted networks.
        UnrestrictedOnly = 1,
        /// Any network.
        Always = 2,
    }
}

/// What a client asked for that is fixed for the life of the download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadSpec {
    /// Identifier.
    pub guid: Guid,
    /// Creation order, unique and increasing: the order of ListDownloads.
    pub seq: u64,
    /// The tenant that created it, the only one (besides admins) that sees it.
    pub(crate) tenant: Tenant,
    /// Result path, relative to its tenant's directory (already validated).
    pub result_file: String,
    /// Transfer group; empty for none.
    pub transfer_group: String,
    /// SHA-256 the finished file must have (lower-case hex), checked before it is committed.
    pub expected_sha256: Option<String>,
    /// HTTP statuses that pause the download instead of failing it.
    pub recoverable_web_error_statuses: Vec<u16>,
    /// Largest file this download accepts, below the server's `--max-file-size`; `None` for
    /// the server's limit alone.
    pub max_bytes: Option<u64>,
    /// Whether the commit may replace a file already at the result path.
    pub replace_existing: bool,
}

impl DownloadSpec {
    /// Where the result file lands, relative to the download directory: for the default
    /// tenant the result path itself, for any other `<tenant>/<result path>`. Result-file
    /// claims are keyed by this, so two downloads conflict exactly when they name one file.
    pub fn resolved_path(&self) -> String {
        crate::paths::resolved(&self.tenant, &self.result_file)
    }
}

/// What a client asked for that can be changed while the download lives. It holds the
/// download's secrets (sensitive header values, the URI's userinfo), so its `Debug` shows them
/// as [`redact::MARKER`]: a log line that prints it cannot leak them.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    /// The http(s) URI to fetch.
    pub requested_uri: String,
    /// Extra request headers (names in lower case).
    pub request_headers: BTreeMap<String, String>,
    /// Names (lower case) of request headers the download marked sensitive, beyond the
    /// built-in rule of [`redact::is_sensitive`]. Marks are never removed.
    pub sensitive_headers: BTreeSet<String>,
    /// Queue priority.
    pub priority: Priority,
    /// Metered-network policy.
    pub cost_policy: CostPolicy,
    /// The download's own bandwidth limit in bytes/s, within [`RATE_LIMITS`]; `None` for none
    /// (the server-wide `--max-download-rate` still applies).
    pub max_bytes_per_second: Option<u64>,
}

/// The bandwidth limits a download or the server may have, bytes/s. Below 1 KiB/s one socket
/// read (often 16 KiB or more) would take minutes to pay for; above 1 TiB/s a limit limits
/// nothing and is a mistake (or a negative number sent as unsigned).
pub const RATE_LIMITS: std::ops::RangeInclusive<u64> = 1024..=(1 << 40);

/// Checks a bandwidth limit in bytes/s: 0 means none (`None`); anything else must lie in
/// [`RATE_LIMITS`]. The error says what is accepted.
pub fn rate_limit(bytes_per_second: u64) -> Result<Option<u64>, String> {
    match bytes_per_second {
        0 => Ok(None),
        n if RATE_LIMITS.contains(&n) => Ok(Some(n)),
        n => Err(format!(
            "{n} bytes per second is out of range; give between {} (1 KiB/s) and {} (1 TiB/s), \
             or 0 for no limit",
            RATE_LIMITS.start(),
            RATE_LIMITS.end()
        )),
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Settings {
            requested_uri,
            request_headers,
            sensitive_headers,
            priority,
            cost_policy,
            max_bytes_per_second,
        } = self;
        f.debug_struct("Settings")
            .field("requested_uri", &redact::uri(requested_uri))
            .field(
                "request_headers",
                &redact::request_headers(request_headers, sensitive_headers),
            )
            .field("sensitive_headers", sensitive_headers)
            .field("priority", priority)
            .field("cost_policy", cost_policy)
            .field("max_bytes_per_second", max_bytes_per_second)
            .finish()
    }
}

numbered_enum! {
    /// Why a download is in its current status. The numbers are transferd's own: replicas
    /// sharing a store send them to each other.
    pub enum StatusReason {
        /// No particular reason: running, finished or failed.
        Unspecified = 0,
        /// IDLE, waiting for a transfer slot.
        WaitingForSlot = 1,
        /// IDLE, waiting for its serialized group.
        WaitingForGroup = 2,
        /// Paused by a client.
        PausedByClient = 3,
        /// No network, as detected.
        NetworkDownDetected = 4,
        /// No network, as an operator said.
        NetworkDownByOperator = 5,
        /// Costed network and an UNRESTRICTED_ONLY policy.
        CostedNetwork = 6,
        /// A recoverable HTTP status.
        RecoverableWebError = 7,
        /// Free disk space below the minimum.
        LowDiskSpace = 8,
        /// An operator's constrained mode.
        ConstrainedMode = 9,
    }
}

impl StatusReason {
    /// What holds a download for this reason, in words for log lines ("paused by ...").
    pub fn cause(self) -> &'static str {
        match self {
            StatusReason::Unspecified => "nothing in particular",
            StatusReason::WaitingForSlot => "a full set of transfer slots",
            StatusReason::WaitingForGroup => "its serialized group",
            StatusReason::PausedByClient => "a client",
            StatusReason::NetworkDownDetected => "no network (detected)",
            StatusReason::NetworkDownByOperator => "no network (set by an operator)",
            StatusReason::CostedNetwork => {
                "a costed network (its cost policy is UNRESTRICTED_ONLY)"
            }
            StatusReason::RecoverableWebError => "a recoverable web error status",
            StatusReason::LowDiskSpace => "low disk space (below --min-free-disk)",
            StatusReason::ConstrainedMode => "the system policy (constrained mode)",
        }
    }
}

numbered_enum! {
    /// How a transfer group runs its downloads; the numbers are WinRT's
    /// `BackgroundTransferBehavior`.
    #[derive(Default)]
    pub enum Behavior {
        /// Side by side.
        #[default]
        Parallel = 0,
        /// One at a time, in queue order.
        Serialized = 1,
    }
}

/// Why a download ended in ERROR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferError {
    /// A readable explanation.
    pub message: String,
    /// The HTTP status that caused it, if any.
    pub http_status: Option<u16>,
    /// The class of failure, for programs.
    pub reason: ErrorReason,
}

numbered_enum! {
    /// The class of a transfer failure; the numbers are the protobuf `TransferErrorReason`'s
    /// (0 there means unspecified).
    pub enum ErrorReason {
        /// The server answered with an HTTP error status.
        HttpStatus = 1,
        /// The connection failed: refused, reset, timed out, stalled or cut short.
        Network = 2,
        /// Writing the file failed (disk full, directory not writable).
        Disk = 3,
        /// The finished file does not have the expected SHA-256.
        Integrity = 4,
        /// The file is larger than `--max-file-size` or the download's `max_bytes`.
        TooLarge = 5,
        /// The egress policy denies the address the download would connect to.
        Policy = 6,
    }
}

/// The latest HTTP response of a download (WinRT's `ResponseInformation`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseInfo {
    /// Whether the server allows the download to continue with a Range request: it advertised
    /// `Accept-Ranges: bytes` or honoured a range (and did not ignore one, answering 200), and
    /// sent a validator (strong ETag or Last-Modified) to guard them.
    pub is_resumable: bool,
    /// The URI that answered, after redirects.
    pub actual_uri: String,
    /// HTTP status code.
    pub status_code: u16,
    /// Response headers, repeated ones joined with ", ".
    pub headers: BTreeMap<String, String>,
}

/// One part of a download fetched over its own connection: bytes `start..end` of the entity,
/// of which the first `durable` are fsynced in the partial file at their offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Its first byte in the entity.
    pub start: u64,
    /// One past its last byte.
    pub end: u64,
    /// Bytes from `start` durably written.
    pub durable: u64,
}

impl Segment {
    /// Where its next byte goes: what is still to fetch is `resume()..end`.
    pub fn resume(&self) -> u64 {
        self.start + self.durable
    }
}

/// Validators of the entity being downloaded, used to resume safely with If-Range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    /// A strong ETag (weak ones may not be used in If-Range and are not kept).
    pub etag: Option<String>,
    /// Last-Modified, as the server sent it.
    pub last_modified: Option<String>,
}

impl Validators {
    /// The If-Range value for a resume: the strong ETag, else Last-Modified; `None` means a
    /// resume cannot be guarded, so the download must start over instead.
    pub fn if_range(&self) -> Option<&str> {
        self.etag.as_deref().or(self.last_modified.as_deref())
    }
}

/// A snapshot of a download's progress, as published to watchers and stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Body bytes received so far.
    pub bytes_received: u64,
    /// Entity length, or 0 while unknown.
    pub total_bytes_to_receive: u64,
    /// Current status.
    pub status: Status,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_numbers_are_winrt() {
        let expected = [
            (Status::Idle, 0),
            (Status::Running, 1),
            (Status::PausedByApplication, 2),
            (Status::PausedCostedNetwork, 3),
            (Status::PausedNoNetwork, 4),
            (Status::Completed, 5),
            (Status::Canceled, 6),
            (Status::Error, 7),
            (Status::PausedRecoverableWebErrorStatus, 8),
            (Status::PausedSystemPolicy, 32),
        ];
        for (status, code) in expected {
            assert_eq!(status.code(), code);
            assert_eq!(Status::from_code(code), Some(status));
        }
        assert_eq!(Status::from_code(9), None);
    }

    #[test]
    fn terminal_statuses_are_not_paused_ones() {
        for s in Status::ALL {
            assert!(
                !(s.is_terminal() && s.name().starts_with("PAUSED_")),
                "{s:?}"
            );
        }
        let terminal: Vec<_> = Status::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            vec![Status::Completed, Status::Canceled, Status::Error]
        );
    }

    #[test]
    fn priority_rank_orders_high_default_low() {
        let mut p = vec![Priority::Low, Priority::Default, Priority::High];
        p.sort_by_key(|p| p.rank());
        assert_eq!(p, vec![Priority::High, Priority::Default, Priority::Low]);
    }

    #[test]
    fn if_range_prefers_etag() {
        let v = Validators {
            etag: Some("\"a\"".into()),
            last_modified: Some("Tue, 01 Jan 2030 00:00:00 GMT".into()),
        };
        assert_eq!(v.if_range(), Some("\"a\""));
        let v = Validators { etag: None, ..v };
        assert_eq!(v.if_range(), Some("Tue, 01 Jan 2030 00:00:00 GMT"));
        assert_eq!(Validators::default().if_range(), None);
    }
}
