//! End-to-end: the egress policy. A server started with `--deny-egress 127.0.0.2/32` and an
//! origin bound on 127.0.0.2 that counts every connection it accepts: a literal denied address
//! (in any spelling) is INVALID_ARGUMENT at the call and nothing is stored; a name that
//! resolves there (pinned with `--resolve`, the operator's own way to pin a name, so the test
//! needs no DNS and no root) and a redirect from an allowed origin end in ERROR with reason
//! POLICY; and the denied origin never sees a single connection. The default list denies cloud
//! metadata without any network, an `--allow-egress` exception opens a narrower range, an
//! environment proxy cannot route around the policy, and bad flags stop the server at start.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::origin::{Origin, Resource, test_bytes};
use common::*;

/// The address the tests deny; Linux routes all of 127.0.0.0/8 to loopback without setup.
const DENIED_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The flags of a server that denies [`DENIED_IP`] and pins two names for the tests.
const DENY_FLAGS: [&str; 6] = [
    "--deny-egress",
    "127.0.0.2/32",
    "--resolve",
    "denied.test:127.0.0.2",
    "--resolve",
    "allowed.test:127.0.0.1",
];

/// The policy's words for a connection to [`DENIED_IP`].
const DENIED: &str = "egress to 127.0.0.2 is denied by policy (--deny-egress 127.0.0.2/32)";

/// A server denying [`DENIED_IP`], its allowed origin on 127.0.0.1, and an origin on
/// [`DENIED_IP`] serving `/x`.
async fn start_denying() -> (Harness, Origin) {
    let h = Harness::start(&DENY_FLAGS).await;
    let denied = Origin::start_on(DENIED_IP).await;
    denied.put("/x", Resource::new(test_bytes(1000, 90)));
    (h, denied)
}

/// The error of a download that must end in ERROR with reason POLICY.
async fn policy_error(h: &Harness, guid: &str) -> pb::TransferError {
    let op = h.wait_finished(guid).await;
    assert_eq!(status_of(&op), S::Error, "{op:?}\n{}", h.server.log());
    let error = op.error.expect("an ERROR carries its error");
    assert_eq!(error.reason(), pb::TransferErrorReason::Policy, "{error:?}");
    error
}

/// Asserts that CreateDownload of `uri` is INVALID_ARGUMENT with a message holding `expected`.
async fn refused_at_create(h: &Harness, uri: &str, expected: &str) {
    let status = h
        .client
        .create(create_request(uri, ""))
        .await
        .expect_err(uri);
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{uri}: {status:?}"
    );
    assert!(
        status.message().starts_with("requested_uri `") && status.message().contains(expected),
        "{uri}: {}",
        status.message()
    );
}

#[tokio::test]
async fn a_literal_denied_address_is_refused_at_the_call_in_every_spelling() {
    let (h, denied) = start_denying().await;
    let port = denied.addr().port();
    refused_at_create(&h, &denied.url("/x"), DENIED).await;
    // The URL parser reads these as 127.0.0.2 too; the IPv4-mapped form is judged as IPv4.
    for uri in [
        format!("http://2130706434:{port}/x"),
        format!("http://0x7f.0.0.2:{port}/x"),
        format!("http://127.0.0.2.:{port}/x"),
    ] {
        refused_at_create(&h, &uri, DENIED).await;
    }
    refused_at_create(
        &h,
        &format!("http://[::ffff:127.0.0.2]:{port}/x"),
        "egress to ::ffff:127.0.0.2 is denied by policy (--deny-egress 127.0.0.2/32)",
    )
    .await;
    assert!(h.list_guids().await.is_empty(), "nothing is stored");

    // SetRequestedUri: refused the same way, and the download keeps its URI.
    let op = h
        .start_held(
            "/held",
            Resource::new(test_bytes(1000, 91)).hold_after(100),
            100,
        )
        .await;
    h.pause(&op.guid).await;
    let status = h
        .client
        .set_requested_uri(&op.guid, &denied.url("/x"))
        .await
        .expect_err("a denied address");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(DENIED), "{}", status.message());
    assert_eq!(h.get(&op.guid).await.requested_uri, h.origin.url("/held"));
    assert_eq!(denied.connections(), 0);
}

#[tokio::test]
async fn a_name_that_resolves_to_a_denied_address_fails_without_a_connection() {
    let (h, denied) = start_denying().await;
    let port = denied.addr().port();
    // The pinned allowed name works: what fails below fails for the policy, not the name.
    let body = test_bytes(500, 92);
    h.origin.put("/ok", Resource::new(body.clone()));
    let uri = format!("http://allowed.test:{}/ok", h.origin.addr().port());
    let op = h.create(&uri, "ok.bin").await;
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("ok.bin", &body);

    let op = h
        .create(&format!("http://denied.test:{port}/x"), "x.bin")
        .await;
    let error = policy_error(&h, &op.guid).await;
    assert!(
        error
            .message
            .contains(&format!("`denied.test` resolves to 127.0.0.2: {DENIED}")),
        "{}",
        error.message
    );
    assert!(
        error.message.ends_with("no connection was attempted"),
        "{}",
        error.message
    );
    assert_eq!(denied.connections(), 0);
    assert!(!h.download_dir().join("x.bin").exists());
}

#[tokio::test]
async fn a_redirect_to_a_denied_address_or_name_fails_without_a_connection() {
    let (h, denied) = start_denying().await;
    let port = denied.addr().port();
    let to_literal = denied.url("/x");
    h.origin
        .put("/literal", Resource::redirect(302, &to_literal));
    h.origin.put(
        "/name",
        Resource::redirect(307, &format!("http://denied.test:{port}/x")),
    );

    let op = h.create(&h.origin.url("/literal"), "").await;
    let error = policy_error(&h, &op.guid).await;
    assert_eq!(error.http_status_code, 302);
    assert!(
        error.message.starts_with(&format!(
            "HTTP 302 redirect to {to_literal} refused: {DENIED}"
        )),
        "{}",
        error.message
    );

    let op = h.create(&h.origin.url("/name"), "").await;
    let error = policy_error(&h, &op.guid).await;
    assert!(
        error
            .message
            .contains(&format!("`denied.test` resolves to 127.0.0.2: {DENIED}")),
        "{}",
        error.message
    );
    // Each redirect was asked for once: the failure is final, not retried.
    assert_eq!((h.origin.hits("/literal"), h.origin.hits("/name")), (1, 1));
    assert_eq!(denied.connections(), 0);
}

#[tokio::test]
async fn cloud_metadata_is_denied_by_default_at_the_call() {
    let h = Harness::start(&[]).await;
    let cases = [
        (
            "http://169.254.169.254/latest/meta-data/",
            "egress to 169.254.169.254 is denied by policy (default deny 169.254.0.0/16)",
        ),
        (
            "http://[::ffff:169.254.169.254]/latest/meta-data/",
            "egress to ::ffff:169.254.169.254 is denied by policy (default deny 169.254.0.0/16)",
        ),
        (
            "http://[fd00:ec2::254]/latest/meta-data/",
            "egress to fd00:ec2::254 is denied by policy (default deny fd00:ec2::254/128)",
        ),
        (
            "http://100.100.100.200/latest/meta-data/",
            "(default deny 100.100.100.200/32)",
        ),
        ("http://0.0.0.0:8080/", "(default deny 0.0.0.0/8)"),
    ];
    for (uri, expected) in cases {
        refused_at_create(&h, uri, expected).await;
    }
    assert!(h.list_guids().await.is_empty(), "nothing is stored");
}

#[tokio::test]
async fn a_narrower_allow_opens_a_denied_range() {
    let h = Harness::start(&[
        "--deny-egress",
        "127.0.0.0/8",
        "--allow-egress",
        "127.0.0.2/32",
    ])
    .await;
    let allowed = Origin::start_on(DENIED_IP).await;
    let body = test_bytes(2000, 93);
    allowed.put("/x", Resource::new(body.clone()));
    let op = h.create(&allowed.url("/x"), "x.bin").await;
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("x.bin", &body);
    assert!(allowed.connections() >= 1);
    // The rest of 127.0.0.0/8 stays denied, the harness's own origin included.
    refused_at_create(
        &h,
        &h.origin.url("/x"),
        "egress to 127.0.0.1 is denied by policy (--deny-egress 127.0.0.0/8)",
    )
    .await;
    assert_eq!(h.origin.connections(), 0);
}

#[tokio::test]
async fn an_environment_proxy_cannot_route_around_the_policy() {
    let proxy = Origin::start().await;
    let proxy_url = proxy.url("/");
    let env = [
        ("HTTP_PROXY", proxy_url.as_str()),
        ("http_proxy", proxy_url.as_str()),
    ];
    let h = Harness::start_env(&DENY_FLAGS, &env).await;
    let denied = Origin::start_on(DENIED_IP).await;
    let op = h
        .create(
            &format!("http://denied.test:{}/x", denied.addr().port()),
            "",
        )
        .await;
    policy_error(&h, &op.guid).await;
    // Allowed downloads go straight to the origin, not through the proxy.
    let body = test_bytes(300, 94);
    h.origin.put("/ok", Resource::new(body.clone()));
    let op = h.create(&h.origin.url("/ok"), "ok.bin").await;
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("ok.bin", &body);
    assert_eq!((proxy.connections(), denied.connections()), (0, 0));
}

#[tokio::test]
async fn bad_egress_flags_stop_the_server_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // Flags, environment, and what the message must say.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        (
            &["--deny-egress", "10.0.0.1/8"],
            &[],
            "did you mean 10.0.0.0/8?",
        ),
        (
            &["--allow-egress", "fd00::/129"],
            &[],
            "the prefix length must be 0 to 128",
        ),
        (&["--deny-egress", "internal"], &[], "is not a CIDR range"),
        (
            &[],
            &[("TRANSFERD_DENY_EGRESS", "10.0.0.0/8,10.0.0.0/33")],
            "must be 0 to 32",
        ),
        (
            &["--resolve", "artifacts.internal"],
            &[],
            "is not HOST:ADDR",
        ),
    ];
    for (args, env, expected) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_transferd"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("transferd runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?}");
        assert!(stderr.contains(expected), "{args:?} {env:?}: {stderr}");
        assert!(out.stdout.is_empty(), "nothing was served: {args:?}");
        assert!(!data_dir.exists(), "nothing was created: {args:?}");
    }
}
