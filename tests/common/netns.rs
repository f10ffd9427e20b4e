//! Test hosts in network namespaces that the test creates itself: a namespace with its own
//! loopback, a veth pair to reach it from the test, and its own `/etc/resolv.conf` (through
//! `ip netns exec`, which bind-mounts `/etc/netns/NAME/*` over `/etc`). All traffic stays on
//! links the test made. Needs root and iproute2; [`Netns::create`] returns `None` (and the
//! test says it skipped) where the machine does not allow it.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

/// A network namespace joined to the test's namespace by a veth pair; removed on drop.
pub struct Netns {
    /// Its name, for `ip netns exec`.
    pub name: String,
    /// The address of its end of the veth pair.
    pub inner: Ipv4Addr,
    /// The address of the test's end.
    pub outer: Ipv4Addr,
    outer_link: String,
    etc: PathBuf,
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
        let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + (id % 16_384) * 4;
        let outer = Ipv4Addr::from(base + 1);
        let inner = Ipv4Addr::from(base + 2);
        if !ip(&["netns", "add", &name]) {
            eprintln!("SKIPPED: cannot create a network namespace here (needs root and iproute2)");
            return None;
        }
        let etc = PathBuf::from("/etc/netns").join(&name);
        let ns = Netns {
            name: name.clone(),
            inner,
            outer,
            outer_link: outer_link.clone(),
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
        // Deleting the namespace removes its veth end, which removes the pair.
        let _ = Command::new("ip")
            .args(["link", "del", &self.outer_link])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}
