//! Every timer of the server in one table (after quinn-proto's `TimerTable`, here a heap, since
//! a server has many connections and children): child deadlines, handshakes, frames held in
//! part, closing connections, the shutdown grace, the service manager's status and watchdog.
//! Sans-IO: the event loop sets timers, sleeps
//! until [`TimerTable::next`], and acts on what [`TimerTable::pop_expired`] gives back.
//!
//! A timer is never cancelled: whoever acts on it checks that it still applies (the child of
//! that serial still runs, the connection is still in its handshake, still holds the frame of
//! that timer...). Timers that no longer apply are dropped by [`TimerTable::prune`] when they
//! come to dominate the table.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use nix::unistd::Pid;

use crate::ids::{ConnId, Serial};

/// What a timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// The child of spawn `serial` runs past its deadline (§5.5): SIGKILL, or SIGTERM with a
    /// grace period.
    Deadline { serial: Serial, pid: Pid },
    /// The grace period after the deadline's SIGTERM is over (rev 0.6): SIGKILL.
    Grace { serial: Serial, pid: Pid },
    /// Connection `id` has not finished its handshake in time (§6.3).
    Handshake(ConnId),
    /// Connection `id` holds part of a frame since this timer was set (§6.3); the connection
    /// keeps the timer's [`Key`].
    PartialFrame(ConnId),
    /// Connection `id`, closing, had this long to flush its last replies.
    Closing(ConnId),
    /// The shutdown grace is over: the children left are killed.
    Shutdown,
    /// A `STATUS=` notification held back by its interval is due.
    Status,
    /// The service manager's watchdog is due to be fed (`WATCHDOG=1`).
    Watchdog,
}

/// Names one setting of a timer: unique, in the order timers were set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key(u64);

/// The timers, soonest first.
#[derive(Debug, Default)]
pub(crate) struct TimerTable {
    heap: BinaryHeap<Reverse<(Instant, Key, Timer)>>,
    next_key: Key,
}

impl TimerTable {
    /// Sets `timer` to expire at `at`; returns its key.
    pub(crate) fn set(&mut self, at: Instant, timer: Timer) -> Key {
        self.next_key.0 += 1;
        self.heap.push(Reverse((at, self.next_key, timer)));
        self.next_key
    }

    /// When the soonest timer expires.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// A timer that has expired at `now`, taken out of the table.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(Key, Timer)> {
        match self.heap.peek() {
            Some(Reverse((t, _, _))) if *t <= now => {
                self.heap.pop().map(|Reverse((_, key, timer))| (key, timer))
            }
            _ => None,
        }
    }

    /// Drops the timers `applies` says no longer apply, once the table holds more than
    /// `expected` (what still applies is at most that) plus a margin: stale timers cost
    /// memory until their time, and a burst must not leave them, or the table's capacity,
    /// behind.
    pub(crate) fn prune(&mut self, expected: usize, mut applies: impl FnMut(Key, &Timer) -> bool) {
        if self.heap.len() <= 64 + 2 * expected {
            return;
        }
        let kept: Vec<_> = std::mem::take(&mut self.heap)
            .into_iter()
            .filter(|Reverse((_, key, timer))| applies(*key, timer))
            .collect();
        self.heap = BinaryHeap::from(kept);
    }

    /// How many timers are set (stale ones included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timers_expire_soonest_first_then_in_setting_order() {
        let id = ConnId::from_u64;
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut t = TimerTable::default();
        let a = t.set(s(5), Timer::Closing(id(1)));
        let b = t.set(s(1), Timer::Handshake(id(2)));
        let c = t.set(s(1), Timer::PartialFrame(id(2)));
        let d = t.set(s(3), Timer::Shutdown);
        assert_eq!(t.next(), Some(s(1)));
        assert_eq!(t.pop_expired(t0), None);
        assert_eq!(t.pop_expired(s(2)), Some((b, Timer::Handshake(id(2)))));
        assert_eq!(t.pop_expired(s(2)), Some((c, Timer::PartialFrame(id(2)))));
        assert_eq!(t.pop_expired(s(2)), None);
        assert_eq!(t.pop_expired(s(9)), Some((d, Timer::Shutdown)));
        assert_eq!(t.pop_expired(s(9)), Some((a, Timer::Closing(id(1)))));
        assert_eq!((t.pop_expired(s(9)), t.next()), (None, None));
        assert!(a < b && b < c && c < d);
    }

    #[test]
    fn stale_timers_are_pruned_once_they_dominate() {
        let t0 = Instant::now();
        let mut t = TimerTable::default();
        let pid = Pid::from_raw(1);
        for n in 0..200 {
            let serial = Serial::nth(n);
            t.set(t0, Timer::Deadline { serial, pid });
        }
        // Few expected: the 190 stale ones go; the 10 that apply stay.
        t.prune(
            10,
            |_, timer| matches!(timer, Timer::Deadline { serial, .. } if *serial < Serial::nth(10)),
        );
        assert_eq!(t.len(), 10);
        // Below the margin nothing is looked at.
        t.prune(10, |_, _| false);
        assert_eq!(t.len(), 10);
    }
}
