//! End-to-end: logs that explain. Every line about a download carries its guid and its URI's
//! host; the INFO lines tell a download's story (created, each request and the range it asked
//! for, resumed from an offset, restarted and why, paused and resumed and by what, completed
//! with size and rate); `--log-format json` writes one parseable object per line; and a bad
//! `TRANSFERD_LOG` stops the server at start.

mod common;

use common::origin::{Resource, test_bytes};
use common::*;
use pb::BackgroundTransferCostPolicy as Cost;
use pb::StatusReason as Reason;

/// The host every test download's URI names (the origin listens on loopback).
const HOST: &str = "127.0.0.1";

#[tokio::test]
async fn a_downloads_story_is_told_at_info_with_its_guid_and_host() {
    let h = Harness::start_logging(&[], "info").await;
    let first = test_bytes(300_000, 1);
    let op = h
        .start_held_with("/f", Resource::new(first), 100_000, |r| {
            r.set_cost_policy(Cost::UnrestrictedOnly)
        })
        .await;
    let guid = op.guid.clone();

    // Held by a costed network, then let go: the transfer resumes with a range.
    h.set_network(None, Some(true)).await;
    h.wait_status_reason(&guid, S::PausedCostedNetwork, Reason::CostedNetwork)
        .await;
    h.set_network(None, None).await;
    h.wait_status(&guid, S::Running).await;
    h.wait_until(&guid, "a resumed response", |op| {
        op.progress.unwrap().bytes_received > 100_000
    })
    .await;

    // Paused by the client; meanwhile the file changes, so resuming starts over.
    h.pause(&guid).await;
    let second = test_bytes(300_000, 2);
    h.origin.put("/f", Resource::new(second.clone()));
    h.resume(&guid).await;
    h.wait_status(&guid, S::Completed).await;
    h.assert_file("f", &second);

    let log = h.server.log();
    let story = [
        "download created",
        "request sent (Range: none)",
        "started from byte 0",
        "paused by a costed network",
        "resumed: a costed network",
        "request sent (Range: bytes=",
        "resumed from byte ",
        "paused by a client",
        "resumed by a client",
        "the server sent the whole entity",
        "restarted from byte 0",
        "completed: 300000 bytes",
    ];
    let mut from = 0;
    for line in story {
        let at = log[from..]
            .find(line)
            .unwrap_or_else(|| panic!("no `{line}` after byte {from} of the log:\n{log}"));
        from += at + line.len();
    }
    // Audit lines are about calls (who called what), and name the download as their subject.
    let about_it = log
        .lines()
        .filter(|l| l.contains(&guid) && !l.contains(" audit: "));
    for line in about_it {
        assert!(line.contains(&format!("host={HOST}")), "no host in: {line}");
        assert!(line.contains(" INFO ") || line.contains(" WARN "), "{line}");
    }
    // Lines of a transfer name it through its span.
    for line in log
        .lines()
        .filter(|l| l.contains("transferd::engine::transfer") || l.contains("transferd::fetch"))
    {
        assert!(line.contains(&format!("guid={guid}")), "no guid in: {line}");
    }
    assert!(!log.contains("Some("), "an Option printed raw:\n{log}");
}

#[tokio::test]
async fn json_lines_parse_and_carry_the_guid_and_host() {
    let h = Harness::start_logging(&["--log-format", "json"], "transferd=debug,info").await;
    let body = test_bytes(50_000, 3);
    h.origin.put("/j", Resource::new(body.clone()));
    let op = h.create(&h.origin.url("/j"), "j").await;
    h.wait_status(&op.guid, S::Completed).await;
    h.assert_file("j", &body);

    let log = h.server.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect();
    let about_it: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["fields"]["guid"].as_str() == Some(&op.guid)
                || l["span"]["guid"].as_str() == Some(&op.guid)
        })
        .collect();
    for line in &about_it {
        let host = line["fields"]["host"]
            .as_str()
            .or(line["span"]["host"].as_str());
        assert_eq!(host, Some(HOST), "{line}");
    }
    let message = |text: &str| {
        about_it
            .iter()
            .find(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(text))
            })
            .unwrap_or_else(|| panic!("no `{text}` line about {}:\n{log}", op.guid))
    };
    assert_eq!(message("download created")["level"], "INFO");
    assert_eq!(message("request sent")["fields"]["range"], "none");
    let completed = message("completed");
    assert_eq!(completed["fields"]["bytes"], 50_000);
    assert_eq!(completed["fields"]["received"], 50_000);
}

#[tokio::test]
async fn a_bad_log_filter_stops_the_server_and_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_transferd"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("TRANSFERD_LOG", "transferd=loud")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "it must not start listening");
    assert!(
        stderr.contains("TRANSFERD_LOG") && stderr.contains("`transferd=loud`"),
        "{stderr}"
    );

    let help = run_transferd(["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("TRANSFERD_LOG=") && help.contains("TRANSFERD_LOG_FORMAT"),
        "{help}"
    );
}

#[tokio::test]
async fn a_data_directory_it_may_not_write_is_named_with_the_uid_to_give_it_to() {
    // Root may write anywhere: the server runs as `nobody` instead, which needs root to arrange.
    if !rustix::process::geteuid().is_root() {
        common::cannot_set_up("cannot run transferd as another user here (needs root)");
        return;
    }
    let parent = tempfile::tempdir().unwrap();
    let data_dir = parent.path().join("data");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_transferd"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("setpriv (util-linux) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let dir = data_dir.display().to_string();
    assert!(
        stderr.contains(&format!("cannot lock data directory {dir}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("uid 65534") && stderr.contains(&format!("chown -R 65534:65534 {dir}")),
        "{stderr}"
    );
    // The OS error is said once, not once by the message and again as its cause.
    assert_eq!(stderr.matches("Permission denied").count(), 1, "{stderr}");
}
