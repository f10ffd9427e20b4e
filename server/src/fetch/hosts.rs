//! Connections per origin: `--max-connections-per-host` is one semaphore per host and port over
//! every segmented download's connections to it. A download's first connection waits for a
//! place; extra connections take one only if it is free at once, and give it back at their
//! next request boundary while a first connection waits, so growing downloads never starve a
//! download that has not started.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Origins remembered before idle ones are forgotten: a long-lived server meets many origins,
/// and an origin with no connection and nobody waiting needs no entry.
const PRUNE_AT: usize = 1024;

/// Connections per origin, under one limit.
#[derive(Debug)]
pub struct HostConnections {
    limit: usize,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
}

/// One origin's places.
#[derive(Debug)]
struct Host {
    places: Arc<Semaphore>,
    /// First connections waiting for a place.
    waiting: AtomicUsize,
}

/// One connection's place at an origin; dropping it gives the place back.
#[derive(Debug)]
pub struct HostPermit {
    _place: OwnedSemaphorePermit,
    host: Arc<Host>,
}

impl HostPermit {
    /// Whether a download's first connection waits for a place at this origin.
    pub fn wanted(&self) -> bool {
        self.host.waiting.load(Ordering::SeqCst) > 0
    }
}

/// Counts a first connection as waiting while it waits (also when its wait is abandoned).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
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

    /// A place for a download's first connection to `origin`, once one is free.
    pub async fn first(&self, origin: &str) -> HostPermit {
        let host = self.host(origin);
        host.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&host.waiting);
        let place =
            (host.places.clone().acquire_owned().await).expect("the semaphore is never closed");
        HostPermit {
            _place: place,
            host: host.clone(),
        }
    }

    /// A place for an extra connection to `origin`, if one is free now and no first connection
    /// waits for it.
    pub fn extra(&self, origin: &str) -> Option<HostPermit> {
        let host = self.host(origin);
        if host.waiting.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let place = host.places.clone().try_acquire_owned().ok()?;
        Some(HostPermit {
            _place: place,
            host,
        })
    }

    fn host(&self, origin: &str) -> Arc<Host> {
        let mut hosts = lock(&self.hosts);
        if hosts.len() >= PRUNE_AT {
            let limit = self.limit;
            hosts.retain(|_, h| {
                h.places.available_permits() < limit || h.waiting.load(Ordering::SeqCst) > 0
            });
        }
        hosts
            .entry(origin.to_string())
            .or_insert_with(|| {
                Arc::new(Host {
                    places: Arc::new(Semaphore::new(self.limit)),
                    waiting: AtomicUsize::new(0),
                })
            })
            .clone()
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

/// The map's lock: held for a lookup, never across an await.
fn lock(hosts: &Mutex<HashMap<String, Arc<Host>>>) -> MutexGuard<'_, HashMap<String, Arc<Host>>> {
    hosts.lock().unwrap_or_else(|e| e.into_inner())
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
        drop((first, second));
        assert!(hosts.extra(a).is_some(), "places were given back");
        assert_eq!(origin_of("https://Example.test/x"), "example.test:443");
        assert_eq!(origin_of("http://127.0.0.1:8080/x"), "127.0.0.1:8080");
    }
}
