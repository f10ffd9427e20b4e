//! Request limits and the checks of what clients send: a new download's fields and the values
//! of live edits. Each check says what was wrong and what is accepted.

use std::collections::{BTreeMap, BTreeSet};

use super::commands::NewDownload;
use crate::egress::EgressPolicy;
use crate::error::Error;
use crate::fetch;
use crate::operation::{CostPolicy, Priority};
use crate::paths;
use crate::redact;

/// Longest accepted requested URI, in bytes: what common servers and proxies accept.
const MAX_URI_LEN: usize = 8 * 1024;

/// Most extra request headers per download.
const MAX_REQUEST_HEADERS: usize = 64;

/// Longest transfer group name, in bytes.
const MAX_GROUP_LEN: usize = 256;

/// A new download whose fields passed every check.
#[derive(Debug)]
pub(super) struct CheckedDownload {
    pub(super) uri: url::Url,
    /// The result path the client asked for, in normal form; `None` lets the server pick.
    pub(super) result_file: Option<String>,
    pub(super) priority: Priority,
    pub(super) cost_policy: CostPolicy,
    pub(super) transfer_group: String,
    pub(super) request_headers: BTreeMap<String, String>,
    pub(super) sensitive_headers: BTreeSet<String>,
    pub(super) expected_sha256: Option<String>,
    pub(super) recoverable_web_error_statuses: Vec<u16>,
    pub(super) max_bytes: Option<u64>,
    pub(super) replace_existing: bool,
    pub(super) max_bytes_per_second: Option<u64>,
}

/// Checks every field of a new download; its URI also against the egress policy.
pub(super) fn new_download(
    new: NewDownload,
    egress: &EgressPolicy,
) -> Result<CheckedDownload, Error> {
    let NewDownload {
        requested_uri,
        result_file,
        priority,
        cost_policy,
        transfer_group,
        request_headers,
        sensitive_headers,
        expected_sha256,
        recoverable_web_error_statuses,
        max_bytes,
        replace_existing,
        max_bytes_per_second,
    } = new;
    let max_bytes_per_second = rate_limit("max_bytes_per_second", max_bytes_per_second)?;
    let uri = uri(&requested_uri, egress)?;
    let sensitive_headers = sensitive_names(&sensitive_headers)?;
    let expected_sha256 = sha256(&expected_sha256)?;
    group(&transfer_group)?;
    let mut headers = BTreeMap::new();
    for (name, value) in &request_headers {
        set_header(&mut headers, name, value)?;
    }
    let recoverable = recoverable_statuses(recoverable_web_error_statuses)?;
    let result_file = if result_file.is_empty() {
        None
    } else {
        Some(paths::validate_result_file(&result_file)?)
    };
    Ok(CheckedDownload {
        uri,
        result_file,
        priority,
        cost_policy,
        transfer_group,
        request_headers: headers,
        sensitive_headers,
        expected_sha256,
        recoverable_web_error_statuses: recoverable,
        // 0 on the wire means "no limit of its own".
        max_bytes: (max_bytes > 0).then_some(max_bytes),
        replace_existing,
        max_bytes_per_second,
    })
}

/// A bandwidth limit in bytes/s as a client gave it in `field` (0: none).
pub(super) fn rate_limit(field: &str, bytes_per_second: u64) -> Result<Option<u64>, Error> {
    crate::operation::rate_limit(bytes_per_second)
        .map_err(|e| Error::InvalidArgument(format!("{field}: {e}")))
}

/// Sets a request header (name in lower case), within the limit on how many a download has.
/// The redaction marker is refused as a value: it is what a client copied from a response, not
/// the secret it stands for.
pub(super) fn set_header(
    headers: &mut BTreeMap<String, String>,
    name: &str,
    value: &str,
) -> Result<(), Error> {
    fetch::check_user_header(name, value).map_err(Error::InvalidArgument)?;
    if value == redact::MARKER {
        return Err(Error::InvalidArgument(format!(
            "request header `{}` has the value {}, which transferd shows in place of a secret; \
             send the real value",
            crate::error::shorten(name),
            redact::MARKER
        )));
    }
    let name = name.to_ascii_lowercase();
    if !headers.contains_key(&name) && headers.len() >= MAX_REQUEST_HEADERS {
        return Err(Error::InvalidArgument(format!(
            "at most {MAX_REQUEST_HEADERS} request headers are allowed"
        )));
    }
    headers.insert(name, value.to_string());
    Ok(())
}

/// Names of headers to mark sensitive: valid header names, at most as many as a download may
/// have headers, in lower case.
pub(super) fn sensitive_names(names: &[String]) -> Result<BTreeSet<String>, Error> {
    if names.len() > MAX_REQUEST_HEADERS {
        return Err(Error::InvalidArgument(format!(
            "at most {MAX_REQUEST_HEADERS} sensitive_headers are allowed"
        )));
    }
    names
        .iter()
        .map(|name| {
            fetch::check_user_header(name, "").map_err(Error::InvalidArgument)?;
            Ok(name.to_ascii_lowercase())
        })
        .collect()
}

/// Adds `names` to a download's sensitivity marks, within the limit on how many it may have;
/// on error nothing is added.
pub(super) fn mark_sensitive(
    marked: &mut BTreeSet<String>,
    names: BTreeSet<String>,
) -> Result<(), Error> {
    if marked.union(&names).count() > MAX_REQUEST_HEADERS {
        return Err(Error::InvalidArgument(format!(
            "at most {MAX_REQUEST_HEADERS} header names can be marked sensitive"
        )));
    }
    marked.extend(names);
    Ok(())
}

/// The recoverable HTTP statuses, sorted and without repeats; only error statuses qualify.
fn recoverable_statuses(codes: Vec<u32>) -> Result<Vec<u16>, Error> {
    let mut recoverable = Vec::with_capacity(codes.len());
    for code in codes {
        match u16::try_from(code) {
            Ok(c) if (400..=599).contains(&c) => recoverable.push(c),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "recoverable_web_error_statuses may hold only HTTP error statuses (400 to 599), not {code}"
                )));
            }
        }
    }
    recoverable.sort_unstable();
    recoverable.dedup();
    Ok(recoverable)
}

/// A transfer group name: bounded, without control characters. Empty means no group.
pub(super) fn group(group: &str) -> Result<(), Error> {
    if group.len() > MAX_GROUP_LEN || group.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "transfer_group must be at most {MAX_GROUP_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

/// An expected SHA-256: empty for none, else 64 hex digits (returned in lower case).
fn sha256(hex: &str) -> Result<Option<String>, Error> {
    if hex.is_empty() {
        return Ok(None);
    }
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::InvalidArgument(format!(
            "expected_sha256 must be 64 hexadecimal digits, got `{}`",
            hex.chars().take(80).collect::<String>()
        )));
    }
    Ok(Some(hex.to_ascii_lowercase()))
}

/// An absolute http(s) URI with a host, of bounded length, whose host is not a literal address
/// the egress policy denies (a name is checked when it resolves, at every connection).
pub(super) fn uri(uri: &str, egress: &EgressPolicy) -> Result<url::Url, Error> {
    // Redacted before it is shortened: a cut could separate a password from the `@` after it.
    let invalid = |reason: &str| Error::InvalidUri {
        uri: redact::uri(uri).chars().take(200).collect(),
        reason: reason.into(),
    };
    if uri.is_empty() {
        return Err(invalid(
            "it is empty; give an absolute http:// or https:// URI",
        ));
    }
    if uri.len() > MAX_URI_LEN {
        return Err(invalid(&format!("longer than {MAX_URI_LEN} bytes")));
    }
    let parsed = url::Url::parse(uri).map_err(|e| invalid(&format!("{e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(&format!(
            "scheme `{}` is not supported; use http or https",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    egress
        .check_url(&parsed)
        .map_err(|denied| invalid(&denied.to_string()))?;
    if redact::is_redacted_uri(&parsed) {
        return Err(invalid(&format!(
            "its user name is {}, which transferd shows in place of credentials; give the real \
             user:password, or none",
            redact::MARKER
        )));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_limit_counts_distinct_names() {
        let mut headers = BTreeMap::new();
        for i in 0..MAX_REQUEST_HEADERS {
            set_header(&mut headers, &format!("X-H{i}"), "v").unwrap();
        }
        // Replacing one (names are case-insensitive) is not a new header.
        set_header(&mut headers, "x-h0", "w").unwrap();
        assert_eq!(headers["x-h0"], "w");
        let err = set_header(&mut headers, "x-more", "v").unwrap_err();
        assert!(err.to_string().contains("at most 64"), "{err}");
        assert!(set_header(&mut BTreeMap::new(), "Range", "bytes=0-").is_err());
        let err = set_header(&mut BTreeMap::new(), "Authorization", redact::MARKER).unwrap_err();
        assert!(err.to_string().contains("send the real value"), "{err}");
    }

    #[test]
    fn sensitive_names_are_header_names_in_lower_case() {
        let names = sensitive_names(&["X-Pin".into(), "x-pin".into()]).unwrap();
        assert_eq!(names, BTreeSet::from(["x-pin".to_string()]));
        assert!(sensitive_names(&["bad name".into()]).is_err());
        let many: Vec<String> = (0..=MAX_REQUEST_HEADERS)
            .map(|i| format!("x-{i}"))
            .collect();
        assert!(sensitive_names(&many).is_err());
    }

    #[test]
    fn an_invalid_uri_never_repeats_its_credentials() {
        let long = format!("ftp://user:{}@host/", "p".repeat(300));
        let message = uri(&long, &EgressPolicy::new(&[], &[]))
            .unwrap_err()
            .to_string();
        assert!(!message.contains("user:p"), "{message}");
        assert!(message.contains("ftp://[redacted]@host/"), "{message}");
        let copied = uri("https://[redacted]@host/a", &EgressPolicy::new(&[], &[]))
            .unwrap_err()
            .to_string();
        assert!(copied.contains("give the real user:password"), "{copied}");
    }

    #[test]
    fn recoverable_statuses_are_error_statuses_sorted_once() {
        assert_eq!(
            recoverable_statuses(vec![503, 401, 503]).unwrap(),
            vec![401, 503]
        );
        for bad in [200, 399, 600, 70_000] {
            assert!(recoverable_statuses(vec![bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn uris_and_hashes() {
        let egress = &EgressPolicy::new(&[], &[]);
        assert!(uri("https://example.com/a", egress).is_ok());
        for bad in ["", "ftp://example.com/a", "http://", "not a uri"] {
            assert!(uri(bad, egress).is_err(), "{bad:?}");
        }
        assert!(uri(&format!("http://h/{}", "a".repeat(MAX_URI_LEN)), egress).is_err());
        assert_eq!(
            uri("http://169.254.169.254/latest", egress)
                .unwrap_err()
                .to_string(),
            "requested_uri `http://169.254.169.254/latest` is not usable: egress to \
             169.254.169.254 is denied by policy (default deny 169.254.0.0/16)"
        );
        assert_eq!(sha256("").unwrap(), None);
        assert_eq!(sha256(&"AB".repeat(32)).unwrap(), Some("ab".repeat(32)));
        assert!(sha256("abc").is_err());
        assert!(group(&"g".repeat(MAX_GROUP_LEN + 1)).is_err());
        assert!(group("line\nbreak").is_err());
        assert!(group("").is_ok());
    }
}
