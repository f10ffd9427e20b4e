//! How a segmented download decides to add connections (see `segments.rs`): throughput is
//! measured over windows that start once the connections added last deliver, and while those
//! connections pay off, [`GROWTH`] times as many run next. A window ends early once they
//! already have ([`EARLY_WINDOW`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::spans::Span;

/// How often a run looks at its connections: to see whether the ones added last have started
/// delivering, whether a measuring window is over, and to reopen a vacant connection.
pub(super) const TICK: Duration = Duration::from_millis(25);

/// Shortest window over which throughput is measured while connections are added. A window
/// starts only once every connection added last has delivered its first bytes, and lasts at
/// least as long as they took to get there, so a far origin's handshakes and slow starts are
/// not mistaken for connections that bring nothing. Origins that cap each connection often let
/// a new one burst first (nginx's `limit_rate` allows a second's worth at once): with 100 ms
/// windows growth stopped anywhere between 6 and 26 of 32 connections in the capped benchmark;
/// with 250 ms it reaches its peak every time.
pub const MEASURE_WINDOW: Duration = Duration::from_millis(250);

/// Shortest window that ends growth's wait early: once the connections added last have, over
/// at least this long (and as long as they took to start), already brought the gain asked of
/// them, more are added at once rather than at the end of [`MEASURE_WINDOW`]. Only a gain ends
/// a window early; a window without one runs its full length before it counts as a miss, and
/// the first window (one connection, the baseline every later one is judged by) always does.
/// Against the capped benchmark origin this reaches 32 connections in about half the time.
pub const EARLY_WINDOW: Duration = Duration::from_millis(100);

/// Windows in a row without enough gain that end growth: one window can mislead for the same
/// reason.
const MISSES: u32 = 2;

/// Longest wait for the connections added last to deliver their first bytes; one that has not
/// by then is measured as it is (bringing nothing yet).
const START_LIMIT: Duration = Duration::from_secs(2);

/// How many times as many connections run after each step of growth. Four reaches 32
/// connections in three windows (doubling would take five, a second and a half in which a
/// capped origin gives a fraction of what it could); where one stream already takes all there
/// is, the first step finds no gain and growth stops at four.
pub const GROWTH: usize = 4;

/// Least gain, as a share of what one connection brought on average before, that each
/// connection added last must bring for more to be added. Where every connection is capped
/// alike, each brings about as much as the others (a gain of 1); where one stream already takes
/// all there is (a local origin, a full link, a bandwidth limit), another brings almost nothing
/// and growth stops at once.
pub const MIN_GAIN: f64 = 0.5;

/// Throughput measured each window, and the connections added last.
pub(super) struct Ramp {
    /// When the window being measured began, and the bytes received then; `None` while the
    /// connections added last are starting.
    window: Option<(Instant, u64)>,
    /// How long the window lasts.
    length: Duration,
    /// How long it lasts at least when the connections added last already pay off.
    early: Duration,
    /// Connections added last that have not delivered yet: each one's span and where it was.
    starting: Vec<(Arc<Span>, u64)>,
    /// When they were added.
    since: Instant,
    /// Rate before the last addition, the connections running then, and how many were added.
    pending: Option<(f64, usize, usize)>,
    /// Windows in a row in which the connections added last did not pay off.
    misses: u32,
    /// Growth has ended.
    pub(super) done: bool,
}

impl Ramp {
    /// A ramp that waits for `working`, set to work at `now`, before its first window.
    pub(super) fn new(working: Vec<Arc<Span>>, now: Instant) -> Ramp {
        let mut ramp = Ramp {
            window: None,
            length: MEASURE_WINDOW,
            early: EARLY_WINDOW,
            starting: Vec::new(),
            since: now,
            pending: None,
            misses: 0,
            done: false,
        };
        ramp.starting(working, now);
        ramp
    }

    /// The throughput of the window that ends at `now`, with `bytes` received by then; `None`
    /// while the connections added last are starting or the window is not over.
    pub(super) fn measure(&mut self, now: Instant, bytes: u64) -> Option<f64> {
        if !self.started(now, bytes) {
            return None;
        }
        let (at, before) = self.window?;
        let elapsed = now - at;
        if elapsed < self.early {
            return None;
        }
        let rate = bytes.saturating_sub(before) as f64 / elapsed.as_secs_f64();
        let paying = self.needed().is_some_and(|needed| rate >= needed);
        if elapsed < self.length && !paying {
            return None;
        }
        self.window = Some((now, bytes));
        (rate > 0.0).then_some(rate)
    }

    /// The rate at which the connections added last pay off; `None` before any were added.
    fn needed(&self) -> Option<f64> {
        let (before, connections, added) = self.pending?;
        Some(before * (1.0 + MIN_GAIN * added as f64 / connections as f64))
    }

    /// Whether the connections added last paid off at `rate`, with `running` connections: more
    /// may be added. After [`MISSES`] windows in a row that they did not, growth ends.
    pub(super) fn pays_off(&mut self, rate: f64, running: usize) -> bool {
        let Some(needed) = self.needed() else {
            return true;
        };
        if rate >= needed {
            self.misses = 0;
            return true;
        }
        self.misses += 1;
        if self.misses >= MISSES {
            tracing::debug!(
                rate,
                needed,
                running,
                "another connection would not pay off"
            );
            self.done = true;
        }
        false
    }

    /// `spans` were set to work at `now`, on top of `running` connections that carried `rate`.
    pub(super) fn added(&mut self, rate: f64, running: usize, spans: Vec<Arc<Span>>, now: Instant) {
        self.pending = Some((rate, running, spans.len()));
        self.starting(spans, now);
    }

    /// Waits for `spans`, just set to work at `now`, before measuring again.
    fn starting(&mut self, spans: Vec<Arc<Span>>, now: Instant) {
        self.starting = spans
            .into_iter()
            .map(|span| {
                let at = span.received.load(Ordering::SeqCst);
                (span, at)
            })
            .collect();
        self.since = now;
        self.window = None;
    }

    /// Whether every connection added last has delivered (or waited long enough); then the
    /// next window begins, lasting at least as long as they took.
    fn started(&mut self, now: Instant, bytes: u64) -> bool {
        if self.window.is_some() {
            return true;
        }
        self.starting
            .retain(|(span, at)| span.received.load(Ordering::SeqCst) == *at);
        let waited = now - self.since;
        if !self.starting.is_empty() && waited < START_LIMIT {
            return false;
        }
        self.starting.clear();
        self.window = Some((now, bytes));
        self.length = waited.max(MEASURE_WINDOW);
        self.early = waited.max(EARLY_WINDOW);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span() -> Arc<Span> {
        Arc::new(Span::new(0, 100 << 20, 0))
    }

    #[test]
    fn a_window_starts_once_the_new_connections_deliver_and_lasts_as_long_as_they_took() {
        let t0 = Instant::now();
        let (a, b) = (span(), span());
        let mut ramp = Ramp::new(vec![a.clone(), b.clone()], t0);
        let ms = |n| t0 + Duration::from_millis(n);
        // Nothing measured while either has not delivered.
        a.received.store(1000, Ordering::SeqCst);
        assert_eq!(ramp.measure(ms(400), 1000), None);
        // Both delivered after 400 ms: the window starts and lasts 400 ms, not 250.
        b.received.store(1000, Ordering::SeqCst);
        assert_eq!(ramp.measure(ms(400), 2000), None);
        assert_eq!(ramp.measure(ms(700), 50_000), None);
        let rate = ramp.measure(ms(800), 2000 + 4_000_000).unwrap();
        assert!((rate - 10_000_000.0).abs() < 1.0, "{rate}");
        // The next window starts where that one ended.
        assert_eq!(ramp.measure(ms(900), 5_000_000), None);
    }

    #[test]
    fn a_window_ends_early_once_the_connections_added_last_pay_off() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut ramp = Ramp::new(Vec::new(), t0);
        // The baseline (no connection added yet) always runs its full window.
        assert_eq!(ramp.measure(t0, 0), None);
        assert_eq!(ramp.measure(ms(150), 1_500_000), None);
        let rate = ramp.measure(ms(250), 2_500_000).unwrap();
        assert!(ramp.pays_off(rate, 1));
        // Three added to one that carried 10 MB/s: four must bring 25 MB/s.
        let added = [span(), span(), span()];
        ramp.added(rate, 1, added.to_vec(), ms(250));
        added
            .iter()
            .for_each(|s| s.received.store(1, Ordering::SeqCst));
        assert_eq!(ramp.measure(ms(250), 2_500_000), None, "the window starts");
        assert_eq!(
            ramp.measure(ms(300), 5_000_000),
            None,
            "shorter than the early window"
        );
        // 100 ms at 30 MB/s: enough, so the window ends before its 250 ms.
        let rate = ramp.measure(ms(350), 5_500_000).unwrap();
        assert!((rate - 30_000_000.0).abs() < 1.0, "{rate}");
        assert!(ramp.pays_off(rate, 4));
    }

    #[test]
    fn a_window_without_gain_runs_its_full_length() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut ramp = Ramp::new(Vec::new(), t0);
        let added = [span(), span(), span()];
        ramp.added(10_000_000.0, 1, added.to_vec(), t0);
        added
            .iter()
            .for_each(|s| s.received.store(1, Ordering::SeqCst));
        assert_eq!(ramp.measure(t0, 0), None, "the window starts");
        // 20 MB/s is short of the 25 asked for: no early end, at 100 ms or at 200.
        assert_eq!(ramp.measure(ms(100), 2_000_000), None);
        assert_eq!(ramp.measure(ms(200), 4_000_000), None);
        let rate = ramp.measure(ms(250), 5_000_000).unwrap();
        assert!(!ramp.pays_off(rate, 4));
    }

    #[test]
    fn connections_that_never_deliver_are_measured_after_the_start_limit() {
        let t0 = Instant::now();
        let mut ramp = Ramp::new(vec![span()], t0);
        assert_eq!(ramp.measure(t0 + START_LIMIT / 2, 0), None);
        assert_eq!(ramp.measure(t0 + START_LIMIT, 0), None);
        // Nothing came in that window either: no rate to judge by.
        assert_eq!(ramp.measure(t0 + START_LIMIT * 3, 0), None);
    }

    #[test]
    fn growth_ends_after_two_windows_in_a_row_without_gain() {
        let t0 = Instant::now();
        let mut ramp = Ramp::new(Vec::new(), t0);
        // No addition yet: the first measurement always pays off.
        assert!(ramp.pays_off(100.0, 1));
        ramp.added(100.0, 1, vec![span(), span(), span()], t0);
        // Four connections must bring at least 100 * (1 + 0.5 * 3) = 250.
        assert!(!ramp.pays_off(240.0, 4));
        assert!(!ramp.done, "one window without gain ends nothing");
        assert!(ramp.pays_off(390.0, 4), "a gain in the next one goes on");
        assert!(!ramp.pays_off(200.0, 4));
        assert!(!ramp.pays_off(210.0, 4));
        assert!(ramp.done);
    }
}
