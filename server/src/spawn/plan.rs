//! What a `CLONE_VM` child runs, decided and built by the server before the clone
//! ([`ExecPlan`]): every string as a `CString` with its pointer array, every `PATH` candidate
//! as a full path, the fd placement as a list of system calls with every number fixed, the
//! credentials and the signals to reset. The child ([`ExecPlan::run`], called from
//! `vfork.rs`) only walks these arrays and makes raw system calls (`raw.rs`): the rules it
//! obeys are in the `spawn` module's doc.
//!
//! The child's steps are the rows of `ExecPlan::STEPS`, in order, each a function that names the
//! [`Stage`] it fails with. A new control of the child (a limit, a umask, a filter) is one
//! more field here, filled in [`ExecPlan::new`], and one more row; the fork path
//! (`child_main` in `mod.rs`) takes the same step at the same place with the fork's calls.

use std::ffi::{c_char, CString};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStringExt;

use forkserver_protocol::{Credentials, ExecJob, FdBundle, Session};
use nix::errno::Errno;
use nix::libc;

use super::execvp::{null_terminated, Candidates};
use super::fds::{plan_fds, FdOp};
use super::identity::Identity;
use super::raw;
use super::sandbox::Sandbox;
use super::stage::Stage;

/// The server's environment as `KEY=value` strings, taken once (at the first exec job on the
/// `CLONE_VM` path: the server changes its environment only before it serves): the children's
/// envp points into it, so an exec job that inherits it costs no allocation per variable.
pub(crate) struct ServerEnv {
    entries: Vec<CString>,
}

impl ServerEnv {
    /// The process's environment now.
    pub(crate) fn capture() -> Self {
        let entries = std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(&v.into_vec());
                CString::new(kv).unwrap_or_default()
            })
            .collect();
        Self { entries }
    }

    /// An environment of `pairs` (tests).
    #[cfg(test)]
    fn of(pairs: &[(&str, &str)]) -> Self {
        let entries = pairs
            .iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")).unwrap())
            .collect();
        Self { entries }
    }

    /// The entries with their keys.
    fn iter(&self) -> impl Iterator<Item = (&[u8], &CString)> {
        self.entries.iter().map(|e| {
            let b = e.as_bytes();
            (
                &b[..b.iter().position(|&c| c == b'=').unwrap_or(b.len())],
                e,
            )
        })
    }
}

/// Everything the child of one exec job needs, built by the server; the child reads it only.
pub(super) struct ExecPlan<'a> {
    /// Signals to put back to `SIG_DFL` (bit `n - 1` for signal `n`).
    to_reset: u64,
    /// `die_with_server`: the server's pid, which the child checks is still its parent after
    /// `PR_SET_PDEATHSIG(SIGKILL)`.
    server: Option<libc::pid_t>,
    identity: Identity,
    /// The landlock ruleset's target and the seccomp program (read by the server).
    sandbox: Sandbox<'a>,
    fd_ops: Vec<FdOp>,
    /// The targets, sorted: every other fd is closed.
    keep: Vec<u32>,
    /// Which of 0, 1, 2 get `/dev/null` (no fd of the bundle goes there).
    null_stdio: [bool; 3],
    cwd: Option<CString>,
    /// The files the exec tries (`PATH` candidates as full paths).
    candidates: Candidates,
    _argv: Vec<CString>,
    /// The job's own environment entries (the inherited ones are the server's [`ServerEnv`]).
    _envp: Vec<CString>,
    /// Null-terminated pointers into `_argv`, `_envp` and the [`ServerEnv`] (whose heap
    /// buffers do not move).
    argv_ptrs: Vec<*const c_char>,
    envp_ptrs: Vec<*const c_char>,
    /// The plan points into the server's environment.
    _env: PhantomData<&'a ServerEnv>,
}

impl<'a> ExecPlan<'a> {
    /// The child's steps, in order (PROTOCOL.md §6.5): signal dispositions, the parent-death
    /// signal, the session, the fds, the resource limits and controls, the credentials (last
    /// of what needs privilege), the landlock ruleset, the working directory, the signal mask
    /// (nothing can be delivered before the dispositions are reset), the seccomp filter (last:
    /// nothing else runs under it but `execve`), the exec. Each returns `Ok`, or the stage
    /// that failed and its errno.
    #[allow(clippy::type_complexity)]
    const STEPS: [fn(&Self) -> Result<(), (Stage, Errno)>; 10] = [
        Self::reset_dispositions,
        Self::watch_parent,
        Self::join_session,
        Self::place_fds,
        Self::apply_controls,
        Self::take_credentials,
        Self::restrict,
        Self::chdir,
        Self::unblock_signals,
        Self::install_filter,
    ];

    /// The plan of `job`'s child with `bundle` (borrowed: the server closes it after the
    /// clone), `identity`, resetting `to_reset`, watching `server` if given, inheriting `env`
    /// (unless the job clears it) as `identity::child_env` says.
    pub(super) fn new(
        job: &ExecJob,
        bundle: &FdBundle,
        identity: Identity,
        to_reset: u64,
        server: Option<libc::pid_t>,
        env: &'a ServerEnv,
    ) -> Self {
        // The protocol guarantees no NUL inside any of these strings.
        let cstr = |b: Vec<u8>| CString::new(b).unwrap_or_default();
        let argv: Vec<CString> = job.args().iter().map(|a| cstr(a.to_vec())).collect();
        // PROTOCOL.md §5.5.3, as `identity::child_env`: the inherited entries less the
        // removed names and those the job sets; then the job's entries, each where its last
        // occurrence is.
        let set = |k: &[u8]| job.env().iter().any(|(jk, _)| jk.as_slice() == k);
        let removed = |k: &[u8]| job.env_remove().iter().any(|n| n.as_slice() == k);
        let inherited: Vec<(&[u8], &CString)> = match job.env_clear() {
            true => Vec::new(),
            false => env.iter().filter(|(k, _)| !set(k) && !removed(k)).collect(),
        };
        let own: Vec<(&[u8], CString)> = job
            .env()
            .iter()
            .enumerate()
            .filter(|(i, (k, _))| !job.env()[i + 1..].iter().any(|(l, _)| l == k))
            .map(|(_, (k, v))| {
                let mut kv = k.clone();
                kv.push(b'=');
                kv.extend_from_slice(v);
                (k.as_slice(), cstr(kv))
            })
            .collect();
        let value = |k: &[u8], e: &CString| e.as_bytes()[k.len() + 1..].to_vec();
        let path = own
            .iter()
            .map(|(k, e)| (*k, e))
            .chain(inherited.iter().copied())
            .find(|(k, _)| *k == b"PATH")
            .map(|(k, e)| value(k, e));
        let mut envp_ptrs: Vec<*const c_char> = inherited.iter().map(|(_, e)| e.as_ptr()).collect();
        envp_ptrs.extend(own.iter().map(|(_, e)| e.as_ptr()));
        envp_ptrs.push(std::ptr::null());
        let envp: Vec<CString> = own.into_iter().map(|(_, e)| e).collect();
        let candidates = Candidates::new(job.program(), path.as_deref());
        let (targets, srcs): (Vec<u32>, Vec<RawFd>) =
            bundle.iter().map(|(t, fd)| (t, fd.as_raw_fd())).unzip();
        let (fd_ops, keep) = plan_fds(srcs, targets);
        let null_stdio = [0, 1, 2].map(|fd| keep.binary_search(&fd).is_err());
        Self {
            to_reset,
            server,
            identity,
            sandbox: Sandbox::default(),
            fd_ops,
            keep,
            null_stdio,
            cwd: job.cwd().map(|c| cstr(c.to_vec())),
            candidates,
            argv_ptrs: null_terminated(&argv),
            envp_ptrs,
            _argv: argv,
            _envp: envp,
            _env: PhantomData,
        }
    }

    /// The landlock ruleset and seccomp filter of the child (none by default).
    pub(super) fn set_sandbox(&mut self, sandbox: Sandbox<'a>) {
        self.sandbox = sandbox;
    }

    /// The child: every step, then `execve`. Returns only on failure, with the stage and the
    /// errno to report. Runs in the `CLONE_VM` child: reads the plan, allocates nothing.
    pub(super) fn run(&self) -> (Stage, Errno) {
        for step in Self::STEPS {
            if let Err(failed) = step(self) {
                return failed;
            }
        }
        let (argv, envp) = (&self.argv_ptrs, &self.envp_ptrs);
        (Stage::Exec, self.candidates.exec(argv, envp))
    }

    fn reset_dispositions(&self) -> Result<(), (Stage, Errno)> {
        let mut left = self.to_reset;
        while left != 0 {
            let signo = left.trailing_zeros() as i32 + 1; // 1..=64: no overflow
            crate::sys::set_default_disposition(signo).map_err(|e| (Stage::Setup, e))?;
            left &= left - 1;
        }
        Ok(())
    }

    fn watch_parent(&self) -> Result<(), (Stage, Errno)> {
        if let Some(server) = self.server {
            // If the server died before the call, the signal will never come: check.
            if raw::set_pdeathsig(libc::SIGKILL).is_err() || raw::getppid() != server {
                raw::exit(super::FAILED_STATUS);
            }
        }
        Ok(())
    }

    fn join_session(&self) -> Result<(), (Stage, Errno)> {
        let r = match self.identity.session {
            Session::Inherit => Ok(()),
            Session::NewProcessGroup => raw::setpgid(0, 0),
            Session::NewSession => raw::setsid(),
            // The decoder keeps pgid in 1..=i32::MAX.
            Session::JoinProcessGroup(pgid) => raw::setpgid(0, pgid as libc::pid_t),
        };
        r.map_err(|e| (Stage::Session, e))
    }

    fn place_fds(&self) -> Result<(), (Stage, Errno)> {
        let fail = |e| (Stage::Setup, e);
        for &op in &self.fd_ops {
            match op {
                FdOp::Dup2 { from, to } => raw::dup3(from, to, 0),
                FdOp::ClearCloexec(fd) => raw::clear_cloexec(fd),
                FdOp::Aside { from, to } => raw::dup3(from, to, libc::O_CLOEXEC),
            }
            .map_err(fail)?;
        }
        // Checked arithmetic only: a panic here would abort with the server's thread id.
        let mut next = Some(0u32);
        for &k in &self.keep {
            if let Some(first) = next.filter(|&n| k > n) {
                raw::close_all(first, k.saturating_sub(1)).map_err(fail)?;
            }
            next = k.checked_add(1);
        }
        if let Some(first) = next {
            raw::close_all(first, u32::MAX).map_err(fail)?;
        }
        for (fd, &null) in (0..).zip(&self.null_stdio) {
            if null {
                raw::open_dev_null_at(fd).map_err(fail)?;
            }
        }
        Ok(())
    }

    /// `Controls::apply`, as on the fork path: raw calls on the plan's copy of the controls
    /// (the OOM score's text built by the server), no allocation.
    fn apply_controls(&self) -> Result<(), (Stage, Errno)> {
        self.identity.controls.apply()
    }

    /// As `Identity::take_credentials` on the fork path: groups, gid, uid; a uid without
    /// groups drops the supplementary groups (`EPERM` ignored); the parent-death signal,
    /// cleared by a change of ids, is set again.
    fn take_credentials(&self) -> Result<(), (Stage, Errno)> {
        let Credentials { uid, gid, groups } = &self.identity.credentials;
        if uid.is_none() && gid.is_none() && groups.is_none() {
            return Ok(());
        }
        match (groups, uid) {
            (Some(g), _) => raw::setgroups(g.as_slice()).map_err(|e| (Stage::Groups, e))?,
            (None, Some(_)) => match raw::setgroups(&[]) {
                Ok(()) | Err(Errno::EPERM) => {}
                Err(e) => return Err((Stage::Groups, e)),
            },
            (None, None) => {}
        }
        if let Some(gid) = *gid {
            raw::setgid(gid).map_err(|e| (Stage::Gid, e))?;
        }
        if let Some(uid) = *uid {
            raw::setuid(uid).map_err(|e| (Stage::Uid, e))?;
        }
        self.watch_parent()
    }

    /// `Sandbox::restrict`, as on the fork path: `landlock_restrict_self`, the consumed
    /// entries closed.
    fn restrict(&self) -> Result<(), (Stage, Errno)> {
        self.sandbox.restrict()
    }

    /// `Sandbox::install_filter`: the program the server read, one raw call.
    fn install_filter(&self) -> Result<(), (Stage, Errno)> {
        self.sandbox.install_filter()
    }

    fn chdir(&self) -> Result<(), (Stage, Errno)> {
        match &self.cwd {
            Some(cwd) => raw::chdir(cwd).map_err(|e| (Stage::Chdir, e)),
            None => Ok(()),
        }
    }

    fn unblock_signals(&self) -> Result<(), (Stage, Errno)> {
        raw::unblock_all_signals().map_err(|e| (Stage::Setup, e))
    }
}

#[cfg(test)]
mod tests {
    use super::super::identity;
    use super::*;

    /// The plan's envp as strings.
    #[allow(unsafe_code)]
    fn envp(plan: &ExecPlan<'_>) -> Vec<String> {
        let mut out = Vec::new();
        for &p in plan.envp_ptrs.iter().take_while(|p| !p.is_null()) {
            // SAFETY: a NUL-terminated string of the plan or its `ServerEnv`, both alive.
            let s = unsafe { std::ffi::CStr::from_ptr(p) };
            out.push(s.to_str().unwrap().to_owned());
        }
        out
    }

    #[test]
    fn the_environment_is_the_fork_paths() {
        let server = [
            ("HOME", "/root"),
            ("PATH", "/bin"),
            ("TERM", "xterm"),
            ("A", "1"),
        ];
        let env = ServerEnv::of(&server);
        let inherited =
            || server.map(|(k, v)| (std::ffi::OsString::from(k), std::ffi::OsString::from(v)));
        let mut jobs = Vec::new();
        let mut job = ExecJob::new("prog").unwrap();
        job.push_env_remove("HOME").unwrap();
        job.push_env("TERM", "dumb").unwrap();
        job.push_env("B", "2").unwrap();
        job.push_env("TERM", "vt100").unwrap();
        jobs.push(job.clone());
        job.push_env("PATH", "/opt/bin:").unwrap();
        jobs.push(job.clone());
        job.set_env_clear(true);
        jobs.push(job);
        jobs.push(ExecJob::new("/bin/true").unwrap());
        for job in &jobs {
            let plan = ExecPlan::new(job, &FdBundle::new(), Identity::default(), 0, None, &env);
            let from = (!job.env_clear()).then(inherited);
            let expected: Vec<String> = identity::child_env(from.into_iter().flatten(), job)
                .into_iter()
                .map(|(k, v)| format!("{}={}", k.to_str().unwrap(), v.to_str().unwrap()))
                .collect();
            assert_eq!(envp(&plan), expected, "{job:?}");
        }
        // PATH comes from the child's environment: the job's, else the inherited one.
        let plan = ExecPlan::new(
            &jobs[1],
            &FdBundle::new(),
            Identity::default(),
            0,
            None,
            &env,
        );
        let c: Vec<&[u8]> = plan
            .candidates
            .paths()
            .iter()
            .map(|c| c.as_bytes())
            .collect();
        assert_eq!(c, [&b"/opt/bin/prog"[..], b"./prog"]);
        let plan = ExecPlan::new(
            &jobs[0],
            &FdBundle::new(),
            Identity::default(),
            0,
            None,
            &env,
        );
        assert_eq!(plan.candidates.paths()[0].as_bytes(), b"/bin/prog");
    }
}
