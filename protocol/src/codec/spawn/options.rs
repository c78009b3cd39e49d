//! The options of a `Spawn`: its flag word and the optional fields that flags announce
//! (PROTOCOL.md §5.5.1, rev 0.5 for bits 6-10).
//!
//! ```text
//! flags (u32) | deadline_ms (u64) | targets ... | [uid u32] [gid u32] [ngroups u16, gid u32 x n]
//!                                                 [pgid u32] | job_kind | job body ...
//! ```
//!
//! The optional fields sit between the fd targets and `job_kind`, in the order of their bits,
//! each present exactly when its bit is set. `ENV_REMOVE` announces a field of the exec job
//! body (`job.rs`).

use bytes::BufMut;

use crate::codec::wire::Reader;
use crate::error::{BuildError, DecodeError, Field, Limit};
use crate::{MAX_GROUPS, MAX_PGID};

/// Spawn flag bits (PROTOCOL.md §5.5.1).
pub mod flags {
    /// The child calls `setsid()`: a new session and process group.
    pub const NEW_SESSION: u32 = 1 << 0;
    /// The child calls `setpgid(0, 0)`: a new process group in the server's session.
    pub const NEW_PROCESS_GROUP: u32 = 1 << 1;
    /// The `Pid` reply carries a pidfd for the child.
    pub const WANT_PIDFD: u32 = 1 << 2;
    /// Exec jobs only: reply `Pid` once `execve` has succeeded, or `Error` if it failed.
    pub const PID_AFTER_EXEC: u32 = 1 << 3;
    /// The server sends `SIGKILL` to the child when the client's connection ends first.
    pub const KILL_ON_DISCONNECT: u32 = 1 << 4;
    /// After the child's final report the connection returns to READY for another request,
    /// instead of being closed (PROTOCOL.md §6.1, rev 0.3).
    pub const KEEP_CONNECTION: u32 = 1 << 5;
    /// The body carries `uid`: the child calls `setuid(uid)` (rev 0.5).
    pub const SET_UID: u32 = 1 << 6;
    /// The body carries `gid`: the child calls `setgid(gid)` (rev 0.5).
    pub const SET_GID: u32 = 1 << 7;
    /// The body carries the supplementary groups: the child calls `setgroups` (rev 0.5).
    pub const SET_GROUPS: u32 = 1 << 8;
    /// The body carries `pgid`: the child calls `setpgid(0, pgid)` (rev 0.5).
    pub const JOIN_PROCESS_GROUP: u32 = 1 << 9;
    /// Exec jobs only: the job body carries names to remove from the inherited environment
    /// (rev 0.5).
    pub const ENV_REMOVE: u32 = 1 << 10;
    /// Every defined bit; the others are reserved and MUST be zero.
    pub const ALL: u32 = NEW_SESSION
        | NEW_PROCESS_GROUP
        | WANT_PIDFD
        | PID_AFTER_EXEC
        | KILL_ON_DISCONNECT
        | KEEP_CONNECTION
        | SET_UID
        | SET_GID
        | SET_GROUPS
        | JOIN_PROCESS_GROUP
        | ENV_REMOVE;
    /// The bits that choose the child's session or process group; at most one may be set.
    pub const SESSION_BITS: u32 = NEW_SESSION | NEW_PROCESS_GROUP | JOIN_PROCESS_GROUP;
}

/// Which session and process group the child lives in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Session {
    /// The server's session and process group.
    #[default]
    Inherit,
    /// A new process group (`setpgid(0, 0)`) in the server's session.
    NewProcessGroup,
    /// A new session (`setsid()`), which is also a new process group.
    NewSession,
    /// The existing process group `pgid` (`setpgid(0, pgid)`), in `1..=`[`MAX_PGID`]; it must
    /// be in the server's session (the kernel says `EPERM` otherwise). Rev 0.5.
    JoinProcessGroup(u32),
}

/// Supplementary groups: at most [`MAX_GROUPS`] gids, none of them `(gid_t) -1`. `Copy`, so
/// that [`SpawnOptions`] stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Groups {
    gids: [u32; MAX_GROUPS],
    len: u8,
}

impl Groups {
    /// # Errors
    /// [`BuildError::LimitExceeded`] past [`MAX_GROUPS`] gids, [`BuildError::InvalidValue`]
    /// ([`Field::Gid`]) for `u32::MAX`.
    pub fn new(gids: &[u32]) -> Result<Self, BuildError> {
        if gids.len() > MAX_GROUPS {
            return Err(BuildError::limit(Limit::Groups, gids.len()));
        }
        if gids.contains(&u32::MAX) {
            return Err(BuildError::InvalidValue(Field::Gid));
        }
        let mut g = Self {
            gids: [0; MAX_GROUPS],
            len: gids.len() as u8,
        };
        g.gids[..gids.len()].copy_from_slice(gids);
        Ok(g)
    }

    /// The gids, in order.
    pub fn as_slice(&self) -> &[u32] {
        &self.gids[..usize::from(self.len)]
    }
}

impl Default for Groups {
    fn default() -> Self {
        Self {
            gids: [0; MAX_GROUPS],
            len: 0,
        }
    }
}

impl core::fmt::Debug for Groups {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// The credentials the child takes before its job runs (rev 0.5). Each part is optional, as
/// with `std::os::unix::process::CommandExt::{uid, gid, groups}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// `setuid(uid)`, last. Not `u32::MAX`.
    pub uid: Option<u32>,
    /// `setgid(gid)`. Not `u32::MAX`.
    pub gid: Option<u32>,
    /// `setgroups(groups)`; an empty list drops every supplementary group.
    pub groups: Option<Groups>,
}

/// The options of a spawn request. [`super::Spawn::new`] checks the values the types cannot
/// (the pgid's range, `u32::MAX` as an id).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SpawnOptions {
    /// Session and process group of the child.
    pub session: Session,
    /// Ask for a pidfd with the `Pid` reply.
    pub want_pidfd: bool,
    /// Exec jobs: reply `Pid` only once `execve` succeeded (as `std::process::Command::spawn`
    /// does), instead of right after `fork`. Ignored for entry jobs.
    pub pid_after_exec: bool,
    /// Kill the child when the connection ends before the child does.
    pub kill_on_disconnect: bool,
    /// Keep the connection open after the child's final report (`Exit`, or an `Error` with
    /// code `ExecFailed`/`ChildSetupFailed`): it returns to READY and can carry the next
    /// request, saving the connection setup and the handshake.
    pub keep_connection: bool,
    /// Milliseconds after the fork when the server kills the child with `SIGKILL`; `None` for
    /// no deadline (encoded as 0).
    pub deadline_ms: Option<core::num::NonZeroU64>,
    /// uid, gid and supplementary groups of the child; by default the server's.
    pub credentials: Credentials,
}

impl SpawnOptions {
    /// The checks the field types leave open (PROTOCOL.md §5.5.1).
    pub(crate) fn check(&self) -> Result<(), BuildError> {
        if let Session::JoinProcessGroup(pgid) = self.session {
            if pgid == 0 || pgid > MAX_PGID {
                return Err(BuildError::InvalidValue(Field::Pgid));
            }
        }
        if self.credentials.uid == Some(u32::MAX) {
            return Err(BuildError::InvalidValue(Field::Uid));
        }
        if self.credentials.gid == Some(u32::MAX) {
            return Err(BuildError::InvalidValue(Field::Gid));
        }
        Ok(())
    }

    /// The flag word, without `ENV_REMOVE` (which the job decides).
    pub(crate) fn flags(&self) -> u32 {
        let mut f = match self.session {
            Session::Inherit => 0,
            Session::NewProcessGroup => flags::NEW_PROCESS_GROUP,
            Session::NewSession => flags::NEW_SESSION,
            Session::JoinProcessGroup(_) => flags::JOIN_PROCESS_GROUP,
        };
        let bits = [
            (self.want_pidfd, flags::WANT_PIDFD),
            (self.pid_after_exec, flags::PID_AFTER_EXEC),
            (self.kill_on_disconnect, flags::KILL_ON_DISCONNECT),
            (self.keep_connection, flags::KEEP_CONNECTION),
            (self.credentials.uid.is_some(), flags::SET_UID),
            (self.credentials.gid.is_some(), flags::SET_GID),
            (self.credentials.groups.is_some(), flags::SET_GROUPS),
        ];
        for (on, bit) in bits {
            if on {
                f |= bit;
            }
        }
        f
    }

    /// Length of the optional fields between the targets and `job_kind`.
    pub(crate) fn fields_len(&self) -> usize {
        let c = &self.credentials;
        c.uid.map_or(0, |_| 4)
            + c.gid.map_or(0, |_| 4)
            + c.groups.map_or(0, |g| 2 + 4 * g.as_slice().len())
            + match self.session {
                Session::JoinProcessGroup(_) => 4,
                _ => 0,
            }
    }

    /// Writes the optional fields, in the order of their bits.
    pub(crate) fn encode_fields(&self, out: &mut impl BufMut) {
        let c = &self.credentials;
        if let Some(uid) = c.uid {
            out.put_u32_le(uid);
        }
        if let Some(gid) = c.gid {
            out.put_u32_le(gid);
        }
        if let Some(g) = &c.groups {
            out.put_u16_le(g.as_slice().len() as u16);
            for gid in g.as_slice() {
                out.put_u32_le(*gid);
            }
        }
        if let Session::JoinProcessGroup(pgid) = self.session {
            out.put_u32_le(pgid);
        }
    }

    /// The flag checks of §5.5.1 (steps 1-2): everything but the optional fields, which
    /// [`SpawnOptions::decode_fields`] reads after the targets.
    pub(crate) fn from_wire(f: u32, deadline_ms: u64) -> Result<Self, DecodeError> {
        // §5.5.1 check 1: undefined flag bits are reserved and MUST be zero.
        if f & !flags::ALL != 0 {
            return Err(DecodeError::ReservedNotZero);
        }
        // §5.5.1 check 2: at most one of NEW_SESSION, NEW_PROCESS_GROUP, JOIN_PROCESS_GROUP.
        let session = match f & flags::SESSION_BITS {
            0 => Session::Inherit,
            flags::NEW_PROCESS_GROUP => Session::NewProcessGroup,
            flags::NEW_SESSION => Session::NewSession,
            // The pgid is read with the other optional fields.
            flags::JOIN_PROCESS_GROUP => Session::JoinProcessGroup(0),
            _ => return Err(DecodeError::InvalidValue(Field::SpawnFlags)),
        };
        Ok(Self {
            session,
            want_pidfd: f & flags::WANT_PIDFD != 0,
            pid_after_exec: f & flags::PID_AFTER_EXEC != 0,
            kill_on_disconnect: f & flags::KILL_ON_DISCONNECT != 0,
            keep_connection: f & flags::KEEP_CONNECTION != 0,
            deadline_ms: core::num::NonZeroU64::new(deadline_ms),
            credentials: Credentials::default(),
        })
    }

    /// Reads the optional fields that the flags `f` announce (§5.5.1 check 4).
    pub(crate) fn decode_fields(&mut self, f: u32, r: &mut Reader<'_>) -> Result<(), DecodeError> {
        let id = |r: &mut Reader<'_>, field| match r.u32()? {
            // §5.5.1: (uid_t) -1 and (gid_t) -1 are not ids.
            u32::MAX => Err(DecodeError::InvalidValue(field)),
            v => Ok(v),
        };
        if f & flags::SET_UID != 0 {
            self.credentials.uid = Some(id(r, Field::Uid)?);
        }
        if f & flags::SET_GID != 0 {
            self.credentials.gid = Some(id(r, Field::Gid)?);
        }
        if f & flags::SET_GROUPS != 0 {
            let n = usize::from(r.u16()?);
            // §5.5.1: ngroups <= MAX_GROUPS, and the gids are present, before any is read.
            if n > MAX_GROUPS {
                return Err(DecodeError::LimitExceeded(Limit::Groups));
            }
            if r.remaining() < 4 * n {
                return Err(DecodeError::Truncated);
            }
            let mut g = Groups {
                gids: [0; MAX_GROUPS],
                len: n as u8,
            };
            for slot in &mut g.gids[..n] {
                *slot = id(r, Field::Gid)?;
            }
            self.credentials.groups = Some(g);
        }
        if f & flags::JOIN_PROCESS_GROUP != 0 {
            let pgid = r.u32()?;
            // §5.5.1: 1 <= pgid <= 2^31 - 1.
            if pgid == 0 || pgid > MAX_PGID {
                return Err(DecodeError::InvalidValue(Field::Pgid));
            }
            self.session = Session::JoinProcessGroup(pgid);
        }
        Ok(())
    }
}
