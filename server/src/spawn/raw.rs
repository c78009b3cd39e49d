//! The system calls of the `CLONE_VM` child (`plan.rs`), each one `libc::syscall`: no libc
//! wrapper with state of its own (glibc's `setuid` signals every thread it knows of; its
//! `abort` and `raise` use the thread id cached in the thread's TLS, which the child shares
//! with the server's thread), no allocation, no lock. Paths are `CStr`s the server built.
//!
//! errno: `libc::syscall` sets it on failure, in the TLS of the server's thread (the child
//! shares it), and each helper reads it back at once ([`Errno::result`]). The server is
//! suspended meanwhile (`CLONE_VFORK`), and reads errno after the clone only if the clone
//! itself failed, when no child ran: what the child leaves there is never read.
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr};
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::libc;

fn check(r: libc::c_long) -> Result<(), Errno> {
    Errno::result(r).map(drop)
}

pub(super) fn setsid() -> Result<(), Errno> {
    // SAFETY: no arguments, no memory.
    check(unsafe { libc::syscall(libc::SYS_setsid) })
}

pub(super) fn setpgid(pid: libc::pid_t, pgid: libc::pid_t) -> Result<(), Errno> {
    // SAFETY: integers only.
    check(unsafe { libc::syscall(libc::SYS_setpgid, pid, pgid) })
}

pub(super) fn setgroups(groups: &[u32]) -> Result<(), Errno> {
    let ptr = groups.as_ptr();
    // SAFETY: `ptr` points to `groups.len()` gids (gid_t is u32), alive for the call.
    check(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), ptr) })
}

pub(super) fn setgid(gid: u32) -> Result<(), Errno> {
    // SAFETY: an integer; only this task's credentials change (no glibc thread broadcast).
    check(unsafe { libc::syscall(libc::SYS_setgid, gid) })
}

pub(super) fn setuid(uid: u32) -> Result<(), Errno> {
    // SAFETY: an integer; only this task's credentials change (no glibc thread broadcast).
    check(unsafe { libc::syscall(libc::SYS_setuid, uid) })
}

/// `prlimit64(0, resource, {soft, hard}, NULL)`: this process's limit (`setrlimit`).
pub(super) fn set_rlimit(resource: u32, soft: u64, hard: u64) -> Result<(), Errno> {
    let new = libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: hard,
    };
    let ptr: *const libc::rlimit64 = &new;
    let old: *mut libc::rlimit64 = std::ptr::null_mut();
    // SAFETY: `ptr` points to a `rlimit64` alive for the call; a null old-limit pointer is
    // allowed (nothing is written back).
    check(unsafe { libc::syscall(libc::SYS_prlimit64, 0, resource, ptr, old) })
}

/// `umask(mask)`; never fails.
pub(super) fn umask(mask: u16) {
    // SAFETY: an integer.
    let _ = unsafe { libc::syscall(libc::SYS_umask, libc::c_uint::from(mask)) };
}

/// `setpriority(PRIO_PROCESS, 0, nice)`.
pub(super) fn set_nice(nice: i32) -> Result<(), Errno> {
    let which = libc::PRIO_PROCESS;
    // SAFETY: integers only.
    check(unsafe { libc::syscall(libc::SYS_setpriority, which, 0, nice) })
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)`.
pub(super) fn set_no_new_privs() -> Result<(), Errno> {
    let opt = libc::PR_SET_NO_NEW_PRIVS;
    // SAFETY: integers only.
    check(unsafe { libc::syscall(libc::SYS_prctl, opt, 1u64, 0u64, 0u64, 0u64) })
}

/// Writes `bytes` to the file at `path` (opened write-only, closed after): one `write`; a
/// short one is `EIO`.
pub(super) fn write_file(path: &CStr, bytes: &[u8]) -> Result<(), Errno> {
    let path = path.as_ptr();
    let flags = libc::O_WRONLY | libc::O_CLOEXEC;
    // SAFETY: `path` is NUL-terminated and alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path, flags) };
    let fd = Errno::result(r)?;
    let (ptr, len) = (bytes.as_ptr(), bytes.len());
    // SAFETY: `ptr` points to `len` bytes alive for the call; `fd` was opened here.
    let r = Errno::result(unsafe { libc::syscall(libc::SYS_write, fd, ptr, len) });
    close(fd as u32);
    match r? {
        n if n as usize == len => Ok(()),
        _ => Err(Errno::EIO),
    }
}

pub(super) fn set_pdeathsig(signo: i32) -> Result<(), Errno> {
    let (opt, sig) = (
        libc::PR_SET_PDEATHSIG,
        libc::c_ulong::try_from(signo).unwrap_or(0),
    );
    // SAFETY: integers only.
    check(unsafe { libc::syscall(libc::SYS_prctl, opt, sig, 0u64, 0u64, 0u64) })
}

pub(super) fn getppid() -> libc::pid_t {
    // SAFETY: no arguments; never fails.
    let r = unsafe { libc::syscall(libc::SYS_getppid) };
    r as libc::pid_t
}

/// `dup3(from, to, flags)` (x86-64's `dup2` is not on every architecture; `from != to`, as the
/// placement guarantees). Closes what the child had at `to`: its copy of a server fd at most.
pub(super) fn dup3(from: RawFd, to: RawFd, flags: libc::c_int) -> Result<(), Errno> {
    // SAFETY: integers only; in the child's own fd table (no CLONE_FILES).
    check(unsafe { libc::syscall(libc::SYS_dup3, from, to, flags) })
}

pub(super) fn clear_cloexec(fd: RawFd) -> Result<(), Errno> {
    // SAFETY: integers only.
    check(unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_SETFD, 0) })
}

pub(super) fn close(fd: u32) {
    // SAFETY: an integer, in the child's own fd table.
    let _ = unsafe { libc::syscall(libc::SYS_close, fd) };
}

/// `landlock_restrict_self(fd, 0)`: the ruleset `fd` confines this task from now on.
pub(super) fn landlock_restrict_self(fd: RawFd) -> Result<(), Errno> {
    // SAFETY: integers only.
    check(unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) })
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, 0, &{len, filter})`: the program at `filter` (`len`
/// instructions) filters this task's system calls from now on.
pub(super) fn seccomp_set_filter(filter: &[libc::sock_filter]) -> Result<(), Errno> {
    let prog = libc::sock_fprog {
        // The caller holds at most MAX_SECCOMP_INSNS (4096) instructions.
        len: filter.len() as libc::c_ushort,
        filter: filter.as_ptr().cast_mut(),
    };
    let ptr: *const libc::sock_fprog = &prog;
    let op = libc::SECCOMP_SET_MODE_FILTER;
    // SAFETY: `ptr` points to a `sock_fprog` alive for the call, whose `filter` points to
    // `len` instructions; the kernel copies the program and writes nothing back.
    check(unsafe { libc::syscall(libc::SYS_seccomp, op, 0u32, ptr) })
}

/// Closes every fd in `first..=last` of the child's own fd table: `close_range`, or one by one
/// up to the fd limit on kernels before 5.9.
pub(super) fn close_all(first: u32, last: u32) -> Result<(), Errno> {
    // SAFETY: integers only; the fds are the child's copies (no CLONE_FILES), owned by nothing
    // the child will use.
    match check(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) }) {
        Err(Errno::ENOSYS) => {
            let mut lim = libc::rlimit64 {
                rlim_cur: 0,
                rlim_max: 0,
            };
            let res = libc::RLIMIT_NOFILE;
            let ptr: *mut libc::rlimit64 = &mut lim;
            // SAFETY: `ptr` is a valid out-pointer for the call; no new limit (null).
            check(unsafe { libc::syscall(libc::SYS_prlimit64, 0, res, 0usize, ptr) })?;
            let end = u64::from(last).min(lim.rlim_cur) as u32;
            for fd in first..=end {
                close(fd);
            }
            Ok(())
        }
        r => r,
    }
}

/// Opens `/dev/null` read-write at fd `at` (which is free: everything but the targets is
/// closed, and `at` is no target).
pub(super) fn open_dev_null_at(at: RawFd) -> Result<(), Errno> {
    let path = c"/dev/null".as_ptr();
    // SAFETY: `path` is a NUL-terminated static string.
    let r = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path, libc::O_RDWR) };
    let fd = Errno::result(r)? as RawFd;
    if fd != at {
        let r = dup3(fd, at, 0);
        close(fd as u32);
        r?;
    }
    Ok(())
}

pub(super) fn chdir(dir: &CStr) -> Result<(), Errno> {
    let ptr = dir.as_ptr();
    // SAFETY: a NUL-terminated string alive for the call.
    check(unsafe { libc::syscall(libc::SYS_chdir, ptr) })
}

/// Empties the signal mask (the kernel's 64-bit set).
pub(super) fn unblock_all_signals() -> Result<(), Errno> {
    let empty = 0u64;
    let ptr: *const u64 = &empty;
    let (how, size) = (libc::SIG_SETMASK, 8usize);
    // SAFETY: `ptr` points to a kernel sigset of `size` bytes alive for the call; no old set.
    check(unsafe { libc::syscall(libc::SYS_rt_sigprocmask, how, ptr, 0usize, size) })
}

/// `execve(path, argv, envp)`: returns only on failure, with its errno.
pub(super) fn execve(path: &CStr, argv: *const *const c_char, envp: *const *const c_char) -> Errno {
    let path = path.as_ptr();
    // SAFETY: `path` is NUL-terminated; `argv` and `envp` are null-terminated arrays of
    // NUL-terminated strings, all owned by the server's `ExecPlan`, alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_execve, path, argv, envp) };
    match Errno::result(r) {
        Err(e) => e,
        Ok(_) => Errno::UnknownErrno,
    }
}

/// `exit(2)` of this task: ends the child without touching the memory it shares.
pub(super) fn exit(code: i32) -> ! {
    loop {
        // SAFETY: an integer; the call does not return.
        let _ = unsafe { libc::syscall(libc::SYS_exit, code) };
    }
}
