//! Children once started (`spawning.rs` starts them): their reports (exec done, setup
//! failures), their connection's end, reaping and the final report to their connection.

use std::os::fd::AsRawFd;

use forkserver_protocol::{ErrorCode, ErrorReply, Exit, Message};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::MsgFlags;

use super::child::{Child, ExecReport};
use super::Server;
use crate::ids::{ConnId, Serial};
use crate::metrics::Kill;
use crate::session::State;
use crate::spawn::{self, StageFamily};
use crate::sys::Reaped;

impl Server {
    /// Reaps every child that has ended: no zombie outlives the loop turn that saw SIGCHLD.
    pub(super) fn reap(&mut self) {
        loop {
            match crate::sys::reap_one() {
                Ok(Some(r)) => self.on_child_exit(r),
                Ok(None) | Err(Errno::ECHILD) => return,
                Err(e) => {
                    tracing::error!("waitpid: {e}");
                    return;
                }
            }
        }
    }

    pub(super) fn on_child_exit(&mut self, reaped: Reaped) {
        let (pid, code, core) = (reaped.pid, reaped.code, reaped.core_dumped);
        self.touch();
        if let Some(i) = self.pool.iter().position(|(p, _)| *p == pid) {
            tracing::warn!(
                pid = pid.as_raw(),
                code,
                "a pooled child died before its job"
            );
            self.pool.remove(i);
            self.metrics.orphan_reaped();
            return;
        }
        let Some(mut child) = self.children.remove(&pid) else {
            self.metrics.orphan_reaped();
            return;
        };
        let serial = child.serial();
        tracing::debug!(pid = pid.as_raw(), serial = %serial, code, "child reaped");
        let failure = match child.may_have_shared_report(code) {
            true => self.shared_report(serial, child.context()),
            false => child.take_failure(&self.epoll),
        };
        self.shared_reports.remove(&serial);
        self.count_result(&mut child, failure.as_ref());
        // A child whose connection is gone (or got its exec error already) has nobody to tell.
        let Some(id) = child.conn() else { return };
        let spawning = self
            .conns
            .get(&id)
            .is_some_and(|c| c.state() == State::Spawning(pid));
        if spawning && failure.is_none() {
            // It ended before its report pipe's EOF was seen: the Pid still comes first (§6.1),
            // without a pidfd (the pid is reaped and may be reused already).
            self.send_pid(id, pid, None);
        }
        let reply = match failure {
            Some(failure) => failure.into_reply(),
            None => match Exit::new(code, child.deadline_hit(), core) {
                Ok(exit) => {
                    let usage = child.wants_rusage().then_some(reaped.usage);
                    Message::Exit(exit.with_usage(usage))
                }
                Err(_) => {
                    ErrorReply::new(ErrorCode::Internal, 0, format!("exit code {code}")).into()
                }
            },
        };
        self.send(id, reply, vec![]);
        self.after_final_report(id, child.keeps_connection());
    }

    /// Counts `child`'s result in the metrics (and logs its failure), the first time only.
    pub(super) fn count_result(&mut self, child: &mut Child, failure: Option<&spawn::Failure>) {
        if child.count_result() {
            log_failure(child, failure);
            self.metrics.spawn_result(child.kind(), failure);
        }
    }

    /// The child's final report (`Exit`, or its exec/setup failure) is queued: the connection
    /// closes, or with `KEEP_CONNECTION` goes back to `Ready` for its next request (§6.1).
    pub(super) fn after_final_report(&mut self, id: ConnId, keep: bool) {
        if keep && !self.shutting_down {
            self.transition(id, |s| s.final_report(true));
            // Frames that arrived behind the child's run are handled now, as in READY.
            self.process_frames(id);
        } else {
            self.transition(id, |s| s.final_report(false));
        }
    }

    /// The failure report of the child of spawn `serial` on the shared report socket, if it
    /// wrote one. Reads every report waiting there; those of other live children are kept for
    /// their own exit (a child writes its report before it exits, so it is there by the time
    /// the child is reaped).
    pub(super) fn shared_report(
        &mut self,
        serial: Serial,
        ctx: &spawn::Context,
    ) -> Option<spawn::Failure> {
        let mut buf = [0u8; spawn::SHARED_REPORT_LEN];
        loop {
            let flags = MsgFlags::MSG_DONTWAIT;
            match nix::sys::socket::recv(self.report_rx.as_raw_fd(), &mut buf, flags) {
                Ok(spawn::SHARED_REPORT_LEN) => {
                    let (s, report) = spawn::decode_shared(&buf);
                    let ctx = match s == serial {
                        true => Some(ctx),
                        false => self
                            .children
                            .values()
                            .find(|c| c.serial() == s)
                            .map(Child::context),
                    };
                    if let Some(ctx) = ctx {
                        let reply = spawn::failure_reply(&report, Some(ctx));
                        self.shared_reports.insert(s, reply);
                    }
                }
                Ok(n) => tracing::error!("bug: a shared report of {n} bytes"),
                Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        self.shared_reports.remove(&serial)
    }

    /// A `pid_after_exec` child's report pipe is readable: EOF means the exec succeeded.
    pub(super) fn on_report(&mut self, serial: Serial) {
        let Some((&pid, child)) = self.children.iter_mut().find(|(_, c)| c.serial() == serial)
        else {
            return;
        };
        let Some(report) = child.read_exec_report(&self.epoll) else {
            return;
        };
        let failure = match &report {
            ExecReport::Exec => None,
            ExecReport::Failed(reply) => Some(reply),
        };
        if child.count_result() {
            log_failure(child, failure);
            self.metrics.spawn_result(child.kind(), failure);
        }
        let Some(id) = child.conn() else { return };
        match report {
            ExecReport::Exec => {
                let want_pidfd = child.wants_pidfd();
                self.start_running(id, pid, want_pidfd);
                // Frames that came behind the Spawn were held until now.
                self.process_frames(id);
            }
            ExecReport::Failed(reply) => {
                // The child is reaped later; nobody waits for its exit status any more.
                child.final_report_sent();
                let keep = child.keeps_connection();
                self.send(id, reply.into_reply(), vec![]);
                self.after_final_report(id, keep);
            }
        }
    }

    /// The connection in `state` ends: its child (if any) is on its own now, or killed if it
    /// asked to be.
    pub(super) fn detach_child(&mut self, state: State) {
        let (State::Running(pid) | State::Spawning(pid)) = state else {
            return;
        };
        if let Some(child) = self.children.get_mut(&pid) {
            if child.detach(&self.epoll) {
                self.metrics.killed(Kill::Disconnect);
            }
        }
    }

    /// The shutdown timeout passed: `SIGKILL` to every child not reaped yet. They are reaped
    /// as usual, their clients get `Exit` (-9), and the server exits once they are gone.
    pub(super) fn kill_remaining_children(&mut self) {
        if !self.children.is_empty() {
            let n = self.children.len();
            tracing::warn!("shutdown timeout: SIGKILL to the {n} children left");
        }
        // Not reaped yet (reaping happens on this thread): the pids are still theirs.
        for pid in self.children.keys() {
            let _ = kill(*pid, Signal::SIGKILL);
        }
    }
}

/// Logs a child's exec or setup failure with the figures of the metrics' names.
fn log_failure(child: &Child, failure: Option<&spawn::Failure>) {
    if let Some((Message::Error(e), stage)) = failure.map(|f| (f.reply(), f.stage())) {
        tracing::info!(
            conn = child.conn().map(|c| c.to_string()),
            pid = child.pid().as_raw(),
            serial = %child.serial(),
            stage = stage.family().map_or("exec", StageFamily::name),
            errno = e.errno(),
            "child failed before its job: {}",
            e.message()
        );
    }
}
