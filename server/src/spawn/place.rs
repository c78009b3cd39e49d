//! Step 3 of the child's setup (PROTOCOL.md §6.5), the system calls: the bundle's fds to
//! their targets in the order the [`Placement`] planner gives, `/dev/null` on unmapped 0-2,
//! every other fd closed.

use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

use forkserver_protocol::FdBundle;
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use super::fds::{Op, Placement};
use crate::sys;

/// Places every fd of the bundle at its target, opens `/dev/null` on unmapped 0-2, closes every
/// other fd but the report pipe. Returns the report pipe's (possibly new) number and the targets.
///
/// # Safety
/// Only in the forked child before its job runs: every fd not in the bundle is closed or
/// replaced, so the caller abandons every object that owns one (server state, and preloaded
/// state too, as `Zygote::preload` documents) and manages the returned numbers by hand.
#[allow(unsafe_code)]
pub(super) unsafe fn place_fds(
    bundle: FdBundle,
    report: RawFd,
) -> Result<(RawFd, Vec<u32>), (RawFd, Errno)> {
    let (map, fds) = bundle.into_parts();
    // Release ownership: from here on these numbers are managed by hand, and no destructor may
    // close them later (a target may reuse one of their numbers).
    let srcs: Vec<RawFd> = fds.into_iter().map(IntoRawFd::into_raw_fd).collect();
    let mut plan = Placement::new(srcs, map.targets().to_vec(), report);
    while let Some(op) = plan.next_op() {
        let report = plan.report();
        match op {
            // SAFETY: `to` is a target or a number the planner manages; nothing owns it (the
            // caller abandons every owner, see `# Safety`).
            Op::Dup2 { from, to } => unsafe { sys::dup2(from, to) }.map_err(|e| (report, e))?,
            Op::ClearCloexec(fd) => sys::clear_cloexec(fd).map_err(|e| (report, e))?,
            Op::MoveOff(fd) => {
                // The lowest free number from `from` up that is no target; a duplicate that
                // lands on a (free) target stays there as a placeholder, replaced by the dup2
                // onto that target later.
                let mut from = 0;
                let new = loop {
                    let d = sys::dup_from(fd, from).map_err(|e| (report, e))?;
                    if !plan.is_target(d) {
                        break d;
                    }
                    from = d + 1;
                };
                plan.moved(fd, new);
            }
        }
    }
    let report = plan.report();
    let targets = plan.targets().to_vec();
    // 3. Close everything but the targets and the report pipe.
    let mut keep: Vec<u32> = targets.clone();
    keep.push(report as u32);
    keep.sort_unstable();
    let mut next = 0u32;
    for &k in &keep {
        if k > next {
            // SAFETY: no target or report pipe in the range; every other fd is abandoned by its
            // owner (the caller's promise).
            unsafe { close_all(next, k - 1) }.map_err(|e| (report, e))?;
        }
        next = k + 1;
    }
    // SAFETY: as above, above the last fd kept.
    unsafe { close_all(next, u32::MAX) }.map_err(|e| (report, e))?;
    // 4. Unmapped stdio goes to /dev/null, so the job's first open() cannot become its stdout.
    for std_fd in 0..=2u32 {
        if targets.contains(&std_fd) {
            continue;
        }
        let null = open("/dev/null", OFlag::O_RDWR, Mode::empty()).map_err(|e| (report, e))?;
        if null.as_raw_fd() as u32 != std_fd {
            // SAFETY: `std_fd` is unmapped, so no fd of the bundle is there, and whatever the
            // server had there is abandoned (the caller's promise).
            unsafe { sys::dup2(null.as_raw_fd(), std_fd as RawFd) }.map_err(|e| (report, e))?;
        } else {
            let _ = null.into_raw_fd();
        }
    }
    Ok((report, targets))
}

/// Closes every fd in `first..=last`.
///
/// # Safety
/// As [`sys::close_range`]: no owner of an fd in the range uses or closes it afterwards.
#[allow(unsafe_code)]
unsafe fn close_all(first: u32, last: u32) -> Result<(), Errno> {
    // SAFETY: the caller's promise, passed on.
    match unsafe { sys::close_range(first, last) } {
        Err(Errno::ENOSYS) => {
            // Kernels before 5.9: close one by one up to the fd limit.
            let (soft, _) =
                nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
            let end = last.min(soft.min(u64::from(u32::MAX)) as u32);
            for fd in first..=end {
                let _ = nix::unistd::close(fd as RawFd);
            }
            Ok(())
        }
        r => r,
    }
}
