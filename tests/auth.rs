//! Token authentication and roles, end to end: a real transferd with a token file, real clients
//! sending bearer tokens. Every RPC of both services is tried without a token, with a bad one,
//! and as each role, checking the exact code, the message, and that nothing stored changed.
//! Also: health and reflection stay open, SIGHUP revokes a token (and a broken file keeps the
//! old ones), the secure-by-default listen rule, and `transferd hash-token`.

mod common;

use std::time::Duration;

use common::origin::{Resource, test_bytes};
use common::rpcs::{
    assert_refused, every_rpc, paused_download, raw_authorization, rpcs_of_the_contract,
    stored_state,
};
use common::tokens::{TOKEN_FILE, write_token_file};
use common::{DEADLINE, Harness, S, Server, Token, create_request, pb, run_transferd};
use tonic::Code;

const ADMIN: Token = Token {
    name: "ops",
    tenant: "media",
    role: "admin",
    secret: "admin-secret-1",
};
const USER: Token = Token {
    name: "ingest-worker",
    tenant: "media",
    role: "user",
    secret: "user-secret-2",
};
const READER: Token = Token {
    name: "dashboard",
    tenant: "media",
    role: "reader",
    secret: "reader-secret-3",
};
const ALL: &[Token] = &[ADMIN, USER, READER];

/// The RPCs a reader may make.
const READS: &[&str] = &[
    "GetDownload",
    "ListDownloads",
    "WatchDownload",
    "WatchDownloads",
    "GetResponseInformation",
    "ReadResult",
];

/// The methods of `TransferSystemService`, for admins only.
const SYSTEM: &[&str] = &["SetNetworkConditions", "SetSystemPolicy", "GetSystemStatus"];

/// How often a test re-checks something it waits for.
const POLL: Duration = Duration::from_millis(20);

#[tokio::test]
async fn calls_without_a_known_token_are_unauthenticated_and_change_nothing() {
    let h = Harness::start_with_tokens(ALL, &ADMIN, &[]).await;
    let op = paused_download(&h).await;
    let before = stored_state(&h, &h.client).await;

    let anonymous = h.server.client().await;
    let answers = every_rpc(&h, &anonymous, &op.guid).await;
    assert_refused(&answers, Code::Unauthenticated, |_| {
        "send `authorization: Bearer <token>`".into()
    });

    let stranger = h.server.client_with_token("not-a-token").await;
    let answers = every_rpc(&h, &stranger, &op.guid).await;
    assert_refused(&answers, Code::Unauthenticated, |_| "unknown token".into());
    for (_, answer) in &answers {
        assert!(
            !answer
                .as_ref()
                .unwrap_err()
                .message()
                .contains("not-a-token"),
            "the token is never echoed"
        );
    }

    // The token's hash is not the token: sending the file's line back gets nowhere.
    let hash = common::sha256(ADMIN.secret.as_bytes());
    let hashed = h.server.client_with_token(&hash).await;
    let status = hashed.system_status().await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    for malformed in [
        "Basic b3BzOmFkbWluLXNlY3JldC0x",
        "Bearer",
        "Bearer    ",
        ADMIN.secret,
        "Bearer-admin-secret-1",
    ] {
        let status = raw_authorization(&h.server, malformed).await;
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{malformed:?}: {status:?}"
        );
        assert!(
            status.message().contains("malformed authorization"),
            "{malformed:?}: {status:?}"
        );
    }
    // The scheme is case-insensitive (RFC 7235), and the token is not.
    let lower = raw_authorization(&h.server, &format!("bearer {}", ADMIN.secret)).await;
    assert_eq!(lower.code(), Code::Ok, "{lower:?}");
    let upper = raw_authorization(
        &h.server,
        &format!("Bearer {}", ADMIN.secret.to_uppercase()),
    )
    .await;
    assert_eq!(upper.code(), Code::Unauthenticated, "{upper:?}");

    assert_eq!(stored_state(&h, &h.client).await, before);
}

#[tokio::test]
async fn a_reader_reads_and_every_other_call_is_denied_naming_the_role() {
    let h = Harness::start_with_tokens(ALL, &ADMIN, &[]).await;
    let op = paused_download(&h).await;
    let before = stored_state(&h, &h.client).await;

    let reader = h.server.client_as(&READER).await;
    let answers = every_rpc(&h, &reader, &op.guid).await;
    let (reads, others): (Vec<_>, Vec<_>) =
        answers.into_iter().partition(|(m, _)| READS.contains(m));
    assert_eq!(reads.len(), READS.len());
    for (method, answer) in &reads {
        assert!(answer.is_ok(), "a reader may call {method}: {answer:?}");
    }
    assert_eq!(others.len(), 16);
    assert_refused(&others, Code::PermissionDenied, |method| {
        let needed = if SYSTEM.contains(&method) {
            "admin"
        } else {
            "user or admin"
        };
        format!("{method} needs role {needed}; this token (dashboard) has role reader")
    });
    assert_eq!(stored_state(&h, &h.client).await, before);
    assert_eq!(reader.get(&op.guid).await.unwrap(), h.get(&op.guid).await);
}

#[tokio::test]
async fn a_user_controls_downloads_but_not_the_system() {
    let h = Harness::start_with_tokens(ALL, &ADMIN, &[]).await;
    let user = h.server.client_as(&USER).await;
    h.origin.put(
        "/u.bin",
        Resource::new(test_bytes(64 * 1024, 3)).hold_after(1024),
    );
    let op = user
        .create(create_request(&h.origin.url("/u.bin"), "u.bin"))
        .await
        .expect("a user creates");
    h.wait_bytes(&op.guid, 1024).await;
    let paused = user.pause(&op.guid).await.expect("a user pauses");
    assert_eq!(common::status_of(&paused), S::PausedByApplication);
    user.set_priority(&op.guid, pb::BackgroundTransferPriority::High)
        .await
        .expect("a user edits");
    let canceled = user.cancel(&op.guid).await.expect("a user cancels");
    assert_eq!(common::status_of(&canceled), S::Canceled);

    let before = stored_state(&h, &h.client).await;
    let answers = [
        ("GetSystemStatus", user.system_status().await.map(drop)),
        (
            "SetSystemPolicy",
            user.set_system_policy(true).await.map(drop),
        ),
        (
            "SetNetworkConditions",
            user.set_network_conditions(Some(false), None)
                .await
                .map(drop),
        ),
    ];
    assert_refused(&answers, Code::PermissionDenied, |method| {
        format!("{method} needs role admin; this token (ingest-worker) has role user")
    });
    assert_eq!(stored_state(&h, &h.client).await, before);
}

#[tokio::test]
async fn an_admin_may_call_everything() {
    let h = Harness::start_with_tokens(ALL, &ADMIN, &[]).await;
    let op = paused_download(&h).await;
    let answers = every_rpc(&h, &h.client, &op.guid).await;
    let mut tried: Vec<String> = answers.iter().map(|(m, _)| m.to_string()).collect();
    let mut contract = rpcs_of_the_contract();
    tried.sort();
    contract.sort();
    assert_eq!(tried, contract, "every_rpc tries every RPC of the contract");
    for (method, answer) in answers {
        // Authorized calls reach their handlers; some then refuse on the download's state
        // (e.g. MakeCurrent after DeleteDownload), never on who is calling.
        if let Err(status) = answer {
            assert!(
                !matches!(
                    status.code(),
                    Code::Unauthenticated | Code::PermissionDenied
                ),
                "{method}: {status:?}"
            );
        }
    }
    let status = h.system_status().await;
    assert!(
        status.constrained,
        "the admin's SetSystemPolicy took effect"
    );
}

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    let h = Harness::start_with_tokens(ALL, &ADMIN, &[]).await;
    let channel = h.server.channel().await;
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers without a token");
    assert_eq!(
        health.into_inner().status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers without a token")
        .into_inner();
    let response = stream
        .message()
        .await
        .unwrap()
        .expect("a reflection response");
    assert!(format!("{response:?}").contains("backgroundtransfer.v1.TransferSystemService"));

    let out = run_transferd(["healthcheck", "--addr", &h.server.addr.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `check` until it holds, for at most [`DEADLINE`].
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    server: &Server,
    check: impl Fn() -> F,
) {
    let start = tokio::time::Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}; log:\n{}",
            server.log()
        );
        tokio::time::sleep(POLL).await;
    }
}

fn hangup(server: &Server) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sighup_revokes_a_token_and_a_broken_file_keeps_the_old_ones() {
    let h = Harness::start_with_tokens(ALL, &ADMIN, &[]).await;
    let reader = h.server.client_as(&READER).await;
    reader.list(None, 0, "").await.expect("the reader is known");

    h.rewrite_tokens(&[ADMIN, USER]);
    hangup(&h.server);
    eventually("the reader's token to be revoked", &h.server, || async {
        matches!(reader.list(None, 0, "").await, Err(s) if s.code() == Code::Unauthenticated)
    })
    .await;
    assert!(h.server.log().contains("token file reloaded"));
    let user = h.server.client_as(&USER).await;
    user.list(None, 0, "").await.expect("the user stays");

    // A broken file: the error is logged and the old set stays in force.
    std::fs::write(
        h.server.data_dir.join(TOKEN_FILE),
        "[[tokens]]\nname = \"half\"\n",
    )
    .unwrap();
    hangup(&h.server);
    eventually("the reload error in the log", &h.server, || async {
        h.server.log().contains("token file NOT reloaded")
    })
    .await;
    let log = h.server.log();
    let line = log
        .lines()
        .find(|l| l.contains("token file NOT reloaded"))
        .unwrap();
    assert!(
        line.contains("ERROR") && line.contains(TOKEN_FILE) && line.contains("missing field"),
        "{line}"
    );
    user.list(None, 0, "")
        .await
        .expect("the old tokens stay in force");
    assert_eq!(
        reader.list(None, 0, "").await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert!(h.server.is_running());
}

#[tokio::test]
async fn a_bad_token_file_stops_the_start_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_token_file(dir.path(), &[USER]);
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("\"user\"", "\"superuser\"");
    std::fs::write(&file, text).unwrap();
    let data = dir.path().join("data");
    let out = run_transferd([
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--auth-tokens",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:4: ", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("unknown variant `superuser`"), "{stderr}");
    assert!(
        !data.exists(),
        "nothing was created before the file was checked"
    );
}

#[tokio::test]
async fn a_wildcard_address_needs_tokens_or_an_explicit_opt_out() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let out = run_transferd(["--listen", listen, "--data-dir", data.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{listen}");
        assert!(out.stdout.is_empty(), "nothing was announced");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("refusing to serve on"), "{stderr}");
        assert!(
            stderr.contains("--auth-tokens FILE") && stderr.contains("--allow-unauthenticated"),
            "{stderr}"
        );
        assert!(!data.exists(), "refused before touching the data directory");
    }

    let open = Server::start_listening("0.0.0.0:0", &data, &["--allow-unauthenticated"]).await;
    let client = open.client().await;
    client
        .list(None, 0, "")
        .await
        .expect("an explicit opt-out serves without tokens");
    let warning = open
        .log()
        .lines()
        .find(|l| l.contains("WITHOUT authentication"))
        .map(str::to_owned);
    assert!(
        warning.is_some_and(|l| l.contains("WARN")),
        "{}",
        open.log()
    );
    drop(open);

    let tokens = write_token_file(dir.path(), &[ADMIN]);
    let data = dir.path().join("data2");
    let guarded = Server::start_listening(
        "0.0.0.0:0",
        &data,
        &["--auth-tokens", tokens.to_str().unwrap()],
    )
    .await;
    let admin = guarded.client_as(&ADMIN).await;
    admin
        .system_status()
        .await
        .expect("tokens make a wildcard address acceptable");
    let anonymous = guarded.client().await;
    assert_eq!(
        anonymous.list(None, 0, "").await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let both = run_transferd([
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--auth-tokens",
        tokens.to_str().unwrap(),
        "--allow-unauthenticated",
    ]);
    assert_eq!(
        both.status.code(),
        Some(2),
        "clap refuses the contradiction"
    );
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
}

#[test]
fn hash_token_prints_the_sha256_of_a_token() {
    let out = run_transferd(["hash-token", "s3cret"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", common::sha256(b"s3cret"))
    );

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_transferd"))
        .args(["hash-token", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from-stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", common::sha256(b"from-stdin"))
    );

    let out = run_transferd(["hash-token", "two words"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("printable ASCII without spaces"));
}

#[test]
fn hash_token_without_a_token_makes_one() {
    let made = |_: u32| {
        let out = run_transferd(["hash-token"]);
        assert!(out.status.success());
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{stdout}");
        let token = lines[0].to_owned();
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            lines[1],
            format!("token_sha256 = \"{}\"", common::sha256(token.as_bytes()))
        );
        token
    };
    let tokens: Vec<String> = (0..2).map(made).collect();
    assert_ne!(tokens[0], tokens[1]);
}

/// The audit lines of the server's log, in order.
fn audit_lines(server: &Server) -> Vec<String> {
    server
        .log()
        .lines()
        .filter(|line| line.contains(" audit: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_state_changing_call_leaves_one_audit_line_with_who_what_and_the_code() {
    let h = Harness::start_with_tokens(ALL, &ADMIN, &[]).await;
    let user = h.server.client_as(&USER).await;
    let reader = h.server.client_as(&READER).await;
    let anonymous = h.server.client().await;
    h.origin.put(
        "/a.bin",
        Resource::new(test_bytes(64 * 1024, 4)).hold_after(1024),
    );

    let op = user
        .create(create_request(&h.origin.url("/a.bin"), "a.bin"))
        .await
        .expect("a user creates");
    h.wait_bytes(&op.guid, 1024).await;
    user.pause(&op.guid).await.expect("a user pauses");
    reader.get(&op.guid).await.expect("a reader reads");
    let denied = reader.cancel(&op.guid).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let unauthenticated = anonymous
        .create(create_request(&h.origin.url("/a.bin"), "b.bin"))
        .await
        .unwrap_err();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
    let missing = user.resume("no-such-guid").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    h.client
        .set_network_conditions(Some(true), None)
        .await
        .expect("an admin sets the network");

    let lines = audit_lines(&h.server);
    let expected = [
        (
            "ingest-worker",
            "media",
            "CreateDownload",
            op.guid.as_str(),
            "Ok",
        ),
        (
            "ingest-worker",
            "media",
            "PauseDownload",
            op.guid.as_str(),
            "Ok",
        ),
        (
            "dashboard",
            "media",
            "CancelDownload",
            "-",
            "PermissionDenied",
        ),
        ("-", "-", "CreateDownload", "-", "Unauthenticated"),
        (
            "ingest-worker",
            "media",
            "ResumeDownload",
            "no-such-guid",
            "NotFound",
        ),
        ("ops", "media", "SetNetworkConditions", "-", "Ok"),
    ];
    assert_eq!(
        lines.len(),
        expected.len(),
        "reads are not audited: {lines:#?}"
    );
    for (line, (caller, tenant, method, subject, code)) in lines.iter().zip(expected) {
        for field in [
            format!("caller=\"{caller}\""),
            format!("tenant=\"{tenant}\""),
            format!("method={method}"),
            format!("subject={subject}"),
            format!("code={code}"),
        ] {
            assert!(line.contains(&field), "{field} missing from {line}");
        }
    }
}
