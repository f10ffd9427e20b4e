//! Showing the progress of downloads as it streams in, three ways: live indicatif bars when
//! standard output is a terminal, plain lines when it is not (logs, CI), or JSON lines with
//! `--json`. Lines and JSON print every status change and byte progress at most once a second
//! per download, so a long download does not flood a log.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use transferd::pb::backgroundtransfer::v1 as pb;

use crate::failure::emit;
use crate::render::{self, is_terminal, status_words};
use pb::BackgroundTransferStatus as S;

/// Least time between two lines (or JSON objects) of a download that only report bytes.
const LINE_INTERVAL: Duration = Duration::from_secs(1);

/// Widest label a bar shows before its middle is cut, so a long result path leaves room for the
/// numbers on an 80-column terminal.
const LABEL_WIDTH: usize = 24;

/// A bar whose size is known: bytes, percent, rate, ETA, then the status in words.
const KNOWN_TEMPLATE: &str = "{prefix:24} [{bar:25}] {bytes}/{total_bytes} {percent}% \
                              {binary_bytes_per_sec} ETA {eta} {msg}";
/// A bar whose size is not known (no Content-Length): no percent, no ETA.
const UNKNOWN_TEMPLATE: &str =
    "{prefix:24} {spinner} {bytes} (unknown size) {binary_bytes_per_sec} {msg}";
/// A finished bar: no rate or ETA, which no longer mean anything.
const FINISHED_TEMPLATE: &str = "{prefix:24} [{bar:25}] {bytes}/{total_bytes} {percent}% {msg}";
/// A finished bar of unknown size: the bytes it got (a bar of length 0 would read 100%).
const FINISHED_UNKNOWN_TEMPLATE: &str = "{prefix:24} {bytes} {msg}";

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Live bars, redrawn in place.
    Bars,
    /// One plain line per status change, bytes at most once a second.
    Lines,
    /// One JSON object per line, at the same moments as [`Mode::Lines`].
    Json,
}

impl Mode {
    /// JSON if asked, bars on a terminal, lines otherwise.
    pub fn pick(json: bool) -> Mode {
        match (json, std::io::stdout().is_terminal()) {
            (true, _) => Mode::Json,
            (false, true) => Mode::Bars,
            (false, false) => Mode::Lines,
        }
    }
}

/// The progress of the downloads being followed.
pub struct Display {
    mode: Mode,
    multi: MultiProgress,
    entries: HashMap<String, Entry>,
}

/// One followed download.
struct Entry {
    bar: ProgressBar,
    /// The status last shown, `None` before the first message.
    status: Option<S>,
    /// Whether the bar currently has the unknown-size style.
    unknown_size: bool,
    /// When a line was last printed for it, for [`LINE_INTERVAL`].
    printed: Option<Instant>,
}

impl Display {
    /// An empty display in `mode`.
    pub fn new(mode: Mode) -> Display {
        let target = match mode {
            Mode::Bars => ProgressDrawTarget::stdout(),
            Mode::Lines | Mode::Json => ProgressDrawTarget::hidden(),
        };
        Display {
            mode,
            multi: MultiProgress::with_draw_target(target),
            entries: HashMap::new(),
        }
    }

    /// Starts showing `guid`, labelled `label` (its result file) on a bar.
    pub fn add(&mut self, guid: &str, label: &str) {
        let bar = self.multi.add(ProgressBar::new(0));
        bar.set_prefix(shorten(label));
        bar.set_style(style(KNOWN_TEMPLATE));
        let entry = Entry {
            bar,
            status: None,
            unknown_size: false,
            printed: None,
        };
        self.entries.insert(guid.to_owned(), entry);
    }

    /// Shows a progress message of `guid`. The last one, with a terminal status, is shown by
    /// [`Display::finish`] instead, with the reason a failure has.
    pub fn update(&mut self, guid: &str, progress: &pb::BackgroundDownloadProgress) {
        let mode = self.mode;
        let Some(entry) = self.entries.get_mut(guid) else {
            return;
        };
        let status = progress.status();
        let changed = entry.status != Some(status);
        entry.status = Some(status);
        match mode {
            Mode::Bars => entry.draw(progress, changed),
            _ if is_terminal(status) => {}
            Mode::Lines | Mode::Json => {
                let due = entry.printed.is_none_or(|at| at.elapsed() >= LINE_INTERVAL);
                if changed || due {
                    entry.printed = Some(Instant::now());
                    print_line(mode, guid, progress, None);
                }
            }
        }
    }

    /// Shows the last message of `guid`, with its terminal status; `detail` says why a failed
    /// one failed.
    pub fn finish(
        &mut self,
        guid: &str,
        progress: &pb::BackgroundDownloadProgress,
        detail: Option<&str>,
    ) {
        let Some(entry) = self.entries.get_mut(guid) else {
            return;
        };
        match self.mode {
            Mode::Bars => {
                let words = status_words(progress.status());
                entry
                    .bar
                    .set_style(style(match progress.total_bytes_to_receive {
                        0 => FINISHED_UNKNOWN_TEMPLATE,
                        _ => FINISHED_TEMPLATE,
                    }));
                entry.bar.finish_with_message(match detail {
                    Some(detail) => format!("{words}: {detail}"),
                    None => words.to_owned(),
                });
            }
            mode => print_line(mode, guid, progress, detail),
        }
    }

    /// Prints `text` on standard error without breaking the bars: they are taken off the
    /// screen, the text printed, and they are drawn again below it.
    pub fn say(&self, text: &str) {
        match self.mode {
            Mode::Bars => self.multi.suspend(|| eprintln!("{text}")),
            Mode::Lines | Mode::Json => eprintln!("{text}"),
        }
    }

    /// Takes the bars off the screen and stops drawing them, e.g. to ask a question.
    pub fn hide(&self) {
        if self.mode == Mode::Bars {
            let _ = self.multi.clear();
            self.multi.set_draw_target(ProgressDrawTarget::hidden());
        }
    }

    /// Draws the bars again after [`Display::hide`].
    pub fn show(&self) {
        if self.mode == Mode::Bars {
            self.multi.set_draw_target(ProgressDrawTarget::stdout());
        }
    }
}

impl Entry {
    /// Moves the bar to `progress`; a status change shows in its message.
    fn draw(&mut self, progress: &pb::BackgroundDownloadProgress, changed: bool) {
        let unknown = progress.total_bytes_to_receive == 0;
        if unknown != self.unknown_size {
            self.unknown_size = unknown;
            self.bar.set_style(style(match unknown {
                true => UNKNOWN_TEMPLATE,
                false => KNOWN_TEMPLATE,
            }));
        }
        if progress.has_restarted {
            // The bytes start over: the old rate would make a nonsense ETA.
            self.bar.reset_eta();
        }
        self.bar.set_length(progress.total_bytes_to_receive);
        self.bar.set_position(progress.bytes_received);
        if changed {
            self.bar.set_message(status_words(progress.status()));
        }
    }
}

/// Prints one plain or JSON line for a progress message, with why a failed download failed.
fn print_line(
    mode: Mode,
    guid: &str,
    progress: &pb::BackgroundDownloadProgress,
    detail: Option<&str>,
) {
    let words = status_words(progress.status());
    let line = match (mode, detail) {
        (Mode::Json, None) => render::progress_json(guid, progress).to_string(),
        (Mode::Json, Some(detail)) => {
            let mut value = render::progress_json(guid, progress);
            value["error"] = detail.into();
            value.to_string()
        }
        (_, None) => format!("{guid} {words} {}", render::amount(progress)),
        (_, Some(detail)) => format!("{guid} {words} {}: {detail}", render::amount(progress)),
    };
    emit(line);
}

/// A bar style from one of the templates above (all are valid, so this cannot fail).
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("the bar templates are valid")
        .progress_chars("=> ")
}

/// `label`, cut in the middle to [`LABEL_WIDTH`] characters if longer.
fn shorten(label: &str) -> String {
    let chars: Vec<char> = label.chars().collect();
    if chars.len() <= LABEL_WIDTH {
        return label.to_owned();
    }
    let keep = (LABEL_WIDTH - 1) / 2;
    let head: String = chars[..keep].iter().collect();
    let tail: String = chars[chars.len() - (LABEL_WIDTH - 1 - keep)..]
        .iter()
        .collect();
    format!("{head}…{tail}")
}
