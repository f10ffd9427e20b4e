//! Reading a response: whether a ranged answer continues the partial file (`Content-Range` must
//! start exactly at the offset and keep the known entity length), which validators guard a later
//! resume, whether the server allows resuming at all, and whether an error status is worth
//! retrying (and after how long).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderValue};

use super::Failure;
use crate::operation::{ErrorReason, ResponseInfo, TransferError, Validators};

/// Longest Retry-After transferd honours. A server asking for more is retried after this long
/// instead, so one bad header cannot park a download for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Statuses that say "try again later": timeouts, rate limits and server-side trouble.
const TRANSIENT_STATUSES: [u16; 6] = [408, 429, 500, 502, 503, 504];

/// What a response to a Range request means for the download.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Resume {
    /// A 206 that continues exactly where the partial file ends.
    Continue,
    /// A 200: the server sent the whole entity (Range ignored or If-Range failed).
    StartOver,
    /// The server cannot continue (416, a range that does not start at the offset, a changed
    /// entity length): ask again without Range.
    RequestAgain(&'static str),
}

/// How the response to a request ranged from `offset` relates to the partial file, whose entity
/// length is `known_total` (0 if unknown).
pub(super) fn check_resume(response: &reqwest::Response, offset: u64, known_total: u64) -> Resume {
    match response.status() {
        StatusCode::PARTIAL_CONTENT => match content_range(response.headers()) {
            Some(r) if r.start != offset => {
                Resume::RequestAgain("206 range does not start at the requested offset")
            }
            Some(r) if known_total > 0 && r.total.is_some_and(|t| t != known_total) => {
                Resume::RequestAgain("entity length changed since the last request")
            }
            Some(_) => Resume::Continue,
            None => Resume::RequestAgain("206 without a usable Content-Range"),
        },
        StatusCode::RANGE_NOT_SATISFIABLE => {
            Resume::RequestAgain("416: the saved offset is beyond the entity")
        }
        _ => Resume::StartOver,
    }
}

/// What the engine is told about a response, and the validators of the entity it carries.
pub(super) fn describe(response: &reqwest::Response) -> (ResponseInfo, Validators) {
    let headers = response.headers();
    let validators = validators_of(headers);
    let info = ResponseInfo {
        is_resumable: is_resumable(headers, &validators),
        actual_uri: response.url().to_string(),
        status_code: response.status().as_u16(),
        headers: header_map(headers),
    };
    (info, validators)
}

/// The entity length a successful response announces, 0 if unknown.
pub(super) fn entity_length(response: &reqwest::Response) -> u64 {
    let headers = response.headers();
    if response.status() == StatusCode::PARTIAL_CONTENT {
        content_range(headers).and_then(|r| r.total).unwrap_or(0)
    } else {
        content_length(headers).unwrap_or(0)
    }
}

/// A parsed `Content-Range: bytes start-end/total`.
#[derive(Debug, PartialEq, Eq)]
struct ContentRange {
    start: u64,
    total: Option<u64>,
}

fn content_range(headers: &HeaderMap) -> Option<ContentRange> {
    let v = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    parse_content_range(v)
}

fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    if total.is_some_and(|t| end >= t) {
        return None;
    }
    Some(ContentRange { start, total })
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn validators_of(headers: &HeaderMap) -> Validators {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    Validators {
        // Weak ETags may not be used in If-Range (RFC 9110 13.1.5).
        etag: text(header::ETAG).filter(|e| e.starts_with('"')),
        last_modified: text(header::LAST_MODIFIED),
    }
}

fn is_resumable(headers: &HeaderMap, validators: &Validators) -> bool {
    let refuses = headers
        .get(header::ACCEPT_RANGES)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !refuses && validators.if_range().is_some()
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        map.entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    map
}

/// The failure an error status means: transient for [`TRANSIENT_STATUSES`], fatal otherwise.
pub(super) fn http_failure(status: StatusCode, retry_after: Option<Duration>) -> Failure {
    let error = TransferError {
        message: format!(
            "the server answered HTTP {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .trim_end()
        .to_string(),
        http_status: Some(status.as_u16()),
        reason: ErrorReason::HttpStatus,
    };
    Failure {
        transient: TRANSIENT_STATUSES.contains(&status.as_u16()),
        retry_after,
        ..Failure::fatal(error)
    }
}

/// `Retry-After` as delay-seconds or an HTTP date, bounded by [`MAX_RETRY_AFTER`].
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some(ContentRange {
                start: 100,
                total: Some(1000)
            })
        );
        assert_eq!(
            parse_content_range("bytes 5-9/*"),
            Some(ContentRange {
                start: 5,
                total: None
            })
        );
        for bad in [
            "bytes */1000",
            "bytes 10-5/100",
            "bytes 0-100/100",
            "items 0-1/2",
            "bytes x-1/2",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_within_bounds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("99999999"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        h.insert(header::RETRY_AFTER, HeaderValue::from_str(&soon).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn only_retryable_statuses_are_transient() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(http_failure(StatusCode::from_u16(code).unwrap(), None).transient);
        }
        for code in [400, 401, 403, 404, 410, 501] {
            assert!(!http_failure(StatusCode::from_u16(code).unwrap(), None).transient);
        }
    }

    #[test]
    fn weak_etags_are_not_validators() {
        let mut h = HeaderMap::new();
        h.insert(header::ETAG, HeaderValue::from_static("W/\"x\""));
        assert_eq!(validators_of(&h).etag, None);
        h.insert(header::ETAG, HeaderValue::from_static("\"x\""));
        assert_eq!(validators_of(&h).etag.as_deref(), Some("\"x\""));
    }

    #[test]
    fn resumable_needs_a_validator_and_no_refusal() {
        let mut h = HeaderMap::new();
        assert!(!is_resumable(&h, &validators_of(&h)));
        h.insert(header::ETAG, HeaderValue::from_static("\"x\""));
        assert!(is_resumable(&h, &validators_of(&h)));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("none"));
        assert!(!is_resumable(&h, &validators_of(&h)));
    }

    #[test]
    fn repeated_headers_are_joined() {
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        assert_eq!(header_map(&h).get("x-a").map(String::as_str), Some("1, 2"));
    }
}
