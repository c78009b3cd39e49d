//! The per-child controls of protocol rev 0.6 on [`crate::Command`] and [`crate::Call`]:
//! resource limits, umask, nice value, `no_new_privs`, OOM score, the grace period after a
//! deadline. Their setters are one macro, expanded in `request_setters!`.

use std::num::NonZeroU32;
use std::time::Duration;

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
