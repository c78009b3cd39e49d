//! [`ExitStatus`]: how a child ended, as the server's `Exit` message reports it.

use std::fmt;

use std::time::Duration;

use forkserver_protocol::Exit;

/// How a child ended: its exit code, or the signal that killed it.
///
/// The server reaps the child and sends a signed code (PROTOCOL.md §5.9), as CPython's
/// `os.waitstatus_to_exitcode` does: `0..=255` is an exit status, `-64..=-1` is minus the number
/// of the signal that killed the child.
///
/// ```
/// use forkserver_client::ExitStatus;
/// use forkserver_protocol::Exit;
///
/// let killed = ExitStatus::from(Exit::new(-9, false, false).unwrap());
/// assert_eq!(killed.code(), None);
/// assert_eq!(killed.signal(), Some(9));
/// assert_eq!(killed.to_string(), "signal: 9 (SIGKILL)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExitStatus {
    code: i32,
    deadline_expired: bool,
    core_dumped: bool,
    usage: Option<ResourceUsage>,
}

/// What a child used, as the server's `wait4(2)` saw it (PROTOCOL.md §5.9, rev 0.6): asked for
/// with `resource_usage(true)` on [`crate::Command`] or [`crate::Call`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResourceUsage {
    user: Duration,
    system: Duration,
    maxrss_kib: u64,
}

impl ResourceUsage {
    /// CPU time spent in user mode (`ru_utime`).
    pub fn user_time(&self) -> Duration {
        self.user
    }

    /// CPU time spent in the kernel (`ru_stime`).
    pub fn system_time(&self) -> Duration {
        self.system
    }

    /// Peak resident set size, in KiB (`ru_maxrss`).
    pub fn max_rss_kib(&self) -> u64 {
        self.maxrss_kib
    }
}

impl From<forkserver_protocol::ResourceUsage> for ResourceUsage {
    fn from(u: forkserver_protocol::ResourceUsage) -> Self {
        Self {
            user: Duration::from_micros(u.user_us),
            system: Duration::from_micros(u.system_us),
            maxrss_kib: u.maxrss_kib,
        }
    }
}

impl ExitStatus {
    /// The child's resource usage, when the request asked for it (`resource_usage(true)`)
    /// and the child was reaped by the server; `None` otherwise.
    pub fn resource_usage(&self) -> Option<ResourceUsage> {
        self.usage
    }

    /// The exit status (`0..=255`) if the child exited; `None` if a signal killed it.
    pub fn code(&self) -> Option<i32> {
        (self.code >= 0).then_some(self.code)
    }

    /// The number of the signal that killed the child; `None` if it exited.
    pub fn signal(&self) -> Option<i32> {
        (self.code < 0).then_some(-self.code)
    }

    /// The signed code as the server sent it: the exit status, or minus the signal number.
    pub fn raw_code(&self) -> i32 {
        self.code
    }

    /// Whether the child exited with status 0.
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// Whether the server killed the child because its deadline expired.
    pub fn deadline_expired(&self) -> bool {
        self.deadline_expired
    }

    /// Whether the child dumped core.
    pub fn core_dumped(&self) -> bool {
        self.core_dumped
    }

    /// The same status as a [`std::process::ExitStatus`] (rebuilt as a `wait(2)` status), for
    /// code written against std. The deadline flag is lost.
    pub fn to_std(&self) -> std::process::ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        let raw = match self.signal() {
            Some(sig) => sig | if self.core_dumped { 0x80 } else { 0 },
            None => self.code << 8,
        };
        std::process::ExitStatus::from_raw(raw)
    }
}

impl From<Exit> for ExitStatus {
    fn from(e: Exit) -> Self {
        Self {
            code: e.code(),
            deadline_expired: e.deadline_expired(),
            core_dumped: e.core_dumped(),
            usage: e.usage().map(ResourceUsage::from),
        }
    }
}

impl fmt::Display for ExitStatus {
    /// As std's: `exit status: 3`, `signal: 9 (SIGKILL)`, with ` (core dumped)` and
    /// ` (deadline expired)` appended when they apply.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.signal() {
            None => write!(f, "exit status: {}", self.code)?,
            Some(sig) => {
                write!(f, "signal: {sig}")?;
                if let Ok(s) = nix::sys::signal::Signal::try_from(sig) {
                    write!(f, " ({})", s.as_str())?;
                }
            }
        }
        if self.core_dumped {
            f.write_str(" (core dumped)")?;
        }
        if self.deadline_expired {
            f.write_str(" (deadline expired)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: i32, deadline: bool, core: bool) -> ExitStatus {
        Exit::new(code, deadline, core).unwrap().into()
    }

    #[test]
    fn exited() {
        let s = status(3, false, false);
        assert_eq!(s.code(), Some(3));
        assert_eq!(s.signal(), None);
        assert_eq!(s.raw_code(), 3);
        assert!(!s.success());
        assert_eq!(s.to_string(), "exit status: 3");
        assert_eq!(s.to_string(), s.to_std().to_string());
        assert_eq!(s.to_std().code(), Some(3));
        assert!(status(0, false, false).success());
        assert_eq!(status(255, false, false).code(), Some(255));
    }

    #[test]
    fn signaled() {
        use std::os::unix::process::ExitStatusExt;
        let s = status(-9, true, false);
        assert_eq!(s.code(), None);
        assert_eq!(s.signal(), Some(9));
        assert_eq!(s.raw_code(), -9);
        assert!(!s.success());
        assert!(s.deadline_expired());
        assert!(!s.core_dumped());
        assert_eq!(s.to_string(), "signal: 9 (SIGKILL) (deadline expired)");
        assert_eq!(s.to_std().signal(), Some(9));

        let core = status(-11, false, true);
        assert!(core.core_dumped());
        assert_eq!(core.to_string(), "signal: 11 (SIGSEGV) (core dumped)");
        assert_eq!(core.to_string(), core.to_std().to_string());
        assert!(core.to_std().core_dumped());

        // A real-time signal has no name in nix.
        assert_eq!(status(-40, false, false).to_string(), "signal: 40");
        assert_eq!(status(-64, false, false).signal(), Some(64));
    }
}
