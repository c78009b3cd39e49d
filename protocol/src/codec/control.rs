//! Small fixed-size messages: `Signal` (0x11), `Pid` (0x20) (PROTOCOL.md §5.6, §5.8). `Exit`
//! is in `exit.rs`.

use super::messages::Body;
use super::wire::{Reader, Sink};
use crate::error::{BuildError, DecodeError, Field};
use crate::MAX_SIGNAL;

/// `Signal` (0x11), client → server: send signal `signo` to the child of this connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Signal {
    signo: u32,
}

impl Signal {
    /// # Errors
    /// [`BuildError::InvalidValue`] outside `1..=64`.
    pub fn new(signo: u32) -> Result<Self, BuildError> {
        if signo == 0 || signo > MAX_SIGNAL {
            return Err(BuildError::InvalidValue(Field::Signal));
        }
        Ok(Self { signo })
    }

    /// The signal number.
    pub fn signo(&self) -> u32 {
        self.signo
    }
}

impl Body for Signal {
    fn encode(&self, out: &mut impl Sink) {
        out.put_u32_le(self.signo);
    }

    fn decode(r: &mut Reader<'_>, _nfds: u16) -> Result<Self, DecodeError> {
        // §5.6: 1 <= signo <= 64.
        Self::new(r.u32()?).map_err(|_| DecodeError::InvalidValue(Field::Signal))
    }
}

/// `Pid` (0x20), server → client: the child exists. When `pidfd` is true, the frame carries one
/// fd: a pidfd for the child (`pidfd_open(2)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pid {
    pid: i32,
    pidfd: bool,
}

impl Pid {
    /// # Errors
    /// [`BuildError::InvalidValue`] for a pid that is not positive.
    pub fn new(pid: i32, pidfd: bool) -> Result<Self, BuildError> {
        if pid <= 0 {
            return Err(BuildError::InvalidValue(Field::Pid));
        }
        Ok(Self { pid, pidfd })
    }

    /// The child's pid (in the server's pid namespace).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether a pidfd travels with this frame.
    pub fn has_pidfd(&self) -> bool {
        self.pidfd
    }
}

impl Body for Pid {
    fn encode(&self, out: &mut impl Sink) {
        out.put_u32_le(self.pid as u32);
    }

    fn decode(r: &mut Reader<'_>, nfds: u16) -> Result<Self, DecodeError> {
        let pid = r.u32()?;
        // §5.8: 1 <= pid <= 2^31 - 1.
        let pid = i32::try_from(pid).map_err(|_| DecodeError::InvalidValue(Field::Pid))?;
        Self::new(pid, nfds == 1).map_err(|_| DecodeError::InvalidValue(Field::Pid))
    }

    fn fd_count(&self) -> usize {
        usize::from(self.has_pidfd())
    }
}
