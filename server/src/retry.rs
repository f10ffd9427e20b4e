//! When to try a failed transfer again: exponential backoff with jitter, a server's Retry-After
//! first, and a budget of failures in a row after which the download ends in ERROR.

use std::time::Duration;

/// The retry rules of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Failed attempts in a row (none getting further into the file than any before) before giving up.
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub base_delay: Duration,
    /// Longest computed delay.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Whether a download that has failed `failures` times in a row may try again.
    pub fn allows_another(&self, failures: u32) -> bool {
        failures < self.max_attempts
    }

    /// How long to wait after the `failures`-th failure in a row (1-based). A server's
    /// Retry-After wins; otherwise the delay doubles per failure up to `max_delay`, and "equal
    /// jitter" (half fixed, half random) keeps many downloads that failed together from
    /// retrying in lockstep.
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(d) = retry_after {
            return d;
        }
        let doublings = failures.saturating_sub(1).min(32);
        let full = self
            .base_delay
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max_delay);
        let half = full / 2;
        let jitter_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(fastrand::u64(0..=jitter_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(1000),
    };

    #[test]
    fn budget_counts_failures_in_a_row() {
        assert!(POLICY.allows_another(1));
        assert!(POLICY.allows_another(2));
        assert!(!POLICY.allows_another(3));
    }

    #[test]
    fn delay_doubles_with_jitter_up_to_the_cap() {
        for _ in 0..200 {
            for (failures, full) in [
                (1, 100),
                (2, 200),
                (3, 400),
                (4, 800),
                (5, 1000),
                (60, 1000),
            ] {
                let d = POLICY.delay(failures, None);
                let full = Duration::from_millis(full);
                assert!(d >= full / 2 && d <= full, "{failures}: {d:?}");
            }
        }
    }

    #[test]
    fn retry_after_wins() {
        assert_eq!(
            POLICY.delay(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
    }
}
