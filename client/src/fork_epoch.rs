//! Which process image this is, without a system call: a counter that the child side of every
//! `fork()` bumps (`pthread_atfork`), so that the engine can tell, at each request, whether the
//! connections it keeps were made by this process or inherited from its parent (whose frames
//! would interleave with ours). `std::process::id()` would tell the same at the cost of a
//! `getpid(2)` per use, three per spawn.
//!
//! Covers every `fork()` that goes through the C library (`libc::fork`, nix's `fork`, std's
//! `Command` and `posix_spawn`, which exec at once anyway). A child made by a raw `clone(2)`
//! without `CLONE_VM` skips the handlers: such a child must not use a client of its parent's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static EPOCH: AtomicU64 = AtomicU64::new(0);
static REGISTER: Once = Once::new();

extern "C" fn in_child() {
    // Async-signal-safe: one atomic add, no allocation, no lock.
    EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// The current epoch: equal between two calls in the same process, different once a `fork()`
/// lies between them (the first call registers the handler; a fork before it needs no
/// handler, as nothing was kept yet).
pub(crate) fn current() -> u64 {
    REGISTER.call_once(|| {
        // SAFETY: `in_child` is a plain `extern "C" fn` that stays valid for the life of the
        // process and only does an atomic add, which is async-signal-safe as the child
        // handler of `pthread_atfork` must be.
        let rc = unsafe { nix::libc::pthread_atfork(None, None, Some(in_child)) };
        if rc != 0 {
            // ENOMEM: without the handler a forked child could use its parent's connections.
            // Leave the epoch unusable instead: every call then counts as a new process.
            EPOCH.store(u64::MAX, Ordering::Relaxed);
        }
    });
    match EPOCH.load(Ordering::Relaxed) {
        u64::MAX => fallback(),
        e => e,
    }
}

/// Without a handler: the pid, as before (a syscall per use).
fn fallback() -> u64 {
    u64::from(std::process::id()) | 1 << 63
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fork_changes_the_epoch_and_nothing_else_does() {
        let before = current();
        assert_eq!(current(), before);
        // SAFETY: the child only compares two integers and calls `_exit`.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let changed = current() != before;
                // SAFETY: `_exit` is async-signal-safe and never returns.
                unsafe { nix::libc::_exit(i32::from(!changed)) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
                assert_eq!(current(), before);
            }
        }
    }
}
