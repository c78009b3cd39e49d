//! Who the child is (PROTOCOL.md §6.5 steps 2 and 4, rev 0.5): its session or process group,
//! its groups, gid and uid; its environment; and the words that name a failed step in the
//! `Error` reply.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use forkserver_protocol::{Credentials, ExecJob, Job, Session, Spawn, SpawnOptions};
use nix::errno::Errno;
use nix::unistd::{Gid, Pid, Uid};

use super::controls::Controls;
use super::stage::{Stage, FAILED_STATUS};
use crate::sys;

/// The session or process group, the limits and the credentials a child takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) session: Session,
    pub(crate) credentials: Credentials,
    /// Limits, umask, nice, OOM score, `no_new_privs` (rev 0.6), set before the credentials.
    pub(crate) controls: Controls,
}

impl From<&SpawnOptions> for Identity {
    fn from(o: &SpawnOptions) -> Self {
        Self {
            session: o.session,
            credentials: o.credentials,
            controls: Controls::from(o),
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
                sys::exit_now(FAILED_STATUS);
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
    pub(super) cwd: Option<Vec<u8>>,
    pub(super) identity: Identity,
    /// `LANDLOCK_RULESET`: the target of the ruleset's entry.
    pub(super) landlock_fd: Option<u32>,
    exec: bool,
}

impl Context {
    pub(crate) fn of(spawn: &Spawn) -> Self {
        let cwd = match spawn.job() {
            Job::Exec(e) => e.cwd().map(<[u8]>::to_vec),
            Job::Entry(_) => None,
        };
        let landlock_fd = spawn
            .options()
            .landlock_index
            .and_then(|i| spawn.fds().targets().get(usize::from(i)).copied());
        Self {
            cwd,
            identity: Identity::from(spawn.options()),
            landlock_fd,
            exec: matches!(spawn.job(), Job::Exec(_)),
        }
    }

    /// Whether the request is an exec job (else an entry job).
    pub(crate) fn is_exec(&self) -> bool {
        self.exec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
