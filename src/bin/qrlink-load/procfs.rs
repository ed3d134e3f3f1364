//! Resident memory, CPU time and open files of a process on the same machine, from `/proc`.
//!
//! Memory is `VmRSS` (what the process really holds, not what it mapped); CPU is `utime + stime`
//! from `/proc/PID/stat`, in clock ticks of `USER_HZ`, which is 100 on every Linux this runs on.

use std::fs;
use std::io;

use serde::Serialize;

/// `USER_HZ`: the unit of the CPU times in `/proc/PID/stat`.
const TICKS_PER_SECOND: u64 = 100;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcSample {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// User plus system CPU time since the process started, ms (10 ms resolution).
    pub cpu_ms: u64,
    /// Threads of the process.
    pub threads: u64,
    /// Open file descriptors, when counted (counting reads the whole fd directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fds: Option<u64>,
}

/// Reads `pid`'s memory and CPU; with `count_fds`, also its open descriptors.
pub fn sample(pid: u32, count_fds: bool) -> io::Result<ProcSample> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let rss_kib = field("VmRSS:").unwrap_or(0);
    let threads = field("Threads:").unwrap_or(0);
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let cpu_ms = cpu_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc stat"))?
        * 1000
        / TICKS_PER_SECOND;
    let fds = if count_fds {
        Some(fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
    } else {
        None
    };
    Ok(ProcSample {
        rss_kib,
        cpu_ms,
        threads,
        fds,
    })
}

/// `utime + stime` from a `/proc/PID/stat` line. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted from the last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_a_name_with_spaces() {
        let stat = "42 (tokio (rt) 1) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(cpu_ticks(stat), Some(300));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id(), true).unwrap();
        assert!(
            s.rss_kib > 0 && s.threads > 0 && s.fds.unwrap() > 0,
            "{s:?}"
        );
    }
}
