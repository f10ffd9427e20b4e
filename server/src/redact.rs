//! Secrets stay secret: which request headers are sensitive, and the one way their values and
//! the userinfo of URIs (`https://user:password@host/`) are shown to clients and written to
//! logs: as [`MARKER`]. The values themselves are stored and sent to the origin unchanged; only
//! what leaves the server in another direction goes through here.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

/// What a client or a log line sees in place of a secret. Brackets are not valid in a header
/// token or in URI userinfo unencoded, so the marker cannot be mistaken for a real value.
pub const MARKER: &str = "[redacted]";

/// Request headers that are always sensitive, whatever the download marks.
const SENSITIVE_NAMES: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// Parts of a header name that make it sensitive: the common ways APIs name credentials
/// (`X-Api-Key`, `X-Auth-Token`, `Private-Token`, `X-Amz-Security-Token`, `X-Session-Id`...).
/// Broad on purpose: a harmless header shown as the marker costs little, a leaked key a lot.
const SENSITIVE_FRAGMENTS: [&str; 9] = [
    "auth",
    "cookie",
    "token",
    "secret",
    "passw",
    "key",
    "session",
    "credential",
    "signature",
];

/// Response headers that carry a secret the origin issued (a session).
const SENSITIVE_RESPONSE_HEADERS: [&str; 2] = ["set-cookie", "set-cookie2"];

/// Whether request header `name` is sensitive: by the built-in rule, or because the download
/// marked it (`marked` holds lower-case names). Case-insensitive.
pub fn is_sensitive(name: &str, marked: &BTreeSet<String>) -> bool {
    let name = name.to_ascii_lowercase();
    SENSITIVE_NAMES.contains(&name.as_str())
        || SENSITIVE_FRAGMENTS.iter().any(|f| name.contains(f))
        || marked.contains(&name)
}

/// Request headers as shown: every sensitive value replaced by [`MARKER`].
pub fn request_headers(
    headers: &BTreeMap<String, String>,
    marked: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(name, value)| {
            let shown = if is_sensitive(name, marked) {
                MARKER.to_string()
            } else {
                value.clone()
            };
            (name.clone(), shown)
        })
        .collect()
}

/// Response headers as shown: cookies the origin set replaced by [`MARKER`].
pub fn response_headers(headers: BTreeMap<String, String>) -> BTreeMap<String, String> {
    headers
        .into_iter()
        .map(|(name, value)| {
            if SENSITIVE_RESPONSE_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                (name, MARKER.to_string())
            } else {
                (name, value)
            }
        })
        .collect()
}

/// `uri` as shown: its userinfo, if any, replaced by [`MARKER`], so
/// `https://user:pw@host/a` becomes `https://[redacted]@host/a` (still a parseable URL, whose
/// user name is the marker). Works on text that does not parse as a URI too (error messages
/// quote what a client sent), splitting the authority the way URL parsers do: it starts after
/// the scheme's `:` and any slashes, ends at the first `/`, `?`, `#` or `\`, and its userinfo
/// is everything before its last `@`.
pub fn uri(uri: &str) -> Cow<'_, str> {
    let Some(colon) = uri.find(':') else {
        return uri.into();
    };
    let start = colon
        + 1
        + uri[colon + 1..]
            .find(|c| c != '/' && c != '\\')
            .unwrap_or(uri.len() - colon - 1);
    let rest = &uri[start..];
    let authority_len = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    match rest[..authority_len].rfind('@') {
        Some(at) => format!("{}{MARKER}{}", &uri[..start], &rest[at..]).into(),
        None => uri.into(),
    }
}

/// Free text (an error message, a log line) with the userinfo of every URI in it replaced by
/// [`MARKER`]. A URI is recognised by `://`; its authority ends where [`uri`] ends it, or at
/// whitespace or a quote a serialized URL never has unencoded in its userinfo (`` ` ``, `"`,
/// `<`, `>`). Parentheses do not end it: a password may hold them.
pub fn text(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = rest.find("://") {
        let start = found + 3;
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let authority_len = rest
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '/' | '?' | '#' | '\\' | '`' | '"' | '<' | '>')
            })
            .unwrap_or(rest.len());
        match rest[..authority_len].rfind('@') {
            Some(at) => {
                out.push_str(MARKER);
                rest = &rest[at..];
            }
            None => {
                out.push_str(&rest[..authority_len]);
                rest = &rest[authority_len..];
            }
        }
    }
    out.push_str(rest);
    out.into()
}

/// Whether `uri`'s userinfo is exactly [`MARKER`]: a URI copied from a response, which would
/// send the marker as a user name instead of the credentials it stands for.
pub fn is_redacted_uri(uri: &url::Url) -> bool {
    let user = uri.username();
    user == MARKER || user == "%5Bredacted%5D"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_and_marked_names_are_sensitive_in_any_case() {
        let none = BTreeSet::new();
        for name in [
            "Authorization",
            "PROXY-AUTHORIZATION",
            "cookie",
            "X-Api-Key",
            "x-auth-token",
            "Private-Token",
            "X-Amz-Security-Token",
            "x-client-secret",
        ] {
            assert!(is_sensitive(name, &none), "{name}");
        }
        for name in ["accept", "x-trace", "user-agent", "if-none-match"] {
            assert!(!is_sensitive(name, &none), "{name}");
        }
        let marked = BTreeSet::from(["x-tenant-pin".to_string()]);
        assert!(is_sensitive("X-Tenant-PIN", &marked));
    }

    #[test]
    fn sensitive_values_become_the_marker() {
        let headers = BTreeMap::from([
            ("authorization".to_string(), "Bearer s3cret".to_string()),
            ("x-trace".to_string(), "abc".to_string()),
            ("x-pin".to_string(), "1234".to_string()),
        ]);
        let marked = BTreeSet::from(["x-pin".to_string()]);
        let shown = request_headers(&headers, &marked);
        assert_eq!(shown["authorization"], MARKER);
        assert_eq!(shown["x-pin"], MARKER);
        assert_eq!(shown["x-trace"], "abc");
        let response = BTreeMap::from([("set-cookie".to_string(), "sid=1".to_string())]);
        assert_eq!(response_headers(response)["set-cookie"], MARKER);
    }

    #[test]
    fn userinfo_is_redacted_and_the_uri_still_parses() {
        let cases = [
            ("https://user:pw@host/a", "https://[redacted]@host/a"),
            ("http://user@host:81/a@b", "http://[redacted]@host:81/a@b"),
            ("http://a:b@c@host?x=@", "http://[redacted]@host?x=@"),
            ("http:user:pw@host/", "http:[redacted]@host/"),
            ("http:\\\\u:p@host\\x", "http:\\\\[redacted]@host\\x"),
            ("https://host/path@x", "https://host/path@x"),
            ("no uri here", "no uri here"),
            ("", ""),
        ];
        for (given, shown) in cases {
            assert_eq!(uri(given), shown, "{given}");
        }
        let parsed = url::Url::parse(&uri("https://user:pw@host/a")).unwrap();
        assert_eq!(parsed.host_str(), Some("host"));
        assert!(is_redacted_uri(&parsed));
        assert!(!is_redacted_uri(
            &url::Url::parse("https://u:p@h/").unwrap()
        ));
    }

    #[test]
    fn every_uri_in_free_text_is_redacted() {
        let message = "redirect loop: HTTP 302 back to http://u:pw@h/x, then (https://k@h2:8) and `ftp://a:b@c`";
        assert_eq!(
            text(message),
            "redirect loop: HTTP 302 back to http://[redacted]@h/x, then (https://[redacted]@h2:8) and `ftp://[redacted]@c`"
        );
        assert_eq!(text("plain http://h/a@b"), "plain http://h/a@b");
        assert_eq!(text("no scheme"), "no scheme");
    }
}
