//! The domain model of a download: what was asked for ([`DownloadSpec`]), where it stands
//! ([`Status`], [`Progress`]), what the server last said ([`ResponseInfo`]) and why it failed
//! ([`TransferError`]). The rules of which status may follow which live here and nowhere else.

use std::collections::BTreeMap;

/// Stable identifier of a download (a UUID in its hyphenated lower-case form).
pub type Guid = String;

/// Status of a download; the numbers are WinRT's `BackgroundTransferStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

impl Status {
    /// Every status, for exhaustive round-trip checks.
    pub const ALL: [Status; 10] = [
        Status::Idle,
        Status::Running,
        Status::PausedByApplication,
        Status::PausedCostedNetwork,
        Status::PausedNoNetwork,
        Status::Completed,
        Status::Canceled,
        Status::Error,
        Status::PausedRecoverableWebErrorStatus,
        Status::PausedSystemPolicy,
    ];

    /// A terminal status never changes again: the download is finished for good.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Canceled | Status::Error)
    }

    /// Any of the paused statuses.
    pub fn is_paused(self) -> bool {
        matches!(
            self,
            Status::PausedByApplication
                | Status::PausedCostedNetwork
                | Status::PausedNoNetwork
                | Status::PausedRecoverableWebErrorStatus
                | Status::PausedSystemPolicy
        )
    }

    /// The WinRT number of this status.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The status with this WinRT number.
    pub fn from_code(code: i32) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.code() == code)
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

/// Queue position class; the numbers are WinRT's `BackgroundTransferPriority`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Priority {
    /// Between HIGH and LOW.
    Default = 0,
    /// Runs first.
    High = 1,
    /// Runs last.
    Low = 2,
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

    /// The WinRT number.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The priority with this WinRT number.
    pub fn from_code(code: i32) -> Option<Priority> {
        [Priority::Default, Priority::High, Priority::Low]
            .into_iter()
            .find(|p| p.code() == code)
    }
}

/// Whether a download may use a metered network; the numbers are WinRT's
/// `BackgroundTransferCostPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CostPolicy {
    /// The server's default.
    Default = 0,
    /// Only unrestricted networks.
    UnrestrictedOnly = 1,
    /// Any network.
    Always = 2,
}

impl CostPolicy {
    /// The WinRT number.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The cost policy with this WinRT number.
    pub fn from_code(code: i32) -> Option<CostPolicy> {
        [
            CostPolicy::Default,
            CostPolicy::UnrestrictedOnly,
            CostPolicy::Always,
        ]
        .into_iter()
        .find(|p| p.code() == code)
    }
}

/// What a client asked for that is fixed for the life of the download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadSpec {
    /// Identifier.
    pub guid: Guid,
    /// Creation order, unique and increasing: the order of ListDownloads.
    pub seq: u64,
    /// Result path, relative to the download directory (already validated).
    pub result_file: String,
    /// Transfer group; empty for none.
    pub transfer_group: String,
    /// SHA-256 the finished file must have (lower-case hex), checked before it is committed.
    pub expected_sha256: Option<String>,
    /// HTTP statuses that pause the download instead of failing it.
    pub recoverable_web_error_statuses: Vec<u16>,
}

/// What a client asked for that can be changed while the download lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The http(s) URI to fetch.
    pub requested_uri: String,
    /// Extra request headers (names in lower case).
    pub request_headers: BTreeMap<String, String>,
    /// Queue priority.
    pub priority: Priority,
    /// Metered-network policy.
    pub cost_policy: CostPolicy,
}

/// Why a download is in its current status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

/// How a transfer group runs its downloads; the numbers are WinRT's
/// `BackgroundTransferBehavior`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Behavior {
    /// Side by side.
    #[default]
    Parallel = 0,
    /// One at a time, in queue order.
    Serialized = 1,
}

impl Behavior {
    /// The WinRT number.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The behavior with this WinRT number.
    pub fn from_code(code: i32) -> Option<Behavior> {
        [Behavior::Parallel, Behavior::Serialized]
            .into_iter()
            .find(|b| b.code() == code)
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

/// The class of a transfer failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorReason {
    /// The server answered with an HTTP error status.
    HttpStatus = 1,
    /// The connection failed: refused, reset, timed out, stalled or cut short.
    Network = 2,
    /// Writing the file failed (disk full, directory not writable).
    Disk = 3,
    /// The finished file does not have the expected SHA-256.
    Integrity = 4,
}

impl ErrorReason {
    /// The protobuf number.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The reason with this protobuf number.
    pub fn from_code(code: i32) -> Option<ErrorReason> {
        [
            ErrorReason::HttpStatus,
            ErrorReason::Network,
            ErrorReason::Disk,
            ErrorReason::Integrity,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }
}

/// The latest HTTP response of a download (WinRT's `ResponseInformation`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseInfo {
    /// Whether the server allows the download to continue with a Range request: it did not
    /// refuse ranges and sent a validator (strong ETag or Last-Modified) to guard them.
    pub is_resumable: bool,
    /// The URI that answered, after redirects.
    pub actual_uri: String,
    /// HTTP status code.
    pub status_code: u16,
    /// Response headers, repeated ones joined with ", ".
    pub headers: BTreeMap<String, String>,
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
    fn terminal_and_paused_are_disjoint() {
        for s in Status::ALL {
            assert!(!(s.is_terminal() && s.is_paused()), "{s:?}");
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
