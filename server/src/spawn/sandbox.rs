//! The sandbox steps of rev 0.6 (PROTOCOL.md §6.5 steps 5-7): the landlock ruleset, enforced
//! after the credentials change, and the seccomp filter, installed last before `execve` or the
//! entry point. Both bundle entries are consumed: they are placed at their targets like every
//! entry (so the `CLONE_VM` child finds them at numbers fixed before the clone), and the child
//! closes both right after `landlock_restrict_self`, so the job finds no fd at either target.
//!
//! [`Sandbox`] is built by the server (or a pooled child) before the child runs, and `Copy`:
//! the child only makes the raw system calls of `raw.rs` on it, on either path.

use std::os::fd::RawFd;

use forkserver_protocol::{FdMap, SpawnOptions};
use nix::errno::Errno;

use super::raw;
use super::seccomp::SeccompProgram;
use super::stage::Stage;

/// What the child confines itself with, as the request asked.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sandbox<'a> {
    /// `LANDLOCK_RULESET`: the target the ruleset fd is placed at.
    landlock: Option<RawFd>,
    /// The targets of the consumed entries (seccomp's, landlock's), closed after landlock.
    consumed: [Option<u32>; 2],
    /// `SECCOMP_FILTER`: whether the request has one.
    wants_filter: bool,
    /// The program, read before the fork or clone (`None` with `wants_filter`: the child
    /// fails at the filter step rather than run unfiltered).
    filter: Option<&'a SeccompProgram>,
}

impl<'a> Sandbox<'a> {
    /// The sandbox of a request with `options` whose bundle has the targets `map`, and the
    /// program read from its `SECCOMP_FILTER` entry.
    pub(crate) fn new(
        options: &SpawnOptions,
        map: &FdMap,
        filter: Option<&'a SeccompProgram>,
    ) -> Self {
        // The decoder and `Spawn::new` keep the indexes below the fd count.
        let target = |i: Option<u16>| i.and_then(|i| map.targets().get(usize::from(i)).copied());
        let (seccomp, landlock) = (
            target(options.seccomp_index),
            target(options.landlock_index),
        );
        Self {
            // Targets are at most MAX_TARGET_FD (2^20 - 1): an fd number.
            landlock: landlock.map(|t| t as RawFd),
            consumed: [seccomp, landlock],
            wants_filter: options.seccomp_index.is_some(),
            filter,
        }
    }

    /// Whether `target` is a consumed entry's: not in the job's fds.
    pub(crate) fn consumes(&self, target: u32) -> bool {
        self.consumed.contains(&Some(target))
    }

    /// Step 5, after the credentials: `landlock_restrict_self(fd, 0)`, then both consumed
    /// entries are closed. Raw calls only.
    pub(super) fn restrict(&self) -> Result<(), (Stage, Errno)> {
        if let Some(fd) = self.landlock {
            raw::landlock_restrict_self(fd).map_err(|e| (Stage::Landlock, e))?;
        }
        for t in self.consumed.into_iter().flatten() {
            raw::close(t);
        }
        Ok(())
    }

    /// Steps 6-7, the last call before `execve` or the entry point: the seccomp filter. Raw
    /// calls only; from here on the filter decides which calls the child may make.
    pub(super) fn install_filter(&self) -> Result<(), (Stage, Errno)> {
        match (self.wants_filter, self.filter) {
            (_, Some(p)) => p.install().map_err(|e| (Stage::Seccomp, e)),
            (true, None) => Err((Stage::Seccomp, Errno::EINVAL)),
            (false, None) => Ok(()),
        }
    }
}
