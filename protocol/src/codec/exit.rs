//! `Exit` (0x21), server → client: the child has ended and been reaped (PROTOCOL.md §5.9),
//! with its resource usage when the request set `WANT_RUSAGE` (rev 0.6).
//!
//! ```text
//! code (i32) | flags (u8) | reserved (3) | [user_us u64, system_us u64, maxrss_kib u64]
//! ```
//!
//! The usage fields are present exactly when `flags` has `USAGE`: an 8-byte body without,
//! 32 bytes with.

use super::messages::Body;
use super::wire::{Reader, Sink};
use crate::error::{BuildError, DecodeError, Field};
use crate::MAX_SIGNAL;

/// `Exit.flags` bits.
pub mod exit_flags {
    /// The server killed the child because its deadline expired.
    pub const DEADLINE_EXPIRED: u8 = 1 << 0;
    /// The child dumped core (`WCOREDUMP`).
    pub const CORE_DUMPED: u8 = 1 << 1;
    /// The resource usage follows the flags (rev 0.6; the request set `WANT_RUSAGE`).
    pub const USAGE: u8 = 1 << 2;
    /// Every defined bit; the others are reserved.
    pub const ALL: u8 = DEADLINE_EXPIRED | CORE_DUMPED | USAGE;
}

/// What a child used, as `wait4(2)` reports it in its `struct rusage` (PROTOCOL.md §5.9, rev
/// 0.6). Every value is valid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResourceUsage {
    /// User CPU time, in microseconds (`ru_utime`).
    pub user_us: u64,
    /// System CPU time, in microseconds (`ru_stime`).
    pub system_us: u64,
    /// Peak resident set size, in KiB (`ru_maxrss`).
    pub maxrss_kib: u64,
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
    usage: Option<ResourceUsage>,
}

impl Exit {
    /// An `Exit` without resource usage ([`Exit::with_usage`] adds it).
    ///
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
            usage: None,
        })
    }

    /// The same exit, carrying `usage` (the `USAGE` flag and its fields, rev 0.6) or not.
    pub fn with_usage(mut self, usage: Option<ResourceUsage>) -> Self {
        self.usage = usage;
        self
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

    /// The child's resource usage, when the request asked for it (rev 0.6).
    pub fn usage(&self) -> Option<ResourceUsage> {
        self.usage
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
        if self.usage.is_some() {
            f |= exit_flags::USAGE;
        }
        out.put_u8(f);
        out.put_slice(&[0; 3]);
        if let Some(u) = &self.usage {
            out.put_u64_le(u.user_us);
            out.put_u64_le(u.system_us);
            out.put_u64_le(u.maxrss_kib);
        }
    }

    fn decode(r: &mut Reader<'_>, _nfds: u16) -> Result<Self, DecodeError> {
        let code = r.i32()?;
        let f = r.u8()?;
        // §5.9 check 1: the reserved bytes are zero.
        r.reserved::<3>()?;
        // §5.9 check 2: undefined flag bits are reserved.
        if f & !exit_flags::ALL != 0 {
            return Err(DecodeError::ReservedNotZero);
        }
        // §5.9 check 3: -64 <= code <= 255.
        let exit = Self::new(
            code,
            f & exit_flags::DEADLINE_EXPIRED != 0,
            f & exit_flags::CORE_DUMPED != 0,
        )
        .map_err(|_| DecodeError::InvalidValue(Field::ExitCode))?;
        // §5.9 check 4: with USAGE, the three usage fields follow (`Truncated` if absent);
        // without it the body ends here (`TrailingBytes` otherwise, checked by the caller).
        if f & exit_flags::USAGE == 0 {
            return Ok(exit);
        }
        let usage = ResourceUsage {
            user_us: r.u64()?,
            system_us: r.u64()?,
            maxrss_kib: r.u64()?,
        };
        Ok(exit.with_usage(Some(usage)))
    }
}
