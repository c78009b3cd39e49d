//! Starting a child for a request: room for it, a pooled child or a fork, the records kept of
//! it (its deadline, its report pipe), and its `Pid` to the client, at once or after its exec.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use forkserver_protocol::{ErrorCode, ErrorReply, FdBundle, Job, Message, Pid as PidReply, Spawn};
use nix::errno::Errno;
use nix::sys::epoll::{EpollEvent, EpollFlags};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::child::Child;
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
    failure: Option<Message>,
}

impl Server {
    /// Connection `id`'s session asked for `spawn` with `bundle`: a child for it, from the
    /// pool or forked, kept track of, and its `Pid` to the client: at once, or with
    /// `pid_after_exec` once it has exec'd (the connection waits in SPAWNING).
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
        let started = match self.start_child(spawn, bundle, wait_exec, serial) {
            Ok(started) => started,
            Err(e) => return self.fork_failed(id, e),
        };
        self.spawned_total += 1;
        self.touch();
        let (pid, pooled) = (started.pid, started.pooled);
        let child = Child::new(pid, serial, id, &options, context)
            .with_report(started.report, wait_exec)
            .with_failure(started.failure);
        let deadline = options
            .deadline_ms
            .map(|ms| Duration::from_millis(ms.get()));
        self.adopt(child, deadline);
        tracing::debug!(conn = %id, pid = pid.as_raw(), "spawned");
        self.announce(id, pid, wait_exec, pooled, options.want_pidfd);
    }

    /// A child for `spawn`: the job handed to a pooled child if one can take it, else a
    /// fork. Only a `pid_after_exec` exec job (`wait_exec`) needs a report pipe of its own (its
    /// EOF is the exec's success); others report a failure on the shared socket, tagged with
    /// the spawn's `serial`.
    fn start_child(
        &mut self,
        spawn: Spawn,
        bundle: FdBundle,
        wait_exec: bool,
        serial: Serial,
    ) -> Result<Started, Errno> {
        let (pid, report, failure) = match self.take_pooled(spawn, bundle) {
            Pooled::Taken(pid, sock) => (pid, sock, None),
            Pooled::Broken(pid, sock, reply) => (pid, sock, Some(reply)),
            Pooled::Fork(spawn, bundle) => {
                let report_to = match wait_exec {
                    true => ReportTo::Pipe,
                    false => ReportTo::Shared(serial),
                };
                let (pid, report) = self.fork(&spawn, bundle, report_to)?;
                let started = Started {
                    pid,
                    report,
                    pooled: false,
                    failure: None,
                };
                return Ok(started);
            }
        };
        Ok(Started {
            pid,
            report: Some(report),
            pooled: true,
            failure,
        })
    }

    /// Forks a child for `spawn` with `bundle`, reporting to `report_to`: its pid, and the
    /// read end of its report pipe if it has one.
    fn fork(
        &mut self,
        spawn: &Spawn,
        bundle: FdBundle,
        report_to: ReportTo,
    ) -> Result<(Pid, Option<OwnedFd>), Errno> {
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
