//! The `CLONE_VM` exec path: `clone(CLONE_VM | CLONE_VFORK [| CLONE_PIDFD])` on a stack of
//! the server's own ([`CloneStack`], mapped once and reused), the child running an
//! [`ExecPlan`] the server built. The server is suspended until the child has exec'd or exited,
//! so when `clone` returns the server knows how the exec went: the child's failure is in a
//! [`Slot`] of the server's memory.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::os::fd::{FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

use nix::errno::Errno;
use nix::libc;
use nix::unistd::Pid;

use forkserver_protocol::FdBundle;

use super::plan::ExecPlan;
use super::stage::{Stage, FAILED_STATUS};

/// The child's stack, without the guard page: the exec path makes no deep calls and keeps
/// nothing large on the stack (its data is in the plan, on the server's heap). It uses about
/// 1 KiB of it, debug build included (the test below measures it, and fails past 16 KiB).
const STACK_SIZE: usize = 64 * 1024;
/// A `PROT_NONE` page below the stack: an overflow faults (and kills the child: every signal
/// is blocked, and a blocked fault is delivered with its default action) instead of writing
/// over the server's memory.
const GUARD_SIZE: usize = 4096;

/// The mapping the `CLONE_VM` children run on: one child at a time (the server is suspended
/// while it runs), so one mapping serves every spawn.
pub(crate) struct CloneStack {
    base: NonNull<c_void>,
}

// SAFETY: the mapping is owned by this value alone (nothing else has its address); moving it
// to another thread moves that ownership.
unsafe impl Send for CloneStack {}

impl CloneStack {
    /// Maps the stack and its guard page.
    ///
    /// # Errors
    /// `mmap` or `mprotect` failing (ENOMEM).
    pub(crate) fn new() -> Result<Self, Errno> {
        let (prot, len) = (libc::PROT_READ | libc::PROT_WRITE, GUARD_SIZE + STACK_SIZE);
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK;
        // SAFETY: a new anonymous mapping at an address the kernel picks; no memory of ours.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
        if base == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let stack = Self {
            base: NonNull::new(base).ok_or(Errno::ENOMEM)?,
        };
        // SAFETY: the lowest page of the mapping just made, which nothing uses.
        Errno::result(unsafe { libc::mprotect(base, GUARD_SIZE, libc::PROT_NONE) })?;
        Ok(stack)
    }

    /// The initial stack pointer: the top of the mapping (stacks grow down), 16-byte aligned.
    fn top(&self) -> *mut c_void {
        self.base
            .as_ptr()
            .wrapping_byte_add(GUARD_SIZE + STACK_SIZE)
    }
}

impl Drop for CloneStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, used by no child any more (each ended or exec'd
        // before its clone returned).
        let _ = unsafe { libc::munmap(self.base.as_ptr(), GUARD_SIZE + STACK_SIZE) };
    }
}

/// Where the child leaves its failure: written by the child (same memory), read by the server
/// once `clone` has returned (the child has exec'd or exited by then).
#[derive(Default)]
struct Slot {
    /// 0: nothing written (the exec succeeded); else a [`Stage`] byte.
    stage: AtomicU8,
    errno: AtomicI32,
}

/// What the child is given: the plan and the slot, both in the server's memory.
struct ChildArgs<'a> {
    plan: &'a ExecPlan<'a>,
    slot: &'a Slot,
}

/// The child's first and only Rust frame (on the [`CloneStack`]). It runs the plan's steps
/// and `execve`; on failure it writes the slot and returns, and glibc's `clone` ends the
/// task with `exit(2)`.
extern "C" fn child_entry(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` of `clone_exec`, alive in the server's frame, which is
    // suspended until this child has exec'd or exited.
    let args = unsafe { &*arg.cast::<ChildArgs<'_>>() };
    let (stage, errno) = args.plan.run();
    args.slot.errno.store(errno as i32, Ordering::Relaxed);
    args.slot.stage.store(stage.into(), Ordering::Release);
    FAILED_STATUS
}

/// How a `CLONE_VM` child's exec went.
pub(crate) struct Cloned {
    pub(crate) pid: Pid,
    /// From `CLONE_PIDFD`, when one was asked for.
    pub(crate) pidfd: Option<OwnedFd>,
    /// The failed stage and errno; `None`: the child has exec'd.
    pub(crate) failure: Option<(Stage, Errno)>,
    /// The request's fds, still open in the server.
    pub(crate) bundle: FdBundle,
}

/// Clones a child that runs `plan` on `stack`, with a pidfd if `want_pidfd`. Every signal is
/// blocked across the clone (the child inherits the mask and empties it just before `execve`),
/// so no handler of the server's ever runs on the child's stack.
///
/// # Errors
/// `clone` or `sigprocmask` failing (EAGAIN, ENOMEM; EINVAL for `CLONE_PIDFD` before 5.2).
pub(super) fn clone_exec(
    stack: &mut CloneStack,
    plan: &ExecPlan,
    want_pidfd: bool,
) -> Result<Cloned, Errno> {
    let slot = Slot::default();
    let args = ChildArgs { plan, slot: &slot };
    let arg: *const ChildArgs<'_> = &args;
    let mut flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    if want_pidfd {
        flags |= libc::CLONE_PIDFD;
    }
    let mut pidfd: libc::c_int = -1;
    let pidfd_ptr: *mut libc::c_int = &mut pidfd;
    let old_mask = crate::sys::block_all_signals()?;
    let top = stack.top();
    // SAFETY: `child_entry` runs on `stack` (ours, mapped, used by this child alone: the
    // server is suspended until the child execs or exits, CLONE_VFORK) and touches only
    // `args`, which outlives the call for the same reason; it follows the rules of the spawn
    // module (no allocation, no lock, raw system calls). `pidfd_ptr` is a valid out-pointer
    // (CLONE_PIDFD writes the pidfd through clone's parent_tid argument).
    let pid = unsafe { libc::clone(child_entry, top, flags, arg.cast_mut().cast(), pidfd_ptr) };
    let clone_errno = Errno::last();
    crate::sys::restore_signal_mask(&old_mask)?;
    if pid < 0 {
        return Err(clone_errno);
    }
    let pidfd = (want_pidfd && pidfd >= 0).then(|| {
        // SAFETY: the kernel just made this fd for us (CLONE_PIDFD); nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(pidfd) }
    });
    let failure = match slot.stage.load(Ordering::Acquire) {
        0 => None,
        s => Some((
            Stage::from_byte(s),
            Errno::from_raw(slot.errno.load(Ordering::Relaxed)),
        )),
    };
    Ok(Cloned {
        pid: Pid::from_raw(pid),
        pidfd,
        failure,
        bundle: FdBundle::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spawn::identity::Identity;
    use forkserver_protocol::ExecJob;

    /// Runs a child whose exec fails after a long `PATH` search (every step taken), and
    /// measures how deep it went into its stack: the mapping is zero-filled, and the child
    /// writes from the top down.
    #[test]
    fn the_child_uses_a_small_part_of_its_stack_and_reports_its_failure() {
        let mut job = ExecJob::new("no-such-program-anywhere").unwrap();
        let path: Vec<String> = (0..64).map(|i| format!("/nonexistent/dir{i}")).collect();
        job.push_env("PATH", path.join(":")).unwrap();
        let bundle = FdBundle::new();
        let env = super::super::plan::ServerEnv::capture();
        let plan = ExecPlan::new(&job, &bundle, Identity::default(), 0, None, &env);
        let mut stack = CloneStack::new().unwrap();
        let cloned = clone_exec(&mut stack, &plan, true).unwrap();
        assert_eq!(cloned.failure, Some((Stage::Exec, Errno::ENOENT)));
        assert!(cloned.pidfd.is_some());
        let status = nix::sys::wait::waitpid(cloned.pid, None).unwrap();
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(cloned.pid, FAILED_STATUS)
        );
        let base = stack.base.as_ptr().cast::<u8>().wrapping_add(GUARD_SIZE);
        // SAFETY: the stack part of the mapping, readable, used by no child any more.
        let bytes = unsafe { std::slice::from_raw_parts(base, STACK_SIZE) };
        let untouched = bytes.iter().take_while(|&&b| b == 0).count();
        let used = STACK_SIZE - untouched;
        eprintln!("the child used {used} bytes of its {STACK_SIZE}-byte stack");
        assert!(used < STACK_SIZE / 4, "{used} bytes of stack");
    }
}
