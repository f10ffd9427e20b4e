//! How transferctl ends: the exit codes, and errors told in plain words (what the gRPC code
//! means for the user, then the server's own message).

use std::io::{ErrorKind, Write};
use std::process::ExitCode;

use tonic::{Code, Status};

/// Every command succeeded; for `get` and `watch`, every download COMPLETED.
pub const EXIT_OK: u8 = 0;
/// A download that `get` or `watch` followed ended in ERROR or CANCELED.
pub const EXIT_DOWNLOAD_FAILED: u8 = 1;
/// The command line was wrong (clap's own code for usage errors).
pub const EXIT_USAGE: u8 = 2;
/// Any other error: the server refused a call or could not be reached, a TLS file could not be
/// read, output could not be written.
pub const EXIT_SERVER: u8 = 3;
/// Interrupted by Ctrl-C (128 + SIGINT, as shells report it); the downloads go on.
pub const EXIT_INTERRUPTED: u8 = 130;

/// How a command that ran to its end finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything asked for was done.
    Done,
    /// A followed download ended in ERROR or CANCELED (already reported).
    DownloadFailed,
    /// The user stopped watching with Ctrl-C; the downloads go on in the background.
    Interrupted,
}

impl Outcome {
    /// The process exit code.
    pub fn exit_code(self) -> ExitCode {
        ExitCode::from(match self {
            Outcome::Done => EXIT_OK,
            Outcome::DownloadFailed => EXIT_DOWNLOAD_FAILED,
            Outcome::Interrupted => EXIT_INTERRUPTED,
        })
    }
}

/// A refused call, as an error that prints the call, the code in plain words, and the
/// server's message.
#[derive(Debug)]
pub struct CallFailed {
    /// What was being done, e.g. `pause 0190...`.
    pub what: String,
    /// The server's answer.
    pub status: Status,
}

impl std::fmt::Display for CallFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (code, message) = (self.status.code(), self.status.message());
        write!(f, "{}: {}: {message}", self.what, meaning(code))
    }
}

/// The causes of a call that failed on this side (a TLS alert, a reset connection) are in the
/// status's source, not its message: pass them on, so the error says why.
impl std::error::Error for CallFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.status)
    }
}

/// Attaches what was being done to a refused call.
pub trait CallContext<T> {
    /// The error, if any, as [`CallFailed`] for `what`.
    fn call(self, what: impl Into<String>) -> Result<T, CallFailed>;
}

impl<T> CallContext<T> for Result<T, Status> {
    fn call(self, what: impl Into<String>) -> Result<T, CallFailed> {
        self.map_err(|status| CallFailed {
            what: what.into(),
            status,
        })
    }
}

/// What a gRPC code means for someone at the command line.
pub fn meaning(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "the call was cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid request",
        Code::DeadlineExceeded => "the server did not answer in time",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied (your token's role or tenant may not do this)",
        Code::ResourceExhausted => "a limit was reached",
        Code::FailedPrecondition => "not possible in the download's current state",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "the server does not offer this call (an older transferd?)",
        Code::Internal => "internal error in the server",
        Code::Unavailable => "the server is unavailable",
        Code::DataLoss => "data lost or corrupted",
        Code::Unauthenticated => {
            "unauthenticated (the server needs a valid token: pass --token or set \
             TRANSFERCTL_TOKEN)"
        }
    }
}

/// Writes `text` and a newline to standard output, at once (a pipe's reader sees each line as
/// it happens). A reader that went away (`| head`) ends the program quietly and successfully,
/// as it ends `cat`; another write error ends it with a message.
pub fn emit(text: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(EXIT_OK.into());
        }
        eprintln!("transferctl: cannot write to standard output: {e}");
        std::process::exit(EXIT_SERVER.into());
    }
}
