//! Connections per origin: `--max-connections-per-host` counts every connection of every
//! download to one host and port. A download's first connection is always let through (so
//! segmented downloads can never starve a download that has not started); the extra
//! connections segmenting adds are opened only while the count is below the limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Open connections per origin, under one limit.
#[derive(Debug)]
pub struct HostConnections {
    limit: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One counted connection to an origin; dropping it gives the place back.
#[derive(Debug)]
pub struct HostPermit {
    key: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl HostConnections {
    /// At most `limit` connections per origin, first connections excepted.
    pub fn new(limit: usize) -> HostConnections {
        HostConnections {
            limit,
            open: Arc::default(),
        }
    }

    /// Counts a download's first connection to `origin`, whatever the count.
    pub fn first(&self, origin: &str) -> HostPermit {
        *lock(&self.open).entry(origin.to_string()).or_default() += 1;
        self.permit(origin)
    }

    /// Counts an extra connection to `origin` if the limit allows one more.
    pub fn extra(&self, origin: &str) -> Option<HostPermit> {
        let mut open = lock(&self.open);
        let count = open.entry(origin.to_string()).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        drop(open);
        Some(self.permit(origin))
    }

    fn permit(&self, origin: &str) -> HostPermit {
        HostPermit {
            key: origin.to_string(),
            open: self.open.clone(),
        }
    }
}

impl Drop for HostPermit {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
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

/// The counts' lock: held for a map update, never across an await.
fn lock(open: &Mutex<HashMap<String, usize>>) -> MutexGuard<'_, HashMap<String, usize>> {
    open.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extras_stop_at_the_limit_and_first_connections_never_do() {
        let hosts = HostConnections::new(2);
        let a = "example.test:443";
        let first = hosts.first(a);
        let extra = hosts.extra(a).expect("one below the limit");
        assert!(hosts.extra(a).is_none(), "at the limit");
        let another_first = hosts.first(a);
        assert!(hosts.extra("other.test:80").is_some(), "per origin");
        drop((extra, another_first));
        assert!(hosts.extra(a).is_some(), "a place was given back");
        drop(first);
        assert_eq!(origin_of("https://Example.test/x"), "example.test:443");
        assert_eq!(origin_of("http://127.0.0.1:8080/x"), "127.0.0.1:8080");
    }
}
