//! The prefork pool (§6.4): children forked in advance, each waiting for one job on its own
//! socket; the hand-off comes before the job's `Pid`.

use std::os::fd::{AsFd, OwnedFd};

use forkserver_protocol::{
    peek_pending, ErrorCode, ErrorReply, FdBundle, Message, OutFrame, Pending, Spawn,
    TransportError,
};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::Server;
use crate::spawn;

/// Largest job handed to a pooled child: it must fit in the socket's send buffer at once.
const POOL_MAX_FRAME: usize = 64 * 1024;

/// What became of a job offered to the prefork pool.
pub(super) enum Pooled {
    /// A pooled child holds it: the job's frame and fds are in its socket's receive queue, so
    /// it runs even if the server dies now. Its pid, the server's end of its socket (the
    /// report channel), and the sent frame, whose copies of the fds the caller closes once
    /// the `Pid` is out.
    Taken(Pid, OwnedFd, OutFrame),
    /// The frame went out in part only (not expected: it fits the socket's buffer): the child
    /// is killed, and the failure is reported in place of its exit.
    Broken(Pid, OwnedFd, Message),
    /// No pooled child can take it: fork for it.
    Fork(Spawn, FdBundle),
}

impl Server {
    /// Hands the job to a pooled child, if one is waiting and the job fits in its socket's
    /// buffer at once (the event loop never blocks on a pooled child). The whole frame, fds
    /// included, is in the child's socket before this returns, and so before the `Pid` goes
    /// out (§6.4): a client never holds the pid of a job that a dying server did not pass on.
    /// A child that cannot take it (it died since `take_live_pooled` looked) is killed and the
    /// next one is tried; the request comes back, fds included, when none can: the caller
    /// forks instead.
    pub(super) fn take_pooled(&mut self, spawn: Spawn, bundle: FdBundle) -> Pooled {
        let message = Message::Spawn(spawn);
        let fits = message.encoded_len() <= POOL_MAX_FRAME;
        let (map, mut fds) = bundle.into_parts();
        while let Some((pid, sock)) = fits.then(|| self.take_live_pooled()).flatten() {
            let mut job = OutFrame::new(&message, fds).expect("the fds match the map");
            let e = match job.send(sock.as_fd()) {
                Ok(_) => return Pooled::Taken(pid, sock, job),
                Err(e) => e,
            };
            tracing::warn!(pid = pid.as_raw(), "pooled child did not take its job: {e}");
            let _ = kill(pid, Signal::SIGKILL);
            if job.is_started() {
                let errno = match e {
                    TransportError::Io(e) => e as i32,
                    _ => Errno::EIO as i32,
                };
                let msg = format!("the pooled child did not take its job: {e}");
                let reply = ErrorReply::new(ErrorCode::ChildSetupFailed, errno, msg).into();
                return Pooled::Broken(pid, sock, reply);
            }
            fds = job.into_unsent_fds();
        }
        let Message::Spawn(spawn) = message else {
            unreachable!("built from a Spawn above")
        };
        let bundle = FdBundle::from_parts(map, fds).expect("the fds came with this map");
        Pooled::Fork(spawn, bundle)
    }

    /// The first pooled child whose end of the socket is still open. One that died (its SIGCHLD
    /// not read yet: its end is closed, or it wrote to it) is killed and left for `reap`, so
    /// that its request goes to another child or is forked, never lost.
    pub(super) fn take_live_pooled(&mut self) -> Option<(Pid, OwnedFd)> {
        while let Some((pid, sock)) = self.pool.pop_front() {
            match peek_pending(sock.as_fd()) {
                Pending::Nothing => return Some((pid, sock)),
                other => {
                    tracing::warn!(pid = pid.as_raw(), "pooled child gone: {other:?}");
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
        }
        None
    }

    /// Forks pooled children up to `--prefork`.
    pub(super) fn fill_pool(&mut self) {
        while self.pool.len() < self.config.prefork && !self.shutting_down {
            match spawn::prefork(&mut self.fork, &self.entries) {
                Ok(p) => self.pool.push_back(p),
                Err(e) => {
                    tracing::warn!("prefork: {e}");
                    return;
                }
            }
        }
    }
}
