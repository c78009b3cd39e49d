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
pub(crate) enum Stage {
    /// Signals, fd placement, a pooled child's job: no single call to name.
    Setup,
    /// `execve` (after the `PATH` search): `ExecFailed`.
    Exec,
    /// `chdir` to the requested working directory.
    Chdir,
    /// `setsid` or `setpgid`.
    Session,
    /// `setgroups`.
    Groups,
    /// `setgid`.
    Gid,
    /// `setuid`.
    Uid,
    /// `setpriority` (rev 0.6).
    Nice,
    /// The write of `/proc/self/oom_score_adj` (rev 0.6).
    OomScoreAdj,
    /// `prctl(PR_SET_NO_NEW_PRIVS)` (rev 0.6).
    NoNewPrivs,
    /// `landlock_restrict_self` (rev 0.6).
    Landlock,
    /// `seccomp(SECCOMP_SET_MODE_FILTER)` (rev 0.6).
    Seccomp,
    /// `prlimit64` of the `SET_RLIMITS` entry at this index (0..16, rev 0.6).
    Rlimit(u8),
}

/// The families of setup stages that `Metrics` counts failures by (PROTOCOL.md §5.16: the
/// `setup_failed_*` counters), and logs name as `stage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StageFamily {
    /// Signals, fd placement, a pooled child's job.
    Setup,
    /// `setsid`, `setpgid`.
    Session,
    /// `prlimit64`, `setpriority`, `oom_score_adj`.
    Limits,
    /// `setgroups`, `setgid`, `setuid`.
    Credentials,
    /// `PR_SET_NO_NEW_PRIVS` and the filters after it.
    Sandbox,
    /// `chdir`.
    Chdir,
}

impl StageFamily {
    /// Its name: the suffix of its `setup_failed_*` counter.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Setup => "setup",
            Self::Session => "session",
            Self::Limits => "limits",
            Self::Credentials => "credentials",
            Self::Sandbox => "sandbox",
            Self::Chdir => "chdir",
        }
    }
}

impl Stage {
    /// The family a failure at this stage is counted under; `None` for [`Stage::Exec`], which
    /// is not a setup failure (`ExecFailed`).
    pub(crate) fn family(self) -> Option<StageFamily> {
        Some(match self {
            Stage::Exec => return None,
            Stage::Setup => StageFamily::Setup,
            Stage::Session => StageFamily::Session,
            Stage::Rlimit(_) | Stage::Nice | Stage::OomScoreAdj => StageFamily::Limits,
            Stage::Groups | Stage::Gid | Stage::Uid => StageFamily::Credentials,
            Stage::NoNewPrivs | Stage::Landlock | Stage::Seccomp => StageFamily::Sandbox,
            Stage::Chdir => StageFamily::Chdir,
        })
    }
}

impl Stage {
    /// Every stage but the resource limits' (`Rlimit(i)`, one per `SET_RLIMITS` entry): what
    /// tests walk, so that a new stage is not left out of them.
    #[cfg(test)]
    pub(crate) const FIXED: [Stage; 12] = [
        Stage::Setup,
        Stage::Exec,
        Stage::Chdir,
        Stage::Session,
        Stage::Groups,
        Stage::Gid,
        Stage::Uid,
        Stage::Nice,
        Stage::OomScoreAdj,
        Stage::NoNewPrivs,
        Stage::Landlock,
        Stage::Seccomp,
    ];
}

/// The first stage byte of [`Stage::Rlimit`]: entry `i` is `RLIMIT_BASE + i`.
const RLIMIT_BASE: u8 = 32;

impl From<Stage> for u8 {
    fn from(s: Stage) -> u8 {
        match s {
            Stage::Setup => 1,
            Stage::Exec => 2,
            Stage::Chdir => 3,
            Stage::Session => 4,
            Stage::Groups => 5,
            Stage::Gid => 6,
            Stage::Uid => 7,
            Stage::Nice => 8,
            Stage::OomScoreAdj => 9,
            Stage::NoNewPrivs => 10,
            Stage::Landlock => 11,
            Stage::Seccomp => 12,
            Stage::Rlimit(i) => RLIMIT_BASE + (i % forkserver_protocol::MAX_RLIMITS as u8),
        }
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
            8 => Self::Nice,
            9 => Self::OomScoreAdj,
            10 => Self::NoNewPrivs,
            11 => Self::Landlock,
            12 => Self::Seccomp,
            b if (RLIMIT_BASE..RLIMIT_BASE + forkserver_protocol::MAX_RLIMITS as u8)
                .contains(&b) =>
            {
                Self::Rlimit(b - RLIMIT_BASE)
            }
            _ => Self::Setup,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Stage;

    /// A stage added to the enum stops this from compiling until it is named here: a reminder
    /// to add it to [`Stage::FIXED`] too.
    #[allow(dead_code)]
    fn fixed_names_every_variant(s: Stage) {
        match s {
            Stage::Setup
            | Stage::Exec
            | Stage::Chdir
            | Stage::Session
            | Stage::Groups
            | Stage::Gid
            | Stage::Uid
            | Stage::Nice
            | Stage::OomScoreAdj
            | Stage::NoNewPrivs
            | Stage::Landlock
            | Stage::Seccomp
            | Stage::Rlimit(_) => {}
        }
    }

    #[test]
    fn every_stage_round_trips_through_its_byte() {
        let mut all = Stage::FIXED.to_vec();
        all.extend((0..forkserver_protocol::MAX_RLIMITS as u8).map(Stage::Rlimit));
        for s in all {
            assert_eq!(Stage::from_byte(u8::from(s)), s);
        }
        // Bytes no stage uses are setup failures.
        for b in [0, 13, 31, 48, 255] {
            assert_eq!(Stage::from_byte(b), Stage::Setup, "{b}");
        }
    }
}
