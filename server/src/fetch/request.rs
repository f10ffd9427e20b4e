//! Building the request of an attempt: the client's own headers, the headers transferd manages
//! itself ([`RESERVED_HEADERS`]), `Range` / `If-Range` when resuming, and which redirects are
//! followed (http(s) only, no loops, at most [`MAX_REDIRECTS`], never to a literal address the
//! egress policy denies). A literal address is checked here because reqwest connects to it
//! without resolving, so the policy's resolver never sees it.

use std::collections::BTreeMap;
use std::sync::Arc;

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use tokio_util::sync::CancellationToken;

use super::{Failure, Fetcher, Job};
use crate::egress::EgressPolicy;
use crate::operation::Validators;

/// Redirects followed before giving up, as browsers and curl's default do.
const MAX_REDIRECTS: usize = 10;

/// Request headers the fetcher manages itself; clients may not set them.
pub const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "range",
    "if-range",
    "accept-encoding",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
];

impl Fetcher {
    /// Sends the request, ranged from `offset` (up to `end`, exclusive, when given) when either
    /// is set and guarded by `validators`; `None` if `stop` fired first.
    pub(super) async fn request(
        &self,
        job: &Job<'_>,
        validators: &Validators,
        offset: u64,
        end: Option<u64>,
        stop: &CancellationToken,
    ) -> Result<Option<reqwest::Response>, Failure> {
        let uri = &job.settings.requested_uri;
        // A download stored before the policy changed may point at an address denied now.
        if let Ok(url) = url::Url::parse(uri) {
            if let Err(denied) = self.egress.check_url(&url) {
                let uri = crate::error::shorten(uri);
                return Err(Failure::policy(format!("requested_uri {uri}: {denied}")));
            }
        }
        let mut request = self
            .client
            .get(uri)
            .headers(user_headers(&job.settings.request_headers))
            // The entity bytes exactly as served: no transparent decompression that would make
            // byte offsets and lengths disagree with the server's.
            .header(header::ACCEPT_ENCODING, "identity");
        if offset > 0 || end.is_some() {
            let last = end.map(|end| (end - 1).to_string()).unwrap_or_default();
            request = request.header(header::RANGE, format!("bytes={offset}-{last}"));
            if let Some(v) = validators.if_range() {
                request = request.header(header::IF_RANGE, v);
            }
        }
        let range = match offset {
            0 => "none".to_owned(),
            _ => format!("bytes={offset}-"),
        };
        tracing::info!(%range, "request sent (Range: {range})");
        let stall = self.timeouts.stall;
        tokio::select! {
            r = request.send() => r
                .map(Some)
                .map_err(|e| Failure::network("request failed", &e)),
            () = tokio::time::sleep(stall) => Err(Failure::transient(crate::operation::TransferError {
                message: format!(
                    "request failed (timed out: the server sent no response for {:.1}s; see --stall-timeout)",
                    stall.as_secs_f64()
                ),
                http_status: None,
                reason: crate::operation::ErrorReason::Network,
            })),
            () = stop.cancelled() => Ok(None),
        }
    }
}

/// A redirect transferd will not follow: to another scheme, in a loop, too many, or to an
/// address the egress policy denies.
#[derive(Debug)]
pub(super) struct RedirectRefused {
    /// What happened, for the download's error.
    pub(super) message: String,
    /// The 3xx status of the refused redirect.
    pub(super) status: u16,
    /// Refused by the egress policy.
    pub(super) by_policy: bool,
}

impl std::fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RedirectRefused {}

/// Follows at most [`MAX_REDIRECTS`] redirects to http(s) URLs never visited before in this
/// request and not to a literal address `egress` denies (a name is checked when it resolves);
/// anything else ends the request with a [`RedirectRefused`] saying what happened. A redirect to
/// a URL with userinfo (`user:password@`) is refused too: the HTTP client would carry those
/// credentials to the new host and into its own logs, and no client gave them.
pub(super) fn redirect_policy(egress: Arc<EgressPolicy>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let status = attempt.status().as_u16();
        let to = attempt.url();
        if let Err(denied) = egress.check_url(to) {
            let message = format!(
                "HTTP {status} redirect to {} refused: {denied}; no connection was attempted",
                crate::error::shorten(&crate::redact::uri(to.as_str()))
            );
            return attempt.error(RedirectRefused {
                message,
                status,
                by_policy: true,
            });
        }
        let message = if !matches!(to.scheme(), "http" | "https") {
            super::response::redirect_refused(to)
        } else if !to.username().is_empty() || to.password().is_some() {
            format!(
                "redirect to {} refused: it carries credentials (user:password@)",
                crate::redact::uri(to.as_str())
            )
        } else if attempt.previous().contains(to) {
            format!("redirect loop: HTTP {status} back to {to}, which was already requested")
        } else if attempt.previous().len() > MAX_REDIRECTS {
            format!("too many redirects: more than {MAX_REDIRECTS}, the last HTTP {status} to {to}")
        } else {
            return attempt.follow();
        };
        attempt.error(RedirectRefused {
            message,
            status,
            by_policy: false,
        })
    })
}

fn user_headers(headers: &BTreeMap<String, String>) -> HeaderMap {
    // Names and values were validated when the download was created.
    headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect()
}

/// Checks a client's extra request header; `Err` says why it is refused.
pub fn check_user_header(name: &str, value: &str) -> Result<(), String> {
    let name_shown = crate::error::shorten(name);
    let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        format!("request header name `{name_shown}` is not a valid HTTP header name")
    })?;
    if RESERVED_HEADERS.contains(&parsed.as_str()) {
        return Err(format!(
            "request header `{name_shown}` is managed by transferd and cannot be set"
        ));
    }
    HeaderValue::from_str(value).map_err(|_| {
        format!("request header `{name_shown}` has a value that is not valid in HTTP")
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_headers_are_checked() {
        assert!(check_user_header("Authorization", "Bearer abc").is_ok());
        assert!(check_user_header("Range", "bytes=0-").is_err());
        assert!(check_user_header("bad header", "x").is_err());
        assert!(check_user_header("x-ok", "line\nbreak").is_err());
    }
}
