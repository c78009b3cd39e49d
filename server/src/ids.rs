//! The server's ids, each its own type (as mio's `Token`): a connection id cannot be passed
//! where a spawn serial belongs, nor either where a timer key does.

use std::fmt;

/// A connection, from its accept to its close: its epoll token, the subject of its timers and
/// of its handshake quota entry. Ids grow in accept order and are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ConnId(u64);

impl ConnId {
    /// The first connection's id: the ids below are the epoll tokens of the server's own fds.
    pub(crate) const FIRST: ConnId = ConnId(16);

    /// The id of the connection accepted after this one.
    pub(crate) fn next(self) -> ConnId {
        ConnId(self.0 + 1)
    }

    /// The number an epoll token carries for it.
    pub(crate) fn to_u64(self) -> u64 {
        self.0
    }

    /// The id an epoll token's number names.
    pub(crate) fn from_u64(n: u64) -> ConnId {
        ConnId(n)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A spawn, unique for the server's life (a pid can be reused, a serial cannot): the subject
/// of its child's deadline timer, the epoll token of its report pipe, and the tag of its
/// child's report on the shared report socket. The `n`-th spawn has serial `n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Serial(u64);

impl Serial {
    /// The serial of the `n`-th spawn (from 1).
    pub(crate) fn nth(n: u64) -> Serial {
        Serial(n)
    }

    /// The number an epoll token carries for it.
    pub(crate) fn to_u64(self) -> u64 {
        self.0
    }

    /// The serial an epoll token's number names.
    pub(crate) fn from_u64(n: u64) -> Serial {
        Serial(n)
    }

    /// Its 8 bytes on the shared report socket (little-endian).
    pub(crate) fn to_le_bytes(self) -> [u8; 8] {
        self.0.to_le_bytes()
    }

    pub(crate) fn from_le_bytes(b: [u8; 8]) -> Serial {
        Serial(u64::from_le_bytes(b))
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
