//! What a process has used so far, read from /proc: resident memory and CPU time. Shared by
//! the load drivers in `examples/` and the peer benchmark (`benches/peers`), each of which
//! compiles it on its own and may not read both.
#![allow(dead_code)]

use anyhow::Context;

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS line")?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

/// CPU time (user and system) the process `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("no command name in /proc stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("short /proc stat")?.parse()?)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; /proc counts
    // in USER_HZ, which Linux fixes at 100 for every architecture.
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}
