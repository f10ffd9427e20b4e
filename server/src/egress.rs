//! The egress policy: which addresses the fetcher may connect to. Rules are CIDR ranges, each
//! allowing or denying; a built-in list denies link-local and cloud-metadata addresses
//! ([`DEFAULT_DENY`]), and the operator adds rules with `--deny-egress` and `--allow-egress`.
//!
//! # Precedence
//! The most specific matching range decides (the longest prefix). At equal length an operator's
//! rule beats a built-in one, and between operator rules deny beats allow. An address no rule
//! matches is allowed. So `--allow-egress 10.1.2.0/24` opens one subnet of a denied
//! `10.0.0.0/8`, `--deny-egress 0.0.0.0/0 --allow-egress 10.0.0.0/8` is an allow-list that still
//! keeps the metadata range shut, and only a rule naming a metadata range (or something inside
//! it) can open it.
//!
//! An IPv6 address that embeds an IPv4 one (IPv4-mapped `::ffff:0:0/96`, IPv4-compatible
//! `::/96`, NAT64 `64:ff9b::/96`) is denied when either form is, so `[::ffff:169.254.169.254]`
//! is no way around a denied 169.254.0.0/16.
//!
//! The policy only decides; the fetcher enforces it on every address it connects to (after DNS
//! resolution, and on every redirect), and the engine refuses a literal denied address when a
//! download is created or re-pointed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Ranges denied unless an operator rule says otherwise, with why. Loopback and private ranges
/// are not here: internal artifact servers are a main use of transferd.
pub const DEFAULT_DENY: [(&str, &str); 12] = [
    (
        "0.0.0.0/8",
        "\"this network\"; connecting to 0.0.0.0 reaches the host itself",
    ),
    (
        "169.254.0.0/16",
        "link-local: the metadata services of AWS, GCP, Azure and OpenStack",
    ),
    ("100.100.100.200/32", "Alibaba Cloud metadata"),
    ("168.63.129.16/32", "Azure WireServer (platform agent)"),
    ("192.0.0.192/32", "Oracle Cloud Classic metadata"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, and the broadcast address"),
    ("::/128", "unspecified"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "deprecated site-local"),
    ("fd00:ec2::254/128", "AWS metadata over IPv6"),
    ("ff00::/8", "multicast"),
];

/// An IP range: an address and how many leading bits of it are fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this range (an IPv4 range never holds an IPv6 address, and back).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` of `width` bits of `a` and `b` agree.
fn prefix_eq(a: u128, b: u128, width: u8, prefix: u8) -> bool {
    let host_bits = u32::from(width - prefix);
    a.checked_shr(host_bits).unwrap_or(0) == b.checked_shr(host_bits).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = String;

    /// `ADDR/PREFIX`, or a bare address for that one address. Host bits must be zero
    /// (`10.0.0.1/8` is refused as probably meant otherwise). An IPv4-mapped range
    /// (`::ffff:10.0.0.0/104`) is read as the IPv4 range it maps.
    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not a CIDR range like 10.0.0.0/8 or fd00::/8"))?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = if prefix.is_empty() {
            width
        } else {
            prefix
                .parse()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {width}"))?
        };
        let cidr = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => Cidr {
                    addr: v4.into(),
                    prefix: prefix - 96,
                },
                None => Cidr { addr, prefix },
            },
            _ => Cidr { addr, prefix },
        };
        let (bits, width) = match cidr.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        };
        let host_bits = u32::from(width - cidr.prefix);
        // The address with its host bits cleared (a shift by 128 overflows; the value is 0 then).
        let network = bits.checked_shr(host_bits).unwrap_or(0) << host_bits.min(127);
        if network != bits {
            let network = match cidr.addr {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(network as u32)),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(network)),
            };
            return Err(format!(
                "`{s}` has bits set after the prefix; did you mean {network}/{}?",
                cidr.prefix
            ));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Where a rule came from, for precedence and for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Default,
    Operator,
}

#[derive(Clone, Debug)]
struct Rule {
    range: Cidr,
    allow: bool,
    source: Source,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.source, self.allow) {
            (Source::Default, _) => write!(f, "default deny {}", self.range),
            (Source::Operator, false) => write!(f, "--deny-egress {}", self.range),
            (Source::Operator, true) => write!(f, "--allow-egress {}", self.range),
        }
    }
}

/// Which addresses may be connected to: [`DEFAULT_DENY`] plus the operator's rules.
#[derive(Clone, Debug)]
pub struct EgressPolicy {
    rules: Vec<Rule>,
}

/// An address the policy denies, and the rule that denied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    /// The address as it would have been connected to.
    pub addr: IpAddr,
    /// The rule, as the operator would write it (`--deny-egress 10.0.0.0/8`, `default deny
    /// 169.254.0.0/16`).
    pub rule: String,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "egress to {} is denied by policy ({})",
            self.addr, self.rule
        )
    }
}

impl std::error::Error for Denied {}

impl EgressPolicy {
    /// The default deny list with the operator's rules on top.
    pub fn new(deny: &[Cidr], allow: &[Cidr]) -> EgressPolicy {
        let defaults = DEFAULT_DENY.iter().map(|(range, _)| Rule {
            range: range.parse().expect("the default deny list parses"),
            allow: false,
            source: Source::Default,
        });
        let operator = |allow: bool| {
            move |range: &Cidr| Rule {
                range: *range,
                allow,
                source: Source::Operator,
            }
        };
        let rules = defaults
            .chain(deny.iter().map(operator(false)))
            .chain(allow.iter().map(operator(true)))
            .collect();
        EgressPolicy { rules }
    }

    /// `Ok` if `addr` may be connected to; else the rule that denies it.
    pub fn check(&self, addr: IpAddr) -> Result<(), Denied> {
        let denied_by = |ip| self.deciding_rule(ip).filter(|rule| !rule.allow);
        let rule = denied_by(addr).or_else(|| embedded_ipv4(addr).and_then(denied_by));
        match rule {
            None => Ok(()),
            Some(rule) => Err(Denied {
                addr,
                rule: rule.to_string(),
            }),
        }
    }

    /// Checks the host of `url` when it is a literal address; a name is checked once it is
    /// resolved, when a connection is made.
    pub fn check_url(&self, url: &url::Url) -> Result<(), Denied> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check(ip.into()),
            Some(url::Host::Ipv6(ip)) => self.check(ip.into()),
            _ => Ok(()),
        }
    }

    /// The matching rule that takes precedence (see the module docs), if any matches.
    fn deciding_rule(&self, addr: IpAddr) -> Option<&Rule> {
        self.rules
            .iter()
            .filter(|rule| rule.range.contains(addr))
            .max_by_key(|rule| (rule.range.prefix, rule.source, !rule.allow))
    }
}

/// The IPv4 address an IPv6 address carries: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`, but not `::` or `::1`) or NAT64 (`64:ff9b::a.b.c.d`).
fn embedded_ipv4(addr: IpAddr) -> Option<IpAddr> {
    /// The NAT64 well-known prefix (RFC 6052), its first 96 bits.
    const NAT64: u128 = 0x0064_ff9b_0000_0000_0000_0000;
    let IpAddr::V6(v6) = addr else { return None };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4.into());
    }
    let bits = u128::from(v6);
    let prefix = bits >> 32;
    let low = Ipv4Addr::from(bits as u32);
    let compatible = prefix == 0 && bits > 1;
    (compatible || prefix == NAT64).then_some(low.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn policy(deny: &[&str], allow: &[&str]) -> EgressPolicy {
        EgressPolicy::new(&cidrs(deny), &cidrs(allow))
    }

    #[test]
    fn cidrs_parse_or_say_why_not() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "127.0.0.2".parse::<Cidr>().unwrap().to_string(),
            "127.0.0.2/32"
        );
        assert_eq!("fd00::/8".parse::<Cidr>().unwrap().to_string(), "fd00::/8");
        assert_eq!(
            "::ffff:10.0.0.0/104".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "0.0.0.0/0".parse::<Cidr>().unwrap().to_string(),
            "0.0.0.0/0"
        );
        let e = "10.0.0.1/8".parse::<Cidr>().unwrap_err();
        assert!(e.contains("did you mean 10.0.0.0/8?"), "{e}");
        let e = "fe80::1/10".parse::<Cidr>().unwrap_err();
        assert!(e.contains("did you mean fe80::/10?"), "{e}");
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "example.com/8",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_default_list_parses_and_denies_metadata_but_not_internal_servers() {
        let p = policy(&[], &[]);
        let denied = p.check(ip("169.254.169.254")).unwrap_err();
        assert_eq!(
            denied.to_string(),
            "egress to 169.254.169.254 is denied by policy (default deny 169.254.0.0/16)"
        );
        for bad in [
            "0.0.0.0",
            "100.100.100.200",
            "fd00:ec2::254",
            "fe80::1",
            "224.0.0.1",
        ] {
            assert!(p.check(ip(bad)).is_err(), "{bad}");
        }
        for ok in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "::1",
            "fd12::1",
            "8.8.8.8",
        ] {
            assert!(p.check(ip(ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn the_readme_lists_the_default_deny_list() {
        let readme = include_str!("../../README.md");
        for (range, _) in DEFAULT_DENY {
            assert!(readme.contains(&format!("| `{range}` |")), "{range}");
        }
    }

    #[test]
    fn embedded_ipv4_addresses_are_judged_as_ipv4_too() {
        let p = policy(&["127.0.0.2/32"], &[]);
        for bad in [
            "::ffff:169.254.169.254",
            "::169.254.169.254",
            "64:ff9b::169.254.169.254",
            "::ffff:127.0.0.2",
        ] {
            let denied = p.check(ip(bad)).unwrap_err();
            assert_eq!(denied.addr, ip(bad));
        }
        assert!(p.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(p.check(ip("::1")).is_ok());
    }

    #[test]
    fn the_most_specific_range_decides() {
        let p = policy(&["10.0.0.0/8"], &["10.1.2.0/24"]);
        assert!(p.check(ip("10.1.2.3")).is_ok());
        assert_eq!(
            p.check(ip("10.9.0.1")).unwrap_err().rule,
            "--deny-egress 10.0.0.0/8"
        );
        // An allow-list keeps the metadata range shut: the default /16 is more specific.
        let p = policy(&["0.0.0.0/0", "::/0"], &["10.0.0.0/8"]);
        assert!(p.check(ip("10.0.0.1")).is_ok());
        assert!(p.check(ip("8.8.8.8")).is_err());
        assert!(p.check(ip("2001:db8::1")).is_err());
        assert!(p.check(ip("169.254.169.254")).is_err());
        // Only a rule naming the metadata range, or inside it, opens it.
        let p = policy(&[], &["0.0.0.0/0"]);
        assert!(p.check(ip("169.254.169.254")).is_err());
        let p = policy(&[], &["169.254.169.254/32"]);
        assert!(p.check(ip("169.254.169.254")).is_ok());
        assert!(p.check(ip("169.254.0.1")).is_err());
    }

    #[test]
    fn at_equal_length_the_operator_beats_the_default_and_deny_beats_allow() {
        let p = policy(&[], &["169.254.0.0/16"]);
        assert!(p.check(ip("169.254.169.254")).is_ok());
        let p = policy(&["10.0.0.0/8"], &["10.0.0.0/8"]);
        assert!(p.check(ip("10.0.0.1")).is_err());
    }

    #[test]
    fn literal_hosts_are_checked_names_are_left_to_resolution() {
        let p = policy(&["127.0.0.2/32"], &[]);
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert!(p.check_url(&url("http://127.0.0.2:80/x")).is_err());
        // The URL parser normalizes other spellings of the same address.
        assert!(p.check_url(&url("http://2130706434/x")).is_err());
        assert!(p.check_url(&url("http://0x7f.0.0.2/x")).is_err());
        assert!(p.check_url(&url("http://[::ffff:127.0.0.2]/x")).is_err());
        assert!(p.check_url(&url("http://127.0.0.1/x")).is_ok());
        assert!(p.check_url(&url("http://localhost/x")).is_ok());
    }
}
