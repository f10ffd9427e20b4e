//! Following downloads until they end: one WatchDownload stream per download, merged into one
//! loop that feeds the [`Display`], and what Ctrl-C does meanwhile.
//!
//! Ctrl-C never cancels anything by itself: transferd is a background service, so the
//! downloads go on. `watch` just stops watching. `get` asks, when standard input is a terminal,
//! whether to leave the download running (the default, also on a second Ctrl-C or end of
//! input), cancel it, or watch on; without a terminal it leaves it running without asking.
//! Either way it prints the guid and the command to come back to it.

use std::io::IsTerminal;

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_stream::{StreamExt, StreamMap};
use transferd::client::Client;
use transferd::pb::backgroundtransfer::v1 as pb;

use crate::display::Display;
use crate::failure::{CallContext, Outcome};
use crate::render::{is_terminal, status_words};
use pb::BackgroundTransferStatus as S;

/// What Ctrl-C does while following.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnInterrupt {
    /// Stop watching (`watch`).
    Stop,
    /// Ask whether to leave the download running, cancel it or watch on (`get`).
    Ask,
}

/// Follows every download in `targets` (guid, label) until each has ended or the user stops.
/// `Done` only if every one COMPLETED.
pub async fn follow(
    client: &Client,
    targets: &[(String, String)],
    display: &mut Display,
    on_interrupt: OnInterrupt,
) -> anyhow::Result<Outcome> {
    let mut interrupts =
        signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C (SIGINT)")?;
    let mut streams = StreamMap::new();
    for (guid, label) in targets {
        let stream = client.watch(guid).await.call(format!("watch {guid}"))?;
        display.add(guid, label);
        streams.insert(guid.clone(), stream);
    }
    let mut ended: Vec<(String, S)> = Vec::new();
    loop {
        tokio::select! {
            item = streams.next() => match item {
                None => break,
                Some((guid, message)) => {
                    let progress = message.call(format!("watch {guid}"))?;
                    display.update(&guid, &progress);
                    let status = progress.status();
                    if is_terminal(status) {
                        report_end(client, display, &guid, &progress).await;
                        ended.push((guid, status));
                    }
                }
            },
            _ = interrupts.recv() => {
                if interrupted(client, display, targets, on_interrupt, &mut interrupts).await? {
                    return Ok(Outcome::Interrupted);
                }
            }
        }
    }
    let cut_short: Vec<&str> = targets
        .iter()
        .map(|(guid, _)| guid.as_str())
        .filter(|guid| !ended.iter().any(|(g, _)| g == guid))
        .collect();
    anyhow::ensure!(
        cut_short.is_empty(),
        "the server stopped sending progress (restarting?); the download goes on: \
         transferctl watch {}",
        cut_short.join(" ")
    );
    Ok(match ended.iter().all(|(_, s)| *s == S::Completed) {
        true => Outcome::Done,
        false => Outcome::DownloadFailed,
    })
}

/// Shows that `guid` ended with `progress`; a failure also goes to standard error with its
/// reason.
async fn report_end(
    client: &Client,
    display: &mut Display,
    guid: &str,
    progress: &pb::BackgroundDownloadProgress,
) {
    let status = progress.status();
    let detail = match status {
        S::Error => Some(match client.get(guid).await {
            Ok(op) => op.error.map_or_else(String::new, |e| e.message),
            Err(status) => format!("(the reason could not be read: {})", status.message()),
        }),
        _ => None,
    };
    display.finish(guid, progress, detail.as_deref());
    if status != S::Completed {
        let what = match status {
            S::Error => "failed",
            _ => status_words(status),
        };
        let why = detail.map(|d| format!(": {d}")).unwrap_or_default();
        display.say(&format!("transferctl: download {guid} {what}{why}"));
    }
}

/// Handles Ctrl-C; true when the program should stop (the downloads left running).
async fn interrupted(
    client: &Client,
    display: &Display,
    targets: &[(String, String)],
    on_interrupt: OnInterrupt,
    interrupts: &mut Signal,
) -> anyhow::Result<bool> {
    let guids: Vec<&str> = targets.iter().map(|(g, _)| g.as_str()).collect();
    if on_interrupt == OnInterrupt::Ask && std::io::stdin().is_terminal() {
        display.hide();
        match ask(interrupts).await {
            Answer::Leave => {}
            Answer::Cancel => {
                for guid in &guids {
                    client.cancel(guid).await.call(format!("cancel {guid}"))?;
                }
                display.show();
                return Ok(false);
            }
            Answer::WatchOn => {
                display.show();
                return Ok(false);
            }
        }
    } else {
        display.hide();
    }
    let guids = guids.join(" ");
    eprintln!(
        "\nLeft running in the background: {guids}\nCome back to it with: transferctl watch {guids}"
    );
    Ok(true)
}

/// What the user chose after Ctrl-C.
enum Answer {
    Leave,
    Cancel,
    WatchOn,
}

/// Asks on standard error and reads the answer from standard input; a second Ctrl-C or the end
/// of input means [`Answer::Leave`].
async fn ask(interrupts: &mut Signal) -> Answer {
    eprint!("\nLeave the download running in the background? [Y]es, [c]ancel it, [w]atch on: ");
    // Read on a blocking thread with no lock held, so a second Ctrl-C can end the program while
    // the read still waits.
    let read = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    });
    tokio::select! {
        answer = read => match answer {
            Ok(Ok(line)) => match line.trim().to_ascii_lowercase().as_str() {
                "c" | "cancel" => Answer::Cancel,
                "w" | "watch" => Answer::WatchOn,
                _ => Answer::Leave,
            },
            _ => Answer::Leave,
        },
        _ = interrupts.recv() => Answer::Leave,
    }
}
