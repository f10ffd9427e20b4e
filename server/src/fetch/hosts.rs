//! Connections per origin: `--max-connections-per-host` counts every segmenting download's
//! connections to one host and port. Extra connections take a place only if one is free at
//! once and no download waits for its first; a download's first connection takes a free place,
//! waits while extra connections hold the places (they give theirs back at their next request
//! boundary), and goes over the cap only when first connections alone fill it, so growing
//! downloads never starve one that has not started and a download is never held back by
//! other downloads' first connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Origins remembered before idle ones are forgotten: a long-lived server meets many origins,
/// and an origin with no connection and nobody waiting needs no entry.
const PRUNE_AT: usize = 1024;

/// Connections per origin, under one limit.
#[derive(Debug)]
pub struct HostConnections {
    limit: usize,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
}

/// One origin's connections.
#[derive(Debug, Default)]
struct Host {
    count: Mutex<Count>,
    /// Woken whenever a place is given back.
    freed: Notify,
}

#[derive(Debug, Default)]
struct Count {
    firsts: usize,
    extras: usize,
    /// First connections waiting for a place.
    waiting: usize,
}

/// One connection's place at an origin; dropping it gives the place back.
#[derive(Debug)]
pub struct HostPermit {
    host: Arc<Host>,
    extra: bool,
}

impl HostPermit {
    /// Whether a download's first connection waits for a place at this origin.
    pub fn wanted(&self) -> bool {
        lock(&self.host.count).waiting > 0
    }
}

impl Drop for HostPermit {
    fn drop(&mut self) {
        {
            let mut count = lock(&self.host.count);
            if self.extra {
                count.extras -= 1;
            } else {
                count.firsts -= 1;
            }
        }
        self.host.freed.notify_waiters();
    }
}

/// Counts a first connection as waiting while it waits (also when its wait is abandoned).
struct Waiting<'a>(&'a Host);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.0.count).waiting -= 1;
    }
}

impl HostConnections {
    /// At most `limit` connections per origin.
    pub fn new(limit: usize) -> HostConnections {
        HostConnections {
            limit,
            hosts: Mutex::default(),
        }
    }

    /// A place for a download's first connection to `origin`: a free one, or one an extra
    /// connection gives back; over the limit only when first connections alone fill it.
    pub async fn first(&self, origin: &str) -> HostPermit {
        let host = self.host(origin);
        let mut waiting = None;
        loop {
            let freed = host.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut count = lock(&host.count);
                if count.firsts + count.extras < self.limit || count.extras == 0 {
                    count.firsts += 1;
                    drop(count);
                    drop(waiting);
                    return HostPermit {
                        host: host.clone(),
                        extra: false,
                    };
                }
                if waiting.is_none() {
                    count.waiting += 1;
                    waiting = Some(Waiting(&host));
                }
            }
            freed.await;
        }
    }

    /// A place for an extra connection to `origin`, if one is free now and no first connection
    /// waits for one.
    pub fn extra(&self, origin: &str) -> Option<HostPermit> {
        let host = self.host(origin);
        let mut count = lock(&host.count);
        if count.waiting > 0 || count.firsts + count.extras >= self.limit {
            return None;
        }
        count.extras += 1;
        drop(count);
        Some(HostPermit { host, extra: true })
    }

    fn host(&self, origin: &str) -> Arc<Host> {
        let mut hosts = lock(&self.hosts);
        if hosts.len() >= PRUNE_AT {
            hosts.retain(|_, h| {
                let count = lock(&h.count);
                count.firsts + count.extras + count.waiting > 0
            });
        }
        hosts.entry(origin.to_string()).or_default().clone()
    }
}

/// The origin a URI's connections count against: `host:port`, the port made explicit.
pub fn origin_of(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(url) => format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => uri.to_string(),
    }
}

/// The counts' locks: held for a few additions, never across an await.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn extras_stop_at_the_limit_and_make_way_for_first_connections() {
        let hosts = Arc::new(HostConnections::new(2));
        let a = "example.test:443";
        let first = hosts.first(a).await;
        let extra = hosts.extra(a).expect("one below the limit");
        assert!(hosts.extra(a).is_none(), "at the limit");
        assert!(hosts.extra("other.test:80").is_some(), "per origin");
        assert!(!extra.wanted());
        let waiter = tokio::spawn({
            let hosts = hosts.clone();
            async move { hosts.first(a).await }
        });
        while !extra.wanted() {
            tokio::task::yield_now().await;
        }
        drop(extra);
        let second = waiter.await.unwrap();
        assert!(
            hosts.extra(a).is_none(),
            "the place went to the waiting first connection"
        );
        // First connections alone may go over the limit: nobody is held back by them.
        let third = hosts.first(a).await;
        drop((first, second, third));
        assert!(hosts.extra(a).is_some(), "places were given back");
        assert_eq!(origin_of("https://Example.test/x"), "example.test:443");
        assert_eq!(origin_of("http://127.0.0.1:8080/x"), "127.0.0.1:8080");
    }
}
