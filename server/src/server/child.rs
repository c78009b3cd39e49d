//! One child of the server, from its fork to its reaping: which connection waits for it, its
//! report pipe, what it asked for on disconnect and at its deadline. Only this module touches a
//! [`Child`]'s fields; the event loop (`children.rs`) asks it through its methods.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use forkserver_protocol::SpawnOptions;
use nix::errno::Errno;
use nix::sys::epoll::Epoll;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::ids::{ConnId, Serial};
use crate::metrics::JobKind;
use crate::spawn;

/// A child forked (or taken from the pool) for a request, until it is reaped.
pub(super) struct Child {
    pid: Pid,
    /// Unique per spawn, so a stale deadline cannot hit a later child that reuses the pid.
    serial: Serial,
    /// The connection waiting for its reports; `None` once it is gone or was told everything.
    conn: Option<ConnId>,
    /// The server's end of its report pipe (or of a pooled child's socket), if it has one.
    report: Option<OwnedFd>,
    /// The report pipe is in the epoll set (`pid_after_exec`).
    watching_report: bool,
    kill_on_disconnect: bool,
    /// `KEEP_CONNECTION`: after the final report the connection goes back to `Ready`.
    keep_connection: bool,
    want_pidfd: bool,
    deadline_hit: bool,
    /// `SET_GRACE`: SIGTERM at the deadline, SIGKILL this much later.
    grace: Option<Duration>,
    /// A failure the server saw itself: a pooled child that could not be handed its job.
    /// Reported in place of the child's exit, like a failure it reported itself.
    failure: Option<spawn::Failure>,
    /// What the request asked for (cwd, ids, group), to name them in a setup failure.
    context: spawn::Context,
    /// `WANT_RUSAGE`: its `Exit` carries its resource usage.
    want_rusage: bool,
    /// Its result (job ran, exec or setup failed) is in the metrics already.
    counted: bool,
}

/// What a child's report pipe said when it became readable (`pid_after_exec`).
pub(super) enum ExecReport {
    /// End of file and nothing written: the exec succeeded.
    Exec,
    /// Its setup or exec failed (or the server saw it fail): the final report.
    Failed(spawn::Failure),
}

impl Child {
    /// Child `pid` of spawn `serial`, for connection `conn`, with the request's `options` and
    /// `context`; no report pipe yet ([`Child::with_report`]).
    pub(super) fn new(
        pid: Pid,
        serial: Serial,
        conn: ConnId,
        options: &SpawnOptions,
        context: spawn::Context,
    ) -> Self {
        Self {
            pid,
            serial,
            conn: Some(conn),
            report: None,
            watching_report: false,
            kill_on_disconnect: options.kill_on_disconnect,
            keep_connection: options.keep_connection,
            want_pidfd: options.want_pidfd,
            deadline_hit: false,
            grace: options
                .grace_ms
                .map(|g| Duration::from_millis(u64::from(g.get()))),
            failure: None,
            context,
            want_rusage: options.want_rusage,
            counted: false,
        }
    }

    /// Its report pipe (or a pooled child's socket); `watched`: the pipe is in the epoll set.
    pub(super) fn with_report(mut self, report: Option<OwnedFd>, watched: bool) -> Self {
        self.watching_report = watched && report.is_some();
        self.report = report;
        self
    }

    /// A failure the server saw itself, reported in place of the child's exit.
    pub(super) fn with_failure(mut self, failure: Option<spawn::Failure>) -> Self {
        self.failure = failure;
        self
    }

    pub(super) fn pid(&self) -> Pid {
        self.pid
    }

    pub(super) fn serial(&self) -> Serial {
        self.serial
    }

    /// The connection waiting for its reports, if any.
    pub(super) fn conn(&self) -> Option<ConnId> {
        self.conn
    }

    pub(super) fn keeps_connection(&self) -> bool {
        self.keep_connection
    }

    pub(super) fn wants_pidfd(&self) -> bool {
        self.want_pidfd
    }

    pub(super) fn wants_rusage(&self) -> bool {
        self.want_rusage
    }

    /// What its request ran, for the metrics.
    pub(super) fn kind(&self) -> JobKind {
        match self.context.is_exec() {
            true => JobKind::Exec,
            false => JobKind::Entry,
        }
    }

    /// True the first time only: its result is counted once, when it is first known (its
    /// exec's report, or its reaping).
    pub(super) fn count_result(&mut self) -> bool {
        !std::mem::replace(&mut self.counted, true)
    }

    pub(super) fn context(&self) -> &spawn::Context {
        &self.context
    }

    /// Its report pipe, while the server watches it in the epoll set (`pid_after_exec`).
    pub(super) fn watched_report(&self) -> Option<BorrowedFd<'_>> {
        self.report
            .as_ref()
            .filter(|_| self.watching_report)
            .map(AsFd::as_fd)
    }

    /// Whether its deadline killed it: its `Exit` says so.
    pub(super) fn deadline_hit(&self) -> bool {
        self.deadline_hit
    }

    /// The deadline of spawn `serial` expired: if it is this child's and has not hit yet, the
    /// child is marked and gets `SIGKILL`, or `SIGTERM` with a grace period (reaped as usual:
    /// not reaped yet, the pid is still its own). Returns whether it was signalled now.
    pub(super) fn deadline_expired(&mut self, serial: Serial) -> bool {
        if self.serial == serial && !self.deadline_hit {
            self.deadline_hit = true;
            let signal = match self.grace {
                Some(_) => Signal::SIGTERM,
                None => Signal::SIGKILL,
            };
            tracing::info!(pid = self.pid.as_raw(), "deadline expired: {signal}");
            let _ = kill(self.pid, signal);
            return true;
        }
        false
    }

    /// Its grace period after the deadline's `SIGTERM` (`SET_GRACE`), if it asked for one.
    pub(super) fn grace(&self) -> Option<Duration> {
        self.grace
    }

    /// The grace period of spawn `serial` is over: if it is this child's, `SIGKILL` (it is not
    /// reaped yet, so the pid is still its own).
    pub(super) fn grace_expired(&self, serial: Serial) {
        if self.serial == serial {
            tracing::info!(pid = self.pid.as_raw(), "grace period over: SIGKILL");
            let _ = kill(self.pid, Signal::SIGKILL);
        }
    }

    /// Its connection ended: the child is on its own now, or killed if it asked to be. Its
    /// report pipe goes too: nobody is left to tell how its exec went. Returns whether it was
    /// killed.
    pub(super) fn detach(&mut self, epoll: &Epoll) -> bool {
        self.conn = None;
        self.close_report(epoll);
        if self.kill_on_disconnect {
            tracing::debug!(pid = self.pid.as_raw(), "client gone: SIGKILL");
            let _ = kill(self.pid, Signal::SIGKILL);
        }
        self.kill_on_disconnect
    }

    /// Its final report went out (before its exit: an exec or setup failure): nobody waits
    /// for its exit status any more.
    pub(super) fn final_report_sent(&mut self) {
        self.conn = None;
    }

    /// Its report pipe is readable (`pid_after_exec`): the pipe leaves the epoll set and is
    /// closed once read. `None` when it has no pipe any more, or nobody waits for its report.
    pub(super) fn read_exec_report(&mut self, epoll: &Epoll) -> Option<ExecReport> {
        let report = self.report.take()?;
        self.watching_report = false;
        let _ = epoll.delete(&report);
        self.conn?;
        let failure = self
            .failure
            .take()
            .or_else(|| read_report(&report, &self.context));
        Some(failure.map_or(ExecReport::Exec, ExecReport::Failed))
    }

    /// It was reaped: the failure it reported before it ended, the server's own first, else
    /// what its report pipe holds; its pipe is closed. A child without a pipe that exited with
    /// `code` 127 may have written its failure to the shared socket: see
    /// [`Child::may_have_shared_report`], asked before this.
    pub(super) fn take_failure(&mut self, epoll: &Epoll) -> Option<spawn::Failure> {
        let failure = self.failure.take().or_else(|| {
            let report = self.report.as_ref()?;
            read_report(report, &self.context)
        });
        self.close_report(epoll);
        failure
    }

    /// Whether, reaped with `code`, it may have written its failure on the shared report
    /// socket (`spawn::ReportTo::Shared`): it had no pipe of its own, nor a failure the server
    /// saw, and exited with the status of a failed setup.
    pub(super) fn may_have_shared_report(&self, code: i32) -> bool {
        self.failure.is_none() && self.report.is_none() && code == spawn::FAILED_STATUS
    }

    /// Closes the server's end of its report pipe, taking it out of the epoll set first if it
    /// is there.
    fn close_report(&mut self, epoll: &Epoll) {
        if let Some(report) = self.report.take() {
            if std::mem::take(&mut self.watching_report) {
                let _ = epoll.delete(&report);
            }
        }
    }
}

/// Reads a child's failure report, if it wrote one (`spawn::REPORT_LEN` bytes: stage, errno).
fn read_report(fd: &OwnedFd, ctx: &spawn::Context) -> Option<spawn::Failure> {
    let mut buf = [0u8; spawn::REPORT_LEN];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    if got < buf.len() {
        return None;
    }
    Some(spawn::failure_reply(&buf, Some(ctx)))
}
