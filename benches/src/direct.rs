//! The limit: `fork()` in the caller, a child that only calls `_exit(0)`, `waitpid`.

use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::Result;

/// Forks a child that calls `_exit(0)` at once; returns its pid in the parent.
///
/// Call it only while this process is single-threaded ([`crate::procfs::thread_count`] is 1)
/// when measuring: the child is safe either way (it calls nothing but `_exit`, which is
/// async-signal-safe), but other threads would disturb the timing.
pub fn fork_exit() -> Result<Pid> {
    // SAFETY: the child calls only `_exit(2)`, which is async-signal-safe and touches no state
    // of the parent image (no destructors, no atexit handlers, no stdio flush), so forking is
    // sound even if other threads held locks.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => Ok(child),
        // SAFETY: as above; `_exit` never returns.
        ForkResult::Child => unsafe { libc::_exit(0) },
    }
}

/// Reaps `pid` and checks that it exited with status 0.
pub fn reap(pid: Pid) -> Result<()> {
    match waitpid(pid, None)? {
        WaitStatus::Exited(_, 0) => Ok(()),
        other => Err(format!("forked child ended with {other:?}").into()),
    }
}

/// `fork()` + `_exit(0)` in the child + `waitpid`: the time until the parent has reaped the
/// child.
pub fn fork_exit_wait() -> Result<Duration> {
    let start = Instant::now();
    let pid = fork_exit()?;
    reap(pid)?;
    Ok(start.elapsed())
}

/// The time from just before `fork()` to `fork()` returning in the parent; the child is
/// reaped outside the timed region.
pub fn fork_to_pid() -> Result<Duration> {
    let start = Instant::now();
    let pid = fork_exit()?;
    let elapsed = start.elapsed();
    reap(pid)?;
    Ok(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_and_reap() {
        assert!(fork_exit_wait().unwrap() > Duration::ZERO);
        assert!(fork_to_pid().unwrap() > Duration::ZERO);
    }
}
