//! Bandwidth limits: the server-wide `--max-download-rate`, shared fairly by the downloads
//! receiving a body, and each download's own `max_bytes_per_second`.
//!
//! Every running attempt holds a [`Lane`]: a token bucket on tokio time whose rate is the
//! download's effective rate, min(its own limit, its fair share of the server-wide limit). The
//! shares are max-min fair ("water-filling"): a download whose own limit is below an equal
//! share keeps its own limit, and what it leaves is split equally among the others; so one
//! download cannot take the whole budget, and none is starved by another. Rates are recomputed
//! whenever a lane comes or goes or a limit changes, and each bucket is refilled at its old
//! rate up to that instant, so a change applies from then on.
//!
//! The body loop asks [`Lane::wait`] before every read and reports each read with
//! [`Lane::took`]. A read may overdraw the bucket (the fetcher cannot choose how many bytes a
//! socket read returns); the next read then waits until the debt is repaid. Throttling is thus
//! done by delaying reads, never by buffering: unread bytes stay in the socket and TCP flow
//! control slows the origin. A download may run ahead of its rate by at most one bucket
//! ([`burst`]) plus one socket read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// Longest single wait [`Lane::wait`] asks for. A changed limit (SetRateLimit, a download
/// joining or leaving the share) reaches a waiting download within this time, and the body
/// loop keeps publishing progress and noticing a stop meanwhile; waking ten times a second
/// costs nothing measurable.
pub const MAX_WAIT: Duration = Duration::from_millis(100);

/// The least a full bucket holds, in bytes: about one typical socket read, so a download at a
/// low rate can still read whole buffers instead of waking for every few bytes.
pub const MIN_BURST: u64 = 16 * 1024;

/// How much of its rate a full bucket holds: enough to absorb scheduling jitter without
/// letting a download run noticeably ahead of its limit.
pub const BURST_TIME: Duration = Duration::from_millis(100);

/// The bucket size at `rate` bytes/s: [`BURST_TIME`] of it, at least [`MIN_BURST`].
pub fn burst(rate: f64) -> f64 {
    (rate * BURST_TIME.as_secs_f64()).max(MIN_BURST as f64)
}

/// The server's bandwidth budget and the lanes drawing on it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Throttle {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Debug)]
struct Shared {
    /// `--max-download-rate`; `None` for no server-wide limit.
    total: Option<u64>,
    lanes: HashMap<u64, Bucket>,
    next_id: u64,
}

/// One lane's token bucket.
#[derive(Debug)]
struct Bucket {
    /// The download it limits.
    guid: String,
    /// The download's own limit; `None` for none.
    own: Option<u64>,
    /// The effective rate in bytes/s; `None` when nothing limits it.
    rate: Option<f64>,
    /// Bytes that may be read now; negative after a read overdrew it.
    balance: f64,
    /// When `balance` was last brought up to date.
    at: Instant,
}

impl Bucket {
    /// Brings the balance up to `now` at the current rate.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        match self.rate {
            Some(rate) => self.balance = (self.balance + rate * elapsed).min(burst(rate)),
            // An unlimited lane keeps no credit, so a limit set later starts from an empty
            // bucket instead of a stored-up burst.
            None => self.balance = 0.0,
        }
    }
}

impl Throttle {
    /// A throttle with a server-wide limit of `total` bytes/s (`None`: no such limit).
    pub fn new(total: Option<u64>) -> Throttle {
        Throttle {
            shared: Arc::new(Mutex::new(Shared {
                total,
                lanes: HashMap::new(),
                next_id: 0,
            })),
        }
    }

    /// A lane for a running attempt of download `guid`, whose own limit is `own`. It shares
    /// the server-wide limit until it is dropped.
    pub fn lane(&self, guid: &str, own: Option<u64>) -> Lane {
        let now = Instant::now();
        let mut shared = lock(&self.shared);
        let id = shared.next_id;
        shared.next_id += 1;
        shared.lanes.insert(
            id,
            Bucket {
                guid: guid.to_owned(),
                own,
                rate: None,
                balance: 0.0,
                at: now,
            },
        );
        shared.rebalance(now);
        Lane {
            id,
            shared: self.shared.clone(),
        }
    }

    /// Changes the own limit of download `guid`; its running attempt, if any, follows at once.
    pub fn set_limit(&self, guid: &str, own: Option<u64>) {
        let mut shared = lock(&self.shared);
        let mut changed = false;
        for bucket in shared.lanes.values_mut().filter(|b| b.guid == guid) {
            bucket.own = own;
            changed = true;
        }
        if changed {
            shared.rebalance(Instant::now());
        }
    }
}

impl Shared {
    /// Refills every bucket at its old rate up to `now`, then gives each lane its new rate.
    fn rebalance(&mut self, now: Instant) {
        for bucket in self.lanes.values_mut() {
            bucket.refill(now);
        }
        let owns: Vec<(u64, Option<u64>)> = self.lanes.iter().map(|(id, b)| (*id, b.own)).collect();
        for (id, rate) in shares(self.total, &owns) {
            if let Some(bucket) = self.lanes.get_mut(&id) {
                bucket.rate = rate;
                if let Some(rate) = rate {
                    bucket.balance = bucket.balance.min(burst(rate));
                }
            }
        }
    }
}

/// The max-min fair rates of lanes with these own limits under a server-wide `total`: lanes
/// are served in order of their own limit, each taking the smaller of its own limit and an
/// equal split of what is left. `None` means unlimited.
fn shares(total: Option<u64>, owns: &[(u64, Option<u64>)]) -> Vec<(u64, Option<f64>)> {
    let Some(total) = total else {
        return owns
            .iter()
            .map(|(id, own)| (*id, own.map(|o| o as f64)))
            .collect();
    };
    let mut sorted = owns.to_vec();
    sorted.sort_by_key(|(_, own)| own.unwrap_or(u64::MAX));
    let mut left = total as f64;
    let mut count = sorted.len() as f64;
    let mut rates = Vec::with_capacity(sorted.len());
    for (id, own) in sorted {
        let fair = left / count;
        let rate = own.map_or(fair, |o| (o as f64).min(fair));
        left -= rate;
        count -= 1.0;
        rates.push((id, Some(rate)));
    }
    rates
}

/// A running attempt's claim on the bandwidth budget; dropping it hands its share back.
#[derive(Debug)]
pub struct Lane {
    id: u64,
    shared: Arc<Mutex<Shared>>,
}

impl Lane {
    /// How long to wait before the next read, at most [`MAX_WAIT`]; `None`: read now. Ask
    /// again after waiting, as the limit may have changed meanwhile.
    pub fn wait(&self) -> Option<Duration> {
        self.wait_at(Instant::now())
    }

    /// `bytes` were just read.
    pub fn took(&self, bytes: u64) {
        // Every body byte read passes here, so this is where they are counted.
        crate::metrics::global().received(bytes);
        self.took_at(bytes, Instant::now());
    }

    fn wait_at(&self, now: Instant) -> Option<Duration> {
        let mut shared = lock(&self.shared);
        let bucket = shared.lanes.get_mut(&self.id)?;
        let rate = bucket.rate?;
        bucket.refill(now);
        if bucket.balance >= 0.0 {
            return None;
        }
        let seconds = -bucket.balance / rate.max(f64::MIN_POSITIVE);
        Some(Duration::from_secs_f64(seconds.min(MAX_WAIT.as_secs_f64())))
    }

    fn took_at(&self, bytes: u64, now: Instant) {
        let mut shared = lock(&self.shared);
        if let Some(bucket) = shared.lanes.get_mut(&self.id) {
            if bucket.rate.is_some() {
                bucket.refill(now);
                bucket.balance -= bytes as f64;
            }
        }
    }

    /// The lane's effective rate in bytes/s; `None` when nothing limits it.
    #[cfg(test)]
    fn rate(&self) -> Option<f64> {
        lock(&self.shared).lanes.get(&self.id)?.rate
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        let mut shared = lock(&self.shared);
        shared.lanes.remove(&self.id);
        shared.rebalance(Instant::now());
    }
}

/// The throttle's lock: held only for arithmetic, never across an await. A panic while holding
/// it cannot leave the numbers inconsistent enough to matter, so a poisoned lock is used as is.
fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(total: Option<u64>, owns: &[Option<u64>]) -> Vec<Option<f64>> {
        let owns: Vec<(u64, Option<u64>)> = (0..).zip(owns.iter().copied()).collect();
        let mut out = shares(total, &owns);
        out.sort_by_key(|(id, _)| *id);
        out.into_iter().map(|(_, rate)| rate).collect()
    }

    #[test]
    fn shares_are_max_min_fair() {
        assert_eq!(rates(None, &[None, Some(5)]), vec![None, Some(5.0)]);
        assert_eq!(rates(Some(900), &[None, None, None]), vec![Some(300.0); 3]);
        // A download limited below its share keeps its own limit; the rest is split.
        assert_eq!(
            rates(Some(900), &[Some(100), None, None]),
            vec![Some(100.0), Some(400.0), Some(400.0)]
        );
        // Own limits above the share are cut to it.
        assert_eq!(
            rates(Some(900), &[Some(5000), Some(100)]),
            vec![Some(800.0), Some(100.0)]
        );
        let total: f64 = rates(Some(1000), &[Some(10), Some(2000), None, Some(300)])
            .into_iter()
            .map(Option::unwrap)
            .sum();
        assert!((total - 1000.0).abs() < 1e-6, "{total}");
    }

    #[tokio::test]
    async fn a_lane_waits_out_what_it_overdrew() {
        let throttle = Throttle::new(None);
        let lane = throttle.lane("g", Some(1000));
        // A moment after the lane was made: the bucket holds next to nothing yet.
        let t0 = Instant::now();
        assert_eq!(
            lane.wait_at(t0),
            None,
            "an empty bucket still allows a read"
        );
        lane.took_at(550, t0);
        // 550 bytes of debt at 1000 B/s: 550 ms, asked for in slices of MAX_WAIT.
        assert_eq!(lane.wait_at(t0), Some(MAX_WAIT));
        let wait = lane.wait_at(t0 + Duration::from_millis(500)).unwrap();
        assert!(
            (wait.as_secs_f64() - 0.05).abs() < 2e-3,
            "{wait:?} left of the debt"
        );
        assert_eq!(lane.wait_at(t0 + Duration::from_millis(551)), None);
        // Idle time fills the bucket up to one burst, no more.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(lane.wait_at(later), None);
        lane.took_at(MIN_BURST, later);
        assert_eq!(lane.wait_at(later), None, "a full bucket covers one burst");
        lane.took_at(1, later);
        assert!(lane.wait_at(later).is_some());
    }

    #[tokio::test]
    async fn the_server_wide_limit_is_shared_and_handed_back() {
        let throttle = Throttle::new(Some(1000));
        let a = throttle.lane("a", None);
        assert_eq!(a.rate(), Some(1000.0));
        let b = throttle.lane("b", Some(100));
        assert_eq!((a.rate(), b.rate()), (Some(900.0), Some(100.0)));
        throttle.set_limit("b", None);
        assert_eq!((a.rate(), b.rate()), (Some(500.0), Some(500.0)));
        drop(b);
        assert_eq!(a.rate(), Some(1000.0));
    }

    #[tokio::test]
    async fn a_limit_set_live_applies_and_lifts() {
        let throttle = Throttle::new(None);
        let lane = throttle.lane("g", None);
        let other = throttle.lane("other", None);
        lane.took(1 << 30);
        assert_eq!(lane.wait(), None, "unlimited lanes never wait");
        throttle.set_limit("g", Some(2048));
        assert_eq!((lane.rate(), other.rate()), (Some(2048.0), None));
        lane.took(1 << 20);
        assert_eq!(lane.wait(), Some(MAX_WAIT));
        throttle.set_limit("g", None);
        assert_eq!(lane.wait(), None, "removing the limit forgives the debt");
    }
}
