//! `Spawn` (0x10), client → server: fork a child that runs a job with an fd bundle
//! (PROTOCOL.md §5.5).
//!
//! ```text
//! +---------------+-------------------+------------------------+----------+-----------~
//! | flags (u32)   | deadline_ms (u64) | target fd (u32) x nfds | job_kind | job body...
//! +---------------+-------------------+------------------------+----------+-----------~
//! ```

use bytes::BufMut;

use super::messages::Body;
use super::wire::{put_bytes16, put_bytes32, Reader};
use crate::error::{BuildError, DecodeError, Field, Limit};
use crate::{
    MAX_ARGS, MAX_ARG_LEN, MAX_BODY_LEN, MAX_ENTRY_NAME_LEN, MAX_ENV, MAX_FDS, MAX_PATH_LEN,
    MAX_TARGET_FD,
};

/// Spawn flag bits (PROTOCOL.md §5.5, table "flags").
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
    /// Every defined bit; the others are reserved and MUST be zero.
    pub const ALL: u32 = NEW_SESSION
        | NEW_PROCESS_GROUP
        | WANT_PIDFD
        | PID_AFTER_EXEC
        | KILL_ON_DISCONNECT
        | KEEP_CONNECTION;
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
}

/// The options of a spawn request. Every combination of values is valid.
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
}

impl SpawnOptions {
    fn flags(&self) -> u32 {
        let mut f = match self.session {
            Session::Inherit => 0,
            Session::NewProcessGroup => flags::NEW_PROCESS_GROUP,
            Session::NewSession => flags::NEW_SESSION,
        };
        if self.want_pidfd {
            f |= flags::WANT_PIDFD;
        }
        if self.pid_after_exec {
            f |= flags::PID_AFTER_EXEC;
        }
        if self.kill_on_disconnect {
            f |= flags::KILL_ON_DISCONNECT;
        }
        if self.keep_connection {
            f |= flags::KEEP_CONNECTION;
        }
        f
    }

    fn from_wire(f: u32, deadline_ms: u64) -> Result<Self, DecodeError> {
        // §5.5: undefined flag bits are reserved and MUST be zero.
        if f & !flags::ALL != 0 {
            return Err(DecodeError::ReservedNotZero);
        }
        let session = match (
            f & flags::NEW_SESSION != 0,
            f & flags::NEW_PROCESS_GROUP != 0,
        ) {
            (false, false) => Session::Inherit,
            (false, true) => Session::NewProcessGroup,
            (true, false) => Session::NewSession,
            // §5.5: NEW_SESSION and NEW_PROCESS_GROUP are exclusive.
            (true, true) => return Err(DecodeError::InvalidValue(Field::SpawnFlags)),
        };
        Ok(Self {
            session,
            want_pidfd: f & flags::WANT_PIDFD != 0,
            pid_after_exec: f & flags::PID_AFTER_EXEC != 0,
            kill_on_disconnect: f & flags::KILL_ON_DISCONNECT != 0,
            keep_connection: f & flags::KEEP_CONNECTION != 0,
            deadline_ms: core::num::NonZeroU64::new(deadline_ms),
        })
    }
}

/// The fd map of a spawn: for the i-th fd that travels with the frame, the fd number it gets in
/// the child. At most [`MAX_FDS`] entries, each at most [`MAX_TARGET_FD`], no two alike.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FdMap {
    targets: Vec<u32>,
}

impl FdMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// # Errors
    /// [`BuildError::TooManyFds`] past [`MAX_FDS`] entries, [`BuildError::DuplicateTarget`] if
    /// two entries are equal, [`BuildError::LimitExceeded`] for a target above [`MAX_TARGET_FD`].
    pub fn from_targets(targets: Vec<u32>) -> Result<Self, BuildError> {
        let mut map = Self {
            targets: Vec::with_capacity(targets.len().min(MAX_FDS)),
        };
        for t in targets {
            map.push(t)?;
        }
        Ok(map)
    }

    /// Appends a target.
    ///
    /// # Errors
    /// As [`FdMap::from_targets`]; the map is unchanged on error.
    pub fn push(&mut self, target: u32) -> Result<(), BuildError> {
        if self.targets.len() >= MAX_FDS {
            return Err(BuildError::TooManyFds(self.targets.len() + 1));
        }
        if target > MAX_TARGET_FD {
            return Err(BuildError::LimitExceeded(Limit::TargetFd));
        }
        if self.targets.contains(&target) {
            return Err(BuildError::DuplicateTarget(target));
        }
        self.targets.push(target);
        Ok(())
    }

    /// The targets, in the order the fds travel.
    pub fn targets(&self) -> &[u32] {
        &self.targets
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True when no fd travels.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    fn decode(r: &mut Reader<'_>, nfds: u16) -> Result<Self, DecodeError> {
        // nfds <= MAX_FDS was checked with the header; each entry costs 4 body bytes, so the
        // allocation is bounded by both.
        let n = usize::from(nfds);
        if r.remaining() < 4 * n {
            return Err(DecodeError::Truncated);
        }
        let mut targets = Vec::with_capacity(n);
        for _ in 0..n {
            let t = r.u32()?;
            // §5.5: a target fd is at most MAX_TARGET_FD.
            if t > MAX_TARGET_FD {
                return Err(DecodeError::LimitExceeded(Limit::TargetFd));
            }
            // §5.5: no two entries name the same target.
            if targets.contains(&t) {
                return Err(DecodeError::DuplicateTarget(t));
            }
            targets.push(t);
        }
        Ok(Self { targets })
    }
}

/// A registered entry point of a zygote server, by name, with an opaque payload.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EntryJob {
    name: String,
    payload: Vec<u8>,
}

impl EntryJob {
    /// # Errors
    /// [`BuildError::InvalidValue`] for an empty name, [`BuildError::LimitExceeded`] for a name
    /// over [`MAX_ENTRY_NAME_LEN`] bytes or a payload over [`MAX_BODY_LEN`].
    pub fn new(name: impl Into<String>, payload: impl Into<Vec<u8>>) -> Result<Self, BuildError> {
        let name = name.into();
        let payload = payload.into();
        if name.is_empty() {
            return Err(BuildError::InvalidValue(Field::EntryName));
        }
        if name.len() > MAX_ENTRY_NAME_LEN {
            return Err(BuildError::LimitExceeded(Limit::EntryName));
        }
        if payload.len() > MAX_BODY_LEN {
            return Err(BuildError::LimitExceeded(Limit::Body));
        }
        Ok(Self { name, payload })
    }

    /// The entry point's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The payload handed to the entry point.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    fn body_len(&self) -> usize {
        2 + self.name.len() + 4 + self.payload.len()
    }

    fn encode(&self, out: &mut impl BufMut) {
        put_bytes16(out, self.name.as_bytes());
        put_bytes32(out, &self.payload);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let name = r.bytes16(MAX_ENTRY_NAME_LEN, Limit::EntryName)?;
        let name = core::str::from_utf8(name)
            .ok()
            .filter(|n| !n.is_empty())
            .ok_or(DecodeError::InvalidValue(Field::EntryName))?;
        let payload = r.bytes32(MAX_BODY_LEN, Limit::Body)?;
        Ok(Self {
            name: name.to_owned(),
            payload: payload.to_vec(),
        })
    }
}

/// An `execve` of a program: path, argv, environment and working directory, all as bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExecJob {
    program: Vec<u8>,
    args: Vec<Vec<u8>>,
    env_clear: bool,
    env: Vec<(Vec<u8>, Vec<u8>)>,
    cwd: Option<Vec<u8>>,
}

fn check_no_nul(b: &[u8], field: Field) -> Result<(), BuildError> {
    if b.contains(&0) {
        Err(BuildError::InvalidValue(field))
    } else {
        Ok(())
    }
}

impl ExecJob {
    /// Runs `program`, with `argv[0]` set to `program`. A program without a `/` is searched in
    /// the child's `PATH`, as `execvp` does.
    ///
    /// # Errors
    /// [`BuildError::InvalidValue`] for an empty path or one holding a NUL byte,
    /// [`BuildError::LimitExceeded`] for a path over [`MAX_PATH_LEN`] bytes.
    pub fn new(program: impl Into<Vec<u8>>) -> Result<Self, BuildError> {
        let program = program.into();
        if program.is_empty() {
            return Err(BuildError::InvalidValue(Field::Program));
        }
        check_no_nul(&program, Field::Program)?;
        if program.len() > MAX_PATH_LEN {
            return Err(BuildError::LimitExceeded(Limit::PathLen));
        }
        let arg0 = program.clone();
        let mut job = Self {
            program,
            args: Vec::new(),
            env_clear: false,
            env: Vec::new(),
            cwd: None,
        };
        job.push_arg(arg0)?;
        Ok(job)
    }

    /// Appends an argument.
    ///
    /// # Errors
    /// [`BuildError::InvalidValue`] if it holds a NUL byte, [`BuildError::LimitExceeded`] past
    /// [`MAX_ARGS`] arguments or [`MAX_ARG_LEN`] bytes.
    pub fn push_arg(&mut self, arg: impl Into<Vec<u8>>) -> Result<(), BuildError> {
        let arg = arg.into();
        check_no_nul(&arg, Field::Arg)?;
        if arg.len() > MAX_ARG_LEN {
            return Err(BuildError::LimitExceeded(Limit::ArgLen));
        }
        if self.args.len() >= MAX_ARGS {
            return Err(BuildError::LimitExceeded(Limit::Args));
        }
        self.args.push(arg);
        Ok(())
    }

    /// Replaces `argv[0]` (which [`ExecJob::new`] sets to the program path).
    ///
    /// # Errors
    /// As [`ExecJob::push_arg`].
    pub fn set_arg0(&mut self, arg0: impl Into<Vec<u8>>) -> Result<(), BuildError> {
        let arg0 = arg0.into();
        check_no_nul(&arg0, Field::Arg)?;
        if arg0.len() > MAX_ARG_LEN {
            return Err(BuildError::LimitExceeded(Limit::ArgLen));
        }
        self.args[0] = arg0;
        Ok(())
    }

    /// Sets `key=value` in the child's environment; a later entry for the same key wins.
    ///
    /// # Errors
    /// [`BuildError::InvalidValue`] for an empty key, a key holding `=` or NUL, or a value
    /// holding NUL; [`BuildError::LimitExceeded`] past [`MAX_ENV`] entries or when `key=value`
    /// is over [`MAX_ARG_LEN`] bytes.
    pub fn push_env(
        &mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), BuildError> {
        let (key, value) = (key.into(), value.into());
        if key.is_empty() || key.contains(&b'=') {
            return Err(BuildError::InvalidValue(Field::EnvKey));
        }
        check_no_nul(&key, Field::EnvKey)?;
        check_no_nul(&value, Field::EnvValue)?;
        if key.len() + 1 + value.len() > MAX_ARG_LEN {
            return Err(BuildError::LimitExceeded(Limit::ArgLen));
        }
        if self.env.len() >= MAX_ENV {
            return Err(BuildError::LimitExceeded(Limit::Env));
        }
        self.env.push((key, value));
        Ok(())
    }

    /// Starts the child's environment empty instead of from the server's.
    pub fn set_env_clear(&mut self, clear: bool) {
        self.env_clear = clear;
    }

    /// Sets the child's working directory (`None`: the server's).
    ///
    /// # Errors
    /// [`BuildError::InvalidValue`] for an empty path or one holding NUL,
    /// [`BuildError::LimitExceeded`] over [`MAX_PATH_LEN`] bytes.
    pub fn set_cwd(&mut self, cwd: Option<Vec<u8>>) -> Result<(), BuildError> {
        if let Some(c) = &cwd {
            if c.is_empty() {
                return Err(BuildError::InvalidValue(Field::Cwd));
            }
            check_no_nul(c, Field::Cwd)?;
            if c.len() > MAX_PATH_LEN {
                return Err(BuildError::LimitExceeded(Limit::PathLen));
            }
        }
        self.cwd = cwd;
        Ok(())
    }

    /// The program path.
    pub fn program(&self) -> &[u8] {
        &self.program
    }

    /// argv, `argv[0]` included.
    pub fn args(&self) -> &[Vec<u8>] {
        &self.args
    }

    /// Whether the child's environment starts empty.
    pub fn env_clear(&self) -> bool {
        self.env_clear
    }

    /// Environment entries set on top of the inherited (or empty) environment, in order.
    pub fn env(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.env
    }

    /// The working directory, if one is set.
    pub fn cwd(&self) -> Option<&[u8]> {
        self.cwd.as_deref()
    }

    fn body_len(&self) -> usize {
        2 + self.program.len()
            + 2
            + self.args.iter().map(|a| 4 + a.len()).sum::<usize>()
            + 1
            + 2
            + self
                .env
                .iter()
                .map(|(k, v)| 8 + k.len() + v.len())
                .sum::<usize>()
            + 2
            + self.cwd.as_ref().map_or(0, Vec::len)
    }

    fn encode(&self, out: &mut impl BufMut) {
        put_bytes16(out, &self.program);
        out.put_u16_le(self.args.len() as u16);
        for a in &self.args {
            put_bytes32(out, a);
        }
        out.put_u8(u8::from(self.env_clear));
        out.put_u16_le(self.env.len() as u16);
        for (k, v) in &self.env {
            put_bytes32(out, k);
            put_bytes32(out, v);
        }
        put_bytes16(out, self.cwd.as_deref().unwrap_or_default());
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let invalid = |e: BuildError| match e {
            BuildError::LimitExceeded(l) => DecodeError::LimitExceeded(l),
            BuildError::InvalidValue(f) => DecodeError::InvalidValue(f),
            // Not produced by the ExecJob setters.
            BuildError::TooManyFds(_)
            | BuildError::DuplicateTarget(_)
            | BuildError::FdCountMismatch { .. } => DecodeError::InvalidValue(Field::Arg),
        };
        let program = r.bytes16(MAX_PATH_LEN, Limit::PathLen)?;
        let mut job = ExecJob::new(program).map_err(invalid)?;
        let argc = usize::from(r.u16()?);
        // §5.5: 1 <= argc <= MAX_ARGS.
        if argc == 0 {
            return Err(DecodeError::InvalidValue(Field::Arg));
        }
        if argc > MAX_ARGS {
            return Err(DecodeError::LimitExceeded(Limit::Args));
        }
        job.args.clear();
        for _ in 0..argc {
            let a = r.bytes32(MAX_ARG_LEN, Limit::ArgLen)?;
            if a.contains(&0) {
                return Err(DecodeError::InvalidValue(Field::Arg));
            }
            job.args.push(a.to_vec());
        }
        job.env_clear = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::InvalidValue(Field::Bool)),
        };
        let envc = usize::from(r.u16()?);
        if envc > MAX_ENV {
            return Err(DecodeError::LimitExceeded(Limit::Env));
        }
        for _ in 0..envc {
            let k = r.bytes32(MAX_ARG_LEN, Limit::ArgLen)?;
            let v = r.bytes32(MAX_ARG_LEN, Limit::ArgLen)?;
            job.push_env(k, v).map_err(invalid)?;
        }
        let cwd = r.bytes16(MAX_PATH_LEN, Limit::PathLen)?;
        if !cwd.is_empty() {
            job.set_cwd(Some(cwd.to_vec())).map_err(invalid)?;
        }
        Ok(job)
    }
}

/// What the child runs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Job {
    /// A registered entry point (job kind 1).
    Entry(EntryJob),
    /// An `execve` (job kind 2).
    Exec(ExecJob),
}

impl Job {
    fn body_len(&self) -> usize {
        1 + match self {
            Job::Entry(e) => e.body_len(),
            Job::Exec(e) => e.body_len(),
        }
    }
}

/// `Spawn` (0x10): a validated spawn request. The fds themselves travel beside the frame
/// (see [`crate::OutFrame`]); this message carries their target numbers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Spawn {
    options: SpawnOptions,
    fds: FdMap,
    job: Job,
}

impl Spawn {
    /// # Errors
    /// [`BuildError::LimitExceeded`] with [`Limit::Body`] when the encoded body would exceed
    /// [`MAX_BODY_LEN`]; every other rule is already enforced by the parts' constructors.
    pub fn new(options: SpawnOptions, fds: FdMap, job: Job) -> Result<Self, BuildError> {
        let s = Self { options, fds, job };
        if s.body_len() > MAX_BODY_LEN {
            return Err(BuildError::LimitExceeded(Limit::Body));
        }
        Ok(s)
    }

    /// The options.
    pub fn options(&self) -> &SpawnOptions {
        &self.options
    }

    /// The fd map.
    pub fn fds(&self) -> &FdMap {
        &self.fds
    }

    /// The job.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// Takes the request apart.
    pub fn into_parts(self) -> (SpawnOptions, FdMap, Job) {
        (self.options, self.fds, self.job)
    }

    pub(crate) fn body_len(&self) -> usize {
        4 + 8 + 4 * self.fds.len() + self.job.body_len()
    }
}

impl Body for Spawn {
    fn encode(&self, out: &mut impl BufMut) {
        out.put_u32_le(self.options.flags());
        out.put_u64_le(self.options.deadline_ms.map_or(0, |d| d.get()));
        for t in self.fds.targets() {
            out.put_u32_le(*t);
        }
        match &self.job {
            Job::Entry(e) => {
                out.put_u8(1);
                e.encode(out);
            }
            Job::Exec(e) => {
                out.put_u8(2);
                e.encode(out);
            }
        }
    }

    fn decode(r: &mut Reader<'_>, nfds: u16) -> Result<Self, DecodeError> {
        let f = r.u32()?;
        let deadline = r.u64()?;
        let options = SpawnOptions::from_wire(f, deadline)?;
        let fds = FdMap::decode(r, nfds)?;
        let job = match r.u8()? {
            1 => Job::Entry(EntryJob::decode(r)?),
            2 => Job::Exec(ExecJob::decode(r)?),
            _ => return Err(DecodeError::InvalidValue(Field::JobKind)),
        };
        Ok(Self { options, fds, job })
    }

    fn fd_count(&self) -> usize {
        self.fds.len()
    }
}
