//! Waiting on fds with a time limit: poll(2) with what is left of a deadline, never a busy
//! loop ([`crate::Child::wait_timeout`], [`crate::TypedChild::join_timeout`]).

use std::io;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollTimeout};

/// The instant `timeout` from now; `None` (no limit) if `Instant` cannot hold it.
pub(crate) fn deadline_in(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Polls `fds` until one is ready or `deadline` (`None`: no limit) passes. `false` once the
/// deadline has passed; `true` when the caller should look at its fds again (one is ready, or
/// a signal cut the wait short).
///
/// # Errors
/// What `poll(2)` reports, but `EINTR`.
pub(crate) fn poll_until(fds: &mut [PollFd<'_>], deadline: Option<Instant>) -> io::Result<bool> {
    let timeout = match deadline {
        None => PollTimeout::NONE,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            // Rounded up: a wait never ends short of the deadline for want of a millisecond.
            let ms = i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX);
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    };
    match poll(fds, timeout) {
        // Timed out: past the deadline, unless it lies beyond poll's longest wait.
        Ok(0) => Ok(deadline.map_or(true, |d| Instant::now() < d)),
        Ok(_) | Err(Errno::EINTR) => Ok(true),
        Err(e) => Err(e.into()),
    }
}
