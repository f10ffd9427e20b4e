//! The server's own sockets, read through `/proc` and `pidfd_getfd`: which options its
//! accepted connections carry.

use std::os::fd::AsFd;

use super::Server;

/// The inodes of the server's established TCP sockets whose local port is `port`, read from
/// the server's own `/proc/PID/net/tcp{,6}`.
fn established_inodes(pid: u32, port: u16) -> Vec<u64> {
    let mut inodes = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields[1].rsplit(':').next().unwrap();
            // State 01 is ESTABLISHED; field 9 is the socket inode.
            if u16::from_str_radix(local_port, 16) == Ok(port) && fields[3] == "01" {
                inodes.push(fields[9].parse().unwrap());
            }
        }
    }
    inodes
}

/// The server's file descriptor numbers that are the sockets with these inodes.
fn socket_fds(pid: u32, inodes: &[u64]) -> Vec<i32> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let inode = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok());
        if inode.is_some_and(|i| inodes.contains(&i)) {
            fds.push(entry.file_name().to_string_lossy().parse().unwrap());
        }
    }
    fds
}

/// Asserts that every established connection accepted by `server` has TCP_NODELAY (the test
/// must have made at least one call). Skipped, outside CI, on a kernel that forbids pidfd_open.
pub fn assert_accepted_sockets_have_nodelay(server: &Server) {
    let pid = server.pid();
    let inodes = established_inodes(pid, server.addr.port());
    assert!(
        !inodes.is_empty(),
        "no established connection to the server"
    );
    let fds = socket_fds(pid, &inodes);
    assert_eq!(
        fds.len(),
        inodes.len(),
        "every connection's socket is found"
    );
    let pidfd = match rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::PidfdFlags::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "pidfd_open: {e}");
            eprintln!("skipped: this kernel does not allow pidfd_open ({e})");
            return;
        }
    };
    for fd in fds {
        let socket = rustix::process::pidfd_getfd(
            pidfd.as_fd(),
            fd,
            rustix::process::PidfdGetfdFlags::empty(),
        )
        .expect("pidfd_getfd (needs ptrace rights over the server, which a test's child grants)");
        assert!(
            rustix::net::sockopt::tcp_nodelay(&socket).unwrap(),
            "accepted socket fd {fd} lacks TCP_NODELAY"
        );
    }
}
