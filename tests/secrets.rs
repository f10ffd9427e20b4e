//! Secrets stay secret: sensitive request headers and URI userinfo reach the origin (also after
//! a restart) but never a response, a progress stream or the server's log, even at `trace`;
//! SetRequestedUri to another origin drops them unless given again; the database files are
//! private to the server's user.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::origin::{Origin, Resource, test_bytes};
use common::{Harness, S, pb, read_to_end, read_until};
use tonic::Code;

/// What every response shows in place of a secret (README, Security / Secrets).
const MARKER: &str = "[redacted]";

/// The secrets one download is created with: header name, value, and whether the request marks
/// the header sensitive itself (the others are sensitive by the built-in rule).
const HEADERS: [(&str, &str, bool); 5] = [
    ("Authorization", "Bearer auth-s3cret-1", false),
    ("Cookie", "sid=cookie-s3cret-2", false),
    ("Proxy-Authorization", "Basic cHJveHktczNjcmV0LTM=", false),
    ("X-Api-Key", "apikey-s3cret-4", false),
    ("X-Pin", "pin-s3cret-5", true),
];

/// A header that is not sensitive: it is shown as sent.
const PLAIN: (&str, &str) = ("X-Trace", "trace-visible");

/// The password of the URI's userinfo.
const URI_PASSWORD: &str = "uri-s3cret-6";

/// How the HTTP client sends the URI's userinfo: `Basic base64(alice:uri-s3cret-6)`.
const USERINFO_BASIC: &str = "YWxpY2U6dXJpLXMzY3JldC02";

/// Every secret value, as a client or a log could see it.
fn secrets() -> Vec<&'static str> {
    let mut all: Vec<&str> = HEADERS.iter().map(|(_, v, _)| *v).collect();
    // The part of each value that is secret, so a value shown in pieces is caught too.
    all.extend([
        "s3cret",
        "cHJveHktczNjcmV0LTM",
        URI_PASSWORD,
        USERINFO_BASIC,
    ]);
    all
}

/// Panics if `shown` (a response or a log, as text) contains any secret.
fn assert_secret_free(what: &str, shown: &str) {
    for secret in secrets() {
        assert!(
            !shown.contains(secret),
            "{what} shows the secret {secret:?}:\n{shown}"
        );
    }
}

/// `url` with `user:password@` in its authority.
fn with_userinfo(url: &str) -> String {
    url.replacen("http://", &format!("http://alice:{URI_PASSWORD}@"), 1)
}

/// A create request carrying every header of [`HEADERS`] and [`PLAIN`].
fn with_secrets(request: &mut pb::CreateDownloadRequest) {
    for (name, value, marked) in HEADERS {
        request.request_headers.insert(name.into(), value.into());
        if marked {
            request.sensitive_headers.push(name.into());
        }
    }
    request
        .request_headers
        .insert(PLAIN.0.into(), PLAIN.1.into());
}

/// The download as a response shows it: every sensitive value is the marker, the plain header
/// is as sent, and the download's own mark is listed.
fn assert_redacted(what: &str, op: &pb::DownloadOperation) {
    assert_secret_free(what, &format!("{op:?}"));
    for (name, _, _) in HEADERS {
        let shown = op.request_headers.get(&name.to_ascii_lowercase());
        assert_eq!(shown.map(String::as_str), Some(MARKER), "{what}: {name}");
    }
    assert_eq!(op.request_headers["x-trace"], PLAIN.1, "{what}");
    assert_eq!(op.sensitive_headers, vec!["x-pin".to_string()], "{what}");
}

/// Asserts the origin's last request for `path` carried every header of [`HEADERS`] as given.
fn assert_sent(origin: &Origin, path: &str) {
    let requests = origin.requests_for(path);
    let last = requests.last().expect("the origin was asked");
    for (name, value, _) in HEADERS {
        assert_eq!(last.header(name), Some(value), "{path}: {name}");
    }
    assert_eq!(last.header(PLAIN.0), Some(PLAIN.1));
}

#[tokio::test]
async fn secrets_reach_the_origin_but_no_response_and_no_log() {
    let mut h = Harness::start_logging(&[], "trace").await;
    let body = test_bytes(300_000, 91);
    let op = h
        .start_held_with("/a", Resource::new(body.clone()), 100_000, with_secrets)
        .await;
    assert_redacted("CreateDownload", &op);
    assert_sent(&h.origin, "/a");

    // A second download carries its credentials in the URI; the HTTP client sends them as
    // Basic authorization.
    h.origin.put("/b", Resource::new(body.clone()));
    let userinfo_uri = with_userinfo(&h.origin.url("/b"));
    let by_uri = h.create(&userinfo_uri, "b").await;
    let shown_uri = h
        .origin
        .url("/b")
        .replacen("http://", "http://[redacted]@", 1);
    assert_eq!(by_uri.requested_uri, shown_uri);
    h.wait_status(&by_uri.guid, S::Completed).await;
    h.assert_file("b", &body);
    let basic = h.origin.requests_for("/b")[0]
        .header("authorization")
        .map(str::to_string);
    assert_eq!(basic, Some(format!("Basic {USERINFO_BASIC}")));

    // Every way a client reads a download.
    assert_redacted("GetDownload", &h.get(&op.guid).await);
    let listed = h.client.list_all(None).await.expect("ListDownloads");
    assert_secret_free("ListDownloads", &format!("{listed:?}"));
    let listed_uri = listed.iter().find(|d| d.guid == by_uri.guid).unwrap();
    assert_eq!(listed_uri.requested_uri, shown_uri);
    assert_redacted("PauseDownload", &h.pause(&op.guid).await);
    let information = h.response_information(&by_uri.guid).await;
    assert_secret_free("GetResponseInformation", &format!("{information:?}"));
    let priority = h
        .client
        .set_priority(&op.guid, pb::BackgroundTransferPriority::High);
    assert_redacted("SetPriority", &priority.await.expect("SetPriority"));

    // After a restart the stored secrets are sent again, and still never shown.
    h.server.terminate().await;
    h.restart(&[]).await;
    assert_redacted("GetDownload after a restart", &h.get(&op.guid).await);
    let watch = h.watch(&op.guid).await;
    let mut watch_all = h.watch_all(None).await;
    h.origin.release("/a");
    assert_redacted("ResumeDownload", &h.resume(&op.guid).await);
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("a", &body);
    assert!(h.origin.requests_for("/a").len() >= 2);
    assert_sent(&h.origin, "/a");
    assert_redacted("GetDownload, completed", &h.get(&op.guid).await);

    let progress = read_to_end(watch).await;
    assert_secret_free("WatchDownload", &format!("{progress:?}"));
    let events = read_until(&mut watch_all, "the completion of /a", |e| {
        e.guid == op.guid && e.progress.is_some_and(|p| p.status() == S::Completed)
    })
    .await;
    assert_secret_free("WatchDownloads", &format!("{events:?}"));

    // The server logged at trace level, through both runs, without a single secret.
    let log = h.server.log();
    assert!(log.contains(&op.guid), "the log is written at all:\n{log}");
    assert!(log.contains("TRACE"), "the log is at trace level");
    assert_secret_free("the server log", &log);
}

#[tokio::test]
async fn error_messages_never_quote_credentials() {
    let h = Harness::start_logging(&[], "trace").await;
    // A URI that is refused repeats what the client sent, without its userinfo.
    let refused = h
        .client
        .create(common::create_request(
            &format!("ftp://alice:{URI_PASSWORD}@127.0.0.1/x"),
            "x",
        ))
        .await
        .expect_err("ftp is refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("ftp://[redacted]@127.0.0.1/x"),
        "{refused:?}"
    );
    assert_secret_free("an InvalidArgument status", refused.message());

    // A URI copied from a response is refused rather than sending the marker as a user name.
    let copied =
        with_userinfo(&h.origin.url("/c")).replace(&format!("alice:{URI_PASSWORD}"), MARKER);
    let refused = h
        .client
        .create(common::create_request(&copied, "c"))
        .await
        .expect_err("the marker is not a credential");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("give the real user:password"),
        "{refused:?}"
    );
    let mut marker_header = common::create_request(&h.origin.url("/c"), "c");
    marker_header
        .request_headers
        .insert("Authorization".into(), MARKER.into());
    let refused = h
        .client
        .create(marker_header)
        .await
        .expect_err("marker value");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("send the real value"),
        "{refused:?}"
    );
    assert!(h.client.list_all(None).await.unwrap().is_empty());

    // A redirect to a URL with userinfo is refused (the HTTP client would carry it to the new
    // host and into its logs), and the error quotes that URL without it.
    let with_credentials = with_userinfo(&h.origin.url("/target"));
    h.origin
        .put("/jump", Resource::redirect(302, &with_credentials));
    let op = h.create(&h.origin.url("/jump"), "jump").await;
    let failed = h.wait_finished(&op.guid).await;
    assert_eq!(common::status_of(&failed), S::Error);
    let message = &failed.error.as_ref().expect("an error").message;
    assert!(message.contains("http://[redacted]@127.0.0.1"), "{message}");
    assert!(message.contains("carries credentials"), "{message}");
    assert_eq!(h.origin.hits("/target"), 0);
    assert_secret_free("a transfer error", message);
    assert_secret_free("the server log", &h.server.log());
}

/// Creates a download with every secret, held at the origin `h.origin`, and pauses it.
async fn paused_with_secrets(h: &Harness, path: &str, body: &[u8]) -> pb::DownloadOperation {
    let op = h
        .start_held_with(path, Resource::new(body.to_vec()), 50_000, with_secrets)
        .await;
    h.pause(&op.guid).await;
    h.origin.release(path);
    op
}

#[tokio::test]
async fn set_requested_uri_to_another_origin_drops_secrets_unless_given_again() {
    let h = Harness::start(&[]).await;
    let other = Origin::start().await;
    let body = test_bytes(200_000, 92);
    other.put("/moved", Resource::new(body.clone()));
    other.put("/again", Resource::new(body.clone()));

    // Another port is another origin: the sensitive headers stay behind, the plain one goes.
    let dropped = paused_with_secrets(&h, "/d", &body).await;
    let moved = h
        .client
        .set_requested_uri(&dropped.guid, &other.url("/moved"))
        .await
        .expect("SetRequestedUri");
    let names: Vec<&str> = moved.request_headers.keys().map(String::as_str).collect();
    assert_eq!(names, ["x-trace"]);
    assert_eq!(moved.sensitive_headers, ["x-pin"], "the mark stays");
    h.resume(&dropped.guid).await;
    h.wait_status(&dropped.guid, S::Completed).await;
    h.assert_file("d", &body);
    let seen = &other.requests_for("/moved")[0];
    for (name, _, _) in HEADERS {
        assert_eq!(seen.header(name), None, "{name} reached the other origin");
    }
    assert_eq!(seen.header(PLAIN.0), Some(PLAIN.1));

    // Given again in the same call, a secret travels to the new origin (and is still hidden).
    let given = paused_with_secrets(&h, "/g", &body).await;
    let request = pb::SetRequestedUriRequest {
        guid: given.guid.clone(),
        requested_uri: other.url("/again"),
        request_headers: [("Authorization".into(), "Bearer other-s3cret-7".into())].into(),
        sensitive_headers: vec!["X-Other".into()],
    };
    let moved = h.client.set_requested_uri_with(request).await.unwrap();
    assert_eq!(moved.request_headers["authorization"], MARKER);
    assert_eq!(moved.sensitive_headers, ["x-other", "x-pin"]);
    assert!(!format!("{moved:?}").contains("other-s3cret-7"));
    h.resume(&given.guid).await;
    h.wait_status(&given.guid, S::Completed).await;
    let seen = &other.requests_for("/again")[0];
    assert_eq!(seen.header("authorization"), Some("Bearer other-s3cret-7"));
    assert_eq!(seen.header("x-pin"), None);

    // The same origin (another path) keeps them all.
    let kept = paused_with_secrets(&h, "/k", &body).await;
    h.origin.put("/k2", Resource::new(body.clone()));
    let moved = h
        .client
        .set_requested_uri(&kept.guid, &h.origin.url("/k2"))
        .await
        .unwrap();
    assert_redacted("SetRequestedUri, same origin", &moved);
    h.resume(&kept.guid).await;
    h.wait_status(&kept.guid, S::Completed).await;
    assert_sent(&h.origin, "/k2");
}

#[tokio::test]
async fn a_header_marked_later_is_hidden_from_then_on() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(100_000, 93);
    let op = h
        .start_held("/m", Resource::new(body.clone()), 20_000)
        .await;
    let shown = h
        .client
        .set_sensitive_request_header(&op.guid, "X-Signed-Later", "later-s3cret-8")
        .await
        .unwrap();
    assert_eq!(shown.request_headers["x-signed-later"], MARKER);
    // Setting it again without the flag keeps the mark.
    let shown = h
        .client
        .set_request_header(&op.guid, "x-signed-later", "later-s3cret-9")
        .await
        .unwrap();
    assert_eq!(shown.request_headers["x-signed-later"], MARKER);
    assert_eq!(shown.sensitive_headers, ["x-signed-later"]);
    h.pause(&op.guid).await;
    h.origin.release("/m");
    h.resume(&op.guid).await;
    h.wait_status(&op.guid, S::Completed).await;
    let last = h.origin.requests_for("/m").pop().unwrap();
    assert_eq!(last.header("x-signed-later"), Some("later-s3cret-9"));
}

/// reqwest drops Authorization, Cookie and Proxy-Authorization when a redirect leaves the
/// origin; transferd relies on it (README, Secrets).
#[tokio::test]
async fn a_redirect_to_another_origin_does_not_carry_the_credentials() {
    let h = Harness::start(&[]).await;
    let other = Origin::start().await;
    let body = test_bytes(50_000, 94);
    other.put("/t", Resource::new(body.clone()));
    h.origin
        .put("/r", Resource::redirect(302, &other.url("/t")));
    let mut request = common::create_request(&h.origin.url("/r"), "r");
    with_secrets(&mut request);
    let op = h.create_with(request).await;
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("r", &body);
    assert_sent(&h.origin, "/r");
    let seen = &other.requests_for("/t")[0];
    for name in ["authorization", "cookie", "proxy-authorization"] {
        assert_eq!(seen.header(name), None, "{name} followed the redirect");
    }
}

#[tokio::test]
async fn the_database_files_are_private() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(10_000, 95);
    h.origin.put("/p", Resource::new(body.clone()));
    let op = h.create(&h.origin.url("/p"), "p").await;
    h.wait_status(&op.guid, S::Completed).await;
    for name in ["transferd.db", "transferd.db-wal", "transferd.db-shm"] {
        let path = h.server.data_dir.join(name);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
}
