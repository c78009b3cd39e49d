//! Small fixed-size messages: `Signal` (0x11), `Pid` (0x20), `Exit` (0x21)
//! (PROTOCOL.md §5.6, §5.8, §5.9).

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

/// `Exit` (0x21), server → client: the child has ended and been reaped.
///
/// `code >= 0` is the exit status (0..=255); `code < 0` is minus the signal that killed the child
/// (-64..=-1), as CPython's `os.waitstatus_to_exitcode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Exit {
    code: i32,
    deadline_expired: bool,
    core_dumped: bool,
}

/// `Exit.flags` bits.
pub mod exit_flags {
    /// The server killed the child because its deadline expired.
    pub const DEADLINE_EXPIRED: u8 = 1 << 0;
    /// The child dumped core (`WCOREDUMP`).
    pub const CORE_DUMPED: u8 = 1 << 1;
}

impl Exit {
    /// # Errors
    /// [`BuildError::InvalidValue`] for a code outside `-64..=255`.
    pub fn new(code: i32, deadline_expired: bool, core_dumped: bool) -> Result<Self, BuildError> {
        if !(-(MAX_SIGNAL as i32)..=255).contains(&code) {
            return Err(BuildError::InvalidValue(Field::ExitCode));
        }
        Ok(Self {
            code,
            deadline_expired,
            core_dumped,
        })
    }

    /// The signed exit code.
    pub fn code(&self) -> i32 {
        self.code
    }

    /// Whether the server killed the child at its deadline.
    pub fn deadline_expired(&self) -> bool {
        self.deadline_expired
    }

    /// Whether the child dumped core.
    pub fn core_dumped(&self) -> bool {
        self.core_dumped
    }
}

impl Body for Exit {
    fn encode(&self, out: &mut impl Sink) {
        out.put_i32_le(self.code);
        let mut f = 0;
        if self.deadline_expired {
            f |= exit_flags::DEADLINE_EXPIRED;
        }
        if self.core_dumped {
            f |= exit_flags::CORE_DUMPED;
        }
        out.put_u8(f);
        out.put_slice(&[0; 3]);
    }

    fn decode(r: &mut Reader<'_>, _nfds: u16) -> Result<Self, DecodeError> {
        let code = r.i32()?;
        let f = r.u8()?;
        r.reserved::<3>()?;
        // §5.9: undefined flag bits are reserved.
        if f & !(exit_flags::DEADLINE_EXPIRED | exit_flags::CORE_DUMPED) != 0 {
            return Err(DecodeError::ReservedNotZero);
        }
        // §5.9: -64 <= code <= 255.
        Self::new(
            code,
            f & exit_flags::DEADLINE_EXPIRED != 0,
            f & exit_flags::CORE_DUMPED != 0,
        )
        .map_err(|_| DecodeError::InvalidValue(Field::ExitCode))
    }
}
