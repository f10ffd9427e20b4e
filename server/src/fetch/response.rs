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

/// What a response means for the partial file, given what was asked for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Resume {
    /// A 206 that starts exactly at the requested offset (0 when no Range was sent).
    Continue(Part),
    /// Not a range answer: a 200 (the whole entity: Range ignored or If-Range failed), or an
    /// error status.
    Whole,
    /// A range answer that does not fit (416, a range that does not start at the offset, a
    /// changed entity length, no usable Content-Range): the bytes must not be written there.
    RequestAgain(&'static str),
}

/// The part of the entity a fitting 206 carries.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Part {
    /// One past its last byte: where the body ends in the file.
    pub end: u64,
    /// The entity length: from Content-Range, else the one known before (0 if neither).
    pub total: u64,
}

/// How the response to a request ranged from `offset` (0: no Range was sent) relates to the
/// partial file, whose entity length is `known_total` (0 if unknown). Every 206 is checked,
/// also one nobody asked for: its bytes must start where the file ends.
pub(super) fn check_resume(response: &reqwest::Response, offset: u64, known_total: u64) -> Resume {
    match response.status() {
        StatusCode::PARTIAL_CONTENT => match content_range(response.headers()) {
            Some(r) if r.start != offset && offset == 0 => {
                Resume::RequestAgain("206 for a part that was not asked for")
            }
            Some(r) if r.start != offset => {
                Resume::RequestAgain("206 range does not start at the requested offset")
            }
            Some(r) if known_total > 0 && r.total.is_some_and(|t| t != known_total) => {
                Resume::RequestAgain("entity length changed since the last request")
            }
            Some(r) if known_total > 0 && r.end >= known_total => {
                Resume::RequestAgain("206 range runs past the known entity length")
            }
            // Then nothing could tell a complete file from one that stopped short.
            Some(r) if known_total == 0 && r.total.is_none() => {
                Resume::RequestAgain("206 with an unknown entity length, and none known before")
            }
            Some(r) => Resume::Continue(Part {
                end: r.end + 1,
                total: r.total.unwrap_or(known_total),
            }),
            None => Resume::RequestAgain("206 without a usable Content-Range"),
        },
        StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
            Resume::RequestAgain("416: the saved offset is beyond the entity")
        }
        _ => Resume::Whole,
    }
}

/// The Content-Range of a response as sent, for messages.
pub(super) fn content_range_text(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(header::CONTENT_RANGE)
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(80)
                .collect()
        })
        .unwrap_or_else(|| "no Content-Range".into())
}

/// What the engine is told about a response to a request that was `ranged` or not, and the
/// validators of the entity it carries.
pub(super) fn describe(response: &reqwest::Response, ranged: bool) -> (ResponseInfo, Validators) {
    let headers = response.headers();
    let validators = validators_of(headers);
    let info = ResponseInfo {
        is_resumable: is_resumable(response.status(), ranged, headers, &validators),
        actual_uri: response.url().to_string(),
        status_code: response.status().as_u16(),
        headers: header_map(headers),
    };
    (info, validators)
}

/// The entity length a 200 announces, 0 if unknown.
pub(super) fn entity_length(response: &reqwest::Response) -> u64 {
    content_length(response.headers()).unwrap_or(0)
}

/// A parsed `Content-Range: bytes start-end/total`.
#[derive(Debug, PartialEq, Eq)]
struct ContentRange {
    start: u64,
    /// The last byte, inclusive.
    end: u64,
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
    Some(ContentRange { start, end, total })
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

/// Whether the download can go on with a Range request: the origin said it serves byte ranges
/// (`Accept-Ranges: bytes`) or just served one (a 206), it did not ignore the range it was asked
/// for (a 200 to a ranged request), and it sent a validator to guard the resume.
fn is_resumable(
    status: StatusCode,
    ranged: bool,
    headers: &HeaderMap,
    validators: &Validators,
) -> bool {
    let advertises = headers
        .get_all(header::ACCEPT_RANGES)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|unit| unit.trim().eq_ignore_ascii_case("bytes"));
    let honoured = status == StatusCode::PARTIAL_CONTENT;
    let ignored = ranged && status == StatusCode::OK;
    (advertises || honoured) && !ignored && validators.if_range().is_some()
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

/// The failure a redirect the HTTP client did not follow means (a 3xx with a `Location`), fatal:
/// a redirect to a scheme other than http(s) is refused by name, as is one the client could
/// not follow. `None` for a 3xx without `Location`, an ordinary error status.
pub(super) fn unfollowed_redirect(response: &reqwest::Response) -> Option<Failure> {
    let status = response.status();
    if !status.is_redirection() {
        return None;
    }
    let location = response.headers().get(header::LOCATION)?;
    let location = String::from_utf8_lossy(location.as_bytes());
    let message = match response.url().join(&location) {
        Ok(to) if !matches!(to.scheme(), "http" | "https") => redirect_refused(&to),
        _ => format!(
            "the server answered HTTP {} with a redirect to `{}` that cannot be followed",
            status.as_u16(),
            shorten(&location)
        ),
    };
    Some(Failure::fatal(TransferError {
        message,
        http_status: Some(status.as_u16()),
        reason: ErrorReason::HttpStatus,
    }))
}

/// The message of a refused redirect to a scheme transferd does not fetch.
pub(super) fn redirect_refused(to: &url::Url) -> String {
    format!(
        "redirect to {} refused: only http and https",
        shorten(to.as_str())
    )
}

/// Longest piece of an origin's text quoted in a message: enough to recognise it, never a flood.
const QUOTE_LIMIT: usize = 200;

fn shorten(text: &str) -> String {
    if text.chars().count() <= QUOTE_LIMIT {
        return text.to_string();
    }
    let mut short: String = text.chars().take(QUOTE_LIMIT).collect();
    short.push('…');
    short
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
                end: 199,
                total: Some(1000)
            })
        );
        assert_eq!(
            parse_content_range("bytes 5-9/*"),
            Some(ContentRange {
                start: 5,
                end: 9,
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
    fn resumable_needs_ranges_advertised_or_honoured_and_a_validator() {
        let ok = StatusCode::OK;
        let partial = StatusCode::PARTIAL_CONTENT;
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        assert!(!is_resumable(ok, false, &h, &validators_of(&h)));
        h.insert(header::ETAG, HeaderValue::from_static("\"x\""));
        assert!(is_resumable(ok, false, &h, &validators_of(&h)));
        // A 200 to a ranged request ignored the range, whatever it advertises.
        assert!(!is_resumable(ok, true, &h, &validators_of(&h)));
        assert!(is_resumable(partial, true, &h, &validators_of(&h)));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("none"));
        assert!(!is_resumable(ok, false, &h, &validators_of(&h)));
        assert!(is_resumable(partial, true, &h, &validators_of(&h)));
        h.remove(header::ACCEPT_RANGES);
        assert!(!is_resumable(ok, false, &h, &validators_of(&h)));
    }

    #[test]
    fn repeated_headers_are_joined() {
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        assert_eq!(header_map(&h).get("x-a").map(String::as_str), Some("1, 2"));
    }
}
