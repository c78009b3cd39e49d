//! Who the child is (PROTOCOL.md §6.5 steps 2 and 4, rev 0.5): its session or process group,
//! its groups, gid and uid; its environment; and the words that name a failed step in the
//! `Error` reply.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use forkserver_protocol::{
    Credentials, ErrorCode, ErrorReply, ExecJob, Job, Message, Session, Spawn, SpawnOptions,
};
use nix::errno::Errno;
use nix::unistd::{Gid, Pid, Uid};

use crate::sys;

/// Which call of the child's setup failed: the first byte of a failure report. The server
/// reads any stage but [`Stage::Exec`] as `ChildSetupFailed`; the stage only names the call in
/// the message ([`failure_reply`]).
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
    fn from_byte(b: u8) -> Self {
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

/// The session or process group and the credentials a child takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) session: Session,
    pub(crate) credentials: Credentials,
}

impl From<&SpawnOptions> for Identity {
    fn from(o: &SpawnOptions) -> Self {
        Self {
            session: o.session,
            credentials: o.credentials,
        }
    }
}

impl Identity {
    /// Step 2: `setsid()`, `setpgid(0, 0)` or `setpgid(0, pgid)`.
    pub(crate) fn join_session(&self) -> Result<(), Errno> {
        let me = Pid::from_raw(0);
        match self.session {
            Session::Inherit => Ok(()),
            Session::NewProcessGroup => nix::unistd::setpgid(me, me),
            Session::NewSession => nix::unistd::setsid().map(drop),
            // The decoder keeps pgid in 1..=i32::MAX.
            Session::JoinProcessGroup(pgid) => nix::unistd::setpgid(me, Pid::from_raw(pgid as i32)),
        }
    }

    /// Step 4: `setgroups`, `setgid`, `setuid`, in that order (each needs the privilege the
    /// next may drop). A uid without groups first drops the supplementary groups, as std
    /// does, ignoring `EPERM` (a server that may not change groups keeps them). A change of
    /// ids clears `PR_SET_PDEATHSIG`: it is set again, and a child whose server died meanwhile
    /// exits, as `fork_child` does.
    pub(crate) fn take_credentials(&self) -> Result<(), (Stage, Errno)> {
        let c = &self.credentials;
        if c.uid.is_none() && c.gid.is_none() && c.groups.is_none() {
            return Ok(());
        }
        let death = nix::sys::prctl::get_pdeathsig().ok().flatten();
        let parent = nix::unistd::getppid();
        let gids = |g: &[u32]| g.iter().map(|&g| Gid::from_raw(g)).collect::<Vec<_>>();
        match (&c.groups, c.uid) {
            (Some(g), _) => {
                nix::unistd::setgroups(&gids(g.as_slice())).map_err(|e| (Stage::Groups, e))?
            }
            (None, Some(_)) => match nix::unistd::setgroups(&[]) {
                Ok(()) | Err(Errno::EPERM) => {}
                Err(e) => return Err((Stage::Groups, e)),
            },
            (None, None) => {}
        }
        if let Some(gid) = c.gid {
            nix::unistd::setgid(Gid::from_raw(gid)).map_err(|e| (Stage::Gid, e))?;
        }
        if let Some(uid) = c.uid {
            nix::unistd::setuid(Uid::from_raw(uid)).map_err(|e| (Stage::Uid, e))?;
        }
        if let Some(sig) = death {
            let ok = nix::sys::prctl::set_pdeathsig(sig).is_ok();
            if !ok || nix::unistd::getppid() != parent {
                sys::exit_now(super::FAILED_STATUS);
            }
        }
        Ok(())
    }
}

/// The environment of an exec job's child (PROTOCOL.md §5.5.3): `inherited` (the server's,
/// or nothing with `env_clear`), less the job's removals, then its entries in order, a later
/// one replacing an earlier one of the same key.
pub(crate) fn child_env(
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
    job: &ExecJob,
) -> Vec<(OsString, OsString)> {
    let removed = |k: &OsStr| {
        job.env_remove()
            .iter()
            .any(|n| n.as_slice() == k.as_bytes())
    };
    let mut env: Vec<(OsString, OsString)> =
        inherited.into_iter().filter(|(k, _)| !removed(k)).collect();
    for (k, v) in job.env() {
        let k = OsStr::from_bytes(k);
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_owned(), OsStr::from_bytes(v).to_owned()));
    }
    env
}

/// What the server remembers of a request to name a failed step: the working directory and
/// the ids asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Context {
    cwd: Option<Vec<u8>>,
    identity: Identity,
}

impl Context {
    pub(crate) fn of(spawn: &Spawn) -> Self {
        let cwd = match spawn.job() {
            Job::Exec(e) => e.cwd().map(<[u8]>::to_vec),
            Job::Entry(_) => None,
        };
        Self {
            cwd,
            identity: Identity::from(spawn.options()),
        }
    }
}

/// The reply for a child's failure report (`stage`, `errno` as an `i32` LE), naming the call
/// that failed and, with the request's [`Context`], the value it was given: e.g.
/// `chdir("/no/such"): No such file or directory (ENOENT)`.
pub(crate) fn failure_reply(report: &[u8; 5], ctx: Option<&Context>) -> Message {
    let errno = i32::from_le_bytes([report[1], report[2], report[3], report[4]]);
    let e = Errno::from_raw(errno);
    let why = format!("{} ({e:?})", e.desc());
    let stage = Stage::from_byte(report[0]);
    let c = ctx.map(|c| &c.identity.credentials);
    let call = match stage {
        Stage::Exec => {
            return ErrorReply::new(ErrorCode::ExecFailed, errno, format!("execve: {why}")).into()
        }
        Stage::Setup => "child setup".to_owned(),
        Stage::Chdir => match ctx.and_then(|c| c.cwd.as_deref()) {
            Some(cwd) => format!("chdir(\"{}\")", cwd.escape_ascii()),
            None => "chdir".to_owned(),
        },
        Stage::Session => match ctx.map(|c| c.identity.session) {
            Some(Session::NewSession) => "setsid()".to_owned(),
            Some(Session::NewProcessGroup) => "setpgid(0, 0)".to_owned(),
            Some(Session::JoinProcessGroup(pgid)) => format!("setpgid(0, {pgid})"),
            _ => "setsid/setpgid".to_owned(),
        },
        Stage::Groups => match c.map(|c| c.groups) {
            Some(Some(g)) => format!("setgroups({:?})", g.as_slice()),
            Some(None) => "setgroups([]) (dropping the groups for setuid)".to_owned(),
            None => "setgroups".to_owned(),
        },
        Stage::Gid => match c.and_then(|c| c.gid) {
            Some(gid) => format!("setgid({gid})"),
            None => "setgid".to_owned(),
        },
        Stage::Uid => match c.and_then(|c| c.uid) {
            Some(uid) => format!("setuid({uid})"),
            None => "setuid".to_owned(),
        },
    };
    ErrorReply::new(ErrorCode::ChildSetupFailed, errno, format!("{call}: {why}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use forkserver_protocol::{FdMap, Groups};

    fn report(stage: Stage, errno: Errno) -> [u8; 5] {
        let mut r = [stage as u8, 0, 0, 0, 0];
        r[1..].copy_from_slice(&(errno as i32).to_le_bytes());
        r
    }

    fn message(m: Message) -> (ErrorCode, i32, String) {
        let Message::Error(e) = m else {
            panic!("not an error: {m:?}")
        };
        (e.code(), e.errno(), e.message().to_owned())
    }

    fn context(options: SpawnOptions, cwd: Option<&[u8]>) -> Context {
        let mut job = ExecJob::new("/bin/true").unwrap();
        job.set_cwd(cwd.map(<[u8]>::to_vec)).unwrap();
        Context::of(&Spawn::new(options, FdMap::new(), Job::Exec(job)).unwrap())
    }

    #[test]
    fn a_failed_chdir_names_the_call_and_the_path() {
        let ctx = context(SpawnOptions::default(), Some(b"/no/such\xffdir"));
        let (code, errno, msg) = message(failure_reply(
            &report(Stage::Chdir, Errno::ENOENT),
            Some(&ctx),
        ));
        assert_eq!(code, ErrorCode::ChildSetupFailed);
        assert_eq!(errno, Errno::ENOENT as i32);
        assert_eq!(
            msg,
            r#"chdir("/no/such\xffdir"): No such file or directory (ENOENT)"#
        );
        let (_, _, msg) = message(failure_reply(&report(Stage::Chdir, Errno::ENOENT), None));
        assert_eq!(msg, "chdir: No such file or directory (ENOENT)");
    }

    #[test]
    fn failed_credentials_name_the_call_and_the_id() {
        let options = SpawnOptions {
            session: Session::JoinProcessGroup(4242),
            credentials: Credentials {
                uid: Some(1000),
                gid: Some(100),
                groups: Some(Groups::new(&[10, 20]).unwrap()),
            },
            ..SpawnOptions::default()
        };
        let ctx = context(options, None);
        let msg = |stage| message(failure_reply(&report(stage, Errno::EPERM), Some(&ctx))).2;
        assert_eq!(
            msg(Stage::Uid),
            "setuid(1000): Operation not permitted (EPERM)"
        );
        assert_eq!(
            msg(Stage::Gid),
            "setgid(100): Operation not permitted (EPERM)"
        );
        assert_eq!(
            msg(Stage::Groups),
            "setgroups([10, 20]): Operation not permitted (EPERM)"
        );
        assert_eq!(
            msg(Stage::Session),
            "setpgid(0, 4242): Operation not permitted (EPERM)"
        );
        let (code, _, msg) = message(failure_reply(&report(Stage::Exec, Errno::ENOENT), None));
        assert_eq!(code, ErrorCode::ExecFailed);
        assert_eq!(msg, "execve: No such file or directory (ENOENT)");
    }

    #[test]
    fn removals_apply_to_the_inherited_environment_before_the_entries() {
        let mut job = ExecJob::new("/bin/true").unwrap();
        job.push_env_remove("HOME").unwrap();
        job.push_env_remove("TERM").unwrap();
        job.push_env("TERM", "dumb").unwrap();
        let inherited = [("HOME", "/root"), ("PATH", "/bin"), ("TERM", "xterm")]
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = child_env(inherited, &job);
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|(k, v)| (k.to_str().unwrap(), v.to_str().unwrap()))
            .collect();
        assert_eq!(env, [("PATH", "/bin"), ("TERM", "dumb")]);
    }
}
