//! The system calls nix 0.32 does not wrap: `pidfd_open(2)`, `close_range(2)`, `_exit(2)`, and
//! `kill(2)` and `wait4(2)` with real-time signals (nix's `Signal` has no variant for those:
//! its `waitpid` fails with `EINVAL` after reaping a child killed by one, losing the status;
//! and it has no `wait4`, the only call that gives one child's `rusage`), and `rt_sigaction(2)`
//! on every signal 1..=64 (glibc's `sigaction` refuses 32 and 33). Each is one line of
//! `libc`, kept here so the rest of the crate has no FFI. Also the few places where the crate asserts what the type system cannot see (an fd number it owns, a signal
//! disposition without handler code). A function whose soundness rests on a promise of its
//! caller (an fd number nobody else owns, fds nobody will use again) is an `unsafe fn` with a
//! `# Safety` section, and each call says how it keeps the promise in a `// SAFETY:` comment.
//! Every `-1`-and-errno result goes through one helper, nix's [`Errno::result`].
#![allow(unsafe_code)]

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use forkserver_protocol::ResourceUsage;
use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::Pid;

/// `pidfd_open(pid, 0)`: an fd that refers to the process `pid` (close-on-exec).
pub(crate) fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1; no memory is shared.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) })?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `close_range(first, last, 0)`: closes every fd in `first..=last`.
///
/// # Safety
/// No object that owns an fd in `first..=last` (an `OwnedFd`, a `File`, ...) may use or close
/// it afterwards: its number may by then name another file.
pub(crate) unsafe fn close_range(first: u32, last: u32) -> Result<(), Errno> {
    // SAFETY: close_range takes integers only; what it closes is the caller's promise.
    Errno::result(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) }).map(drop)
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
    Errno::result(unsafe { libc::kill(pid.as_raw(), signo) }).map(drop)
}

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reaped {
    pub(crate) pid: Pid,
    /// `>= 0`: exit status; `< 0`: minus the signal (PROTOCOL.md §5.9).
    pub(crate) code: i32,
    pub(crate) core_dumped: bool,
    /// What it used (`struct rusage`), for an `Exit` with `WANT_RUSAGE` (§5.9).
    pub(crate) usage: ResourceUsage,
}

/// `wait4(-1, WNOHANG)`: the next ended child with its resource usage, `Ok(None)` when none
/// has ended, or `ECHILD`. (nix wraps `waitpid` only, and `getrusage(RUSAGE_CHILDREN)` sums
/// every child reaped: one child's usage comes from `wait4` alone.)
pub(crate) fn reap_one() -> Result<Option<Reaped>, Errno> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: all-zero bytes are a valid `struct rusage` (integers and timevals).
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `ru` are valid out-pointers for the duration of the call.
        let pid = Errno::result(unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut ru) });
        match pid {
            Ok(0) => return Ok(None),
            Ok(p) => {
                let (code, core_dumped) = if libc::WIFEXITED(status) {
                    (libc::WEXITSTATUS(status), false)
                } else if libc::WIFSIGNALED(status) {
                    (-libc::WTERMSIG(status), libc::WCOREDUMP(status))
                } else {
                    // Stopped or continued: not reported without WUNTRACED/WCONTINUED.
                    continue;
                };
                return Ok(Some(Reaped {
                    pid: Pid::from_raw(p),
                    code,
                    core_dumped,
                    usage: usage_of(&ru),
                }));
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The fields of `ru` that `Exit` carries: CPU times in µs, peak RSS in KiB (Linux's unit
/// for `ru_maxrss`). Negative values, which the kernel never gives, become 0.
fn usage_of(ru: &libc::rusage) -> ResourceUsage {
    let us = |t: libc::timeval| {
        let s = u64::try_from(t.tv_sec).unwrap_or(0);
        let u = u64::try_from(t.tv_usec).unwrap_or(0);
        s.saturating_mul(1_000_000).saturating_add(u)
    };
    ResourceUsage {
        user_us: us(ru.ru_utime),
        system_us: us(ru.ru_stime),
        maxrss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
    }
}

/// `dup2(old, new)`: makes `new` a copy of `old` (close-on-exec cleared). nix 0.32's `dup2_raw`
/// wraps the result in an `OwnedFd` without checking it, and panics when the call fails (for a
/// target above `RLIMIT_NOFILE`, say); this returns the error instead.
///
/// # Safety
/// `new` is closed first if open: no object that owns it may use or close it afterwards. The
/// caller manages `new` by hand from now on (nothing owns the copy made).
pub(crate) unsafe fn dup2(old: RawFd, new: RawFd) -> Result<(), Errno> {
    // SAFETY: dup2 takes two integers; what it replaces at `new` is the caller's promise.
    Errno::result(unsafe { libc::dup2(old, new) }).map(drop)
}

/// The kernel's `struct sigaction` for `rt_sigaction(2)` (x86-64, arm64, riscv64 and the other
/// architectures with `SA_RESTORER` in this order): handler, flags, restorer, a 64-bit mask.
/// glibc's `sigaction` cannot be used: it refuses signals 32 and 33, which it reserves.
#[repr(C)]
#[derive(Default)]
struct KernelSigaction {
    handler: libc::c_ulong,
    flags: libc::c_ulong,
    restorer: libc::c_ulong,
    mask: u64,
}

/// Size of the kernel's signal set: 64 signals (`_NSIG`), one bit each.
const KERNEL_SIGSET_SIZE: usize = 8;

fn rt_sigaction(
    signo: i32,
    new: Option<&KernelSigaction>,
    old: Option<&mut KernelSigaction>,
) -> Result<(), Errno> {
    let new = new.map_or(std::ptr::null(), |n| n as *const KernelSigaction);
    let old = old.map_or(std::ptr::null_mut(), |o| o as *mut KernelSigaction);
    // SAFETY: `new` is null or points to a valid kernel sigaction, `old` is null or a valid
    // out-pointer to one, both alive for the call. The only action ever installed is SIG_DFL
    // (see `set_default_disposition`), so no handler code can run because of this call.
    Errno::result(unsafe {
        libc::syscall(libc::SYS_rt_sigaction, signo, new, old, KERNEL_SIGSET_SIZE)
    })
    .map(drop)
}

/// The signals 1..=64 (`SIGKILL` and `SIGSTOP` aside) whose disposition is not `SIG_DFL`, as a
/// set with bit `n - 1` for signal `n`. Asked of the kernel, without changing anything, so
/// that glibc's reserved 32 and 33 and the real-time signals are seen too.
pub(crate) fn non_default_signals() -> Result<u64, Errno> {
    let mut set = 0u64;
    for signo in 1..=64 {
        if signo == libc::SIGKILL || signo == libc::SIGSTOP {
            continue;
        }
        let mut old = KernelSigaction::default();
        rt_sigaction(signo, None, Some(&mut old))?;
        if old.handler != libc::SIG_DFL as libc::c_ulong {
            set |= 1 << (signo - 1);
        }
    }
    Ok(set)
}

/// Puts `SIG_DFL` back on `signo` (any of 1..=64, 32 and 33 included).
pub(crate) fn set_default_disposition(signo: i32) -> Result<(), Errno> {
    // All zero: SIG_DFL, no flags, empty mask.
    rt_sigaction(signo, Some(&KernelSigaction::default()), None)
}

/// Ignores `sig` (`SIG_IGN`).
///
/// # Errors
/// `sigaction(2)` failing.
pub(crate) fn ignore(sig: nix::sys::signal::Signal) -> Result<(), Errno> {
    use nix::sys::signal::{signal, SigHandler};
    // SAFETY: SIG_IGN installs no handler code.
    unsafe { signal(sig, SigHandler::SigIgn) }.map(drop)
}

/// Takes ownership of an fd this process inherited (the launch convention, PROTOCOL.md §9.4,
/// names it in the environment), after checking it is open.
///
/// # Errors
/// `EBADF` if it is not open.
///
/// # Safety
/// Nothing else in this process owns `fd` or will take it again: the caller is the one place
/// that knows the number.
pub(crate) unsafe fn take_inherited_fd(fd: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: F_GETFD reads a flag of the fd table entry, whatever it is; it fails with EBADF
    // if `fd` is not open.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: open (checked above), and owned by nothing else (the caller's promise).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An fd the child placed from its request's bundle (PROTOCOL.md §6.5), borrowed for an entry
/// point.
///
/// # Safety
/// `target` is open and stays open (nothing closes or replaces it) for all of `'a`; the caller
/// ties `'a` to the value that knows the number (the entry point's `Invocation`).
pub(crate) unsafe fn placed_fd<'a>(target: u32) -> BorrowedFd<'a> {
    // SAFETY: open for `'a`, the caller's promise.
    unsafe { BorrowedFd::borrow_raw(target as RawFd) }
}

/// Ownership of an fd number the child manages by hand (its report fd, its pooled socket once
/// placed, a placed fd an entry point takes).
///
/// # Safety
/// `fd` is open and owned by nothing else: the caller holds the only copy of the number and
/// gives it up (it neither uses nor closes it afterwards, nor makes a second `OwnedFd` of it).
pub(crate) unsafe fn own_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: open, and owned by the caller alone, which gives up the number.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `fork(2)` of the server. Sound only because the server is single-threaded (checked in
/// `Server::bind`): the child is a complete copy of the process and may run any code,
/// allocation included, until it exits.
///
/// # Errors
/// `EAGAIN` (`RLIMIT_NPROC`), `ENOMEM`.
pub(crate) fn fork() -> Result<nix::unistd::ForkResult, Errno> {
    // SAFETY: single-threaded, see above.
    unsafe { nix::unistd::fork() }
}

/// Clears close-on-exec on fd number `fd` (a bundle fd already at its target).
///
/// # Errors
/// `EBADF`.
pub(crate) fn clear_cloexec(fd: RawFd) -> Result<(), Errno> {
    // SAFETY: fcntl on a number touches no memory; a closed one fails with EBADF.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }).map(drop)
}

/// A close-on-exec duplicate of fd number `fd` at the lowest free number from `min` up
/// (`F_DUPFD_CLOEXEC`); the caller manages the new number by hand.
///
/// # Errors
/// `EBADF`, `EMFILE`, `EINVAL`.
pub(crate) fn dup_from(fd: RawFd, min: RawFd) -> Result<RawFd, Errno> {
    // SAFETY: fcntl on a number touches no memory; a closed one fails with EBADF.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })
}

/// `write(2)` of `buf` to fd number `fd` (a child's report pipe), once.
///
/// # Errors
/// As `write(2)`.
pub(crate) fn write_fd(fd: RawFd, buf: &[u8]) -> Result<usize, Errno> {
    // SAFETY: `buf` is valid for `buf.len()` bytes; the fd is a number.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    Errno::result(n).map(|n| n as usize)
}

/// Blocks every signal in this thread (before a fork or a clone, so that no handler runs in the
/// child before it has reset them); returns the mask before, to restore with
/// [`restore_signal_mask`].
///
/// # Errors
/// `sigprocmask` failing.
pub(crate) fn block_all_signals() -> Result<SigSet, Errno> {
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old))?;
    Ok(old)
}

/// Puts back the mask [`block_all_signals`] returned.
///
/// # Errors
/// `sigprocmask` failing.
pub(crate) fn restore_signal_mask(old: &SigSet) -> Result<(), Errno> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(old), None)
}
