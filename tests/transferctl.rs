//! `transferctl` end to end: the built binary against a real transferd and a real origin. Each
//! test runs the command as a user would, checks its exit code and output, and checks what it
//! did through the typed client (statuses) and the result files (by hash). One test runs it
//! under a pseudo-terminal (`script` from util-linux) to see the bar it draws.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::origin::{Resource, test_bytes};
use common::{DEADLINE, Harness, S, Token, create_request, status_of};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

/// The binary under test.
const TRANSFERCTL: &str = env!("CARGO_BIN_EXE_transferctl");

/// Every environment variable transferctl reads, removed so the tester's own settings cannot
/// leak into a test.
const CTL_ENV: &[&str] = &[
    "TRANSFERCTL_SERVER",
    "TRANSFERCTL_TOKEN",
    "TRANSFERCTL_CA_CERT",
    "TRANSFERCTL_CLIENT_CERT",
    "TRANSFERCTL_CLIENT_KEY",
    "TRANSFERCTL_SERVER_NAME",
    "TRANSFERCTL_JSON",
];

/// The documented exit codes.
const EXIT_DOWNLOAD_FAILED: i32 = 1;
const EXIT_SERVER: i32 = 3;
const EXIT_INTERRUPTED: i32 = 130;

/// What one run printed and how it ended.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `transferctl ARGS...` against the harness's server, with no terminal anywhere.
fn command(h: &Harness, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(TRANSFERCTL);
    for name in CTL_ENV {
        cmd.env_remove(name);
    }
    cmd.args(args)
        .env("TRANSFERCTL_SERVER", h.server.addr.to_string())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs `transferctl ARGS...` to its end (within the deadline).
async fn ctl(h: &Harness, args: &[&str]) -> Run {
    ctl_env(h, args, &[]).await
}

/// [`ctl`] with extra environment variables.
async fn ctl_env(h: &Harness, args: &[&str], env: &[(&str, &str)]) -> Run {
    finish(command(h, args, env), args).await
}

async fn finish(mut cmd: Command, what: &[&str]) -> Run {
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("transferctl {what:?} did not end within {DEADLINE:?}"))
        .expect("transferctl runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `text` without its terminal control sequences (CSI: ESC `[`, parameters, a final byte).
fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            // Parameters and intermediates run up to the final byte, '@' to '~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// Each line of `stdout` parsed as one JSON object.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

#[tokio::test]
async fn get_completes_and_the_file_hashes_to_the_origins() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(300_000, 1);
    h.origin.put("/data.bin", Resource::new(body.clone()));
    let url = h.origin.url("/data.bin");
    let run = ctl(&h, &["get", &url, "-o", "out/data.bin"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    h.assert_file("out/data.bin", &body);
    // Not a terminal: plain lines, no escape sequences, the last one saying it completed.
    assert!(!run.stdout.contains('\x1b'), "{run:?}");
    let last = run.stdout.lines().last().expect("a progress line");
    assert!(
        last.ends_with("completed 292.97 KiB of 292.97 KiB (100%)"),
        "{last:?}"
    );
    let guid = h.list_guids().await.pop().expect("the download");
    assert!(last.starts_with(&guid), "{last:?} names {guid}");
    assert_eq!(h.status(&guid).await, S::Completed);
}

#[tokio::test]
async fn get_of_a_missing_file_fails_in_plain_words() {
    let h = Harness::start(&[]).await;
    h.origin.put("/gone", Resource::new("x").status(404));
    let run = ctl(&h, &["get", &h.origin.url("/gone"), "-o", "gone"]).await;
    assert_eq!(run.code, Some(EXIT_DOWNLOAD_FAILED), "{run:?}");
    assert!(
        run.stderr
            .contains("failed: the server answered HTTP 404 Not Found"),
        "{run:?}"
    );
    assert!(run.stdout.contains("error"), "{run:?}");
    assert!(!h.download_dir().join("gone").exists());
}

#[tokio::test]
async fn get_json_prints_one_object_per_line_and_detach_returns_the_guid() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(50_000, 2);
    h.origin.put("/j.bin", Resource::new(body.clone()));
    let url = h.origin.url("/j.bin");
    let run = ctl(&h, &["--json", "get", &url, "-o", "j.bin"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines = json_lines(&run.stdout);
    let last = lines.last().expect("a JSON line");
    assert_eq!(last["status"], "COMPLETED", "{last}");
    assert_eq!(last["bytes_received"].as_u64(), Some(50_000), "{last}");
    assert_eq!(
        last["total_bytes_to_receive"].as_u64(),
        Some(50_000),
        "{last}"
    );

    let run = ctl(&h, &["get", "--detach", &url, "-o", "j2.bin"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let guid = run.stdout.trim();
    let op = h.wait_status(guid, S::Completed).await;
    assert_eq!(op.result_file, "j2.bin");
    h.assert_file("j2.bin", &body);
}

#[tokio::test]
async fn ls_shows_downloads_newest_first_as_a_table_and_as_json() {
    let h = Harness::start(&[]).await;
    h.origin.put("/a", Resource::new(test_bytes(1000, 3)));
    let first = h.create(&h.origin.url("/a"), "first").await.guid;
    h.wait_status(&first, S::Completed).await;
    let second = h
        .start_held("/second", Resource::new(test_bytes(10_000, 4)), 4000)
        .await
        .guid;

    let run = ctl(&h, &["ls"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let rows: Vec<&str> = run.stdout.lines().collect();
    assert!(rows[0].starts_with("GUID"), "{rows:?}");
    assert!(
        rows[1].starts_with(&second) && rows[1].contains("RUNNING"),
        "{rows:?}"
    );
    assert!(rows[1].contains("40% of 9.77 KiB"), "{rows:?}");
    assert!(
        rows[2].starts_with(&first) && rows[2].contains("COMPLETED"),
        "{rows:?}"
    );

    let run = ctl(&h, &["ls", "--json"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let ops = json_lines(&run.stdout);
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert_eq!(ops[0]["guid"], second.as_str());
    assert_eq!(ops[0]["bytes_received"].as_u64(), Some(4000));
    assert_eq!(ops[0]["total_bytes_to_receive"].as_u64(), Some(10_000));
    assert_eq!(ops[1]["guid"], first.as_str());
    assert_eq!(ops[1]["status"], "COMPLETED");
    assert_eq!(ops[1]["result_file"], "first");

    let run = ctl(&h, &["ls", "--json", "--status", "completed"]).await;
    let ops = json_lines(&run.stdout);
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0]["guid"], first.as_str());
    h.origin.release("/second");
}

#[tokio::test]
async fn pause_resume_and_cancel_change_the_status() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(20_000, 5);
    let guid = h
        .start_held("/held", Resource::new(body.clone()), 5000)
        .await
        .guid;

    let run = ctl(&h, &["pause", &guid]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout.trim(), format!("{guid} PAUSED_BY_APPLICATION"));
    assert_eq!(h.status(&guid).await, S::PausedByApplication);

    let run = ctl(&h, &["resume", &guid]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    h.wait_status(&guid, S::Running).await;

    let run = ctl(&h, &["cancel", &guid]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(h.status(&guid).await, S::Canceled);

    let run = ctl(&h, &["rm", &guid]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(h.list_guids().await.is_empty());

    // A second pause of a forgotten download: refused, in words, with the server's message.
    let run = ctl(&h, &["pause", &guid]).await;
    assert_eq!(run.code, Some(EXIT_SERVER), "{run:?}");
    assert!(
        run.stderr
            .starts_with(&format!("transferctl: pause {guid}: not found: ")),
        "{run:?}"
    );
}

#[tokio::test]
async fn watch_follows_several_downloads_to_their_end() {
    let h = Harness::start(&[]).await;
    let mut guids = Vec::new();
    for (i, path) in ["/w1", "/w2"].into_iter().enumerate() {
        let resource = Resource::new(test_bytes(64 * 1024, i as u64))
            .throttle(8 * 1024, Duration::from_millis(10));
        h.origin.put(path, resource);
        guids.push(h.create(&h.origin.url(path), &path[1..]).await.guid);
    }
    let run = ctl(&h, &["watch", "--json", &guids[0], &guids[1]]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines = json_lines(&run.stdout);
    for guid in &guids {
        let last = lines
            .iter()
            .rfind(|l| l["guid"] == guid.as_str())
            .unwrap_or_else(|| panic!("no line for {guid}: {lines:?}"));
        assert_eq!(last["status"], "COMPLETED", "{last}");
        assert_eq!(last["bytes_received"].as_u64(), Some(64 * 1024));
    }
    // Nothing live is left: the default watch has nothing to follow.
    let run = ctl(&h, &["watch"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("no live downloads"), "{run:?}");
}

#[tokio::test]
async fn a_wrong_token_is_refused_as_unauthenticated() {
    const USER: Token = Token {
        name: "cli",
        tenant: "media",
        role: "user",
        secret: "cli-secret-1",
    };
    let h = Harness::start_with_tokens(&[USER], &USER, &[]).await;
    let op = h.create(&h.origin.url("/none"), "none").await;
    for env in [&[("TRANSFERCTL_TOKEN", "not-the-token")][..], &[]] {
        let run = ctl_env(&h, &["ls"], env).await;
        assert_eq!(run.code, Some(EXIT_SERVER), "{run:?}");
        assert!(
            run.stderr
                .starts_with("transferctl: list downloads: unauthenticated (the server needs"),
            "{run:?}"
        );
    }
    let run = ctl_env(&h, &["ls"], &[("TRANSFERCTL_TOKEN", USER.secret)]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains(&op.guid), "{run:?}");
}

#[tokio::test]
async fn ctrl_c_leaves_the_download_running_and_says_how_to_come_back() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(30_000, 6);
    h.origin
        .put("/long", Resource::new(body.clone()).hold_after(10_000));
    let url = h.origin.url("/long");
    let mut cmd = command(&h, &["get", &url, "-o", "long"], &[]);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first progress line comes after transferctl listens for Ctrl-C.
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(DEADLINE, stdout.next_line())
        .await
        .expect("a progress line")
        .unwrap()
        .expect("a progress line");
    let guid = first.split(' ').next().unwrap().to_owned();
    h.wait_bytes(&guid, 10_000).await;
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let exit = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("transferctl ends after Ctrl-C")
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(EXIT_INTERRUPTED), "{stderr}");
    assert!(
        stderr.contains(&format!("transferctl watch {guid}")),
        "{stderr}"
    );
    assert_eq!(h.status(&guid).await, S::Running);
    h.origin.release("/long");
    h.wait_status(&guid, S::Completed).await;
    h.assert_file("long", &body);
}

#[tokio::test]
async fn under_a_terminal_get_draws_a_bar_with_percent_and_the_final_state() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(128 * 1024, 7);
    let resource = Resource::new(body.clone()).throttle(16 * 1024, Duration::from_millis(20));
    h.origin.put("/tty.bin", resource);
    // `script` (util-linux, on every Debian-like system) runs the command on a pseudo-terminal
    // and copies what it draws to its own standard output; -e passes the exit code on. The
    // terminal gets a size, wide enough for the whole bar, since a pseudo-terminal starts with
    // none.
    let line = format!(
        "stty cols 160 rows 24 && exec {TRANSFERCTL} get {} -o tty.bin",
        h.origin.url("/tty.bin")
    );
    let mut cmd = Command::new("script");
    for name in CTL_ENV {
        cmd.env_remove(name);
    }
    cmd.args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("TRANSFERCTL_SERVER", h.server.addr.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let run = finish(cmd, &["get (under script)"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    h.assert_file("tty.bin", &body);
    // The bar is redrawn in place (escape sequences), shows percent, and ends completed.
    assert!(run.stdout.contains('\x1b'), "{run:?}");
    let screen = strip_escapes(&run.stdout);
    let last = screen
        .split(['\r', '\n'])
        .map(str::trim)
        .rfind(|l| l.contains('%'))
        .unwrap_or_else(|| panic!("no bar with a percent: {run:?}"));
    assert!(last.starts_with("tty.bin"), "{last:?}");
    assert!(
        last.ends_with("[=========================] 128.00 KiB/128.00 KiB 100% completed"),
        "{last:?}"
    );
}

#[tokio::test]
async fn info_shows_the_operation_and_its_last_response() {
    let h = Harness::start(&[]).await;
    h.origin.put("/i", Resource::new(test_bytes(2000, 8)));
    let mut request = create_request(&h.origin.url("/i"), "i");
    request.transfer_group = "g1".into();
    let op = h.create_with(request).await;
    let done = h.wait_status(&op.guid, S::Completed).await;
    assert_eq!(status_of(&done), S::Completed);
    let run = ctl(&h, &["--json", "info", &op.guid]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let info = &json_lines(&run.stdout)[0];
    assert_eq!(info["transfer_group"], "g1");
    assert_eq!(info["response"]["status_code"].as_u64(), Some(200));
    assert_eq!(info["response"]["is_resumable"], true);
    let run = ctl(&h, &["info", &op.guid]).await;
    assert!(run.stdout.contains("status:        COMPLETED"), "{run:?}");
    assert!(run.stdout.contains("response:      200 from "), "{run:?}");
}

/// `transferctl ARGS...` to its end, with standard output as raw bytes.
async fn raw(h: &Harness, args: &[&str]) -> (Option<i32>, Vec<u8>, String) {
    let out = tokio::time::timeout(DEADLINE, command(h, args, &[]).output())
        .await
        .unwrap_or_else(|_| panic!("transferctl {args:?} did not end within {DEADLINE:?}"))
        .expect("transferctl runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), out.stdout, stderr)
}

#[tokio::test]
async fn cat_writes_the_result_bytes_whole_and_in_ranges() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(700 * 1024 + 5, 12);
    h.origin.put("/c.bin", Resource::new(body.clone()));
    let op = h.create(&h.origin.url("/c.bin"), "c.bin").await;
    h.wait_status(&op.guid, S::Completed).await;

    let (code, out, err) = raw(&h, &["cat", &op.guid]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(common::sha256(&out), common::sha256(&body));
    let range = ["cat", "--offset", "1000", "--length", "300000", &op.guid];
    let (code, out, err) = raw(&h, &range).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, &body[1000..301_000]);

    let held = h
        .start_held("/held.bin", Resource::new(test_bytes(4096, 13)), 1024)
        .await;
    let (code, out, err) = raw(&h, &["cat", &held.guid]).await;
    assert_eq!(code, Some(EXIT_SERVER), "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("not possible in the download's current state") && err.contains("RUNNING"),
        "{err}"
    );
}

#[tokio::test]
async fn system_commands_set_and_show_the_host_conditions() {
    let h = Harness::start(&[]).await;
    let run = ctl(&h, &["system", "set-network", "--costed", "yes"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains("network costed:    yes (set by an operator)")
    );
    // An omitted condition keeps its setting: costed stays the operator's.
    let run = ctl(
        &h,
        &["--json", "system", "set-network", "--connected", "no"],
    )
    .await;
    let status = &json_lines(&run.stdout)[0];
    assert_eq!(status["costed"], true, "{status}");
    assert_eq!(status["connected"], false, "{status}");
    let now = h.system_status().await;
    assert!(now.costed && !now.connected && !now.constrained);
    let run = ctl(&h, &["system", "set-policy", "constrained"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(h.system_status().await.constrained);
    let run = ctl(&h, &["system", "status"]).await;
    assert!(run.stdout.contains("constrained mode:  yes"), "{run:?}");
}

#[tokio::test]
async fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(TRANSFERCTL)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains("transferctl") && script.contains("set-network"),
            "{shell}"
        );
    }
}

#[tokio::test]
async fn plain_lines_show_each_status_change_as_it_happens() {
    let h = Harness::start(&[]).await;
    let body = test_bytes(30_000, 9);
    h.origin
        .put("/net", Resource::new(body.clone()).hold_after(10_000));
    let url = h.origin.url("/net");
    let mut child = command(&h, &["get", &url, "-o", "net"], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(DEADLINE, stdout.next_line())
            .await
            .expect("a progress line within the deadline")
            .unwrap()
            .expect("transferctl is still running")
    };
    let first = next_line().await;
    let guid = first.split(' ').next().unwrap().to_owned();
    h.wait_bytes(&guid, 10_000).await;
    h.set_network(Some(false), None).await;
    // Byte lines may come first; the change itself comes as its own line.
    loop {
        let line = next_line().await;
        assert!(line.starts_with(&guid), "{line:?}");
        if line.contains("paused: no network") {
            assert!(line.ends_with("9.77 KiB of 29.30 KiB (33%)"), "{line:?}");
            break;
        }
    }
    h.set_network(None, None).await;
    h.origin.release("/net");
    let mut last = String::new();
    while let Some(line) = tokio::time::timeout(DEADLINE, stdout.next_line())
        .await
        .expect("transferctl ends")
        .unwrap()
    {
        last = line;
    }
    assert_eq!(
        last,
        format!("{guid} completed 29.30 KiB of 29.30 KiB (100%)")
    );
    let exit = child.wait().await.unwrap();
    assert_eq!(exit.code(), Some(0));
    h.assert_file("net", &body);
}

#[tokio::test]
async fn over_mutual_tls_with_the_files_from_the_environment() {
    let pki = common::pki::Pki::new();
    let flags = pki.mtls_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let h = Harness::start_tls(&pki.with_client_cert(), &flags).await;
    let body = test_bytes(40_000, 10);
    h.origin.put("/tls.bin", Resource::new(body.clone()));
    let path = |name| pki.path(name).to_str().unwrap().to_owned();
    let (ca, cert, key) = (path("ca.pem"), path("client.pem"), path("client.key"));
    let env = [
        ("TRANSFERCTL_CA_CERT", ca.as_str()),
        ("TRANSFERCTL_CLIENT_CERT", cert.as_str()),
        ("TRANSFERCTL_CLIENT_KEY", key.as_str()),
    ];
    let url = h.origin.url("/tls.bin");
    let run = ctl_env(&h, &["get", &url, "-o", "tls.bin"], &env).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    h.assert_file("tls.bin", &body);
    // Without the client certificate the server ends the connection (how the client's
    // transport reports that varies with timing): an error that says what to pass, not a hang.
    let run = ctl_env(&h, &["ls"], &env[..1]).await;
    assert_eq!(run.code, Some(EXIT_SERVER), "{run:?}");
    assert!(
        run.stderr.starts_with("transferctl: ")
            && run.stderr.contains("pass --client-cert and --client-key"),
        "{run:?}"
    );
}
