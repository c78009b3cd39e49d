//! The idle connections a client keeps for reuse (PROTOCOL.md §6.6): how many, which process
//! they belong to, and how one is taken back out. The lock is held only to push or pop:
//! the check before reuse ([`Conn::still_usable`]) and closing stale connections happen
//! outside it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::conn::Conn;
use crate::fork_epoch;

/// How many idle connections are kept for reuse unless told otherwise.
pub(crate) const DEFAULT_MAX_IDLE: usize = 8;

/// The idle connections (handshake done, each knowing the generation of the server it
/// reaches) and their maximum.
#[derive(Debug)]
pub(crate) struct IdlePool {
    conns: Mutex<Owned>,
    max: AtomicUsize,
}

/// The connections, and the process they belong to: after a `fork()` the child must not
/// share its parent's connections (their frames would interleave), so it drops its copies.
#[derive(Debug)]
struct Owned {
    /// The [`fork_epoch`] of the process that made them.
    owner: u64,
    conns: Vec<Conn>,
}

impl IdlePool {
    pub(crate) fn new() -> Self {
        Self {
            conns: Mutex::new(Owned {
                owner: fork_epoch::current(),
                conns: Vec::new(),
            }),
            max: AtomicUsize::new(DEFAULT_MAX_IDLE),
        }
    }

    /// The connections, emptied first if this is not the process that made them.
    fn lock(&self) -> MutexGuard<'_, Owned> {
        // Consistent across a panic: each operation pushes or pops whole connections.
        let mut owned = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let me = fork_epoch::current();
        if owned.owner != me {
            owned.owner = me;
            owned.conns.clear();
        }
        owned
    }

    /// Sets the maximum; 0 turns reuse off. Connections kept beyond it are closed.
    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
        let surplus: Vec<Conn> = {
            let mut owned = self.lock();
            let keep = owned.conns.len().min(max);
            owned.conns.drain(keep..).collect()
        };
        drop(surplus);
    }

    /// Whether connections are kept at all.
    pub(crate) fn reuses(&self) -> bool {
        self.max.load(Ordering::Relaxed) > 0
    }

    /// How many are kept now.
    pub(crate) fn len(&self) -> usize {
        self.lock().conns.len()
    }

    /// Closes them all.
    pub(crate) fn close_all(&self) {
        let conns = std::mem::take(&mut self.lock().conns);
        drop(conns);
    }

    /// Keeps a connection that is READY (handshake done, no request outstanding), if fewer
    /// than the maximum are kept; closes it otherwise.
    pub(crate) fn put(&self, mut conn: Conn) {
        if conn.mark_idle().is_err() {
            return;
        }
        let max = self.max.load(Ordering::Relaxed);
        let mut owned = self.lock();
        if owned.conns.len() < max {
            owned.conns.push(conn);
        }
    }

    /// A kept connection to the server of `generation` that is still usable
    /// ([`Conn::still_usable`]), if there is one. Stale ones (an older server, closed by the
    /// server) are closed; those to a newer server (another thread relaunched it meanwhile)
    /// are left alone.
    pub(crate) fn take(&self, generation: u64) -> Option<Conn> {
        loop {
            let mut conn = {
                let mut owned = self.lock();
                let i = owned
                    .conns
                    .iter()
                    .rposition(|c| c.generation <= generation)?;
                owned.conns.swap_remove(i)
            };
            if conn.generation == generation && conn.still_usable() {
                conn.reused = true;
                return Some(conn);
            }
            drop(conn);
        }
    }
}
