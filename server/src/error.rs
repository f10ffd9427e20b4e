//! Typed errors of the service. Each says what was wrong and what to do about it; the gRPC layer
//! maps each to one status code in a single place (`grpc/status.rs`).

use crate::operation::{Guid, Status};
use crate::store::StoreError;

/// Why a request could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested URI is not an absolute http(s) URI.
    #[error("requested_uri `{}` is not usable: {reason}", shorten(uri))]
    InvalidUri {
        /// The URI as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The result file path is not a plain relative path inside the download directory.
    #[error("result_file `{}` is not allowed: {reason}", shorten(path))]
    InvalidResultFile {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Some other field of the request is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// No download has this guid.
    #[error(
        "no download with guid `{}`; ListDownloads shows the existing ones",
        shorten(guid)
    )]
    NotFound {
        /// The guid asked for.
        guid: Guid,
    },
    /// The download's current status does not allow the action.
    #[error("cannot {action} download `{guid}`: it is {}{}", status.name(), hint(*status))]
    IllegalTransition {
        /// The download.
        guid: Guid,
        /// What was asked.
        action: &'static str,
        /// Its status at the time.
        status: Status,
    },
    /// Another unfinished download already writes to this result file.
    #[error(
        "result_file `{}` is already the target of unfinished download `{guid}`; choose another name or cancel that download",
        shorten(path)
    )]
    ResultFileInUse {
        /// The result file.
        path: String,
        /// The download that holds it.
        guid: Guid,
    },
    /// A file already exists at the result path and the client did not ask to replace it.
    #[error(
        "result_file `{path}` already exists in the download directory; choose another name, remove it, or set replace_existing to replace it"
    )]
    ResultFileExists {
        /// The result file.
        path: String,
    },
    /// The call needs a paused download.
    #[error(
        "download `{guid}` is {}; pause it first (its URI can change only while it is PAUSED_BY_APPLICATION or PAUSED_RECOVERABLE_WEB_ERROR_STATUS)",
        status.name()
    )]
    NotPaused {
        /// The download.
        guid: Guid,
        /// Its status at the time.
        status: Status,
    },
    /// The call needs a download that belongs to a transfer group.
    #[error(
        "download `{}` belongs to no transfer group; create it with transfer_group set",
        shorten(guid)
    )]
    NoGroup {
        /// The download.
        guid: Guid,
    },
    /// The download has not received an HTTP response yet.
    #[error(
        "download `{}` has not received an HTTP response yet; ask again once it has run",
        shorten(guid)
    )]
    NoResponseYet {
        /// The download.
        guid: Guid,
    },
    /// DeleteDownload was asked to remove the result file and could not; the download is kept.
    #[error(
        "cannot remove result_file `{}` of download `{guid}`: {reason}; the download was kept: fix the cause and delete again, or delete without delete_file",
        shorten(path)
    )]
    ResultFileNotRemoved {
        /// The download.
        guid: Guid,
        /// Its result file.
        path: String,
        /// Why it could not be removed.
        reason: String,
    },
    /// The caller's tenant has as many unfinished downloads as its limit allows.
    #[error(
        "{} has {count} unfinished downloads and may have at most {limit}; wait for some to finish, or cancel some",
        tenant_label(tenant)
    )]
    QuotaExceeded {
        /// The tenant's name (empty for the default tenant).
        tenant: String,
        /// Its unfinished downloads, those being created included.
        count: u64,
        /// Its `max_live_downloads`.
        limit: u64,
    },
    /// A caller that is not an admin named another tenant's downloads.
    #[error(
        "tenant `{}` is not yours; only an admin may see other tenants' downloads: leave tenant unset, or name your own",
        shorten(tenant)
    )]
    OtherTenant {
        /// The tenant named.
        tenant: String,
    },
    /// ReadResult asked for the bytes of a download whose status has none to give.
    #[error(
        "cannot read the result of download `{guid}`: it is {}{}",
        status.name(),
        read_hint(*status)
    )]
    NotReadable {
        /// The download.
        guid: Guid,
        /// Its status at the time.
        status: Status,
    },
    /// ReadResult from past the end of a COMPLETED download's result.
    #[error(
        "offset {offset} is past the end of the result of download `{guid}`, which has {size} bytes"
    )]
    ReadOutOfRange {
        /// The download.
        guid: Guid,
        /// The offset asked for.
        offset: u64,
        /// The result's length.
        size: u64,
    },
    /// The result file of a COMPLETED download cannot be read as transferd committed it.
    #[error(
        "cannot read result_file `{}` of download `{guid}`: {reason}",
        shorten(path)
    )]
    ResultUnreadable {
        /// The download.
        guid: Guid,
        /// Its result file.
        path: String,
        /// Why not.
        reason: String,
    },
    /// A followed ReadResult could not finish; what it sent is not a whole result.
    #[error(
        "stopped reading download `{guid}`: {reason}; the bytes sent so far are not a whole result"
    )]
    ReadAborted {
        /// The download.
        guid: Guid,
        /// What happened.
        reason: String,
    },
    /// The server is shutting down and takes no new work.
    #[error("transferd is shutting down; retry against the restarted server")]
    ShuttingDown,
    /// The durable store failed; nothing was changed.
    #[error("storage failed: {0}")]
    Storage(#[from] StoreError),
    /// Another replica carried out the call and refused it; `code` is the gRPC code it
    /// answered with, `message` its message.
    #[error("{message}")]
    Remote {
        /// The gRPC status code.
        code: i32,
        /// What the other replica said.
        message: String,
    },
}

/// Longest piece of client input an error message repeats, in characters: enough to recognise
/// it, and a huge guid, path or header name still makes a message that fits in gRPC metadata.
const MAX_ECHO_CHARS: usize = 64;

/// `input` as an error message repeats it: whole when short, else its start, an ellipsis and
/// its length.
pub(crate) fn shorten(input: &str) -> std::borrow::Cow<'_, str> {
    if input.chars().count() <= MAX_ECHO_CHARS {
        return input.into();
    }
    let start: String = input.chars().take(MAX_ECHO_CHARS - 16).collect();
    format!("{start}… ({} bytes)", input.len()).into()
}

/// How messages name a tenant.
fn tenant_label(tenant: &str) -> String {
    if tenant.is_empty() {
        "the default tenant".into()
    } else {
        format!("tenant `{}`", shorten(tenant))
    }
}

fn read_hint(status: Status) -> &'static str {
    if status.is_terminal() {
        " and has no result to read"
    } else {
        "; read it once it is COMPLETED, or set follow to read its bytes as they are written"
    }
}

fn hint(status: Status) -> &'static str {
    if status.is_terminal() {
        " (finished downloads cannot change; create a new download instead)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_input_is_shortened_in_messages() {
        assert_eq!(shorten("short"), "short");
        let long = "x".repeat(20_000);
        let shown = shorten(&long);
        assert!(shown.len() < 100, "{shown}");
        assert!(shown.ends_with("… (20000 bytes)"), "{shown}");
        let message = Error::NotFound { guid: long }.to_string();
        assert!(message.len() < 200, "{message}");
    }
}
