//! Starting a child for a request: room for it, a pooled child, a `CLONE_VM` clone (exec
//! jobs) or a fork, the records kept of it (its deadline, its report pipe), and its `Pid` to
//! the client, at once or after its exec.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use forkserver_protocol::{
    ErrorCode, ErrorReply, FdBundle, Job, Message, OutFrame, Pid as PidReply, Spawn,
};
use nix::errno::Errno;
use nix::sys::epoll::{EpollEvent, EpollFlags};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::child::Child;
use super::conn::Conn;
use super::pool::Pooled;
use super::token::Token;
use super::{Server, TEST_STOP_AFTER_PID_ENV};
use crate::ids::{ConnId, Serial};
use crate::metrics::Refusal;
use crate::session::State;
use crate::spawn::{self, ChildSpec, ReportTo, Work};
use crate::timers::Timer;

/// A child started for a request.
struct Started {
    pid: Pid,
    /// The server's end of its report pipe, or of a pooled child's socket.
    report: Option<OwnedFd>,
    /// A pooled child took the job: it runs once woken ([`spawn::wake_pooled`]).
    pooled: bool,
    /// A pooled child that could not be handed its job whole: the failure reported in place
    /// of its exit.
    failure: Option<spawn::Failure>,
    /// A `CLONE_VM` child: its exec is over ([`spawn::spawn_exec`]).
    exec: Option<spawn::Cloned>,
    /// The request's fds, still open in the server: closed once the `Pid` is out.
    bundle: FdBundle,
    /// The job sent to a pooled child, with the server's copies of its fds: closed once the
    /// `Pid` is out.
    sent_job: Option<OutFrame>,
    /// The request itself (a forked or cloned child's), freed once the `Pid` is out.
    request: Option<Spawn>,
}

impl Server {
    /// Connection `id`'s session asked for `spawn` with `bundle`: a child for it, from the
    /// pool, cloned (an exec job on the `CLONE_VM` path, whose exec is over when it returns)
    /// or forked, kept track of, and its `Pid` to the client: at once, or with
    /// `pid_after_exec` once it has exec'd (on the fork path the connection waits in SPAWNING).
    pub(super) fn spawn(&mut self, id: ConnId, spawn: Spawn, bundle: FdBundle) {
        // Pooled children waiting for a job are not in `children`: they do not count.
        if self.children.len() >= self.config.max_children {
            let max = self.config.max_children;
            let msg = format!("too many children: the server runs its limit of {max}");
            self.metrics.refused(Refusal::MaxChildren);
            return self.fail(id, ErrorReply::new(ErrorCode::ResourceExhausted, 0, msg));
        }
        let options = *spawn.options();
        let context = spawn::Context::of(&spawn);
        let wait_exec = options.pid_after_exec && matches!(spawn.job(), Job::Exec(_));
        let serial = Serial::nth(self.spawned_total + 1);
        let foreign = self.conns.get(&id).is_some_and(Conn::is_foreign);
        let mut started = match self.start_child(spawn, bundle, wait_exec, serial, foreign) {
            Ok(started) => started,
            Err(e) => return self.fork_failed(id, e),
        };
        // The server's copies of the request's fds, and the request: closed and freed when
        // this function returns, after the `Pid` went out (or, with `pid_after_exec` on the
        // fork path, was put off).
        let _close_after_reply = (
            std::mem::take(&mut started.bundle),
            started.sent_job.take(),
            started.request.take(),
        );
        self.spawned_total += 1;
        self.touch();
        let (pid, pooled) = (started.pid, started.pooled);
        let mut child = Child::new(pid, serial, id, &options, context)
            .with_report(started.report, wait_exec)
            .with_failure(started.failure);
        let deadline = options
            .deadline_ms
            .map(|ms| Duration::from_millis(ms.get()));
        tracing::debug!(conn = %id, pid = pid.as_raw(), "spawned");
        let Some(exec) = started.exec else {
            self.adopt(child, deadline);
            return self.announce(id, pid, wait_exec, pooled, options.want_pidfd);
        };
        // The CLONE_VM path: the exec is over already.
        match (exec.failure, wait_exec) {
            (Some((stage, errno)), true) => {
                // As a report pipe's failure: no Pid, the failure is the final report.
                let reply = spawn::failure_of(stage, errno, child.context());
                self.count_result(&mut child, Some(&reply));
                child.final_report_sent();
                let keep = child.keeps_connection();
                self.adopt(child, deadline);
                self.send(id, reply.into_reply(), vec![]);
                // The frames behind this one are handled by the caller's loop.
                let keep = keep && !self.shutting_down;
                self.transition(id, |s| s.final_report(keep));
            }
            (failure, _) => {
                // The failure (without `pid_after_exec`) comes in place of the exit, as the
                // shared report socket's would.
                let reply =
                    failure.map(|(stage, errno)| spawn::failure_of(stage, errno, child.context()));
                if wait_exec {
                    // The exec succeeded: its result is known now (§5.16).
                    self.count_result(&mut child, None);
                }
                self.adopt(child.with_failure(reply), deadline);
                self.start_running_with(id, pid, exec.pidfd);
            }
        }
    }

    /// A child for `spawn`: the job handed to a pooled child if one can take it, else an exec
    /// job on the `CLONE_VM` path (unless `FORKSERVER_EXEC_FORK`, or the request comes from a
    /// `foreign` peer: see [`Conn::is_foreign`]), else a fork. Only a `pid_after_exec` exec
    /// job (`wait_exec`) needs a report pipe of its own (its
    /// EOF is the exec's success); others report a failure on the shared socket, tagged with
    /// the spawn's `serial`.
    fn start_child(
        &mut self,
        spawn: Spawn,
        bundle: FdBundle,
        wait_exec: bool,
        serial: Serial,
        foreign: bool,
    ) -> Result<Started, Errno> {
        let (pid, report, failure, sent_job) = match self.take_pooled(spawn, bundle) {
            Pooled::Taken(pid, sock, job) => (pid, sock, None, Some(job)),
            Pooled::Broken(pid, sock, reply) => {
                (pid, sock, Some(spawn::Failure::setup(reply)), None)
            }
            Pooled::Fork(spawn, bundle) => {
                if let (Job::Exec(job), false) = (spawn.job(), foreign || self.fork.exec_by_fork())
                {
                    let mut cloned = self.fork.spawn_exec(job, spawn.options(), bundle)?;
                    return Ok(Started {
                        pid: cloned.pid,
                        report: None,
                        pooled: false,
                        failure: None,
                        bundle: std::mem::take(&mut cloned.bundle),
                        exec: Some(cloned),
                        sent_job: None,
                        request: Some(spawn),
                    });
                }
                let report_to = match wait_exec {
                    true => ReportTo::Pipe,
                    false => ReportTo::Shared(serial),
                };
                let (pid, report, bundle) = self.fork(&spawn, bundle, report_to)?;
                let started = Started {
                    pid,
                    report,
                    pooled: false,
                    failure: None,
                    exec: None,
                    bundle,
                    sent_job: None,
                    request: Some(spawn),
                };
                return Ok(started);
            }
        };
        Ok(Started {
            pid,
            report: Some(report),
            pooled: true,
            failure,
            exec: None,
            bundle: FdBundle::new(),
            sent_job,
            request: None,
        })
    }

    /// Forks a child for `spawn` with `bundle`, reporting to `report_to`: its pid, the read
    /// end of its report pipe if it has one, and the bundle, still open.
    fn fork(
        &mut self,
        spawn: &Spawn,
        bundle: FdBundle,
        report_to: ReportTo,
    ) -> Result<(Pid, Option<OwnedFd>, FdBundle), Errno> {
        let work = match spawn.job() {
            Job::Exec(e) => Work::Exec(e),
            Job::Entry(e) => Work::Entry {
                entry: &self.entries[e.name()],
                payload: e.payload(),
            },
        };
        let child = ChildSpec::new(work, spawn.options(), bundle, report_to);
        spawn::spawn(&mut self.fork, child)
    }

    /// No child could be had: `fork` or `pipe2` failed with `e`.
    fn fork_failed(&mut self, id: ConnId, e: Errno) {
        tracing::warn!("spawn failed: {e}");
        let code = match e {
            Errno::EMFILE | Errno::ENFILE => ErrorCode::ResourceExhausted,
            _ => ErrorCode::ForkFailed,
        };
        self.fail(id, ErrorReply::new(code, e as i32, format!("fork: {e}")));
    }

    /// Keeps track of a new child: its deadline (`deadline` from now) in the timer table, its
    /// report pipe in the epoll set if it is watched, the child in `children`.
    fn adopt(&mut self, child: Child, deadline: Option<Duration>) {
        let (pid, serial) = (child.pid(), child.serial());
        if let Some(d) = deadline {
            self.timers
                .set(Instant::now() + d, Timer::Deadline { serial, pid });
        }
        if let Some(report) = child.watched_report() {
            // Keyed by the spawn's serial, not its pid: a pid can be reused, a serial cannot.
            let token = Token::Report(serial).to_u64();
            if let Err(e) = self
                .epoll
                .add(report, EpollEvent::new(EpollFlags::EPOLLIN, token))
            {
                tracing::warn!("epoll_ctl: {e}");
            }
        }
        self.children.insert(pid, child);
    }

    /// Tells connection `id` of its new child `pid`: with `wait_exec` the connection waits in
    /// SPAWNING for the exec, else the `Pid` goes out now. A `pooled` child runs only after
    /// this (PROTOCOL.md §6.4): its job is in its socket and, unless its `Pid` waits for its
    /// exec, the client has the `Pid`.
    fn announce(&mut self, id: ConnId, pid: Pid, wait_exec: bool, pooled: bool, want_pidfd: bool) {
        if wait_exec {
            self.transition(id, |s| s.spawned(pid, true));
        } else {
            self.start_running(id, pid, want_pidfd);
            if pooled && self.stop_after_pooled_pid {
                tracing::warn!("{TEST_STOP_AFTER_PID_ENV}: stopping after the Pid");
                let _ = nix::sys::signal::raise(Signal::SIGSTOP);
            }
        }
        if pooled {
            spawn::wake_pooled(pid);
        }
    }

    /// The child exists (and, with `pid_after_exec`, has exec'd): `Pid`, with a pidfd if one
    /// was asked for and can be had, and the connection is RUNNING.
    pub(super) fn start_running(&mut self, id: ConnId, pid: Pid, want_pidfd: bool) {
        let pidfd = want_pidfd
            .then(|| crate::sys::pidfd_open(pid))
            .and_then(|r| r.map_err(|e| tracing::debug!("pidfd_open: {e}")).ok());
        self.start_running_with(id, pid, pidfd);
    }

    /// As [`Server::start_running`], with the child's pidfd (if any) in hand.
    fn start_running_with(&mut self, id: ConnId, pid: Pid, pidfd: Option<OwnedFd>) {
        // The session is RUNNING before the Pid goes out: a peer already gone makes the send
        // disconnect it, and the child of that state must be detached (and killed, with
        // `kill_on_disconnect`), not left with a stale connection.
        if let Some(conn) = self.conns.get_mut(&id) {
            match conn.state() {
                State::Spawning(p) if p == pid => conn.session_mut().exec_done(pid),
                _ => conn.session_mut().spawned(pid, false),
            }
        }
        self.send_pid(id, pid, pidfd);
        self.run_actions(id);
    }

    pub(super) fn send_pid(&mut self, id: ConnId, pid: Pid, pidfd: Option<OwnedFd>) {
        let reply =
            PidReply::new(pid.as_raw(), pidfd.is_some()).expect("fork returns a positive pid");
        self.send(id, Message::Pid(reply), pidfd.into_iter().collect());
    }
}
