//! Name resolution under the egress policy: every name the fetcher connects to is resolved
//! here (the system resolver, or a name the operator pinned with `--resolve`), and the
//! addresses the policy denies are dropped before any connection is tried. A name left with no
//! address fails with the policy's reason, so neither DNS rebinding nor a redirect to a name
//! can reach a denied address. Literal addresses never come here (reqwest connects to them
//! directly); the fetcher checks those itself.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::egress::{Denied, EgressPolicy};

/// A name pinned to an address, as `--resolve HOST:ADDR` gives it (curl's `--resolve` without
/// the port): the fetcher uses the address instead of asking DNS, still under the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedName {
    host: String,
    addr: IpAddr,
}

impl FromStr for PinnedName {
    type Err = String;

    fn from_str(s: &str) -> Result<PinnedName, String> {
        let usage = || format!("`{s}` is not HOST:ADDR (e.g. artifacts.internal:10.0.0.7)");
        let (host, addr) = s.trim().split_once(':').ok_or_else(usage)?;
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let addr: IpAddr = addr.parse().map_err(|_| usage())?;
        let host = normal_name(host);
        let is_name = !host.is_empty()
            && host.parse::<IpAddr>().is_err()
            && host.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !is_name {
            return Err(format!("`{s}`: `{host}` is not a host name"));
        }
        Ok(PinnedName { host, addr })
    }
}

/// A host name as compared here: lower case, without a final dot.
fn normal_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Every address of a name is denied: the connection is refused before it is tried.
#[derive(Debug)]
pub(crate) struct NameDenied {
    /// The name.
    pub(crate) host: String,
    /// Why its first address is denied.
    pub(crate) denied: Denied,
    /// How many addresses it had.
    pub(crate) count: usize,
}

impl fmt::Display for NameDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` resolves to {}", self.host, self.denied.addr)?;
        if self.count > 1 {
            write!(f, " (and {} more addresses, all denied)", self.count - 1)?;
        }
        write!(f, ": {}", self.denied)
    }
}

impl std::error::Error for NameDenied {}

/// The fetcher's resolver: pinned names, else the system resolver, filtered by the policy.
#[derive(Debug)]
pub(super) struct PolicyResolver {
    policy: Arc<EgressPolicy>,
    pinned: HashMap<String, Vec<IpAddr>>,
}

impl PolicyResolver {
    pub(super) fn new(policy: Arc<EgressPolicy>, pins: &[PinnedName]) -> PolicyResolver {
        let mut pinned: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for pin in pins {
            pinned.entry(pin.host.clone()).or_default().push(pin.addr);
        }
        PolicyResolver { policy, pinned }
    }
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = normal_name(name.as_str());
        let policy = self.policy.clone();
        let pinned = self.pinned.get(&host).cloned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = match pinned {
                Some(addrs) => addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect(),
                // Port 0: reqwest puts the URL's port in.
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            let count = found.len();
            let mut first_denied = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(denied) => {
                        tracing::info!(host, %denied, "address skipped");
                        first_denied.get_or_insert(denied);
                        false
                    }
                })
                .collect();
            match first_denied {
                Some(denied) if allowed.is_empty() => Err(Box::new(NameDenied {
                    host,
                    denied,
                    count,
                }) as _),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_or_say_why_not() {
        let pin: PinnedName = "Artifacts.Internal.:10.0.0.7".parse().unwrap();
        assert_eq!(pin.host, "artifacts.internal");
        assert_eq!(pin.addr, "10.0.0.7".parse::<IpAddr>().unwrap());
        let pin: PinnedName = "v6.test:[fd00::7]".parse().unwrap();
        assert_eq!(pin.addr, "fd00::7".parse::<IpAddr>().unwrap());
        let pin: PinnedName = "v6.test:fd00::7".parse().unwrap();
        assert_eq!(pin.addr, "fd00::7".parse::<IpAddr>().unwrap());
        for bad in [
            "",
            "host",
            "host:",
            ":10.0.0.1",
            "host:name",
            "10.0.0.1:10.0.0.2",
            "a b:1.2.3.4",
        ] {
            assert!(bad.parse::<PinnedName>().is_err(), "{bad:?}");
        }
    }

    async fn resolve(resolver: &PolicyResolver, name: &str) -> Result<Vec<IpAddr>, String> {
        match resolver.resolve(name.parse().unwrap()).await {
            Ok(addrs) => Ok(addrs.map(|a| a.ip()).collect()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[tokio::test]
    async fn denied_addresses_are_dropped_and_a_name_with_none_left_fails() {
        let deny = ["127.0.0.2/32".parse().unwrap()];
        let policy = Arc::new(EgressPolicy::new(&deny, &[]));
        let pins: Vec<PinnedName> = [
            "mixed.test:127.0.0.2",
            "mixed.test:127.0.0.1",
            "bad.test:127.0.0.2",
        ]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
        let resolver = PolicyResolver::new(policy, &pins);
        assert_eq!(
            resolve(&resolver, "mixed.test").await.unwrap(),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            resolve(&resolver, "BAD.test").await.unwrap_err(),
            "`bad.test` resolves to 127.0.0.2: egress to 127.0.0.2 is denied by policy \
             (--deny-egress 127.0.0.2/32)"
        );
    }
}
