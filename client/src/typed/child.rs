//! [`TypedChild`]: a running typed call. It waits on two fds at once, the result channel
//! (PROTOCOL.md §11.3) and the child's connection (its exit status), with `poll(2)`, and
//! files what each gives in a [`Progress`], which decides the outcome.

use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use forkserver_protocol::typed::Codec;
use nix::poll::{PollFd, PollFlags};
use serde::de::DeserializeOwned;

use super::error::CallError;
use super::progress::Progress;
use crate::child::Child;
use crate::pipes::{ChildStderr, ChildStdin, ChildStdout};
use crate::wait_until::{deadline_in, poll_until};

/// A typed call's child: [`TypedChild::join`] gives the entry's value, or a [`CallError`] that
/// says how it ended.
///
/// Dropping it before the outcome closes the child's connection and the result channel: the
/// child runs on (unless spawned with `kill_on_disconnect(true)`), and what it sends is lost.
#[derive(Debug)]
pub struct TypedChild<R> {
    child: Child,
    channel: Option<OwnedFd>,
    progress: Progress,
    /// The parent's end of a piped stdin ([`crate::Stdio::piped`]).
    pub stdin: Option<ChildStdin>,
    /// The parent's end of a piped stdout.
    pub stdout: Option<ChildStdout>,
    /// The parent's end of a piped stderr.
    pub stderr: Option<ChildStderr>,
    _result: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> TypedChild<R> {
    pub(crate) fn new(mut child: Child, channel: OwnedFd, entry: String, codec: Codec) -> Self {
        Self {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
            channel: Some(channel),
            progress: Progress::new(entry, codec),
            _result: PhantomData,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// Sends `signo` to the child, acknowledged by the server (see [`Child::signal`]).
    ///
    /// # Errors
    /// As [`Child::signal`].
    pub fn signal(&mut self, signo: i32) -> crate::Result<()> {
        self.child.signal(signo)
    }

    /// Kills the child (`SIGKILL`); `Ok(())` if it has already exited. [`TypedChild::join`]
    /// then gives [`CallError::Killed`] unless the result had been sent.
    ///
    /// # Errors
    /// As [`Child::kill`].
    pub fn kill(&mut self) -> crate::Result<()> {
        self.child.kill()
    }

    /// Waits for the call to end: its value, or how it ended without one.
    ///
    /// # Errors
    /// A [`CallError`]: the entry's error, panic, signal or exit, a mismatch found by the
    /// child, a transport failure, or a bad result; [`CallError::Taken`] after a
    /// [`TypedChild::join_timeout`] that returned the outcome.
    pub fn join(mut self) -> Result<R, CallError> {
        while !self.step(None)? {}
        self.progress.outcome()
    }

    /// As [`TypedChild::join`], for at most `timeout`: `Ok(None)` if the call is still running
    /// then, and the child keeps running; call again (or [`TypedChild::join`]) to wait on.
    ///
    /// # Errors
    /// As [`TypedChild::join`]; [`CallError::Taken`] once the outcome has been returned.
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<Option<R>, CallError> {
        if self.progress.taken() {
            return Err(CallError::Taken);
        }
        if self.step(deadline_in(timeout))? {
            self.progress.outcome().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Makes progress until both the answer and the exit status are known (`true`) or
    /// `deadline` (`None`: none) passes (`false`). While the answer is awaited it polls both
    /// fds (a child blocked on a full channel must be read to finish); once it is in and no
    /// deadline is set, the status is one blocking read of the connection, as
    /// [`Child::wait`]'s (without warming a connection up): no probe before each poll, no
    /// poll before the read.
    fn step(&mut self, deadline: Option<Instant>) -> Result<bool, CallError> {
        loop {
            if self.progress.settle(self.channel.as_ref().map(AsFd::as_fd)) {
                return Ok(true);
            }
            // `settle` is true once the status is known: from here on it is still awaited.
            if deadline.is_none() && !self.progress.wants_answer() {
                let status = self.child.read_status().map_err(CallError::Transport)?;
                self.progress.set_status(status);
                continue;
            }
            let conn = self
                .child
                .connection_fd()
                .ok_or(CallError::Transport(crate::Error::ServerGone))?;
            let mut fds = vec![PollFd::new(conn, PollFlags::POLLIN)];
            if let (true, Some(ch)) = (self.progress.wants_answer(), &self.channel) {
                fds.push(PollFd::new(ch.as_fd(), PollFlags::POLLIN));
            }
            let go_on =
                poll_until(&mut fds, deadline).map_err(|e| CallError::Transport(e.into()))?;
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(PollFd::revents)
                    .is_some_and(|r| !r.is_empty())
            };
            let (conn_ready, chan_ready) = (ready(0), ready(1));
            drop(fds);
            if conn_ready {
                if let Some(s) = self.child.try_wait().map_err(CallError::Transport)? {
                    self.progress.set_status(s);
                }
            }
            // Read at the deadline too: a child blocked on a full channel must get room, even
            // when every wait is `join_timeout(Duration::ZERO)`.
            if chan_ready || !go_on {
                self.read_channel();
            }
            if !go_on {
                // The status may have come with the deadline: settled or not, say which.
                return Ok(self.progress.settle(self.channel.as_ref().map(AsFd::as_fd)));
            }
        }
    }

    /// Reads what the channel holds; closes it once the answer is in.
    fn read_channel(&mut self) {
        if let Some(ch) = &self.channel {
            if self.progress.read(ch.as_fd()) {
                self.channel = None;
            }
        }
    }
}
