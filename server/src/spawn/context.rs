//! What the fork path is given: [`ForkContext`], what every child of this server needs
//! whatever its request, built once when the server is bound; and [`ChildSpec`], what one
//! request's child is.
//!
//! A new way of making children (a `CLONE_VM` exec path: its reused stack, the kernel
//! features probed for it) keeps its server-wide state in `ForkContext`; a new per-request
//! control of the child (limits, umask, filters) goes in `ChildSpec`, beside the identity the
//! child takes.

use std::os::fd::{AsRawFd, OwnedFd};

use forkserver_protocol::{ExecJob, FdBundle, SpawnOptions};
use nix::errno::Errno;
use nix::libc;

use super::identity::Identity;
use super::plan::ExecPlan;
use super::plan::ServerEnv;
use super::report::Report;
use super::sandbox::Sandbox;
use super::seccomp::SeccompProgram;
use super::vfork::{clone_exec, CloneStack, Cloned};
use crate::entry::EntryFn;
use crate::ids::Serial;

/// What every child of the server needs, whatever its request.
pub(crate) struct ForkContext {
    /// Signals whose disposition the children must put back to the default (bit `n - 1` for
    /// signal `n`, 1..=64): those not at their default in the server.
    to_reset: u64,
    /// `PR_SET_PDEATHSIG(SIGKILL)` in every child (`Config::kill_children_with_server`).
    die_with_server: bool,
    /// The write end of the shared report socket (a datagram socketpair, the server reads the
    /// other end): children without a report pipe of their own write a failure there.
    report_tx: OwnedFd,
    /// The authentication key (PROTOCOL.md §9.1), if the server has one. Every child that
    /// runs the server's code zeroes its copy after the fork.
    key: Option<Vec<u8>>,
    /// The server's pid, for the children's parent-death check: asked once, not per spawn.
    server_pid: libc::pid_t,
    /// The stack of the `CLONE_VM` exec children, mapped at the first exec job.
    clone_stack: Option<CloneStack>,
    /// The server's environment, for the `CLONE_VM` children's envp: taken at the first
    /// exec job on that path.
    server_env: Option<ServerEnv>,
    /// Exec jobs are forked as entry jobs are (`FORKSERVER_EXEC_FORK=1`): the `CLONE_VM` path
    /// is off.
    exec_by_fork: bool,
}

impl ForkContext {
    /// The context of a server whose signals not at their default are `to_reset` (asked
    /// once its own dispositions are set: `sys::non_default_signals`), whose children die
    /// with it if `die_with_server`, with the write end of its shared report socket and its
    /// authentication key.
    pub(crate) fn new(
        to_reset: u64,
        die_with_server: bool,
        report_tx: OwnedFd,
        key: Option<Vec<u8>>,
    ) -> Self {
        Self {
            to_reset,
            die_with_server,
            report_tx,
            key,
            server_pid: nix::unistd::getpid().as_raw(),
            clone_stack: None,
            server_env: None,
            exec_by_fork: false,
        }
    }

    /// Exec jobs take the fork path too (`true`), or the `CLONE_VM` path (the default).
    pub(crate) fn set_exec_by_fork(&mut self, by_fork: bool) {
        self.exec_by_fork = by_fork;
    }

    /// Whether exec jobs take the fork path.
    pub(crate) fn exec_by_fork(&self) -> bool {
        self.exec_by_fork
    }

    /// The server's pid, asked once at bind.
    pub(super) fn server_pid(&self) -> libc::pid_t {
        self.server_pid
    }

    /// The server's pid when its children die with it (`die_with_server`).
    pub(super) fn watched_server(&self) -> Option<libc::pid_t> {
        self.die_with_server.then_some(self.server_pid)
    }

    /// What the `CLONE_VM` path needs of the server: the children's stack (mapped at the first
    /// call) and the server's environment (taken then too).
    pub(super) fn clone_parts(&mut self) -> Result<(&mut CloneStack, &ServerEnv), Errno> {
        let stack = match &mut self.clone_stack {
            Some(stack) => stack,
            slot => slot.insert(CloneStack::new()?),
        };
        let env = self.server_env.get_or_insert_with(ServerEnv::capture);
        Ok((stack, env))
    }

    /// Starts exec job `job`'s child on the `CLONE_VM` path, with `bundle`, the request's
    /// `options` and its seccomp program (read from the bundle before this call): the child's
    /// pid, its pidfd if the request wants one, how the exec went, and the bundle (the caller
    /// closes it once the `Pid` is out).
    ///
    /// # Errors
    /// As [`clone_exec`]; `mmap` failing at the first call.
    pub(crate) fn spawn_exec(
        &mut self,
        job: &ExecJob,
        options: &SpawnOptions,
        bundle: FdBundle,
        filter: Option<&SeccompProgram>,
    ) -> Result<Cloned, Errno> {
        let (to_reset, server) = (self.to_reset(), self.watched_server());
        let (stack, env) = self.clone_parts()?;
        let identity = Identity::from(options);
        let sandbox = Sandbox::new(options, bundle.map(), filter);
        let mut plan = ExecPlan::new(job, &bundle, identity, to_reset, server, env);
        plan.set_sandbox(sandbox);
        let mut cloned = clone_exec(stack, &plan, options.want_pidfd)?;
        cloned.bundle = bundle;
        Ok(cloned)
    }

    /// The authentication key, if the server has one.
    pub(crate) fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    pub(super) fn to_reset(&self) -> u64 {
        self.to_reset
    }

    pub(super) fn die_with_server(&self) -> bool {
        self.die_with_server
    }

    /// Overwrites this copy of the key with zeros: in a child, which writes to its own pages
    /// (the server's copy is intact).
    pub(super) fn zero_key(&mut self) {
        if let Some(key) = self.key.as_deref_mut() {
            key.fill(0);
            // The zeros must reach memory although nothing reads them back.
            std::hint::black_box(key);
        }
    }

    /// Where the child of spawn `serial` writes its failure on the shared report socket.
    pub(super) fn shared_report(&self, serial: Serial) -> Report {
        Report::Shared(self.report_tx.as_raw_fd(), serial)
    }
}

/// What one request's child is: what it runs, who it is, with which fds, and where it reports
/// a failure before its job runs.
pub(crate) struct ChildSpec<'a> {
    pub(super) work: Work<'a>,
    /// Its session or process group and credentials (from the request's options).
    pub(super) identity: Identity,
    /// Its fds, placed at their targets; closed in the server once the child is forked.
    pub(super) bundle: FdBundle,
    /// Its landlock ruleset and seccomp filter (rev 0.6).
    pub(super) sandbox: Sandbox<'a>,
    pub(super) report: ReportTo,
}

impl<'a> ChildSpec<'a> {
    /// The child of a request with `options` that runs `work` with `bundle`, reporting to
    /// `report`, with the seccomp program `filter` read from its bundle.
    pub(crate) fn new(
        work: Work<'a>,
        options: &SpawnOptions,
        bundle: FdBundle,
        report: ReportTo,
        filter: Option<&'a SeccompProgram>,
    ) -> Self {
        Self {
            work,
            identity: Identity::from(options),
            sandbox: Sandbox::new(options, bundle.map(), filter),
            bundle,
            report,
        }
    }
}

/// What a forked child runs.
pub(crate) enum Work<'a> {
    Exec(&'a ExecJob),
    Entry {
        entry: &'a EntryFn,
        payload: &'a [u8],
    },
}

/// Where a child reports a failure of its setup or exec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReportTo {
    /// A report pipe of its own, whose read end the server keeps: its EOF with nothing
    /// written tells that the exec succeeded (`pid_after_exec`).
    Pipe,
    /// The shared report socket, tagged with the spawn's serial: no system call and no fd
    /// per spawn, for children whose success the server need not hear of.
    Shared(Serial),
}
