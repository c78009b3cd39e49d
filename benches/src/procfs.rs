//! What `/proc` says about a process: resident memory, open fds, threads.

use std::fs;

/// `VmRSS` of process `pid` (or `"self"`), in KiB, from `/proc/<pid>/status`.
pub fn vm_rss_kib(pid: &str) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// `VmHWM` (peak resident set) of process `pid`, in KiB.
pub fn vm_hwm_kib(pid: &str) -> Option<u64> {
    status_field(pid, "VmHWM:")
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_field(pid: &str, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Number of open fds of process `pid`: entries of `/proc/<pid>/fd`.
pub fn fd_count(pid: &str) -> Option<usize> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Number of threads of this process.
pub fn thread_count() -> usize {
    fs::read_dir("/proc/self/task").map_or(1, |d| d.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_has_rss_and_fds() {
        assert!(vm_rss_kib("self").unwrap() > 0);
        assert!(vm_hwm_kib("self").unwrap() > 0);
        assert!(fd_count("self").unwrap() >= 3);
        assert!(thread_count() >= 1);
    }
}
