//! Quotas for work a peer has not earned yet (PROTOCOL.md §6.3, §9.3), after sshd's
//! `MaxStartups`/`LoginGraceTime` and systemd's `MaxConnectionsPerSource`:
//!
//! * [`Handshakes`]: connections that have not reached READY have a quota of their own (and a
//!   deadline, a timer of the event loop's table). When the quota is full a new connection is still taken, and an old handshake
//!   goes: the oldest that has sent nothing, else the oldest. A flood of connections that never
//!   finish the handshake then holds at most the quota, and cannot lock out a client whose
//!   handshake (two round trips with a key) is quick.
//! * A frame (and its fds) must arrive whole within a timeout of its first byte, on a READY
//!   connection too: one timer per frame that spans reads, none per byte (the event loop's
//!   `Timer::PartialFrame`).
//!
//! Sans-IO: the event loop feeds in connection ids and times and acts on the answers; only
//! [`raise_fd_limit`] and [`open_reserve_fd`] make system calls.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;

use crate::ids::ConnId;

/// Connections in the handshake (AWAIT_HELLO, AWAIT_AUTH), by id. Ids grow in accept order,
/// so the first entry is the oldest.
#[derive(Debug)]
pub(crate) struct Handshakes {
    open: BTreeSet<ConnId>,
    max: usize,
}

impl Handshakes {
    /// A quota of `max` handshakes at once (at least 1).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            open: BTreeSet::new(),
            max: max.max(1),
        }
    }

    /// Before a new connection is taken: `None` when the quota has room, else the handshake
    /// to close to make room: the oldest one for which `silent` says it has sent nothing, else
    /// the oldest. `silent` is asked oldest first and no more than needed.
    pub(crate) fn make_room(&self, mut silent: impl FnMut(ConnId) -> bool) -> Option<ConnId> {
        if self.open.len() < self.max {
            return None;
        }
        let oldest = self.open.first().copied();
        self.open.iter().copied().find(|&id| silent(id)).or(oldest)
    }

    /// Connection `id` starts its handshake.
    pub(crate) fn start(&mut self, id: ConnId) {
        self.open.insert(id);
    }

    /// Whether connection `id` is still in its handshake.
    pub(crate) fn contains(&self, id: ConnId) -> bool {
        self.open.contains(&id)
    }

    /// Connection `id` has left the handshake (READY, closing or gone). Cheap when it was not
    /// in it.
    pub(crate) fn finish(&mut self, id: ConnId) {
        if !self.open.is_empty() {
            self.open.remove(&id);
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, so that held fds (up to 256 per
/// connection in flight) do not run the server out at the common soft default of 1024.
/// Returns the limits before and after.
///
/// # Errors
/// `getrlimit`/`setrlimit` failing.
pub(crate) fn raise_fd_limit() -> nix::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, hard))
}

/// An fd kept open (on `/dev/null`) so that, out of fds, the server can still close it to
/// accept a connection, tell it why it is refused, and take the fd back; without it the
/// listener would stay readable and the loop spin.
pub(crate) fn open_reserve_fd() -> Option<OwnedFd> {
    nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> ConnId {
        ConnId::from_u64(n)
    }

    #[test]
    fn handshakes_have_room_until_the_quota() {
        let mut h = Handshakes::new(3);
        for id in 1..=3 {
            assert_eq!(h.make_room(|_| true), None);
            h.start(self::id(id));
        }
        // Full: the oldest silent one goes first, else the oldest.
        assert_eq!(h.make_room(|c| c == id(2)), Some(id(2)));
        assert_eq!(h.make_room(|_| false), Some(id(1)));
        h.finish(id(1));
        assert_eq!(h.make_room(|_| false), None);
        // Finishing one that is not there changes nothing.
        h.finish(id(42));
        assert_eq!(h.open.len(), 2);
    }

    #[test]
    fn silent_is_asked_oldest_first_and_no_more_than_needed() {
        let mut h = Handshakes::new(4);
        for n in [10, 11, 12, 13] {
            h.start(id(n));
        }
        let mut asked = Vec::new();
        let victim = h.make_room(|c| {
            asked.push(c);
            c >= id(11)
        });
        assert_eq!(victim, Some(id(11)));
        assert_eq!(asked, [id(10), id(11)]);
    }

    #[test]
    fn a_zero_quota_still_takes_one() {
        let mut h = Handshakes::new(0);
        assert_eq!(h.make_room(|_| false), None);
        h.start(id(1));
        assert_eq!(h.make_room(|_| false), Some(id(1)));
    }
}
