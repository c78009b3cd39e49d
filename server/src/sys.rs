//! The system calls nix 0.32 does not wrap: `pidfd_open(2)`, `close_range(2)`, `_exit(2)`, and
//! `kill(2)` with a real-time signal (nix's `Signal` has no variant for those). Each is one line of `libc`, kept here so the rest of the crate has no FFI.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::libc;
use nix::unistd::Pid;

/// `pidfd_open(pid, 0)`: an fd that refers to the process `pid` (close-on-exec).
pub(crate) fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `close_range(first, last, 0)`: closes every fd in `first..=last`.
pub(crate) fn close_range(first: u32, last: u32) -> Result<(), Errno> {
    // SAFETY: close_range takes integers only. It is called in the forked child just before it
    // runs the job, where no Rust object refers to the fds it closes (the child only uses
    // its fd bundle, which lies outside the ranges closed).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// `_exit(code)`: ends the forked child without running atexit handlers or destructors that
/// belong to the server's image.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// `kill(pid, signo)` for any signal number, real-time signals included.
pub(crate) fn kill(pid: Pid, signo: i32) -> Result<(), Errno> {
    // SAFETY: kill takes two integers; no memory is shared.
    let r = unsafe { libc::kill(pid.as_raw(), signo) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}
