//! The per-child controls of protocol rev 0.6 on [`crate::Command`] and [`crate::Call`]:
//! resource limits, umask, nice value, `no_new_privs`, OOM score, the grace period after a
//! deadline, the seccomp filter and the landlock ruleset. Their setters are one macro,
//! expanded in `request_setters!`.

use std::io::Write;
use std::num::NonZeroU32;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use forkserver_protocol::{FdBundle, SpawnOptions};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::stat::{fstat, SFlag};

use crate::error::Result;

/// The sandbox fds of a request: each travels as one more bundle entry, at a target no other
/// entry has, which the server consumes (PROTOCOL.md §6.5: the job never sees it).
#[derive(Debug, Default)]
pub(crate) struct SandboxFds {
    /// The seccomp program's fd, or the errno of its failed duplication.
    seccomp: Option<std::result::Result<OwnedFd, i32>>,
    /// The landlock ruleset's fd, likewise.
    landlock: Option<std::result::Result<OwnedFd, i32>>,
}

impl SandboxFds {
    /// Sends the program in `fd` as the seccomp program: a duplicate of a memfd, or a sealed
    /// memfd holding a regular file's first bytes, made now (a failure is kept for
    /// [`SandboxFds::add_to`] to report). Other fds go as they are, for the server to refuse.
    pub(crate) fn set_seccomp(&mut self, fd: impl AsFd) {
        self.seccomp = Some(seccomp_memfd(fd.as_fd()).map_err(|e| e as i32));
    }

    /// Sends a duplicate of `fd`, made now, as the landlock ruleset.
    pub(crate) fn set_landlock(&mut self, fd: impl AsFd) {
        self.landlock = Some(Self::dup(fd));
    }

    /// A duplicate of `fd`, made now, or its errno.
    fn dup(fd: impl AsFd) -> std::result::Result<OwnedFd, i32> {
        fd.as_fd()
            .try_clone_to_owned()
            .map_err(|e| e.raw_os_error().unwrap_or(nix::libc::EBADF))
    }

    /// How many bundle entries they take.
    pub(crate) fn count(&self) -> usize {
        usize::from(self.seccomp.is_some()) + usize::from(self.landlock.is_some())
    }

    /// Appends a duplicate of each to `bundle`, at the lowest free target from 3, and sets
    /// their indexes in `options`.
    ///
    /// # Errors
    /// A failed duplication (now or at the setter); [`crate::Error::TooManyFds`] past
    /// [`forkserver_protocol::MAX_FDS`].
    pub(crate) fn add_to(&self, bundle: &mut FdBundle, options: &mut SpawnOptions) -> Result<()> {
        let mut add = |fd: &Option<std::result::Result<OwnedFd, i32>>| -> Result<Option<u16>> {
            let Some(fd) = fd else {
                return Ok(None);
            };
            let fd = fd
                .as_ref()
                .map_err(|&e| std::io::Error::from_raw_os_error(e))?
                .try_clone()?;
            let taken = bundle.map().targets();
            let target = (3..).find(|t| !taken.contains(t)).unwrap_or(3);
            // The index of the entry pushed: at most MAX_FDS - 1 (255).
            let index = bundle.len() as u16;
            bundle.push(target, fd)?;
            Ok(Some(index))
        };
        options.seccomp_index = add(&self.seccomp)?;
        options.landlock_index = add(&self.landlock)?;
        Ok(())
    }
}

/// How much of a regular file [`seccomp_memfd`] copies: 1 MiB.
const SECCOMP_COPY_MAX: usize = 1 << 20;

/// The seccomp program in `fd` as the server reads it (PROTOCOL.md §6.5): `fd` itself if it
/// is a memfd (`F_GET_SEALS` answers), else, for a regular file, a sealed memfd holding its
/// bytes from offset 0, at most [`SECCOMP_COPY_MAX`] (far more than the server takes, so that
/// its refusal names the program's own size); any other fd as it is (the server refuses it).
fn seccomp_memfd(fd: BorrowedFd<'_>) -> std::result::Result<OwnedFd, Errno> {
    let regular = fstat(fd)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG);
    if !regular || fcntl(fd, FcntlArg::F_GET_SEALS).is_ok() {
        return fd.try_clone_to_owned().map_err(io_errno);
    }
    let size = fstat(fd)?.st_size.max(0) as u64;
    let cap = size.min(SECCOMP_COPY_MAX as u64) as usize;
    let mut bytes = vec![0u8; cap];
    let mut got = 0;
    while got < cap {
        match nix::sys::uio::pread(fd, &mut bytes[got..], got as i64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    let memfd = memfd_create(
        "forkserver-seccomp",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(memfd);
    file.write_all(&bytes[..got]).map_err(io_errno)?;
    let seals = SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_SEAL;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(file.into())
}

fn io_errno(e: std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// A grace period on the wire: whole milliseconds rounded up, at least 1, at most `u32::MAX`.
pub(crate) fn grace_ms(d: Duration) -> Option<NonZeroU32> {
    let ms = d.as_nanos().div_ceil(1_000_000).max(1);
    NonZeroU32::new(u32::try_from(ms).unwrap_or(u32::MAX))
}

/// The rev 0.6 setters shared by [`crate::Command`] and [`crate::Call`], with their docs.
macro_rules! control_setters {
    () => {
        /// The child sets the resource limit `resource` (an `RLIMIT_*` number such as
        /// `libc::RLIMIT_NOFILE`) to `soft` and `hard` ([`forkserver_protocol::RLIM_INFINITY`]
        /// for none) before its credentials change, as `setrlimit(2)`; repeatable, applied in
        /// order, at most [`forkserver_protocol::MAX_RLIMITS`]. An unknown resource or
        /// `soft > hard` is an error at spawn; raising a hard limit without the server's
        /// privilege fails the child with `ChildSetupFailed` (`EPERM`). Needs a server of
        /// protocol rev 0.6 (`SET_RLIMITS`): another gets [`crate::Error::Unsupported`].
        pub fn rlimit(&mut self, resource: u32, soft: u64, hard: u64) -> &mut Self {
            self.req.rlimits.push(forkserver_protocol::Rlimit {
                resource,
                soft,
                hard,
            });
            self
        }

        /// The child's umask (`umask(2)`), at most `0o777` (checked at spawn). Needs rev 0.6,
        /// as do [`Self::nice`], [`Self::no_new_privs`] and [`Self::oom_score_adj`].
        pub fn umask(&mut self, mask: u16) -> &mut Self {
            self.req.options.umask = Some(mask);
            self
        }

        /// The child's nice value, -20..=19 (`setpriority(PRIO_PROCESS, 0, nice)`; checked at
        /// spawn). Below the server's own needs its `CAP_SYS_NICE`: else `ChildSetupFailed`
        /// (`EACCES`).
        pub fn nice(&mut self, nice: i32) -> &mut Self {
            self.req.options.nice = Some(nice);
            self
        }

        /// Whether the child sets `PR_SET_NO_NEW_PRIVS`: its `execve` then grants no privilege
        /// (setuid bits, file capabilities are ignored), as systemd's `NoNewPrivileges=`.
        pub fn no_new_privs(&mut self, on: bool) -> &mut Self {
            self.req.options.no_new_privs = on;
            self
        }

        /// The child's `/proc/self/oom_score_adj`, -1000..=1000 (checked at spawn), as
        /// systemd's `OOMScoreAdjust=`. Below the server's own needs `CAP_SYS_RESOURCE`.
        pub fn oom_score_adj(&mut self, adj: i32) -> &mut Self {
            self.req.options.oom_score_adj = Some(adj);
            self
        }

        /// With a [`Self::deadline`]: the server sends `SIGTERM` at the deadline and `SIGKILL`
        /// `grace` later if the child still runs (rounded up to whole milliseconds, at most
        /// `u32::MAX` ms, about 49 days), as systemd's `TimeoutStopSec=`. Needs a server of
        /// protocol rev 0.6 (`SET_GRACE`).
        pub fn grace(&mut self, grace: Duration) -> &mut Self {
            self.req.options.grace_ms = crate::controls::grace_ms(grace);
            self
        }

        /// The child installs the compiled classic-BPF program in `fd` as its seccomp filter
        /// (`seccomp(SECCOMP_SET_MODE_FILTER)`), as the last step before `execve` or its entry
        /// point, as systemd's `SystemCallFilter=` does; `no_new_privs` is implied. `fd` is a
        /// memfd or a regular file holding 1..=4096 `struct sock_filter`s (8 bytes each,
        /// native byte order; a crate such as `seccompiler` builds them), read from offset 0:
        /// another size is `ChildSetupFailed` naming the problem (`seccomp filter: 4100
        /// instructions, at most 4096`) and no child runs. The server reads only a memfd (a
        /// file on a hung mount would block its loop), so a regular file is copied now into a
        /// sealed memfd (its first MiB: the server refuses what is longer); a memfd is sent as
        /// is, a duplicate made now. A failure is reported by `spawn`.
        /// It travels as one more bundle entry, counted in the 256, which the child does not
        /// keep. Needs a server of protocol rev 0.6 (`SECCOMP_FILTER`).
        pub fn seccomp_filter(&mut self, fd: impl std::os::fd::AsFd) -> &mut Self {
            self.req.sandbox.set_seccomp(fd);
            self
        }

        /// The child enforces the landlock ruleset `fd` (made with `landlock_create_ruleset`
        /// and its rules added) with `landlock_restrict_self`, after its credentials change;
        /// `no_new_privs` is implied. A kernel without landlock, or an fd that is no ruleset,
        /// fails the child with `ChildSetupFailed` naming the call. As with
        /// [`Self::seccomp_filter`], a duplicate is sent as one more bundle entry, which the
        /// child does not keep. Needs a server of protocol rev 0.6 (`LANDLOCK_RULESET`).
        pub fn landlock_ruleset(&mut self, fd: impl std::os::fd::AsFd) -> &mut Self {
            self.req.sandbox.set_landlock(fd);
            self
        }
    };
}
pub(crate) use control_setters;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_rounds_up_to_whole_milliseconds_within_u32() {
        assert_eq!(
            grace_ms(Duration::from_micros(1)).map(NonZeroU32::get),
            Some(1)
        );
        assert_eq!(
            grace_ms(Duration::from_micros(1500)).map(NonZeroU32::get),
            Some(2)
        );
        assert_eq!(grace_ms(Duration::ZERO).map(NonZeroU32::get), Some(1));
        let long = Duration::from_secs(u64::MAX / 4);
        assert_eq!(grace_ms(long).map(NonZeroU32::get), Some(u32::MAX));
    }
}
