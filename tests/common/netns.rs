//! Test hosts in network namespaces that the test creates itself: a namespace with its own
//! loopback, a veth pair to reach it from the test, and its own `/etc/resolv.conf` (through
//! `ip netns exec`, which bind-mounts `/etc/netns/NAME/*` over `/etc`). [`Netns::add_link`] adds
//! more veth pairs, and [`Netns::set_link_up`] takes one down or up inside the namespace, as a
//! cable pulled and plugged back in. All traffic stays on links the test made. Needs root and
//! iproute2; [`Netns::create`] returns `None` (and the test says it skipped) where the machine
//! does not allow it, and fails the test under CI (see [`super::cannot_set_up`]).
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

/// The addresses of the test's links: 10.213.0.0/16, carved into /30 links.
const LINK_NET: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 0);

/// How many /30 links [`LINK_NET`] holds.
const LINK_SLOTS: u32 = 16_384;

/// A network namespace joined to the test's namespace by a veth pair; removed on drop, with
/// every link added to it.
pub struct Netns {
    /// Its name, for `ip netns exec`.
    pub name: String,
    /// The address of its end of the veth pair.
    pub inner: Ipv4Addr,
    /// The address of the test's end.
    pub outer: Ipv4Addr,
    id: u32,
    outer_link: String,
    /// The test's ends of the links from [`Netns::add_link`].
    extra_links: Vec<String>,
    etc: PathBuf,
}

/// A further veth link between the test and a [`Netns`] (see [`Netns::add_link`]).
#[derive(Clone, Debug)]
pub struct Link {
    /// The address of the namespace's end.
    pub inner: Ipv4Addr,
    /// The address of the test's end.
    pub outer: Ipv4Addr,
    /// The interface name of the namespace's end, for `ip link` inside it.
    pub inner_name: String,
    /// The interface name of the test's end.
    pub outer_name: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

impl Netns {
    /// Creates the namespace and a /30 veth link to it, with `resolv_conf` as its resolver
    /// configuration.
    pub fn create(resolv_conf: &str) -> Option<Netns> {
        let id = fastrand::u32(..) % 0xFFFF;
        let name = format!("transferd-test-{id:04x}");
        // Interface names are limited to 15 bytes.
        let outer_link = format!("tdo{id:04x}");
        let inner_link = format!("tdi{id:04x}");
        // 10.213.0.0/16 is carved into /30 links; collisions between concurrent tests are
        // avoided by the random id.
        let base = u32::from(LINK_NET) + (id % LINK_SLOTS) * 4;
        let outer = Ipv4Addr::from(base + 1);
        let inner = Ipv4Addr::from(base + 2);
        if !ip(&["netns", "add", &name]) {
            super::cannot_set_up(
                "cannot create a network namespace here (needs root and iproute2)",
            );
            return None;
        }
        let etc = PathBuf::from("/etc/netns").join(&name);
        let ns = Netns {
            name: name.clone(),
            inner,
            outer,
            id,
            outer_link: outer_link.clone(),
            extra_links: Vec::new(),
            etc: etc.clone(),
        };
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("resolv.conf"), resolv_conf).unwrap();
        let ok = ip(&[
            "link",
            "add",
            &outer_link,
            "type",
            "veth",
            "peer",
            "name",
            &inner_link,
            "netns",
            &name,
        ]) && ip(&["addr", "add", &format!("{outer}/30"), "dev", &outer_link])
            && ip(&["link", "set", &outer_link, "up"])
            && ns.exec_ok(&[
                "ip",
                "addr",
                "add",
                &format!("{inner}/30"),
                "dev",
                &inner_link,
            ])
            && ns.exec_ok(&["ip", "link", "set", &inner_link, "up"])
            && ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        assert!(ok, "setting up the veth link to {name} failed");
        Some(ns)
    }

    /// Adds another veth pair to the namespace, on a /30 of its own that no interface of the
    /// test's namespace uses yet, and brings both ends up. The namespace end gets only the
    /// connected route of that /30, so taking it down (see [`Netns::set_link_up`]) leaves the
    /// namespace with no route to the test's end: connections to it fail at once with
    /// `ENETUNREACH`. Removed with the namespace.
    pub fn add_link(&mut self) -> Link {
        let n = self.extra_links.len() + 1;
        let outer_name = format!("tdo{:04x}x{n}", self.id);
        let inner_name = format!("tdi{:04x}x{n}", self.id);
        let primary = self.id % LINK_SLOTS;
        let slot = (0..64)
            .map(|_| fastrand::u32(..LINK_SLOTS))
            .find(|&slot| {
                let net = Ipv4Addr::from(u32::from(LINK_NET) + slot * 4);
                // `ip addr show to PREFIX` lists the addresses inside PREFIX.
                slot != primary
                    && Command::new("ip")
                        .args(["-4", "-o", "addr", "show", "to", &format!("{net}/30")])
                        .output()
                        .is_ok_and(|out| out.status.success() && out.stdout.is_empty())
            })
            .expect("a free /30 in 10.213.0.0/16");
        let base = u32::from(LINK_NET) + slot * 4;
        let outer = Ipv4Addr::from(base + 1);
        let inner = Ipv4Addr::from(base + 2);
        let added = ip(&[
            "link",
            "add",
            &outer_name,
            "type",
            "veth",
            "peer",
            "name",
            &inner_name,
            "netns",
            &self.name,
        ]);
        if added {
            // Registered before anything else can fail, so drop removes it.
            self.extra_links.push(outer_name.clone());
        }
        let ok = added
            && ip(&["addr", "add", &format!("{outer}/30"), "dev", &outer_name])
            && ip(&["link", "set", &outer_name, "up"])
            && self.exec_ok(&[
                "ip",
                "addr",
                "add",
                &format!("{inner}/30"),
                "dev",
                &inner_name,
            ])
            && self.exec_ok(&["ip", "link", "set", &inner_name, "up"]);
        assert!(ok, "setting up link {n} to {} failed", self.name);
        Link {
            inner,
            outer,
            inner_name,
            outer_name,
        }
    }

    /// Takes the namespace's end of `link` down or brings it back up, inside the namespace:
    /// down removes the link's route there, as a pulled cable or a lost Wi-Fi would.
    pub fn set_link_up(&self, link: &Link, up: bool) {
        let state = if up { "up" } else { "down" };
        assert!(
            self.exec_ok(&["ip", "link", "set", &link.inner_name, state]),
            "ip link set {} {state} in {} failed",
            link.inner_name,
            self.name
        );
    }

    /// A command that runs `program args...` inside the namespace.
    pub fn command(&self, program: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    fn exec_ok(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting either end of a veth pair removes the pair. Deleting the namespace would too,
        // but only once the last process in it has exited.
        for link in self.extra_links.iter().chain([&self.outer_link]) {
            let _ = Command::new("ip").args(["link", "del", link]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}
