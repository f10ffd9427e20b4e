//! How a segmented download decides to add connections (see `segments.rs`): throughput is
//! measured over windows that start once the connections added last deliver, and while those
//! connections pay off, [`GROWTH`] times as many run next.

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
        if now - at < self.length {
            return None;
        }
        self.window = Some((now, bytes));
        let rate = bytes.saturating_sub(before) as f64 / (now - at).as_secs_f64();
        (rate > 0.0).then_some(rate)
    }

    /// Whether the connections added last paid off at `rate`, with `running` connections: more
    /// may be added. After [`MISSES`] windows in a row that they did not, growth ends.
    pub(super) fn pays_off(&mut self, rate: f64, running: usize) -> bool {
        let Some((before, connections, added)) = self.pending else {
            return true;
        };
        let needed = before * (1.0 + MIN_GAIN * added as f64 / connections as f64);
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
