//! Samples, medians and ratios: the markdown table printed at the end and the JSON written to
//! `--out`, which holds every sample so a later reader can check the medians.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::Sizes;

/// Everything one run measured.
#[derive(Serialize)]
pub struct Report {
    unix_time: u64,
    smoke: bool,
    rounds: usize,
    sizes: Sizes,
    /// Samples by series (`workload/name`), in the order they were taken.
    series: BTreeMap<String, Series>,
    comparisons: Vec<Comparison>,
}

/// The samples of one thing measured, in one unit.
#[derive(Serialize)]
struct Series {
    unit: &'static str,
    samples: Vec<f64>,
}

/// A table row: transferd's series against a peer's, on the same workload and unit.
#[derive(Serialize)]
struct Comparison {
    workload: String,
    transferd: String,
    peer: String,
    unit: &'static str,
    transferd_median: f64,
    peer_median: f64,
    /// The lowest and highest of transferd's samples, and of the peer's: how far one run moves
    /// from the next on this machine, which decides how much a ratio can be trusted.
    transferd_range: (f64, f64),
    peer_range: (f64, f64),
    /// transferd's median over the peer's: above 1 is better for a rate, below 1 for a time.
    ratio: f64,
}

impl Report {
    /// An empty report of a run with these settings.
    pub fn new(smoke: bool, rounds: usize, sizes: Sizes) -> Report {
        let unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Report {
            unix_time,
            smoke,
            rounds,
            sizes,
            series: BTreeMap::new(),
            comparisons: Vec::new(),
        }
    }

    /// Adds one sample of `workload/name`, measured in `unit`.
    pub fn record(&mut self, workload: &str, name: &str, unit: &'static str, value: f64) {
        let series = self
            .series
            .entry(format!("{workload}/{name}"))
            .or_insert(Series {
                unit,
                samples: Vec::new(),
            });
        series.samples.push(value);
    }

    /// Adds a row comparing the medians of `workload/transferd` and `workload/peer`; a series
    /// without samples (a workload not run) gives no row.
    pub fn compare(&mut self, workload: &str, transferd: &str, peer: &str) {
        let (Some(ours), Some(theirs)) = (
            self.series.get(&format!("{workload}/{transferd}")),
            self.series.get(&format!("{workload}/{peer}")),
        ) else {
            return;
        };
        let (transferd_median, peer_median) = (median(&ours.samples), median(&theirs.samples));
        self.comparisons.push(Comparison {
            workload: workload.into(),
            transferd: transferd.into(),
            peer: peer.into(),
            unit: ours.unit,
            transferd_median,
            peer_median,
            transferd_range: range(&ours.samples),
            peer_range: range(&theirs.samples),
            ratio: transferd_median / peer_median,
        });
    }

    /// The comparisons as a markdown table: each side's median in its unit, with the range of
    /// its samples after it.
    pub fn table(&self) -> String {
        let mut table = String::from(
            "| workload | transferd | median (range) | peer | median (range) | transferd/peer |\n|---|---|---|---|---|---|\n",
        );
        for c in &self.comparisons {
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} | {} | {:.2} |",
                c.workload,
                c.transferd,
                with_range(c.transferd_median, c.transferd_range, c.unit),
                c.peer,
                with_range(c.peer_median, c.peer_range, c.unit),
                c.ratio
            );
        }
        table
    }

    /// The whole report as pretty JSON.
    pub fn json(&self) -> anyhow::Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}

/// The median (the mean of the middle two for an even count).
fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 0 {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// The lowest and the highest sample.
fn range(samples: &[f64]) -> (f64, f64) {
    samples
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// `median unit (low to high)`, or just `median unit` for a single sample.
fn with_range(median: f64, (lo, hi): (f64, f64), unit: &str) -> String {
    if lo == hi {
        format!("{} {unit}", number(median))
    } else {
        format!(
            "{} {unit} ({} to {})",
            number(median),
            number(lo),
            number(hi)
        )
    }
}

/// Three significant figures or so, without a thousands separator's ambiguity.
fn number(value: f64) -> String {
    match value.abs() {
        v if v >= 100.0 => format!("{value:.0}"),
        v if v >= 10.0 => format!("{value:.1}"),
        v if v >= 1.0 => format!("{value:.2}"),
        _ => format!("{value:.3}"),
    }
}
