//! How a child tells that its setup failed: the stage byte of its failure report (which call
//! failed) and the exit status it then ends with. Its own module because both ends use them:
//! the child's setup (`identity.rs`, `mod.rs`) names a stage and exits with
//! [`FAILED_STATUS`], the report codec (`report.rs`) writes and reads the stage.

/// Exit status of a child whose setup or exec failed (as shells use for "not found").
pub(crate) const FAILED_STATUS: i32 = 127;

/// Which call of the child's setup failed: the first byte of a failure report. The server
/// reads any stage but [`Stage::Exec`] as `ChildSetupFailed`; the stage only names the call in
/// the message (`report::failure_reply`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Stage {
    /// Signals, fd placement, a pooled child's job: no single call to name.
    Setup = 1,
    /// `execve` (after the `PATH` search): `ExecFailed`.
    Exec = 2,
    /// `chdir` to the requested working directory.
    Chdir = 3,
    /// `setsid` or `setpgid`.
    Session = 4,
    /// `setgroups`.
    Groups = 5,
    /// `setgid`.
    Gid = 6,
    /// `setuid`.
    Uid = 7,
}

impl From<Stage> for u8 {
    fn from(s: Stage) -> u8 {
        s as u8
    }
}

impl Stage {
    /// The stage a report's first byte names; an unknown byte is [`Stage::Setup`].
    pub(crate) fn from_byte(b: u8) -> Self {
        match b {
            2 => Self::Exec,
            3 => Self::Chdir,
            4 => Self::Session,
            5 => Self::Groups,
            6 => Self::Gid,
            7 => Self::Uid,
            _ => Self::Setup,
        }
    }
}
