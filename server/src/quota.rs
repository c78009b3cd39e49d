//! Quotas for work a peer has not earned yet (PROTOCOL.md §6.3, §9.3), after sshd's
//! `MaxStartups`/`LoginGraceTime` and systemd's `MaxConnectionsPerSource`:
//!
//! * [`Handshakes`]: connections that have not reached READY have a quota of their own and a
//!   deadline. When the quota is full a new connection is still taken, and an old handshake
//!   goes: the oldest that has sent nothing, else the oldest. A flood of connections that never
//!   finish the handshake then holds at most the quota, and cannot lock out a client whose
//!   handshake (two round trips with a key) is quick.
//! * [`PartialFrames`]: a frame (and its fds) must arrive whole within a timeout of its first
//!   byte, on a READY connection too. One timer per frame that spans reads, none per byte.
//!
//! Sans-IO: the event loop feeds in connection ids and times and acts on the answers; only
//! [`raise_fd_limit`] makes a system call.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Connections in the handshake (AWAIT_HELLO, AWAIT_AUTH), by id. Ids grow in accept order
/// and every deadline is accept time plus the same timeout, so the first entry is both the
/// oldest and the first to expire.
#[derive(Debug)]
pub(crate) struct Handshakes {
    open: BTreeMap<u64, Instant>,
    max: usize,
    timeout: Duration,
}

impl Handshakes {
    /// A quota of `max` handshakes at once (at least 1), each given `timeout`.
    pub(crate) fn new(max: usize, timeout: Duration) -> Self {
        Self {
            open: BTreeMap::new(),
            max: max.max(1),
            timeout,
        }
    }

    /// Before a new connection is taken: `None` when the quota has room, else the handshake
    /// to close to make room: the oldest one for which `silent` says it has sent nothing, else
    /// the oldest. `silent` is asked oldest first and no more than needed.
    pub(crate) fn make_room(&self, mut silent: impl FnMut(u64) -> bool) -> Option<u64> {
        if self.open.len() < self.max {
            return None;
        }
        let oldest = self.open.keys().next().copied();
        self.open.keys().copied().find(|&id| silent(id)).or(oldest)
    }

    /// Connection `id`, accepted at `now`, starts its handshake.
    pub(crate) fn start(&mut self, id: u64, now: Instant) {
        self.open.insert(id, now + self.timeout);
    }

    /// Connection `id` has left the handshake (READY, closing or gone). Cheap when it was not
    /// in it.
    pub(crate) fn finish(&mut self, id: u64) {
        if !self.open.is_empty() {
            self.open.remove(&id);
        }
    }

    /// When the next handshake times out.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.open.values().next().copied()
    }

    /// A handshake whose deadline has passed at `now`, taken out of the quota.
    pub(crate) fn expired(&mut self, now: Instant) -> Option<u64> {
        let (&id, &t) = self.open.iter().next()?;
        (t <= now).then(|| {
            self.open.remove(&id);
            id
        })
    }
}

/// Timers of frames received in part: `(deadline, connection id, arming serial)`, in deadline
/// order (every deadline is arming time plus the same timeout). A connection remembers the
/// serial of its timer; an entry whose serial the connection no longer holds is stale.
#[derive(Debug)]
pub(crate) struct PartialFrames {
    queue: VecDeque<(Instant, u64, u64)>,
    next_serial: u64,
    timeout: Duration,
}

impl PartialFrames {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            queue: VecDeque::new(),
            next_serial: 1,
            timeout,
        }
    }

    /// Connection `id` holds the start of a frame since `now`: arms its timer and returns the
    /// serial it must keep.
    pub(crate) fn arm(&mut self, id: u64, now: Instant) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        self.queue.push_back((now + self.timeout, id, serial));
        serial
    }

    /// When the next timer runs out.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.queue.front().map(|&(t, _, _)| t)
    }

    /// A timer that has run out at `now`: its connection and serial.
    pub(crate) fn expired(&mut self, now: Instant) -> Option<(u64, u64)> {
        match self.queue.front() {
            Some(&(t, id, serial)) if t <= now => {
                self.queue.pop_front();
                if self.queue.is_empty() && self.queue.capacity() > 1024 {
                    self.queue = VecDeque::new();
                }
                Some((id, serial))
            }
            _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn handshakes_have_room_until_the_quota() {
        let now = Instant::now();
        let mut h = Handshakes::new(3, T);
        for id in 1..=3 {
            assert_eq!(h.make_room(|_| true), None);
            h.start(id, now);
        }
        // Full: the oldest silent one goes first, else the oldest.
        assert_eq!(h.make_room(|id| id == 2), Some(2));
        assert_eq!(h.make_room(|_| false), Some(1));
        h.finish(1);
        assert_eq!(h.make_room(|_| false), None);
        // Finishing one that is not there changes nothing.
        h.finish(42);
        assert_eq!(h.open.len(), 2);
    }

    #[test]
    fn silent_is_asked_oldest_first_and_no_more_than_needed() {
        let now = Instant::now();
        let mut h = Handshakes::new(4, T);
        for id in [10, 11, 12, 13] {
            h.start(id, now);
        }
        let mut asked = Vec::new();
        let victim = h.make_room(|id| {
            asked.push(id);
            id >= 11
        });
        assert_eq!(victim, Some(11));
        assert_eq!(asked, [10, 11]);
    }

    #[test]
    fn a_zero_quota_still_takes_one() {
        let mut h = Handshakes::new(0, T);
        assert_eq!(h.make_room(|_| false), None);
        h.start(1, Instant::now());
        assert_eq!(h.make_room(|_| false), Some(1));
    }

    #[test]
    fn handshakes_expire_in_accept_order() {
        let t0 = Instant::now();
        let mut h = Handshakes::new(8, T);
        h.start(1, t0);
        h.start(2, t0 + Duration::from_secs(1));
        h.start(3, t0 + Duration::from_secs(2));
        h.finish(2);
        assert_eq!(h.next_deadline(), Some(t0 + T));
        assert_eq!(h.expired(t0 + T - Duration::from_millis(1)), None);
        assert_eq!(h.expired(t0 + T + Duration::from_secs(5)), Some(1));
        // 2 finished: never expires.
        assert_eq!(h.expired(t0 + T + Duration::from_secs(5)), Some(3));
        assert_eq!(h.expired(t0 + T * 100), None);
        assert_eq!(h.next_deadline(), None);
    }

    #[test]
    fn partial_frame_timers_fire_in_order_with_their_serial() {
        let t0 = Instant::now();
        let mut p = PartialFrames::new(T);
        let a = p.arm(7, t0);
        let b = p.arm(8, t0 + Duration::from_secs(1));
        let c = p.arm(7, t0 + Duration::from_secs(2));
        assert!(a < b && b < c);
        assert_eq!(p.next_deadline(), Some(t0 + T));
        assert_eq!(p.expired(t0), None);
        let late = t0 + T + Duration::from_secs(1);
        assert_eq!(p.expired(late), Some((7, a)));
        assert_eq!(p.expired(late), Some((8, b)));
        assert_eq!(p.expired(late), None);
        assert_eq!(p.expired(late + Duration::from_secs(1)), Some((7, c)));
        assert_eq!(p.next_deadline(), None);
    }
}
